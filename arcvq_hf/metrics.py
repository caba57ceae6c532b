"""Metrics that judge an image tokenizer, defined once (SPEC.md §3) and reused by training, benchmarks and the Space.

Image metrics work on float tensors (B, C, H, W) in [0, 1] with data range 1 and return one value per image:
- `psnr`: 10 * log10(1 / MSE) per image.
- `ssim`: the usual SSIM (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5, population covariance,
  K1 = 0.01, K2 = 0.03, averaged over the valid window positions and the channels. This is the definition of
  `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1, channel_axis=...)`, computed in torch (float64) so it runs on whole batches.
- `l1_error`: mean absolute error per image.

Codebook metrics work on code-use counts accumulated over a whole evaluation set (`CodebookUsage`) or on the
codebook itself (`angular_dispersion`, `code_norm_stats`).

Perceptual metrics (`lpips`, `frechet_inception_distance` and their networks) are defined in `arcvq_hf.perceptual`
and re-exported here. The evaluation loop adds them on request (they cost time and need the weights that
`python -m arcvq_hf.perceptual fetch` installs):
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

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .image_processing_arcvq import to_unit_range as default_to_unit_range

# Perceptual metrics (LPIPS, rFID) are defined in `perceptual`; re-exported here so `arcvq_hf.metrics` is the one
# place to import metrics from. Importing them loads no weights and does not need scipy.
from .perceptual import (
    LPIPS,
    FrechetInceptionDistance,
    InceptionFeatureExtractor,
    PerceptualWeightsMissingError,
    frechet_distance,
    frechet_inception_distance,
    inception_features,
    load_inception,
    load_lpips,
    lpips,
)

# SSIM constants of the usual definition.
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
# A code counts as "on the BBNR bound" when its norm is at least (1 - this) times the ball radius.
ON_BOUND_RELATIVE_TOLERANCE = 1e-3
# The evaluation loop's LPIPS: the usual metric backbone, on images at least this many pixels per side.
LPIPS_NET = "alex"
LPIPS_EVAL_SIZE = 64
# The networks the evaluation loop's perceptual metrics load (LPIPS_NET, and Inception for rFID).
PERCEPTUAL_METRIC_NETWORKS = (LPIPS_NET, "inception")


def _check_image_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("pred and target must be torch tensors of shape (B, C, H, W) in [0, 1].")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}.")
    if pred.ndim != 4:
        raise ValueError(f"pred and target must have shape (B, C, H, W), got {tuple(pred.shape)}.")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, data range 1.

    Args:
        pred, target: (B, C, H, W) float in [0, 1].
    Returns:
        (B,) float64; +inf for an exact reconstruction.
    """
    _check_image_pair(pred, target)
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


def l1_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image. pred, target: (B, C, H, W) -> (B,) float64."""
    _check_image_pair(pred, target)
    return (pred.double() - target.double()).abs().flatten(1).mean(dim=1)


def _gaussian_window(sigma: float, size: int, device: torch.device) -> torch.Tensor:
    """1-D Gaussian taps (size,), normalised to sum 1, as scipy.ndimage builds them."""
    radius = size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image, data range 1, 11x11 Gaussian window (sigma 1.5), population covariance.

    Only window positions fully inside the image count (skimage crops the 5-pixel border of its padded result,
    which is the same set of positions), so no padding convention is involved.

    Args:
        pred, target: (B, C, H, W) float in [0, 1], H and W >= 11.
    Returns:
        (B,) float64, the mean over channels and positions.
    """
    _check_image_pair(pred, target)
    height, width = pred.shape[-2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {height}x{width}.")
    batch, channels = pred.shape[:2]
    x = pred.double().reshape(batch * channels, 1, height, width)
    y = target.double().reshape(batch * channels, 1, height, width)
    taps = _gaussian_window(SSIM_SIGMA, SSIM_WINDOW, x.device)
    rows, cols = taps.view(1, 1, -1, 1), taps.view(1, 1, 1, -1)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(image, rows), cols)

    # One pass over the five moments.
    moments = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1).view(-1, 1, height, width))
    moments = moments.view(batch * channels, 5, *moments.shape[-2:])
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = moments.unbind(dim=1)
    var_x = mean_xx - mean_x * mean_x
    var_y = mean_yy - mean_y * mean_y
    cov_xy = mean_xy - mean_x * mean_y
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(batch, -1).mean(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Codebook use
# ----------------------------------------------------------------------------------------------------------------


def _check_counts(counts: torch.Tensor) -> torch.Tensor:
    if not isinstance(counts, torch.Tensor) or counts.ndim != 1:
        raise ValueError("counts must be a 1-D tensor of per-code use counts (K,).")
    if counts.numel() == 0:
        raise ValueError("counts is empty: the codebook needs at least one code.")
    if (counts < 0).any():
        raise ValueError("counts must be non-negative.")
    return counts


def codebook_utilization(counts: torch.Tensor) -> float:
    """Fraction of the K codes used at least once. counts: (K,) use counts over the whole set."""
    counts = _check_counts(counts)
    return float((counts > 0).sum().item()) / counts.numel()


def dead_codes(counts: torch.Tensor) -> int:
    """K minus the number of codes used at least once. counts: (K,)."""
    counts = _check_counts(counts)
    return int((counts == 0).sum().item())


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code-frequency histogram, natural log; between 1 and K. counts: (K,), not all zero."""
    counts = _check_counts(counts).double()
    total = counts.sum()
    if total <= 0:
        raise ValueError("perplexity needs at least one counted token; all counts are zero.")
    probabilities = counts[counts > 0] / total
    return float(torch.exp(-(probabilities * probabilities.log()).sum()).item())


class CodebookUsage:
    """Accumulates how often each of K codes is used; merge instances with `+=` or `merge`.

    Attributes:
        counts: (K,) int64 use counts.
    """

    def __init__(self, codebook_size: int) -> None:
        if not isinstance(codebook_size, int) or codebook_size < 1:
            raise ValueError(f"codebook_size must be an integer >= 1, got {codebook_size!r}.")
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.long)

    def update(self, image_tokens: torch.Tensor) -> CodebookUsage:
        """Count the code ids in `image_tokens` (any shape, integer ids in [0, K))."""
        if image_tokens.is_floating_point() or image_tokens.dtype == torch.bool:
            raise TypeError(f"image_tokens must hold integer code ids, got dtype {image_tokens.dtype}.")
        flat = image_tokens.detach().reshape(-1).long().cpu()
        if flat.numel():
            low, high = int(flat.min()), int(flat.max())
            if low < 0 or high >= self.codebook_size:
                raise ValueError(f"code ids must lie in [0, {self.codebook_size - 1}], got values in [{low}, {high}].")
            self.counts += torch.bincount(flat, minlength=self.codebook_size)
        return self

    def merge(self, other: CodebookUsage) -> CodebookUsage:
        if other.codebook_size != self.codebook_size:
            raise ValueError(f"Cannot merge usage of K={other.codebook_size} into K={self.codebook_size}.")
        self.counts += other.counts
        return self

    __iadd__ = merge

    @property
    def num_tokens(self) -> int:
        return int(self.counts.sum().item())

    @property
    def utilization(self) -> float:
        return codebook_utilization(self.counts)

    @property
    def perplexity(self) -> float:
        return perplexity(self.counts)

    @property
    def dead_codes(self) -> int:
        return dead_codes(self.counts)


# ----------------------------------------------------------------------------------------------------------------
# The codebook's geometry
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def angular_dispersion(codebook: torch.Tensor, max_elements: int = 2**22) -> float:
    """Mean over codes of the angle (degrees) to the nearest other code.

    Args:
        codebook: (K, D) raw code vectors, K >= 2. Zero vectors count as orthogonal to everything.
        max_elements: at most this many code-by-code cosines exist at once.
    """
    if codebook.ndim != 2 or codebook.shape[0] < 2:
        raise ValueError(f"angular_dispersion needs a (K, D) codebook with K >= 2, got {tuple(codebook.shape)}.")
    units = F.normalize(codebook.detach().double(), dim=1)
    num_codes = units.shape[0]
    rows = max(1, max_elements // num_codes)
    nearest_cosines = []
    for start in range(0, num_codes, rows):
        cosines = units[start : start + rows] @ units.T
        own = torch.arange(start, start + cosines.shape[0], device=cosines.device)
        cosines[torch.arange(cosines.shape[0], device=cosines.device), own] = -2.0
        nearest_cosines.append(cosines.max(dim=1).values)
    angles = torch.rad2deg(torch.acos(torch.cat(nearest_cosines).clamp(-1.0, 1.0)))
    return float(angles.mean().item())


@torch.no_grad()
def code_norm_stats(codebook: torch.Tensor, ball_radius: float | None = None) -> dict[str, float]:
    """Distribution of code norms: mean, std (population), min, max and, given the BBNR radius, the fraction of
    codes on the bound (norm >= (1 - 1e-3) * radius).

    Args:
        codebook: (K, D) raw code vectors.
        ball_radius: R(t) of the model's current step, or None.
    """
    if codebook.ndim != 2 or codebook.shape[0] < 1:
        raise ValueError(f"code_norm_stats needs a (K, D) codebook, got {tuple(codebook.shape)}.")
    norms = codebook.detach().double().norm(dim=1)
    stats = {
        "code_norm_mean": float(norms.mean().item()),
        "code_norm_std": float(norms.std(correction=0).item()),
        "code_norm_min": float(norms.min().item()),
        "code_norm_max": float(norms.max().item()),
    }
    if ball_radius is not None:
        on_bound = norms >= (1.0 - ON_BOUND_RELATIVE_TOLERANCE) * ball_radius
        stats["code_norm_fraction_on_bound"] = float(on_bound.double().mean().item())
    return stats


def codebook_geometry(model: Any) -> dict[str, float]:
    """Angular dispersion and norm statistics of an `ArcVQModel`'s codebook at its current step."""
    codebook = model.codebook
    radius = model.quantizer.ball_radius if model.config.use_ball_bound else None
    return {"angular_dispersion": angular_dispersion(codebook), **code_norm_stats(codebook, radius)}


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
    ) -> None:
        """
        Args:
            codebook_size: K.
            loss_names: losses every rank will report (pre-created so that a rank with an empty shard still
                all-reduces the same layout).
            with_lpips: accumulate LPIPS-alex per image (see the module docstring for the resize rule).
            with_rfid: accumulate the Inception feature moments of the targets and the reconstructions for rFID.
            inception: the feature extractor for rFID; default: the shared pretrained one (`load_inception`).
        Raises:
            PerceptualWeightsMissingError: a perceptual metric is asked for and its weights are not installed.
        """
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
                self.fid.update(real=real, fake=fake)
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
            results["rfid"] = self.fid.compute()
            results["rfid_num_images"] = self.fid.num_real
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
def accumulate_reconstruction(
    model: Any,
    pixel_batches: Iterable[Any],
    to_unit_range: Callable[[torch.Tensor], torch.Tensor] | None = None,
    with_losses: bool = True,
    with_lpips: bool = False,
    with_rfid: bool = False,
) -> ReconstructionMetrics:
    """Run `model` (an ArcVQModel) in eval mode over batches and accumulate `ReconstructionMetrics`.

    Args:
        pixel_batches: iterable of (B, C, H, W) tensors in model space ([-1, 1]) or dicts with `pixel_values`.
        to_unit_range: maps model-space pixels to [0, 1] (e.g. `processor.to_unit_range`); default (x + 1) / 2,
            clamped.
        with_losses: also accumulate the model's loss parts (batch-weighted; the arc loss depends on which images
            share a batch, the other parts do not).
        with_lpips, with_rfid: also accumulate LPIPS-alex / the rFID feature moments (see `ReconstructionMetrics`).
    """
    to_unit = to_unit_range or default_to_unit_range
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_names = ["loss", "reconstruction_loss", "quantization_loss"] if with_losses else []
    if with_losses and model.config.use_arc_margin:
        loss_names.append("arc_loss")
    metrics = ReconstructionMetrics(model.config.codebook_size, loss_names, with_lpips=with_lpips, with_rfid=with_rfid)
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
) -> dict[str, float]:
    """Every SPEC.md §3 metric of `model` over a whole evaluation set.

    Args:
        model: an `ArcVQModel`.
        pixel_batches: iterable (list, DataLoader) of (B, C, H, W) model-space tensors or dicts with `pixel_values`.
        processor: an `ArcVQImageProcessor` whose `to_unit_range` undoes the normalisation; None means [-1, 1].
        with_losses: include the model's loss parts.
        perceptual: include LPIPS and rFID (needs the weights of `python -m arcvq_hf.perceptual fetch`).
        sum_over_processes: when each process saw a disjoint shard, the element-wise sum over processes (see
            `ReconstructionMetrics.all_reduce_`); None: one process saw the whole set, nothing is reduced.
    Returns:
        dict with psnr, ssim, l1, codebook_utilization, perplexity, dead_codes, used_codes, num_images,
        angular_dispersion (degrees), code_norm_mean / std / min / max, code_norm_fraction_on_bound (when the
        ball bound is on), the losses when asked, and lpips, lpips_resize, rfid, rfid_num_images when perceptual.
    """
    to_unit = processor.to_unit_range if processor is not None else None
    accumulator = accumulate_reconstruction(
        model, pixel_batches, to_unit, with_losses=with_losses, with_lpips=perceptual, with_rfid=perceptual
    )
    if sum_over_processes is not None:
        accumulator.all_reduce_(sum_over_processes)
    metrics = accumulator.compute()
    metrics.update(codebook_geometry(model))
    return metrics


__all__ = [
    "LPIPS_EVAL_SIZE",
    "LPIPS_NET",
    "PERCEPTUAL_METRIC_NETWORKS",
    "CodebookUsage",
    "ReconstructionMetrics",
    "accumulate_reconstruction",
    "angular_dispersion",
    "code_norm_stats",
    "codebook_geometry",
    "codebook_utilization",
    "dead_codes",
    "evaluate_reconstruction",
    "l1_error",
    "lpips_resize_for",
    "perceptual_weights_available",
    "perplexity",
    "psnr",
    "require_perceptual_weights",
    "ssim",
]

__all__ += [
    "LPIPS",
    "FrechetInceptionDistance",
    "InceptionFeatureExtractor",
    "PerceptualWeightsMissingError",
    "frechet_distance",
    "frechet_inception_distance",
    "inception_features",
    "load_inception",
    "load_lpips",
    "lpips",
]
