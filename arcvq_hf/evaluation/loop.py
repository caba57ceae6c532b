"""The one evaluation loop (docs/method.md §3), shared by `ArcVQTrainer`, the evaluate command, the benchmarks,
the examples and the Space.

It runs a model over a whole evaluation set and reports the image metrics of `image_metrics`, the codebook metrics
of `codebook_metrics`, the model's losses and, on request, the perceptual metrics of `perceptual` (they cost time
and need the weights that `python -m arcvq_hf.evaluation.perceptual fetch` installs):
- `lpips`: mean per-image LPIPS v0.1 with the AlexNet backbone. Images whose shorter side is below
  `LPIPS_EVAL_SIZE` (64 px: 28 px MNIST, 32 px crops; AlexNet needs >= 31 px and its deepest taps are 1x1 at 32 px)
  are first upsampled bilinearly to 64x64; `lpips_resize` reports that size (0: native resolution).
- `rfid`: the Fréchet Inception distance between the evaluation images and their reconstructions, with
  `rfid_num_images` (images per side). rFID from few images is biased upward: compare only like with like.
Both are computed on the [0, 1] images the other image metrics see, mapped linearly to the networks' [-1, 1].

`ReconstructionMetrics` accumulates sums and counts only (for rFID: the feature sums and sums of outer products of
`FrechetInceptionDistance`), so batches (and ranks, through `all_reduce_`) merge into exactly the numbers one pass
over the whole set gives (up to float summation order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from transformers.trainer_utils import speed_metrics

from arcvq_hf.model.image_processing_arcvq import to_unit_range as default_to_unit_range

from .codebook_metrics import CodebookUsage, codebook_geometry
from .image_metrics import l1_error, psnr, ssim
from .perceptual import (
    FrechetInceptionDistance,
    InceptionFeatureExtractor,
    PerceptualWeightsMissingError,
    inception_features,
    load_inception,
    load_lpips,
    lpips,
)

# The evaluation loop's LPIPS: the usual metric backbone, on images at least this many pixels per side.
LPIPS_NET = "alex"
LPIPS_EVAL_SIZE = 64
# The networks the evaluation loop's perceptual metrics load (LPIPS_NET, and Inception for rFID).
PERCEPTUAL_METRIC_NETWORKS = (LPIPS_NET, "inception")


# ----------------------------------------------------------------------------------------------------------------
# Whole-set accumulation
# ----------------------------------------------------------------------------------------------------------------

_IMAGE_SUMS = ("psnr", "ssim", "l1")


def require_perceptual_weights(*networks: str) -> None:
    """Load the named perceptual networks ("alex", "vgg", "inception"; default `PERCEPTUAL_METRIC_NETWORKS`) on the
    CPU through the shared caches of `load_lpips` / `load_inception`, so that a run that will need them fails before
    it starts rather than at its first evaluation.

    Raises:
        PerceptualWeightsMissingError: a network's weights are not installed (the message names the fetch command).
    """
    for name in networks or PERCEPTUAL_METRIC_NETWORKS:
        if name == "inception":
            load_inception()
        else:
            load_lpips(name)


def perceptual_weights_available(*networks: str) -> bool:
    """Whether `require_perceptual_weights(*networks)` succeeds (it loads them, so a later use is free)."""
    try:
        require_perceptual_weights(*networks)
    except PerceptualWeightsMissingError:
        return False
    return True


def lpips_resize_for(height: int, width: int) -> int | None:
    """The side the evaluation loop's LPIPS resizes (H, W) images to: `LPIPS_EVAL_SIZE` when the shorter side is
    below it, else None (native resolution)."""
    return LPIPS_EVAL_SIZE if min(height, width) < LPIPS_EVAL_SIZE else None


class ReconstructionMetrics:
    """Sums of per-image PSNR / SSIM / L1 (and optionally LPIPS), image-weighted loss sums, code counts and
    optionally the rFID feature moments over an evaluation set.

    Everything is a sum, so `merge` of the parts of a set, or `all_reduce_` across ranks that each saw a disjoint
    shard, gives the same result as one pass over the whole set.
    """

    def __init__(
        self,
        codebook_size: int,
        loss_names: Iterable[str] = (),
        with_lpips: bool = False,
        with_rfid: bool = False,
        inception: InceptionFeatureExtractor | None = None,
        rfid_reference_features: torch.Tensor | None = None,
    ) -> None:
        """
        Args:
            codebook_size: K.
            loss_names: losses every rank will report (pre-created so that a rank with an empty shard still
                all-reduces the same layout).
            with_lpips: accumulate LPIPS-alex per image (see the module docstring for the resize rule).
            with_rfid: accumulate the Inception feature moments of the targets and the reconstructions for rFID.
            inception: the feature extractor for rFID; default: the shared pretrained one (`load_inception`).
            rfid_reference_features: (N, 2048) Inception features of the whole set's targets, computed once as
                this loop would (`reference_inception_features`), for a set evaluated again and again (a
                benchmark grid): the targets then skip Inception, and `compute` refuses a set of another size.
                On every rank the whole set's features, they are not summed by `all_reduce_`.
        Raises:
            PerceptualWeightsMissingError: a perceptual metric is asked for and its weights are not installed.
        """
        if rfid_reference_features is not None and not with_rfid:
            raise ValueError("rfid_reference_features is given but with_rfid is False.")
        self.usage = CodebookUsage(codebook_size)
        self.num_images = 0
        self.image_sums = dict.fromkeys(_IMAGE_SUMS, 0.0)
        self.loss_sums: dict[str, float] = dict.fromkeys(loss_names, 0.0)
        networks = [LPIPS_NET] * with_lpips + ["inception"] * (with_rfid and inception is None)
        if networks:  # fail now, not after the first batch of a long evaluation
            require_perceptual_weights(*networks)
        self.with_lpips = with_lpips
        self.lpips_sum = 0.0
        # Images LPIPS saw upsampled to LPIPS_EVAL_SIZE: a count, so it sums over ranks like the rest.
        self.lpips_upsampled_images = 0
        self.fid = FrechetInceptionDistance(extractor=inception) if with_rfid else None
        # The reference's moments, summed once here; kept out of `self.fid`, whose state `all_reduce_` sums.
        self.rfid_reference = (
            None
            if rfid_reference_features is None
            else FrechetInceptionDistance().update_features(real_features=rfid_reference_features)
        )

    def update(
        self,
        reconstruction: torch.Tensor,
        target: torch.Tensor,
        image_tokens: torch.Tensor | None = None,
        losses: Mapping[str, torch.Tensor | float | None] | None = None,
    ) -> ReconstructionMetrics:
        """Add one batch.

        Args:
            reconstruction, target: (B, C, H, W) in [0, 1] (clamp the model output first).
            image_tokens: (B, h, w) code ids of the batch, or None.
            losses: batch-mean losses (scalars); each is weighted by B so the final value is a per-image mean.
        """
        batch = target.shape[0]
        self.image_sums["psnr"] += float(psnr(reconstruction, target).sum().item())
        self.image_sums["ssim"] += float(ssim(reconstruction, target).sum().item())
        self.image_sums["l1"] += float(l1_error(reconstruction, target).sum().item())
        if self.with_lpips or self.fid is not None:
            # The perceptual networks take standard RGB in [-1, 1], whatever the model's own normalisation.
            fake, real = reconstruction * 2 - 1, target * 2 - 1
            if self.with_lpips:
                self._add_lpips(fake, real)
            if self.fid is not None:
                self.fid.update(real=real if self.rfid_reference is None else None, fake=fake)
        self.num_images += batch
        if image_tokens is not None:
            self.usage.update(image_tokens)
        for name, value in (losses or {}).items():
            if value is not None:
                self.loss_sums[name] = self.loss_sums.get(name, 0.0) + float(value) * batch
        return self

    def _add_lpips(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        """Add the LPIPS distances of one batch ((B, C, H, W) in [-1, 1]), refusing a change of resolution rule."""
        resize = lpips_resize_for(*real.shape[-2:])
        if self.num_images and (self.lpips_upsampled_images == self.num_images) != (resize is not None):
            raise ValueError(
                f"LPIPS: a batch of {tuple(real.shape[-2:])} px images would be {'upsampled' if resize else 'kept'} "
                "unlike the earlier batches; a mean over images seen at different resolutions does not compare. "
                "Evaluate images of one size (e.g. --image_size N)."
            )
        self.lpips_sum += float(lpips(fake, real, net=LPIPS_NET, resize=resize).double().sum().item())
        if resize is not None:
            self.lpips_upsampled_images += real.shape[0]

    def _check_compatible(self, other: ReconstructionMetrics) -> None:
        if (self.with_lpips, self.fid is None) != (other.with_lpips, other.fid is None):
            raise ValueError("Cannot merge ReconstructionMetrics that accumulate different perceptual metrics.")

    def merge(self, other: ReconstructionMetrics) -> ReconstructionMetrics:
        self._check_compatible(other)
        self.usage.merge(other.usage)
        self.num_images += other.num_images
        for name in _IMAGE_SUMS:
            self.image_sums[name] += other.image_sums[name]
        for name, value in other.loss_sums.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value
        self.lpips_sum += other.lpips_sum
        self.lpips_upsampled_images += other.lpips_upsampled_images
        if self.fid is not None:
            self.fid.merge(other.fid)
        return self

    __iadd__ = merge

    def all_reduce_(
        self, sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> ReconstructionMetrics:
        """Sum every accumulator over processes, in place.

        Every process must have seen a disjoint part of the set and must hold the same loss names and perceptual
        settings (the packed layout is then the same on every process).

        Args:
            sum_over_processes: takes this process's accumulators packed into one float64 vector (on the CPU) and
                returns the element-wise sum over processes, e.g.
                `lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum")` (what `ArcVQTrainer`
                passes). Default: `torch.distributed.all_reduce` on the default group, a no-op without one.
                The vector holds the scalar sums, the (K,) code counts and, with rFID, the flattened
                `FrechetInceptionDistance.state_tensors()` (2 x (D + D * D + 1) values, D = 2048).
        """
        if sum_over_processes is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                return self
            sum_over_processes = _default_group_sum
        loss_names = sorted(self.loss_sums)
        scalars = [
            self.num_images,
            *(self.image_sums[n] for n in _IMAGE_SUMS),
            *(self.loss_sums[n] for n in loss_names),
            self.lpips_sum,
            self.lpips_upsampled_images,
        ]
        fid_state = self.fid.state_tensors() if self.fid is not None else []
        parts = [
            torch.tensor(scalars, dtype=torch.float64),
            self.usage.counts.double(),
            *(tensor.reshape(-1) for tensor in fid_state),
        ]
        summed = sum_over_processes(torch.cat(parts)).cpu().split([part.numel() for part in parts])
        values = iter(summed[0].tolist())
        self.num_images = round(next(values))
        for name in _IMAGE_SUMS:
            self.image_sums[name] = next(values)
        for name in loss_names:
            self.loss_sums[name] = next(values)
        self.lpips_sum, self.lpips_upsampled_images = next(values), round(next(values))
        self.usage.counts = summed[1].round().long()
        for tensor, total in zip(fid_state, summed[2:], strict=True):
            tensor.copy_(total.view_as(tensor))
        return self

    def compute(self) -> dict[str, float]:
        """Per-image means and whole-set codebook use: psnr, ssim, l1, the loss means, codebook_utilization,
        perplexity, dead_codes, used_codes, num_images; with LPIPS: lpips, lpips_resize (the side images were
        upsampled to, 0 for native resolution); with rFID: rfid, rfid_num_images."""
        if self.num_images == 0:
            raise ValueError("No images were evaluated.")
        results = {name: value / self.num_images for name, value in self.image_sums.items()}
        results.update({name: value / self.num_images for name, value in sorted(self.loss_sums.items())})
        if self.usage.num_tokens:
            results["codebook_utilization"] = self.usage.utilization
            results["perplexity"] = self.usage.perplexity
            results["dead_codes"] = self.usage.dead_codes
            results["used_codes"] = self.usage.codebook_size - self.usage.dead_codes
        results["num_images"] = self.num_images
        if self.with_lpips:
            if self.lpips_upsampled_images not in (0, self.num_images):
                raise ValueError(
                    f"LPIPS: {self.lpips_upsampled_images} of {self.num_images} images were upsampled to "
                    f"{LPIPS_EVAL_SIZE} px (the processes saw images of different sizes); the mean does not compare."
                )
            results["lpips"] = self.lpips_sum / self.num_images
            results["lpips_resize"] = LPIPS_EVAL_SIZE if self.lpips_upsampled_images else 0
        if self.fid is not None:
            fid = self.fid
            if self.rfid_reference is not None:
                fid = FrechetInceptionDistance().merge(self.rfid_reference).merge(self.fid)
                if fid.num_real != fid.num_fake:
                    raise ValueError(
                        f"rFID: the reference features hold {fid.num_real} images but {fid.num_fake} were "
                        "evaluated; pass the features of exactly the evaluated set."
                    )
            results["rfid"] = fid.compute()
            results["rfid_num_images"] = fid.num_real
        return results


def _default_group_sum(packed: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) over the default torch.distributed group; NCCL needs the tensor on the GPU."""
    if torch.distributed.get_backend() == "nccl":
        packed = packed.cuda()
    torch.distributed.all_reduce(packed)
    return packed


def _batch_pixels(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping) and "pixel_values" in batch:
        return batch["pixel_values"]
    raise TypeError("Each batch must be a (B, C, H, W) tensor or a mapping with 'pixel_values'.")


@torch.no_grad()
def reference_inception_features(
    pixel_batches: Iterable[Any], to_unit_range: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """The rFID features of an evaluation set's images, mapped exactly as the loop maps its targets ([0, 1] by
    `to_unit_range`, then [-1, 1]), for `rfid_reference_features`.

    Args:
        pixel_batches: the batches the evaluation will see ((B, C, H, W) model-space tensors or dicts with
            `pixel_values`).
        to_unit_range: as in `accumulate_reconstruction`.
    Returns:
        (N, 2048) float32 features on the CPU.
    """
    to_unit = to_unit_range or default_to_unit_range
    batches = [to_unit(_batch_pixels(batch)).float() * 2 - 1 for batch in pixel_batches]
    return torch.cat([inception_features(batch) for batch in batches])


@torch.no_grad()
def accumulate_reconstruction(
    model: Any,
    pixel_batches: Iterable[Any],
    to_unit_range: Callable[[torch.Tensor], torch.Tensor] | None = None,
    with_losses: bool = True,
    with_lpips: bool = False,
    with_rfid: bool = False,
    rfid_reference_features: torch.Tensor | None = None,
) -> ReconstructionMetrics:
    """Run `model` (an ArcVQModel) in eval mode over batches and accumulate `ReconstructionMetrics`.

    Args:
        pixel_batches: iterable of (B, C, H, W) tensors in model space ([-1, 1]) or dicts with `pixel_values`.
        to_unit_range: maps model-space pixels to [0, 1] (e.g. `processor.to_unit_range`); default (x + 1) / 2,
            clamped.
        with_losses: also accumulate the model's loss parts (batch-weighted; the arc loss depends on which images
            share a batch, the other parts do not).
        with_lpips, with_rfid: also accumulate LPIPS-alex / the rFID feature moments (see `ReconstructionMetrics`).
        rfid_reference_features: the targets' precomputed rFID features (see `ReconstructionMetrics`).
    """
    to_unit = to_unit_range or default_to_unit_range
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_names = ["loss", "reconstruction_loss", "quantization_loss"] if with_losses else []
    if with_losses and model.config.use_arc_margin:
        loss_names.append("arc_loss")
    metrics = ReconstructionMetrics(
        model.config.codebook_size,
        loss_names,
        with_lpips=with_lpips,
        with_rfid=with_rfid,
        rfid_reference_features=rfid_reference_features,
    )
    try:
        for batch in pixel_batches:
            pixel_values = _batch_pixels(batch).to(device)
            output = model(pixel_values, return_loss=with_losses)
            losses = {name: getattr(output, name) for name in loss_names}
            metrics.update(
                to_unit(output.reconstruction).float(), to_unit(pixel_values).float(), output.image_tokens, losses
            )
    finally:
        model.train(was_training)
    return metrics


def evaluate_reconstruction(
    model: Any,
    pixel_batches: Iterable[Any],
    processor: Any | None = None,
    with_losses: bool = False,
    perceptual: bool = False,
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rfid_reference_features: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every docs/method.md §3 metric of `model` over a whole evaluation set.

    Args:
        model: an `ArcVQModel`.
        pixel_batches: iterable (list, DataLoader) of (B, C, H, W) model-space tensors or dicts with `pixel_values`.
        processor: an `ArcVQImageProcessor` whose `to_unit_range` undoes the normalisation; None means [-1, 1].
        with_losses: include the model's loss parts.
        perceptual: include LPIPS and rFID (needs the weights of `python -m arcvq_hf.evaluation.perceptual fetch`).
        sum_over_processes: when each process saw a disjoint shard, the element-wise sum over processes (see
            `ReconstructionMetrics.all_reduce_`); None: one process saw the whole set, nothing is reduced.
        rfid_reference_features: with `perceptual`, the targets' rFID features computed once
            (`reference_inception_features`), so that repeated evaluations of one set skip them.
    Returns:
        dict with psnr, ssim, l1, codebook_utilization, perplexity, dead_codes, used_codes, num_images,
        angular_dispersion (degrees), code_norm_mean / std / min / max, code_norm_fraction_on_bound (when the
        ball bound is on), the losses when asked, and lpips, lpips_resize, rfid, rfid_num_images when perceptual.
    """
    to_unit = processor.to_unit_range if processor is not None else None
    accumulator = accumulate_reconstruction(
        model,
        pixel_batches,
        to_unit,
        with_losses=with_losses,
        with_lpips=perceptual,
        with_rfid=perceptual,
        rfid_reference_features=rfid_reference_features,
    )
    if sum_over_processes is not None:
        accumulator.all_reduce_(sum_over_processes)
    metrics = accumulator.compute()
    metrics.update(codebook_geometry(model))
    return metrics


def whole_set_metrics(
    model: torch.nn.Module,
    pixel_batches: Any,
    processor: Any | None = None,
    perceptual: bool = False,
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """What `ArcVQTrainer.evaluate` reports (no prefix): every `arcvq_hf.evaluation` metric with the model's losses
    (`evaluate_reconstruction`), plus the schedule state (ball_radius, arc_weight, schedule_step).

    Args:
        model: an `ArcVQModel` (unwrapped).
        pixel_batches: this process's batches ((B, C, H, W) model-space tensors or dicts with `pixel_values`).
        processor: the `ArcVQImageProcessor` (its `to_unit_range`), or None for the default [-1, 1] mapping.
        perceptual: add lpips, lpips_resize, rfid, rfid_num_images.
        sum_over_processes: sums the packed accumulators over processes that each saw a disjoint shard; None when
            one process saw the whole set.
    """
    metrics = evaluate_reconstruction(
        model, pixel_batches, processor, with_losses=True, perceptual=perceptual, sum_over_processes=sum_over_processes
    )
    metrics["ball_radius"] = model.quantizer.current_ball_radius
    metrics["arc_weight"] = model.quantizer.current_arc_weight
    metrics["schedule_step"] = model.schedule_step
    return metrics


def evaluation_report(
    metrics: dict[str, float], prefix: str, start_time: float, num_samples: int, batch_size: int
) -> dict[str, float]:
    """`metrics` under `{prefix}_` names plus Trainer's speed metrics (`{prefix}_runtime`, `_samples_per_second`,
    `_steps_per_second`), as `ArcVQTrainer.evaluate` returns them.

    Args:
        batch_size: images per evaluation step over all processes (per-device batch x processes).
    """
    report = {f"{prefix}_{name}": value for name, value in metrics.items()}
    steps = math.ceil(num_samples / batch_size)
    report.update(speed_metrics(prefix, start_time, num_samples=num_samples, num_steps=steps))
    return report


__all__ = [
    "LPIPS_EVAL_SIZE",
    "LPIPS_NET",
    "PERCEPTUAL_METRIC_NETWORKS",
    "ReconstructionMetrics",
    "accumulate_reconstruction",
    "evaluate_reconstruction",
    "evaluation_report",
    "lpips_resize_for",
    "perceptual_weights_available",
    "reference_inception_features",
    "require_perceptual_weights",
    "whole_set_metrics",
]
