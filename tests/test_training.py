"""Trainer integration: schedules, whole-set evaluation, resume, fine-tuning, the VQGAN recipe, the example's
run (single process and torchrun with 2 ranks)."""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, DatasetDict, Image
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data import mnist_arrays
from arcvq_hf.metrics import evaluate_reconstruction
from arcvq_hf.quantization import arc_weight_at, ball_radius, project_onto_ball_
from arcvq_hf.training import (
    VGG16_LAYOUT,
    ArcVQGANTrainer,
    ArcVQTrainer,
    DataArguments,
    GANSettings,
    ModelArguments,
    pixel_values_transform,
    run_training,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "hidden_size": 16,
    "residual_hidden_size": 8,
    "num_residual_layers": 1,
    "codebook_size": 32,
    "codebook_dim": 8,
    "ball_growth_rate": 0.05,
    "arc_weight_decay": 0.05,
}


def _digits(count: int, offset: int = 0) -> Dataset:
    train = mnist_arrays()[0][offset : offset + count]
    images = [PIL.Image.fromarray(np.round((x[0] * 0.5 + 0.5) * 255).astype(np.uint8), mode="L") for x in train]
    return Dataset.from_dict({"image": images, "label": list(range(count))}).cast_column("image", Image())


@pytest.fixture(scope="module")
def digit_sets() -> tuple[Dataset, Dataset]:
    processor = ArcVQImageProcessor(num_channels=1)
    transform = pixel_values_transform(processor)
    return _digits(48).with_transform(transform), _digits(13, offset=100).with_transform(transform)


def _tiny_model(seed: int = 0, **overrides) -> ArcVQModel:
    torch.manual_seed(seed)
    return ArcVQModel(ArcVQConfig(num_channels=1, **{**TINY, **overrides}))


def _args(output_dir, **overrides) -> TrainingArguments:
    settings = {
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 5,
        "learning_rate": 1e-2,
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
    }
    settings.update(overrides)
    return TrainingArguments(output_dir=str(output_dir), **settings)


def test_schedule_follows_optimizer_steps_under_gradient_accumulation(tmp_path, digit_sets) -> None:
    train, _ = digit_sets
    model = _tiny_model()
    seen_steps = []
    model.quantizer.register_forward_pre_hook(lambda module, args: seen_steps.append(module.current_step))
    trainer = ArcVQTrainer(
        model=model,
        args=_args(tmp_path, max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=4),
        train_dataset=train,
    )
    trainer.train()
    assert seen_steps == [0, 0, 1, 1, 2, 2]
    assert model.training_step == 3
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3]
    for entry in logs:
        t = entry["step"] - 1  # the step the logged forwards ran at
        assert entry["schedule_step"] == t
        assert entry["arc_weight"] == pytest.approx(arc_weight_at(t, model.config.arc_weight, 0.05))
        assert entry["ball_radius"] == pytest.approx(ball_radius(t, 0.05))
        assert 0 < entry["batch_utilization"] <= 1
        assert np.isfinite(entry["arc_loss"]) and np.isfinite(entry["reconstruction_loss"])


def test_evaluate_reports_whole_set_metrics(tmp_path, digit_sets) -> None:
    train, evaluation = digit_sets
    model = _tiny_model()
    processor = ArcVQImageProcessor(num_channels=1)
    trainer = ArcVQTrainer(
        model=model, args=_args(tmp_path), train_dataset=train, eval_dataset=evaluation, processing_class=processor
    )
    trainer.train()
    metrics = trainer.evaluate()
    # Independent: one batch holding the whole evaluation set (13 images; the trainer used batches of 5).
    pixels = torch.stack([evaluation[i]["pixel_values"] for i in range(len(evaluation))])
    reference = evaluate_reconstruction(model, [pixels], processor, with_losses=True)
    assert metrics["eval_num_images"] == 13
    for key in ("psnr", "ssim", "l1", "codebook_utilization", "perplexity", "dead_codes", "angular_dispersion"):
        assert metrics[f"eval_{key}"] == pytest.approx(reference[key], rel=1e-5), key
    for key in ("reconstruction_loss", "quantization_loss"):
        assert metrics[f"eval_{key}"] == pytest.approx(reference[key], rel=1e-4), key
    assert metrics["eval_schedule_step"] == 4
    assert metrics["eval_ball_radius"] == pytest.approx(ball_radius(4, 0.05))
    assert trainer.state.log_history[-1]["eval_psnr"] == metrics["eval_psnr"]
    # predict() concatenates reconstructions and tokens over batches.
    prediction = trainer.predict(evaluation)
    reconstruction, tokens = prediction.predictions
    assert reconstruction.shape == (13, 1, 28, 28) and tokens.shape == (13, 7, 7)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, digit_sets) -> None:
    train, _ = digit_sets
    full = ArcVQTrainer(
        model=_tiny_model(),
        args=_args(tmp_path / "full", max_steps=6, save_strategy="steps", save_steps=3),
        train_dataset=train,
    )
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert ArcVQModel.from_pretrained(checkpoint).training_step == 3
    resumed_model = _tiny_model(seed=123)  # different init: everything must come from the checkpoint
    resumed = ArcVQTrainer(model=resumed_model, args=_args(tmp_path / "resumed", max_steps=6), train_dataset=train)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed_model.training_step == full.model.training_step == 6
    torch.testing.assert_close(resumed_model.codebook, full.model.codebook, atol=1e-6, rtol=1e-5)
    assert resumed_model.quantizer.ball_radius == full.model.quantizer.ball_radius == ball_radius(6, 0.05)
    assert resumed_model.quantizer.current_arc_weight == full.model.quantizer.current_arc_weight
    gamma0 = resumed_model.config.arc_weight
    assert resumed_model.quantizer.current_arc_weight == pytest.approx(arc_weight_at(6, gamma0, 0.05))
    resumed_logs = [e for e in resumed.state.log_history if "loss" in e]
    full_logs = [e for e in full.state.log_history if "loss" in e]
    assert [e["schedule_step"] for e in resumed_logs[-3:]] == [3, 4, 5]
    for a, b in zip(resumed_logs[-3:], full_logs[-3:], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_finetuning_continues_the_ball_radius(tmp_path, digit_sets) -> None:
    train, _ = digit_sets
    trained = _tiny_model(ball_growth_rate=1e-3)
    saved_step = 500  # R = exp(0.5) ~ 1.65
    trained.set_training_step(saved_step)
    with torch.no_grad():
        norms = torch.linspace(0.5, 1.6, trained.config.codebook_size)[:, None]
        trained.codebook.mul_(norms / trained.codebook.norm(dim=1, keepdim=True))
    trained.save_pretrained(tmp_path / "trained")
    saved_codebook = trained.codebook.detach().clone()
    # Restarting the schedule at step 0 (radius 1) would cut every code longer than 1.
    assert project_onto_ball_(saved_codebook.clone(), ball_radius(0, 1e-3)).sum() > 5

    model = ArcVQModel.from_pretrained(tmp_path / "trained")
    assert model.training_step == saved_step
    seen_radii = []
    model.quantizer.register_forward_pre_hook(lambda module, args: seen_radii.append(module.ball_radius))
    # Learning rate 0: the only thing that can move the codebook is the first step's ball projection.
    trainer = ArcVQTrainer(
        model=model, args=_args(tmp_path / "ft", max_steps=1, learning_rate=0.0), train_dataset=train
    )
    trainer.train()
    assert seen_radii == [pytest.approx(ball_radius(saved_step, 1e-3))]
    torch.testing.assert_close(model.codebook, saved_codebook, atol=0, rtol=0)
    assert model.training_step == saved_step + 1


def test_vqgan_recipe_smoke(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = [
        PIL.Image.fromarray(np.asarray(torch.randint(0, 256, (16, 16, 3), generator=generator), dtype=np.uint8))
        for _ in range(8)
    ]
    processor = ArcVQImageProcessor(num_channels=3, size_divisor=2)
    data = Dataset.from_dict({"image": images}).cast_column("image", Image())
    data = data.with_transform(pixel_values_transform(processor))
    # Random VGG16 trunk weights under torchvision's key names stand in for a user's local file.
    vgg_state, in_channels, index = {}, 3, 0
    for item in VGG16_LAYOUT:
        if item == "M":
            index += 1
            continue
        vgg_state[f"features.{index}.weight"] = torch.randn(item, in_channels, 3, 3, generator=generator) * 0.05
        vgg_state[f"features.{index}.bias"] = torch.zeros(item)
        in_channels, index = item, index + 2
    save_file(vgg_state, str(tmp_path / "vgg16.safetensors"))

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
    model = ArcVQModel(config)
    settings = GANSettings(
        disc_start=1, disc_num_layers=2, disc_base_channels=16, perceptual_weights=str(tmp_path / "vgg16.safetensors")
    )
    trainer = ArcVQGANTrainer(
        model=model,
        args=_args(
            tmp_path / "gan",
            max_steps=3,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            save_strategy="steps",
            save_steps=3,
        ),
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
    # Checkpoints carry the discriminator and its optimizer, and resuming restores them.
    restored = ArcVQGANTrainer(
        model=ArcVQModel(config),
        args=_args(tmp_path / "gan2"),
        train_dataset=data,
        gan_settings=GANSettings(disc_start=1, disc_num_layers=2, disc_base_channels=16),
    )
    restored._load_from_checkpoint(str(tmp_path / "gan" / "checkpoint-3"))
    for key, value in trainer.discriminator.state_dict().items():
        torch.testing.assert_close(restored.discriminator.state_dict()[key], value, atol=0, rtol=0)
    saved_state = trainer.discriminator_optimizer.state_dict()["state"]
    restored_state = restored.discriminator_optimizer.state_dict()["state"]
    assert restored_state.keys() == saved_state.keys()
    assert int(restored_state[0]["step"]) == int(saved_state[0]["step"]) == 2


def _save_digit_dataset(path) -> None:
    DatasetDict(train=_digits(40), test=_digits(11, offset=200)).save_to_disk(str(path))


def test_run_training_writes_a_complete_model_folder_and_fine_tunes(tmp_path) -> None:
    _save_digit_dataset(tmp_path / "data")
    output = tmp_path / "model"
    overrides = json.dumps({k: v for k, v in TINY.items() if k not in ("hidden_size", "codebook_size")})
    model_args = ModelArguments(preset="arcvq", hidden_size=16, codebook_size=32, config_overrides=overrides)
    data_args = DataArguments(dataset=str(tmp_path / "data"))
    trainer, metrics = run_training(model_args, data_args, _args(output, max_steps=3), command="python train.py --x")
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "modeling_arcvq.py",
        "quantization.py",
        "eval_results.json",
    ):
        assert (output / name).exists(), name
    assert not [path.name for path in output.iterdir() if path.suffix in (".bin", ".pt", ".pkl", ".pth")]
    model = ArcVQModel.from_pretrained(output)
    assert model.training_step == 3
    expected_variance = float(np.var(mnist_arrays()[0][:40]))
    assert model.config.data_variance == pytest.approx(expected_variance, rel=1e-4)
    processor = ArcVQImageProcessor.from_pretrained(output)
    evaluation = _digits(11, offset=200).with_transform(pixel_values_transform(processor))
    pixels = torch.stack([evaluation[i]["pixel_values"] for i in range(11)])
    reference = evaluate_reconstruction(model, [pixels], processor)
    saved = json.loads((output / "eval_results.json").read_text())
    for key in ("psnr", "ssim", "codebook_utilization", "perplexity"):
        assert saved[f"eval_{key}"] == pytest.approx(reference[key], rel=1e-5)
    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.license == "apache-2.0"
    assert "arcvq" in card.data.tags
    assert "python train.py --x" in card.text
    assert f"| {metrics['eval_psnr']:.4g} |" in card.text
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["psnr"] == pytest.approx(saved["eval_psnr"])

    # Fine-tuning the saved folder continues its schedule.
    finetuned = tmp_path / "finetuned"
    trainer, _ = run_training(
        ModelArguments(model_name_or_path=str(output)), data_args, _args(finetuned, max_steps=2), command="ft"
    )
    assert ArcVQModel.from_pretrained(finetuned).training_step == 5
    assert ModelCard.load(finetuned / "README.md").data.library_name == "transformers"


def test_torchrun_two_ranks_agree_with_one_process(tmp_path) -> None:
    _save_digit_dataset(tmp_path / "data")
    output = tmp_path / "ddp"
    overrides = json.dumps({k: v for k, v in TINY.items() if k not in ("hidden_size", "codebook_size")})
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        os.path.join(REPO, "tests", "distributed_worker.py"),
        "--dataset",
        str(tmp_path / "data"),
        "--hidden_size",
        "16",
        "--codebook_size",
        "32",
        "--config_overrides",
        overrides,
        "--output_dir",
        str(output),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--learning_rate",
        "1e-2",
        "--use_cpu",
        "--ddp_backend",
        "gloo",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = output / "ranks"
    codebooks = [load_file(str(ranks / f"codebook{r}.st"))["codebook"] for r in (0, 1)]
    torch.testing.assert_close(codebooks[0], codebooks[1], atol=0, rtol=0)
    rank_metrics = [json.loads((ranks / f"metrics{r}.json").read_text()) for r in (0, 1)]
    assert rank_metrics[0]["world_size"] == 2
    timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    assert [{k: v for k, v in m.items() if k not in timing} for m in rank_metrics[1:]] == [
        {k: v for k, v in rank_metrics[0].items() if k not in timing}
    ]

    # One process over the 11 evaluation images (odd: a padded sampler would double-count one of them).
    model = ArcVQModel.from_pretrained(output)
    torch.testing.assert_close(model.codebook, codebooks[0])
    processor = ArcVQImageProcessor.from_pretrained(output)
    evaluation = _digits(11, offset=200).with_transform(pixel_values_transform(processor))
    pixels = torch.stack([evaluation[i]["pixel_values"] for i in range(11)])
    reference = evaluate_reconstruction(model, [pixels], processor, with_losses=True)
    assert rank_metrics[0]["eval_num_images"] == 11
    for key in ("psnr", "ssim", "l1", "codebook_utilization", "perplexity", "dead_codes", "reconstruction_loss"):
        assert rank_metrics[0][f"eval_{key}"] == pytest.approx(reference[key], rel=1e-5), key
