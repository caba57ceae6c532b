"""The VQGAN recipe: perceptual + GAN losses from disc_start on, the discriminator's own optimizer, its state in
Trainer checkpoints (written by a callback, restored by train(resume_from_checkpoint=...)), and GANSettings parsed
directly by HfArgumentParser."""

import numpy as np
import PIL.Image
import torch
from datasets import Dataset, Image
from safetensors.torch import save_file
from tiny_training import training_args
from transformers import HfArgumentParser, Trainer

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.gan import VGG16_LAYOUT, ArcVQGANTrainer, GANSettings
from arcvq_hf.transforms import pixel_values_transform


def _random_vgg16_trunk(path) -> None:
    """Random VGG16 trunk weights under torchvision's key names, standing in for a user's local file."""
    generator = torch.Generator().manual_seed(1)
    state, in_channels, index = {}, 3, 0
    for item in VGG16_LAYOUT:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, in_channels, 3, 3, generator=generator) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(item)
        in_channels, index = item, index + 2
    save_file(state, str(path))


def test_gan_settings_are_parsed_directly_by_hf_argument_parser() -> None:
    (settings,) = HfArgumentParser(GANSettings).parse_args_into_dataclasses(
        args=["--disc_start", "5", "--disc_learning_rate", "1e-4", "--perceptual_weights", "vgg.safetensors"]
    )
    assert settings == GANSettings(disc_start=5, disc_learning_rate=1e-4, perceptual_weights="vgg.safetensors")


def test_vqgan_recipe_trains_and_resumes_its_discriminator(tmp_path, monkeypatch) -> None:
    generator = torch.Generator().manual_seed(0)
    images = [
        PIL.Image.fromarray(np.asarray(torch.randint(0, 256, (16, 16, 3), generator=generator), dtype=np.uint8))
        for _ in range(8)
    ]
    processor = ArcVQImageProcessor(num_channels=3, size_divisor=2)
    data = Dataset.from_dict({"image": images}).cast_column("image", Image())
    data = data.with_transform(pixel_values_transform(processor))
    _random_vgg16_trunk(tmp_path / "vgg16.safetensors")

    torch.manual_seed(0)
    config = ArcVQConfig.from_preset(
        "arcvq",
        variant="vqgan",
        base_channels=32,
        channel_multipliers=[1, 2],
        norm_num_groups=8,
        layers_per_block=1,
        latent_channels=32,
        codebook_size=32,
        codebook_dim=8,
    )
    settings = GANSettings(
        disc_start=1, disc_num_layers=2, disc_base_channels=16, perceptual_weights=str(tmp_path / "vgg16.safetensors")
    )
    gan_args = {"per_device_train_batch_size": 4, "learning_rate": 1e-3}
    trainer = ArcVQGANTrainer(
        model=ArcVQModel(config),
        args=training_args(tmp_path / "gan", max_steps=3, save_strategy="steps", save_steps=3, **gan_args),
        train_dataset=data,
        gan_settings=settings,
    )
    discriminator_before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert "discriminator_loss" not in logs[0] and "gan_generator_loss" not in logs[0]  # step 0 < disc_start
    for entry in logs[1:]:
        for key in ("loss", "perceptual_loss", "gan_generator_loss", "gan_adaptive_weight", "discriminator_loss"):
            assert np.isfinite(entry[key]), key
        assert 0 <= entry["gan_adaptive_weight"] <= 1e4
    assert logs[0]["perceptual_loss"] > 0
    changed = [k for k, v in trainer.discriminator.state_dict().items() if not torch.equal(v, discriminator_before[k])]
    assert "main.0.weight" in changed
    checkpoint = tmp_path / "gan" / "checkpoint-3"
    assert (checkpoint / ArcVQGANTrainer.DISCRIMINATOR_FILE).is_file()
    assert (checkpoint / ArcVQGANTrainer.DISCRIMINATOR_OPTIMIZER_FILE).is_file()

    # Resuming restores the discriminator and its optimizer state, then hands the checkpoint to Trainer.train
    # (stubbed here: what it restores is Trainer's business).
    restored = ArcVQGANTrainer(
        model=ArcVQModel(config),
        args=training_args(tmp_path / "gan", max_steps=3, **gan_args),
        train_dataset=data,
        gan_settings=GANSettings(disc_start=1, disc_num_layers=2, disc_base_channels=16),
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
