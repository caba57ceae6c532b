"""Training ArcVQ models with `transformers.Trainer` and `datasets`.

- `ArcVQScheduleCallback` drives the model's schedule step (ball radius R(t), arc weight gamma_t) from
  `state.global_step`, continuing from the step stored in the model (fine-tuning) or the checkpoint (resume).
- `ArcVQTrainer` logs the SAMP terms during training and makes `evaluate()` report every `arcvq_hf.metrics` metric
  over the whole evaluation set, sharded without duplicates across ranks and summed with all_reduce.
- `ArcVQGANTrainer` adds the VQGAN recipe: L1 + optional perceptual loss + PatchGAN hinge loss with the adaptive
  weight from `disc_start` on, with its own discriminator optimizer.
- `ModelArguments`, `DataArguments` and `run_training` are what `examples/train_arcvq.py` is made of; `write_model_card`
  writes the model card.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Subset
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, speed_metrics

from .configuration_arcvq import PRESETS, ArcVQConfig
from .data import BUILTIN_DATASETS, load_image_dataset, train_eval_splits
from .image_processing_arcvq import ArcVQImageProcessor
from .metrics import ReconstructionMetrics, codebook_geometry
from .modeling_arcvq import ArcVQModel

# ----------------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module"):
        model = model.module
    return model


class ArcVQScheduleCallback(TrainerCallback):
    """Sets the model's schedule step t = offset + `state.global_step` before every optimizer step.

    `state.global_step` counts optimizer steps, so the schedule is right under gradient accumulation. After each
    optimizer step the model holds t = offset + global_step (the number of steps it has been trained), so a saved
    model or checkpoint carries it. At `on_train_begin` the offset is read back as
    `model.training_step - state.global_step`: 0 for a fresh model, the saved step for a model being fine-tuned
    (the ball radius continues instead of falling back to exp(0) = 1), and the same offset again when a run resumes
    from one of its checkpoints.
    """

    def __init__(self) -> None:
        self.step_offset = 0

    def _set(self, state: Any, model: nn.Module | None) -> None:
        if model is not None:
            _unwrap(model).set_training_step(self.step_offset + state.global_step)

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, model: nn.Module | None = None, **kw):
        if model is not None:
            self.step_offset = max(0, _unwrap(model).training_step - state.global_step)
        self._set(state, model)

    def on_step_begin(self, args: TrainingArguments, state: Any, control: Any, model: nn.Module | None = None, **kw):
        self._set(state, model)

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, model: nn.Module | None = None, **kw):
        self._set(state, model)


class _RunningMeans:
    """Means of named training scalars since the last log, plus values of which only the latest counts."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.latest: dict[str, float] = {}

    def set_latest(self, name: str, value: torch.Tensor | float) -> None:
        self.latest[name] = float(value)

    def add(self, name: str, value: torch.Tensor | float | None) -> None:
        if value is None:
            return
        self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.counts[name] = self.counts.get(name, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {name: total / self.counts[name] for name, total in self.sums.items()}
        means.update(self.latest)
        self.sums, self.counts, self.latest = {}, {}, {}
        return means


# ----------------------------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------------------------


def center_square(image: Any, size: int) -> PIL.Image.Image:
    """Center-crop a PIL image (or array) to a square and resize it to size x size (bicubic)."""
    if not isinstance(image, PIL.Image.Image):
        image = PIL.Image.fromarray(np.asarray(image))
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), PIL.Image.Resampling.BICUBIC)
    return image


def pixel_values_transform(
    processor: ArcVQImageProcessor, image_column: str = "image", image_size: int | None = None
) -> Callable[[dict[str, list]], dict[str, torch.Tensor]]:
    """A `Dataset.with_transform` function: `image_column` -> `pixel_values` (B, C, H, W) in [-1, 1].

    With `image_size`, every image is first center-cropped to a square and resized to image_size x image_size.
    """

    def transform(batch: dict[str, list]) -> dict[str, torch.Tensor]:
        if image_column not in batch:
            raise KeyError(f"No image column {image_column!r}; the data set has columns {sorted(batch)}.")
        images = batch[image_column]
        if image_size is not None:
            images = [center_square(image, image_size) for image in images]
        return {"pixel_values": processor(images, return_tensors="pt")["pixel_values"]}

    return transform


def collate_pixel_values(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-example `pixel_values` (C, H, W) into (B, C, H, W)."""
    return {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}


def pixel_variance(dataset: Dataset, max_images: int = 4096, batch_size: int = 256) -> float:
    """Population variance of all `pixel_values` of the first `max_images` examples of a transformed data set (the
    VQ-VAE paper's MSE normaliser; for [-1, 1] pixels it equals 4 * var(x / 255))."""
    count = min(len(dataset), max_images)
    if count == 0:
        raise ValueError("Cannot compute the pixel variance of an empty data set.")
    total, total_sq, elements = 0.0, 0.0, 0
    for start in range(0, count, batch_size):
        pixels = dataset[start : min(start + batch_size, count)]["pixel_values"]
        pixels = torch.stack(list(pixels)).double() if isinstance(pixels, list) else pixels.double()
        total += float(pixels.sum())
        total_sq += float(pixels.pow(2).sum())
        elements += pixels.numel()
    mean = total / elements
    return total_sq / elements - mean * mean


# ----------------------------------------------------------------------------------------------------------------
# Trainer with whole-set evaluation
# ----------------------------------------------------------------------------------------------------------------


class ArcVQTrainer(Trainer):
    """`Trainer` for `ArcVQModel`.

    - Adds `ArcVQScheduleCallback` unless one is given.
    - Training logs carry, averaged since the last log: reconstruction_loss, quantization_loss, arc_loss,
      batch_utilization (codes used in a micro-batch / K), and the latest arc_weight (gamma_t), ball_radius (R(t))
      and schedule_step t. In a distributed run they are the logging rank's values.
    - `evaluate()` runs the model over the whole evaluation set (each rank a disjoint strided shard, no padding
      duplicates), sums the metric accumulators over ranks, and reports every `arcvq_hf.metrics` metric with the
      `eval_` prefix. Pass the `ArcVQImageProcessor` as `processing_class` so pixels are mapped to [0, 1] exactly as
      it would; without it (x + 1) / 2 is used.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(cb, ArcVQScheduleCallback) for cb in callbacks):
            callbacks.append(ArcVQScheduleCallback())
        kwargs.setdefault("data_collator", collate_pixel_values)
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self._train_means = _RunningMeans()

    # ----- training ------------------------------------------------------------------------------------------
    def _record_training_output(self, outputs: Any) -> None:
        record = self._train_means.add
        record("reconstruction_loss", outputs.reconstruction_loss.detach())
        record("quantization_loss", outputs.quantization_loss.detach())
        if outputs.arc_loss is not None:
            record("arc_loss", outputs.arc_loss.detach())
        core = _unwrap(self.model)
        self._train_means.set_latest("arc_weight", outputs.arc_weight)
        self._train_means.set_latest("ball_radius", outputs.ball_radius)
        self._train_means.set_latest("schedule_step", core.training_step)
        record("batch_utilization", torch.unique(outputs.image_tokens).numel() / core.config.codebook_size)

    def generator_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """The loss the model's optimizer minimises; the plain VQ-VAE recipe uses the model's own loss."""
        return outputs.loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        outputs = model(pixel_values=inputs["pixel_values"])
        loss = self.generator_loss(model, inputs, outputs) if model.training else outputs.loss
        if model.training:
            self._record_training_output(outputs)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._train_means.pop())
        super().log(logs, start_time)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, Any, None]:
        """For `predict()`: loss plus (reconstruction (B, C, H, W), image_tokens (B, h, w)); the 0-d schedule
        values of the output are left out so that batches concatenate."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            outputs = model(pixel_values=inputs["pixel_values"])
        loss = outputs.loss.detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, (outputs.reconstruction.detach(), outputs.image_tokens), None

    # ----- evaluation ----------------------------------------------------------------------------------------
    def _to_unit_range(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        processor = self.processing_class
        return processor.to_unit_range if hasattr(processor, "to_unit_range") else None

    def evaluation_shard(self, dataset: Dataset) -> DataLoader:
        """This rank's strided shard (rank, rank + world, ...) of `dataset`: disjoint across ranks, no padding."""
        indices = list(range(self.args.process_index, len(dataset), self.args.world_size))
        return DataLoader(
            Subset(dataset, indices),
            batch_size=self.args.per_device_eval_batch_size,
            shuffle=False,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )

    @torch.no_grad()
    def compute_evaluation_metrics(self, dataset: Dataset) -> dict[str, float]:
        """Every `arcvq_hf.metrics` metric over the whole `dataset` (no prefix), identical on every rank."""
        model = _unwrap(self.model)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        to_unit = self._to_unit_range() or (lambda x: (x.float() * 0.5 + 0.5).clamp(0.0, 1.0))
        loss_names = ["loss", "reconstruction_loss", "quantization_loss"]
        if model.config.use_arc_margin:
            loss_names.append("arc_loss")
        accumulator = ReconstructionMetrics(model.config.codebook_size, loss_names=loss_names)
        try:
            for batch in self.evaluation_shard(dataset):
                pixel_values = batch["pixel_values"].to(device)
                output = model(pixel_values)
                accumulator.update(
                    to_unit(output.reconstruction).float(),
                    to_unit(pixel_values).float(),
                    output.image_tokens,
                    {name: getattr(output, name) for name in loss_names},
                )
        finally:
            model.train(was_training)
        metrics = accumulator.all_reduce_().compute()
        metrics.update(codebook_geometry(model))
        metrics["ball_radius"] = model.quantizer.ball_radius
        metrics["arc_weight"] = model.quantizer.current_arc_weight
        metrics["schedule_step"] = model.training_step
        return metrics

    def evaluate(
        self,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Whole-set metrics with `metric_key_prefix` (see `compute_evaluation_metrics`), logged like Trainer's."""
        override = eval_dataset is not None
        dataset = eval_dataset if override else self.eval_dataset
        if dataset is None:
            raise ValueError("ArcVQTrainer.evaluate needs an eval_dataset.")
        if isinstance(dataset, dict):
            metrics = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        self._memory_tracker.start()
        start_time = time.time()
        raw = self.compute_evaluation_metrics(dataset)
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in raw.items()}
        metrics.update(
            speed_metrics(
                metric_key_prefix,
                start_time,
                num_samples=len(dataset),
                num_steps=math.ceil(len(dataset) / (self.args.per_device_eval_batch_size * self.args.world_size)),
            )
        )
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics


# ----------------------------------------------------------------------------------------------------------------
# VQGAN recipe: perceptual loss from user-supplied weights, PatchGAN discriminator, adaptive weight
# ----------------------------------------------------------------------------------------------------------------

# VGG16's convolutional trunk (torchvision's `features` layout); the perceptual loss taps the ReLU outputs that
# LPIPS uses (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGPerceptualLoss(nn.Module):
    """Frozen VGG16 feature distance: sum over 5 taps of the spatial mean of the squared difference of
    channel-normalised features (LPIPS without its learned channel weights).

    Weights come only from a local safetensors file holding VGG16's convolutional trunk under torchvision's keys
    (`features.0.weight`, ..., `features.28.bias`; the `features.` prefix is optional, other keys are ignored).
    Nothing is downloaded.
    """

    def __init__(self, weights_path: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_channels = int(item)
        self.features = nn.Sequential(*layers)
        state = load_file(weights_path)
        trunk = {key.removeprefix("features."): value for key, value in state.items()}
        expected = self.features.state_dict().keys()
        missing = [key for key in expected if key not in trunk]
        if missing:
            raise ValueError(f"{weights_path} lacks VGG16 trunk weights {missing[:4]}... (torchvision `features.*`).")
        self.features.load_state_dict({key: trunk[key] for key in expected})
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        # The feature network always runs in eval mode.
        return super().train(False)

    def _taps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        hidden = ((pixels * 0.5 + 0.5) - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            hidden = layer(hidden)
            if index in VGG16_TAPS:
                taps.append(hidden / (hidden.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
            if index == VGG16_TAPS[-1]:
                break
        return taps

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """reconstruction, target: (B, C, H, W) in [-1, 1], C in {1, 3} -> scalar."""
        if reconstruction.shape[1] == 1:
            reconstruction, target = reconstruction.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        loss = reconstruction.new_zeros(())
        for a, b in zip(self._taps(reconstruction), self._taps(target), strict=True):
            loss = loss + (a - b).pow(2).sum(dim=1).mean()
        return loss


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al.): (B, C, H, W) -> (B, 1, h, w) patch logits.

    Conv4x4 s2 + LeakyReLU, then `num_layers - 1` Conv4x4 s2 + BatchNorm + LeakyReLU (width doubling up to 8x), one
    Conv4x4 s1 + BatchNorm + LeakyReLU and a Conv4x4 s1 to one channel. Needs H, W >= 2^(num_layers + 2) or so.
    """

    def __init__(self, num_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(num_channels, base_channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = 1
        for level in range(1, num_layers + 1):
            previous, width = width, min(2**level, 8)
            stride = 2 if level < num_layers else 1
            layers += [
                nn.Conv2d(base_channels * previous, base_channels * width, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(base_channels * width),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(base_channels * width, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DCGAN init, as taming's PatchGAN: conv N(0, 0.02), batch-norm scale N(1, 0.02), shift 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.main(pixel_values)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def decoder_last_layer(model: nn.Module) -> torch.Tensor:
    """Weight of the decoder's output convolution, where the adaptive GAN weight compares gradient norms."""
    decoder = _unwrap(model).decoder
    layer = getattr(decoder, "conv_out", None) or getattr(decoder, "conv_trans_2", None)
    if layer is None:
        raise ValueError("Cannot find the decoder's output convolution (conv_out / conv_trans_2).")
    return layer.weight


def adaptive_gan_weight(
    reconstruction_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """||grad_last reconstruction_loss|| / (||grad_last gan_loss|| + 1e-4), clamped to [0, max_weight], detached."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


@dataclass
class GANSettings:
    """Knobs of the VQGAN recipe (taming's defaults where it has one)."""

    disc_start: int = 1000
    disc_weight: float = 0.8
    disc_learning_rate: float | None = None
    disc_num_layers: int = 3
    disc_base_channels: int = 64
    perceptual_weight: float = 1.0
    perceptual_weights: str | None = None


class ArcVQGANTrainer(ArcVQTrainer):
    """VQGAN recipe on top of `ArcVQTrainer`: the model's loss (L1 + VQ + gamma_t * arc for the vqgan variant)
    + perceptual_weight * VGG perceptual loss (when `perceptual_weights` is given) + adaptive_weight * disc_weight
    * (-mean D(reconstruction)) from `disc_start` on. The PatchGAN discriminator has its own Adam optimizer (the
    Trainer's betas, `disc_learning_rate` or the Trainer's rate) and takes one hinge-loss step after each micro-batch
    from `disc_start` on; in distributed runs its gradients are averaged over ranks. Its weights and optimizer
    state are saved in, and restored from, Trainer checkpoints.
    """

    DISCRIMINATOR_FILE = "discriminator.safetensors"
    DISCRIMINATOR_OPTIMIZER_FILE = "discriminator_optimizer.pt"

    def __init__(self, *args: Any, gan_settings: GANSettings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gan_settings = gan_settings or GANSettings()
        config = _unwrap(self.model).config
        self.discriminator = PatchDiscriminator(
            config.num_channels, self.gan_settings.disc_base_channels, self.gan_settings.disc_num_layers
        ).to(self.args.device)
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator.parameters(),
            lr=self.gan_settings.disc_learning_rate or self.args.learning_rate,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
        )
        self.perceptual_loss = None
        if self.gan_settings.perceptual_weights:
            self.perceptual_loss = VGGPerceptualLoss(self.gan_settings.perceptual_weights).to(self.args.device)
        self._gan_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def gan_active(self) -> bool:
        return self.state.global_step >= self.gan_settings.disc_start and self.gan_settings.disc_weight > 0

    def generator_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        pixel_values = inputs["pixel_values"]
        reconstruction = outputs.reconstruction
        loss = outputs.loss
        pixel_loss = outputs.reconstruction_loss
        if self.perceptual_loss is not None and self.gan_settings.perceptual_weight > 0:
            perceptual = self.perceptual_loss(reconstruction, pixel_values)
            self._train_means.add("perceptual_loss", perceptual.detach())
            pixel_loss = pixel_loss + self.gan_settings.perceptual_weight * perceptual
            loss = loss + self.gan_settings.perceptual_weight * perceptual
        self._gan_batch = None
        if self.gan_active:
            self.discriminator.requires_grad_(False)
            gan_loss = -self.discriminator(reconstruction).mean()
            self.discriminator.requires_grad_(True)
            weight = adaptive_gan_weight(pixel_loss, gan_loss, decoder_last_layer(model))
            loss = loss + self.gan_settings.disc_weight * weight * gan_loss
            self._train_means.add("gan_generator_loss", gan_loss.detach())
            self._train_means.add("gan_adaptive_weight", weight)
            self._gan_batch = (pixel_values.detach(), reconstruction.detach())
        return loss

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._gan_batch is not None:
            real, fake = self._gan_batch
            self._gan_batch = None
            self.discriminator.train()
            self.discriminator_optimizer.zero_grad(set_to_none=True)
            disc_loss = hinge_discriminator_loss(self.discriminator(real), self.discriminator(fake))
            disc_loss.backward()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                world = torch.distributed.get_world_size()
                for parameter in self.discriminator.parameters():
                    if parameter.grad is not None:
                        torch.distributed.all_reduce(parameter.grad)
                        parameter.grad.div_(world)
            self.discriminator_optimizer.step()
            self._train_means.add("discriminator_loss", disc_loss.detach())
        return loss

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            save_file(
                {k: v.contiguous() for k, v in self.discriminator.state_dict().items()},
                os.path.join(folder, self.DISCRIMINATOR_FILE),
            )
            torch.save(
                self.discriminator_optimizer.state_dict(), os.path.join(folder, self.DISCRIMINATOR_OPTIMIZER_FILE)
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        weights = os.path.join(resume_from_checkpoint, self.DISCRIMINATOR_FILE)
        if os.path.exists(weights):
            self.discriminator.load_state_dict(load_file(weights, device=str(self.args.device)))
        optimizer_state = os.path.join(resume_from_checkpoint, self.DISCRIMINATOR_OPTIMIZER_FILE)
        if os.path.exists(optimizer_state):
            self.discriminator_optimizer.load_state_dict(
                torch.load(optimizer_state, map_location=self.args.device, weights_only=True)
            )


# ----------------------------------------------------------------------------------------------------------------
# Arguments of the training example, model building, the run itself and the model card
# ----------------------------------------------------------------------------------------------------------------

PRESET_NAMES = tuple(PRESETS)


@dataclass
class ModelArguments:
    """What to train: a fresh model from a preset, or a saved model to fine-tune."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Saved ArcVQ folder or hub id to fine-tune; the schedules continue from it."}
    )
    variant: str = field(default="vqvae", metadata={"help": "Backbone of a fresh model: vqvae or vqgan."})
    preset: str = field(default="arcvq", metadata={"help": f"Quantizer preset: {', '.join(PRESETS)}."})
    num_channels: int | None = field(default=None, metadata={"help": "1 or 3; default: from the data / the model."})
    codebook_size: int | None = field(default=None, metadata={"help": "K (preset default if unset)."})
    codebook_dim: int | None = field(default=None, metadata={"help": "D (preset default if unset)."})
    hidden_size: int | None = field(default=None, metadata={"help": "vqvae backbone width."})
    base_channels: int | None = field(default=None, metadata={"help": "vqgan backbone base width."})
    channel_multipliers: str | None = field(default=None, metadata={"help": "vqgan widths, e.g. '1,2,2,4'."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON of further ArcVQConfig fields, e.g. '{\"ball_growth_rate\": 1e-3}'."}
    )
    data_variance: float | None = field(
        default=None, metadata={"help": "MSE normaliser; default: the pixel variance of the training set."}
    )
    use_gan: bool | None = field(
        default=None, metadata={"help": "VQGAN recipe (perceptual + PatchGAN); default: on for the vqgan backbone."}
    )
    disc_start: int = field(default=1000, metadata={"help": "Optimizer step from which the GAN loss is on."})
    disc_weight: float = field(default=0.8, metadata={"help": "Weight of the adaptive GAN term."})
    disc_learning_rate: float | None = field(default=None, metadata={"help": "Default: the Trainer's rate."})
    disc_num_layers: int = field(default=3, metadata={"help": "PatchGAN depth."})
    disc_base_channels: int = field(default=64, metadata={"help": "PatchGAN base width."})
    perceptual_weights: str | None = field(
        default=None, metadata={"help": "Local safetensors of VGG16's trunk (torchvision keys); unset = no perceptual."}
    )
    perceptual_weight: float = field(default=1.0, metadata={"help": "Weight of the perceptual loss."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Needed for hub ids without arcvq_hf."})
    license: str = field(default="apache-2.0", metadata={"help": "License in the model card."})


@dataclass
class DataArguments:
    """Where the images come from."""

    dataset: str = field(
        default="mnist-5k",
        metadata={"help": f"{' / '.join(BUILTIN_DATASETS)}, a save_to_disk folder, an image folder or a hub id."},
    )
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    eval_split: str | None = field(default=None, metadata={"help": "Default: test / validation, else a held-out part."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Held-out fraction when there is no eval split."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    image_size: int | None = field(
        default=None, metadata={"help": "Center-crop to a square and resize to this size (needed for mixed sizes)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})


def _infer_num_channels(dataset: Dataset, image_column: str) -> int:
    image = dataset[0][image_column]
    mode = image.mode if isinstance(image, PIL.Image.Image) else None
    if mode in ("1", "L", "LA", "I", "I;16", "F") or (mode is None and np.asarray(image).ndim == 2):
        return 1
    return 3


def build_model(model_args: ModelArguments, num_channels: int, data_variance: float | None) -> ArcVQModel:
    """A fresh `ArcVQModel` from the preset / variant / overrides, or the saved one to fine-tune."""
    if model_args.model_name_or_path:
        model = ArcVQModel.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
        if model.config.num_channels != num_channels:
            raise ValueError(
                f"The model expects {model.config.num_channels}-channel images but --num_channels / the data give "
                f"{num_channels}."
            )
        if model_args.data_variance is not None:
            model.config.data_variance = model_args.data_variance
        return model
    if model_args.preset not in PRESET_NAMES:
        raise ValueError(f"Unknown preset {model_args.preset!r}; expected one of {PRESET_NAMES}.")
    overrides: dict[str, Any] = {"num_channels": num_channels}
    for name in ("codebook_size", "codebook_dim", "hidden_size", "base_channels"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    if model_args.channel_multipliers:
        overrides["channel_multipliers"] = [int(m) for m in model_args.channel_multipliers.split(",")]
    if model_args.config_overrides:
        overrides.update(json.loads(model_args.config_overrides))
    if data_variance is not None:
        overrides["data_variance"] = data_variance
    config = ArcVQConfig.from_preset(model_args.preset, variant=model_args.variant, **overrides)
    return ArcVQModel(config)


def _dataset_card_ids(dataset: str) -> list[str]:
    if dataset == "mnist-5k":
        return ["ylecun/mnist"]
    if dataset in BUILTIN_DATASETS or os.path.exists(dataset):
        return []
    return [dataset]


METRIC_ROWS = (
    ("codebook_utilization", "codebook utilization (fraction of K used on the eval set)"),
    ("perplexity", "code perplexity (exp entropy, max K)"),
    ("dead_codes", "dead codes"),
    ("psnr", "PSNR (dB, per image, [0, 1])"),
    ("ssim", "SSIM (11x11 Gaussian, sigma 1.5)"),
    ("l1", "L1 error ([0, 1])"),
    ("angular_dispersion", "angular dispersion (deg, mean nearest-code angle)"),
    ("code_norm_mean", "mean code norm"),
    ("code_norm_fraction_on_bound", "fraction of codes on the ball bound"),
    ("reconstruction_loss", "reconstruction loss"),
    ("num_images", "evaluation images"),
)


def write_model_card(
    output_dir: str,
    model: ArcVQModel,
    metrics: dict[str, float],
    dataset: str,
    command: str,
    training_summary: dict[str, Any] | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
) -> str:
    """Write `output_dir/README.md` with huggingface_hub's ModelCard (front matter: library_name, tags, datasets,
    license, model-index from `metrics` with or without the `eval_` prefix). Returns the path. Atomic."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    values = {name.removeprefix("eval_"): value for name, value in metrics.items()}
    config = model.config
    name = os.path.basename(os.path.abspath(output_dir))
    dataset_ids = _dataset_card_ids(dataset)
    eval_results = [
        EvalResult(
            task_type="image-feature-extraction",
            task_name="image tokenization (reconstruction)",
            dataset_type=dataset_ids[0] if dataset_ids else dataset,
            dataset_name=dataset,
            metric_type=metric,
            metric_name=metric,
            metric_value=float(values[metric]),
        )
        for metric in ("codebook_utilization", "perplexity", "psnr", "ssim")
        if metric in values
    ]
    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        tags=["arcvq", "vq-vae", "image-tokenizer", "vector-quantization", "custom_code"],
        datasets=dataset_ids or None,
        pipeline_tag="image-feature-extraction",
        base_model=base_model,
        model_name=name,
        eval_results=eval_results or None,
    )
    rows = "\n".join(
        f"| {label} | {values[key]:.4g} |" if isinstance(values[key], float) else f"| {label} | {values[key]} |"
        for key, label in METRIC_ROWS
        if key in values
    )
    factor = config.downsampling_factor
    summary = "\n".join(f"- {key}: `{value}`" for key, value in (training_summary or {}).items())
    content = f"""---
{card_data.to_yaml()}
---

# {name}

An ArcVQ-VAE image tokenizer: a VQ-VAE whose codebook is trained under the spherical angular-margin prior (codes
assigned by angle, codebook norms bounded by a growing ball, an additive angular-margin loss on the encoder).

- backbone `{config.backbone}`, {config.num_channels}-channel images, {factor}x{factor} pixels per token
- codebook K={config.codebook_size} x D={config.codebook_dim}, assignment `{config.distance}`
- ball bound {"on" if config.use_ball_bound else "off"}, arc-margin loss {"on" if config.use_arc_margin else "off"}
- trained on `{dataset}` for {model.training_step} optimizer steps (the schedule step saved with the weights)

## Evaluation (whole evaluation split)

| metric | value |
|---|---|
{rows}

PSNR / SSIM / L1 are per-image means on outputs clamped to [0, 1] (data range 1); SSIM uses an 11x11 Gaussian
window with sigma 1.5 and population covariance (skimage's `structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)`). Codebook utilization and perplexity count every token of
the evaluation split. All definitions: `arcvq_hf/metrics.py`.

## Usage

```python
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("path/or/hub-id", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("path/or/hub-id", trust_remote_code=True)
pixel_values = processor(images, return_tensors="pt")["pixel_values"]
tokens = model.encode(pixel_values).image_tokens   # (B, H/{factor}, W/{factor})
images = processor.postprocess(model.decode(tokens))
```

## Training

```bash
{command}
```

{summary}
"""
    card = ModelCard(content)
    path = os.path.join(output_dir, "README.md")
    with tempfile.NamedTemporaryFile("w", dir=output_dir, suffix=".tmp", delete=False, encoding="utf-8") as handle:
        temp_path = handle.name
    card.save(temp_path)
    os.replace(temp_path, path)
    return path


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    command: str = "",
) -> tuple[ArcVQTrainer, dict[str, float]]:
    """Load data, build or load the model, train with Trainer, evaluate on the whole eval split, save model +
    processor + metrics + model card into `training_args.output_dir`. Returns (trainer, final eval metrics)."""
    if model_args.variant not in ("vqvae", "vqgan"):
        raise ValueError(f"--variant must be vqvae or vqgan, got {model_args.variant!r}.")
    set_seed(training_args.seed)
    training_args.remove_unused_columns = False
    datasets = load_image_dataset(data_args.dataset)
    train_dataset, eval_dataset = train_eval_splits(
        datasets, data_args.train_split, data_args.eval_split, data_args.eval_fraction, training_args.seed
    )
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))

    saved_config = None
    if model_args.model_name_or_path:
        saved_config = ArcVQConfig.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
    num_channels = model_args.num_channels or (
        saved_config.num_channels if saved_config else _infer_num_channels(train_dataset, data_args.image_column)
    )
    variant = saved_config.backbone if saved_config else model_args.variant
    factor = (saved_config or ArcVQConfig.from_preset("arcvq", variant=variant)).downsampling_factor
    processor = ArcVQImageProcessor(num_channels=num_channels, size_divisor=factor)
    transform = pixel_values_transform(processor, data_args.image_column, data_args.image_size)
    train_dataset = train_dataset.with_transform(transform)
    eval_dataset = eval_dataset.with_transform(transform)

    data_variance = model_args.data_variance
    if data_variance is None and saved_config is None:
        data_variance = pixel_variance(train_dataset)
    model = build_model(model_args, num_channels, data_variance)

    use_gan = model_args.use_gan if model_args.use_gan is not None else model.config.backbone == "vqgan"
    trainer_kwargs: dict[str, Any] = {
        "model": model,
        "args": training_args,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "processing_class": processor,
    }
    if use_gan:
        settings = GANSettings(
            disc_start=model_args.disc_start,
            disc_weight=model_args.disc_weight,
            disc_learning_rate=model_args.disc_learning_rate,
            disc_num_layers=model_args.disc_num_layers,
            disc_base_channels=model_args.disc_base_channels,
            perceptual_weight=model_args.perceptual_weight,
            perceptual_weights=model_args.perceptual_weights,
        )
        trainer: ArcVQTrainer = ArcVQGANTrainer(gan_settings=settings, **trainer_kwargs)
    else:
        trainer = ArcVQTrainer(**trainer_kwargs)

    start = time.time()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_seconds = time.time() - start
    metrics = trainer.evaluate()
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        # Trainer pickles its arguments beside the weights; a folder meant to be shared holds no pickle (the exact
        # command is in the model card instead).
        pickled_arguments = os.path.join(training_args.output_dir, "training_args.bin")
        if os.path.exists(pickled_arguments):
            os.remove(pickled_arguments)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        preset = model_args.preset if saved_config is None else f"fine-tuned from {model_args.model_name_or_path}"
        summary = {
            "variant / preset": f"{model.config.backbone} / {preset}",
            "optimizer steps this run": trainer.state.global_step,
            "batch size per device x processes x accumulation": (
                f"{training_args.per_device_train_batch_size} x {training_args.world_size} x "
                f"{training_args.gradient_accumulation_steps}"
            ),
            "learning rate": training_args.learning_rate,
            "training images / evaluation images": f"{len(train_dataset)} / {len(eval_dataset)}",
            "data variance (MSE normaliser)": model.config.data_variance,
            "GAN recipe": asdict(trainer.gan_settings) if use_gan else "off",
            "wall time (s)": round(train_seconds, 1),
        }
        write_model_card(
            training_args.output_dir,
            model,
            metrics,
            data_args.dataset,
            command,
            summary,
            license=model_args.license,
            base_model=model_args.model_name_or_path
            if model_args.model_name_or_path and not os.path.exists(model_args.model_name_or_path)
            else None,
        )
    return trainer, metrics


__all__ = [
    "ArcVQGANTrainer",
    "ArcVQScheduleCallback",
    "ArcVQTrainer",
    "DataArguments",
    "GANSettings",
    "ModelArguments",
    "PatchDiscriminator",
    "VGGPerceptualLoss",
    "adaptive_gan_weight",
    "build_model",
    "center_square",
    "collate_pixel_values",
    "decoder_last_layer",
    "hinge_discriminator_loss",
    "pixel_values_transform",
    "pixel_variance",
    "run_training",
    "write_model_card",
]
