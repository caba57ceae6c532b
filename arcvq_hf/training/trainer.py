"""Training ArcVQ models with `transformers.Trainer`.

- `ArcVQScheduleCallback` drives the model's schedule step (ball radius R(t), arc weight gamma_t) from
  `state.global_step`, continuing from the step stored in the model (fine-tuning) or the checkpoint (resume).
- `ArcVQTrainer` logs the SAMP terms during training, and its `evaluate()` reports every `arcvq_hf.evaluation` metric
  over the whole evaluation set: each process runs the one evaluation loop of `arcvq_hf.evaluation.loop`
  (`accumulate_reconstruction`) over a disjoint shard, and the sums are added up with `accelerator.reduce`.
  `perceptual_metrics=True` adds LPIPS and rFID (their weights: `python -m arcvq_hf.evaluation.perceptual fetch`).
- `whole_set_metrics` and `evaluation_report` are that evaluation and its `eval_`-prefixed record outside a
  Trainer (`python -m arcvq_hf.evaluation` re-evaluates a saved folder with them).

The VQGAN recipe (`ArcVQGANTrainer`) is in `arcvq_hf.training.gan`; the data glue in `arcvq_hf.data.transforms`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_utils import unwrap_model
from transformers.utils import logging

from arcvq_hf.evaluation.loop import evaluation_report, require_perceptual_weights, whole_set_metrics
from arcvq_hf.utils.extras import missing_extra

try:
    from datasets import Dataset
except ImportError as err:
    raise missing_extra("datasets", "train") from err

from arcvq_hf.data.transforms import collate_pixel_values
from arcvq_hf.model.quantization import SphericalAngularMarginQuantizer
from arcvq_hf.training.checkpoints import AtomicCheckpointsMixin

logger = logging.get_logger(__name__)


def samp_layers(model: nn.Module) -> list[SphericalAngularMarginQuantizer]:
    """Every SAMP quantizer layer inside `model` (an `ArcVQModel` has one; a user's own autoencoder may have any)."""
    return [module for module in unwrap_model(model).modules() if isinstance(module, SphericalAngularMarginQuantizer)]


class ArcVQScheduleCallback(TrainerCallback):
    """Sets the schedule step t = offset + `state.global_step` before every optimizer step, on every SAMP quantizer
    layer of the model (`ArcVQModel`, or any module holding `SphericalAngularMarginQuantizer` layers).

    `state.global_step` counts optimizer steps, so the schedule is right under gradient accumulation. After each
    optimizer step the layers hold t = offset + global_step (the number of steps they have been trained), so a saved
    model or checkpoint carries it. At `on_train_begin` the offset is read back as the layers' step minus
    `state.global_step`: 0 for a fresh model, the saved step for a model being fine-tuned (the ball radius continues
    instead of falling back to exp(0) = 1), and the same offset again when a run resumes from one of its checkpoints.
    """

    def __init__(self) -> None:
        self.step_offset = 0

    def _set(self, state: Any, model: nn.Module | None) -> None:
        if model is not None:
            for layer in samp_layers(model):
                layer.set_step(self.step_offset + state.global_step)

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, model: nn.Module | None = None, **kw):
        if model is not None:
            layers = samp_layers(model)
            if not layers:
                # Nothing to drive (e.g. a benchmark swapped in another quantizer); say so once instead of failing.
                logger.warning(
                    "ArcVQScheduleCallback found no SphericalAngularMarginQuantizer layer in %s: no schedule to drive.",
                    type(unwrap_model(model)).__name__,
                )
                return
            saved_step = max(layer.current_step for layer in layers)
            self.step_offset = max(0, saved_step - state.global_step)
        self._set(state, model)

    def on_step_begin(self, args: TrainingArguments, state: Any, control: Any, model: nn.Module | None = None, **kw):
        self._set(state, model)

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, model: nn.Module | None = None, **kw):
        self._set(state, model)


def samp_training_step(
    model: nn.Module,
    pixel_values: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    step: int,
    autocast_dtype: torch.dtype | None = None,
) -> Any:
    """One optimizer step of a plain PyTorch loop, the step `ArcVQTrainer` takes: the schedule step t on every SAMP
    layer (what `ArcVQScheduleCallback` sets before the Trainer's step), the model's own loss, backward, update.

    Args:
        model: an `ArcVQModel` (or any model whose output has `.loss` and that holds SAMP layers), in train mode.
        pixel_values: (B, C, H, W) model-space pixels.
        step: the optimizer step t (0-based) that drives R(t) and gamma_t.
        autocast_dtype: run the forward pass under autocast with this dtype (e.g. torch.bfloat16); None: no autocast.
    Returns:
        the model's output for this batch (its `loss` already back-propagated and applied).
    """
    for layer in samp_layers(model):
        layer.set_step(step)
    with torch.autocast(pixel_values.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        output = model(pixel_values)
    optimizer.zero_grad(set_to_none=True)
    output.loss.backward()
    optimizer.step()
    return output


class RunningMeans:
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


class ArcVQTrainer(AtomicCheckpointsMixin, Trainer):
    """`Trainer` for `ArcVQModel`.

    - Adds `ArcVQScheduleCallback` unless one is given; collates `pixel_values` by default.
    - Training logs carry, averaged since the last log: reconstruction_loss, quantization_loss, arc_loss,
      batch_utilization (codes used in a micro-batch / K), and the latest arc_weight (gamma_t), ball_radius (R(t))
      and schedule_step t. In a distributed run they are the logging process's values.
    - `evaluate()` runs the model over the whole evaluation set (each process a disjoint strided shard, no padding
      duplicates), sums the metric accumulators over processes, and reports every `arcvq_hf.evaluation` metric with
      the `eval_` prefix. Pass the `ArcVQImageProcessor` as `processing_class` so pixels are mapped to [0, 1]
      exactly as it would; without it the default [-1, 1] mapping of the image processor is used.
    - `perceptual_metrics=True` adds LPIPS-alex and rFID over the evaluation set (`eval_lpips`, `eval_lpips_resize`,
      `eval_rfid`, `eval_rfid_num_images`); the constructor then loads their weights, so that missing weights stop
      the run before training (PerceptualWeightsMissingError names `python -m arcvq_hf.evaluation.perceptual fetch`).
    """

    def __init__(self, *args: Any, perceptual_metrics: bool = False, **kwargs: Any) -> None:
        if perceptual_metrics:
            require_perceptual_weights()
        self.perceptual_metrics = perceptual_metrics
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(cb, ArcVQScheduleCallback) for cb in callbacks):
            callbacks.append(ArcVQScheduleCallback())
        kwargs.setdefault("data_collator", collate_pixel_values)
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self.train_means = RunningMeans()

    # ----- training ------------------------------------------------------------------------------------------
    def _record_training_output(self, outputs: Any) -> None:
        record = self.train_means.add
        record("reconstruction_loss", outputs.reconstruction_loss.detach())
        record("quantization_loss", outputs.quantization_loss.detach())
        if outputs.arc_loss is not None:
            record("arc_loss", outputs.arc_loss.detach())
        core = unwrap_model(self.model)
        self.train_means.set_latest("arc_weight", outputs.arc_weight)
        self.train_means.set_latest("ball_radius", outputs.ball_radius)
        self.train_means.set_latest("schedule_step", core.schedule_step)
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
            logs.update(self.train_means.pop())
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
    def evaluation_shard(self, dataset: Dataset) -> DataLoader:
        """This process's strided shard (rank, rank + world, ...) of `dataset`: disjoint across processes, no
        padding."""
        indices = list(range(self.args.process_index, len(dataset), self.args.world_size))
        return DataLoader(
            Subset(dataset, indices),
            batch_size=self.args.per_device_eval_batch_size,
            shuffle=False,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )

    def _sum_over_processes(self, packed: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(packed.to(self.accelerator.device), reduction="sum")

    def compute_evaluation_metrics(self, dataset: Dataset) -> dict[str, float]:
        """`whole_set_metrics` over the whole `dataset` (no prefix), identical on every process: each process
        evaluates its shard and the accumulators are summed with `accelerator.reduce`."""
        processor = self.processing_class if hasattr(self.processing_class, "to_unit_range") else None
        return whole_set_metrics(
            unwrap_model(self.model),
            self.evaluation_shard(dataset),
            processor,
            perceptual=self.perceptual_metrics,
            sum_over_processes=self._sum_over_processes,
        )

    def evaluate(
        self,
        eval_dataset: Dataset | dict[str, Dataset] | str | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Whole-set metrics with `metric_key_prefix` (see `compute_evaluation_metrics`), logged like Trainer's."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("ArcVQTrainer.evaluate needs an eval_dataset.")
        if isinstance(dataset, dict):
            metrics = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        start_time = time.time()
        batch_size = self.args.per_device_eval_batch_size * self.args.world_size
        raw = self.compute_evaluation_metrics(dataset)
        metrics = evaluation_report(raw, metric_key_prefix, start_time, len(dataset), batch_size)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


__all__ = ["ArcVQScheduleCallback", "ArcVQTrainer", "RunningMeans", "samp_layers", "samp_training_step"]
