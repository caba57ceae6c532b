"""The VQGAN recipe: LPIPS-VGG perceptual + GAN losses from disc_start on, the discriminator's own optimizer, its
state in Trainer checkpoints (written by a callback, restored by train(resume_from_checkpoint=...)), and GANSettings
parsed directly by HfArgumentParser."""

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Image
from tiny_training import CACHE_ENV, FETCH_COMMAND, needs_perceptual_weights, training_args
from transformers import HfArgumentParser, Trainer

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data.transforms import pixel_values_transform
from arcvq_hf.evaluation.perceptual import LPIPS, PerceptualWeightsMissingError, lpips
from arcvq_hf.training.gan import ArcVQGANTrainer, GANSettings, decoder_last_layer

TINY_VQGAN = {
    "variant": "vqgan",
    "base_channels": 32,
    "channel_multipliers": [1, 2],
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "latent_channels": 32,
    "codebook_size": 32,
    "codebook_dim": 8,
}
SMALL_DISCRIMINATOR = {"disc_num_layers": 2, "disc_base_channels": 16}


def _random_photos(count: int = 8) -> Dataset:
    """`count` random 16x16 RGB images (LPIPS-VGG's smallest input) as pixel_values."""
    generator = torch.Generator().manual_seed(0)
    images = [
        PIL.Image.fromarray(np.asarray(torch.randint(0, 256, (16, 16, 3), generator=generator), dtype=np.uint8))
        for _ in range(count)
    ]
    processor = ArcVQImageProcessor(num_channels=3, size_divisor=2)
    data = Dataset.from_dict({"image": images}).cast_column("image", Image())
    return data.with_transform(pixel_values_transform(processor))


def _tiny_vqgan() -> ArcVQModel:
    torch.manual_seed(0)
    return ArcVQModel(ArcVQConfig.from_preset("arcvq", **TINY_VQGAN))


def test_gan_settings_are_parsed_directly_by_hf_argument_parser() -> None:
    (settings,) = HfArgumentParser(GANSettings).parse_args_into_dataclasses(
        args=["--disc_start", "5", "--disc_learning_rate", "1e-4", "--perceptual_weight", "0.5"]
    )
    assert settings == GANSettings(disc_start=5, disc_learning_rate=1e-4, perceptual_weight=0.5)
    assert GANSettings().perceptual_weight == 1.0  # taming's default: the perceptual loss is on


@needs_perceptual_weights("vgg")
def test_perceptual_loss_is_lpips_vgg_and_its_gradient_reaches_the_reconstruction(tmp_path) -> None:
    data = _random_photos(4)
    trainer = ArcVQGANTrainer(
        model=_tiny_vqgan(),
        args=training_args(tmp_path),
        train_dataset=data,
        gan_settings=GANSettings(disc_start=10**6, perceptual_weight=0.5, **SMALL_DISCRIMINATOR),
    )
    assert isinstance(trainer.perceptual_loss, LPIPS) and trainer.perceptual_loss.net == "vgg"
    assert not any(p is b for p in trainer.model.parameters() for b in trainer.perceptual_loss.buffers())
    model = trainer.model.train()
    pixel_values = torch.stack([data[i]["pixel_values"] for i in range(4)])
    outputs = model(pixel_values=pixel_values)
    loss = trainer.generator_loss(model, {"pixel_values": pixel_values}, outputs)
    # The GAN term is off (disc_start not reached): the loss is the model's plus 0.5 * mean LPIPS-VGG, the metric.
    expected = lpips(outputs.reconstruction.detach(), pixel_values, net="vgg").mean()
    torch.testing.assert_close(loss - outputs.loss, 0.5 * expected, rtol=1e-5, atol=1e-6)
    assert trainer.train_means.sums["perceptual_loss"] == pytest.approx(float(expected), rel=1e-5)
    (gradient,) = torch.autograd.grad(loss - outputs.loss, outputs.reconstruction, retain_graph=True)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    (decoder_gradient,) = torch.autograd.grad(loss - outputs.loss, decoder_last_layer(model))
    assert decoder_gradient.abs().sum() > 0  # through the reconstruction into the decoder


def test_missing_lpips_weights_name_the_fetch_command_unless_the_loss_is_off(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty-cache"))
    kwargs = {"model": _tiny_vqgan(), "train_dataset": _random_photos(2)}
    with pytest.raises(PerceptualWeightsMissingError, match=FETCH_COMMAND) as error:
        ArcVQGANTrainer(
            **kwargs, args=training_args(tmp_path / "never"), gan_settings=GANSettings(**SMALL_DISCRIMINATOR)
        )
    assert "--perceptual_weight 0" in str(error.value) and not (tmp_path / "never").exists()
    off = ArcVQGANTrainer(**kwargs, args=training_args(tmp_path / "off"), gan_settings=GANSettings(perceptual_weight=0))
    assert off.perceptual_loss is None


def test_vqgan_recipe_trains_and_resumes_its_discriminator(tmp_path, monkeypatch) -> None:
    data = _random_photos()
    # Without the perceptual term (tested above), so that this runs where the LPIPS weights are not installed.
    settings = GANSettings(disc_start=1, perceptual_weight=0, **SMALL_DISCRIMINATOR)
    gan_args = {"per_device_train_batch_size": 4, "learning_rate": 1e-3}
    trainer = ArcVQGANTrainer(
        model=_tiny_vqgan(),
        args=training_args(tmp_path / "gan", max_steps=3, save_strategy="steps", save_steps=3, **gan_args),
        train_dataset=data,
        gan_settings=settings,
    )
    discriminator_before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert "discriminator_loss" not in logs[0] and "gan_generator_loss" not in logs[0]  # step 0 < disc_start
    for entry in logs[1:]:
        for key in ("loss", "gan_generator_loss", "gan_adaptive_weight", "discriminator_loss"):
            assert np.isfinite(entry[key]), key
        assert 0 <= entry["gan_adaptive_weight"] <= 1e4
    assert all("perceptual_loss" not in entry for entry in logs)
    changed = [k for k, v in trainer.discriminator.state_dict().items() if not torch.equal(v, discriminator_before[k])]
    assert "main.0.weight" in changed
    checkpoint = tmp_path / "gan" / "checkpoint-3"
    assert (checkpoint / ArcVQGANTrainer.DISCRIMINATOR_FILE).is_file()
    assert (checkpoint / ArcVQGANTrainer.DISCRIMINATOR_OPTIMIZER_FILE).is_file()

    # Resuming restores the discriminator and its optimizer state, then hands the checkpoint to Trainer.train
    # (stubbed here: what it restores is Trainer's business).
    restored = ArcVQGANTrainer(
        model=_tiny_vqgan(),
        args=training_args(tmp_path / "gan", max_steps=3, **gan_args),
        train_dataset=data,
        gan_settings=settings,
    )
    handed_over = []
    monkeypatch.setattr(
        Trainer, "train", lambda self, resume_from_checkpoint=None, **kw: handed_over.append(resume_from_checkpoint)
    )
    restored.train(resume_from_checkpoint=True)  # True: the last checkpoint in output_dir, as Trainer resolves it
    assert handed_over == [str(checkpoint)]
    for key, value in trainer.discriminator.state_dict().items():
        torch.testing.assert_close(restored.discriminator.state_dict()[key], value, atol=0, rtol=0)
    saved_state = trainer.discriminator_optimizer.state_dict()["state"]
    restored_state = restored.discriminator_optimizer.state_dict()["state"]
    assert restored_state.keys() == saved_state.keys()
    assert int(restored_state[0]["step"]) == int(saved_state[0]["step"]) == 2
