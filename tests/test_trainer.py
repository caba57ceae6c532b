"""ArcVQTrainer and the schedule callback: schedules under accumulation, whole-set evaluation through the metrics
module's loop (with the opt-in perceptual metrics), resume, fine-tuning."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny_training import CACHE_ENV, FETCH_COMMAND, digits, needs_perceptual_weights, tiny_model, training_args

from arcvq_hf import ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data.transforms import pixel_values_transform
from arcvq_hf.evaluation.loop import evaluate_reconstruction
from arcvq_hf.evaluation.perceptual import PerceptualWeightsMissingError, lpips
from arcvq_hf.model.image_processing_arcvq import to_unit_range
from arcvq_hf.model.quantization import arc_weight_at, ball_radius_at, project_onto_ball_
from arcvq_hf.training.trainer import ArcVQTrainer


@pytest.fixture(scope="module")
def digit_sets() -> tuple[Dataset, Dataset]:
    transform = pixel_values_transform(ArcVQImageProcessor(num_channels=1))
    return digits(48).with_transform(transform), digits(13, offset=100).with_transform(transform)


def test_schedule_follows_optimizer_steps_under_gradient_accumulation(tmp_path, digit_sets) -> None:
    train, _ = digit_sets
    model = tiny_model()
    seen_steps = []
    model.quantizer.register_forward_pre_hook(lambda module, args: seen_steps.append(module.current_step))
    trainer = ArcVQTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=4),
        train_dataset=train,
    )
    trainer.train()
    assert seen_steps == [0, 0, 1, 1, 2, 2]
    assert model.schedule_step == 3
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3]
    for entry in logs:
        t = entry["step"] - 1  # the step the logged forwards ran at
        assert entry["schedule_step"] == t
        assert entry["arc_weight"] == pytest.approx(arc_weight_at(t, model.config.arc_weight, 0.05))
        assert entry["ball_radius"] == pytest.approx(ball_radius_at(t, 0.05))
        assert 0 < entry["batch_utilization"] <= 1
        assert np.isfinite(entry["arc_loss"]) and np.isfinite(entry["reconstruction_loss"])


def test_evaluate_reports_whole_set_metrics_through_accelerate_reduce(tmp_path, digit_sets, monkeypatch) -> None:
    train, evaluation = digit_sets
    model = tiny_model()
    processor = ArcVQImageProcessor(num_channels=1)
    trainer = ArcVQTrainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
    )
    trainer.train()
    reductions = []
    reduce = trainer.accelerator.reduce
    monkeypatch.setattr(
        trainer.accelerator, "reduce", lambda t, reduction: reductions.append(reduction) or reduce(t, reduction)
    )
    metrics = trainer.evaluate()
    assert reductions == ["sum"]  # the accumulators went through accelerate's reduce, once
    # Independent: one batch holding the whole evaluation set (13 images; the trainer used batches of 5).
    pixels = torch.stack([evaluation[i]["pixel_values"] for i in range(len(evaluation))])
    reference = evaluate_reconstruction(model, [pixels], processor, with_losses=True)
    assert metrics["eval_num_images"] == 13
    for key in ("psnr", "ssim", "l1", "codebook_utilization", "perplexity", "dead_codes", "angular_dispersion"):
        assert metrics[f"eval_{key}"] == pytest.approx(reference[key], rel=1e-5), key
    for key in ("reconstruction_loss", "quantization_loss"):
        assert metrics[f"eval_{key}"] == pytest.approx(reference[key], rel=1e-4), key
    assert metrics["eval_schedule_step"] == 4
    assert metrics["eval_ball_radius"] == pytest.approx(ball_radius_at(4, 0.05))
    assert trainer.state.log_history[-1]["eval_psnr"] == metrics["eval_psnr"]
    # predict() concatenates reconstructions and tokens over batches.
    prediction = trainer.predict(evaluation)
    reconstruction, tokens = prediction.predictions
    assert reconstruction.shape == (13, 1, 28, 28) and tokens.shape == (13, 7, 7)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, digit_sets) -> None:
    train, _ = digit_sets
    full = ArcVQTrainer(
        model=tiny_model(),
        args=training_args(tmp_path / "full", max_steps=6, save_strategy="steps", save_steps=3),
        train_dataset=train,
    )
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert ArcVQModel.from_pretrained(checkpoint).schedule_step == 3
    resumed_model = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    resumed = ArcVQTrainer(
        model=resumed_model, args=training_args(tmp_path / "resumed", max_steps=6), train_dataset=train
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed_model.schedule_step == full.model.schedule_step == 6
    torch.testing.assert_close(resumed_model.codebook, full.model.codebook, atol=1e-6, rtol=1e-5)
    assert (
        resumed_model.quantizer.current_ball_radius
        == full.model.quantizer.current_ball_radius
        == ball_radius_at(6, 0.05)
    )
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
    trained = tiny_model(ball_growth_rate=1e-3)
    saved_step = 500  # R = exp(0.5) ~ 1.65
    trained.set_training_step(saved_step)
    with torch.no_grad():
        norms = torch.linspace(0.5, 1.6, trained.config.codebook_size)[:, None]
        trained.codebook.mul_(norms / trained.codebook.norm(dim=1, keepdim=True))
    trained.save_pretrained(tmp_path / "trained")
    saved_codebook = trained.codebook.detach().clone()
    # Restarting the schedule at step 0 (radius 1) would cut every code longer than 1.
    assert project_onto_ball_(saved_codebook.clone(), ball_radius_at(0, 1e-3)).sum() > 5

    model = ArcVQModel.from_pretrained(tmp_path / "trained")
    assert model.schedule_step == saved_step
    seen_radii = []
    model.quantizer.register_forward_pre_hook(lambda module, args: seen_radii.append(module.current_ball_radius))
    # Learning rate 0: the only thing that can move the codebook is the first step's ball projection.
    trainer = ArcVQTrainer(
        model=model, args=training_args(tmp_path / "ft", max_steps=1, learning_rate=0.0), train_dataset=train
    )
    trainer.train()
    assert seen_radii == [pytest.approx(ball_radius_at(saved_step, 1e-3))]
    torch.testing.assert_close(model.codebook, saved_codebook, atol=0, rtol=0)
    assert model.schedule_step == saved_step + 1


@needs_perceptual_weights()
def test_evaluate_adds_lpips_and_rfid_when_asked(tmp_path) -> None:
    processor = ArcVQImageProcessor(num_channels=1)
    evaluation = digits(4, offset=100).with_transform(pixel_values_transform(processor))
    model = tiny_model()
    trainer = ArcVQTrainer(
        model=model,
        args=training_args(tmp_path, per_device_eval_batch_size=3),
        eval_dataset=evaluation,
        processing_class=processor,
        perceptual_metrics=True,
    )
    metrics = trainer.evaluate()
    # Independent: the direct metric functions on the clamped [0, 1] images, mapped to [-1, 1].
    pixels = torch.stack([evaluation[i]["pixel_values"] for i in range(4)])
    with torch.no_grad():
        reconstruction = model(pixels, return_loss=False).reconstruction
    real, fake = to_unit_range(pixels) * 2 - 1, to_unit_range(reconstruction) * 2 - 1
    assert metrics["eval_lpips_resize"] == 64  # 28 px digits: upsampled for AlexNet
    assert metrics["eval_lpips"] == pytest.approx(float(lpips(fake, real, resize=64).mean()), rel=1e-5)
    # rFID against its own reference is tests/test_metrics.py's (one Fréchet distance of 2048-d Gaussians is slow).
    assert np.isfinite(metrics["eval_rfid"]) and metrics["eval_rfid_num_images"] == 4
    plain = ArcVQTrainer(model=model, args=training_args(tmp_path), eval_dataset=evaluation).evaluate()
    assert "eval_lpips" not in plain and "eval_rfid" not in plain  # opt-in


def test_missing_perceptual_weights_stop_the_trainer_naming_the_fetch_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty-cache"))
    with pytest.raises(PerceptualWeightsMissingError, match=FETCH_COMMAND):
        ArcVQTrainer(model=tiny_model(), args=training_args(tmp_path / "out"), perceptual_metrics=True)
    assert not (tmp_path / "out").exists()
