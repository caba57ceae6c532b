"""One upload through every model: processor -> model.encode / decode -> processor.postprocess, and the metrics.

All geometry and pixel conventions come from each checkpoint's `ArcVQImageProcessor`: the max-side downscale, the
crop to a multiple of the downsampling factors, the normalisation and its inverse. The models all see exactly the
8-bit `original` the UI shows, and PSNR / SSIM / LPIPS compare the 8-bit reconstructions with it, i.e. exactly the
PNGs a visitor downloads.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from checkpoint_catalog import LoadedModel
from uploads import InputImageError, decode_upload

from arcvq_hf.evaluation.codebook_metrics import CodebookUsage
from arcvq_hf.evaluation.image_metrics import psnr, ssim
from arcvq_hf.model.image_processing_arcvq import from_unit_range, image_num_channels, to_unit_array

try:
    from arcvq_hf.evaluation.perceptual import LPIPS_MIN_SIZE, lpips
except ImportError:  # a package without the perceptual metrics: the LPIPS column says how to get them
    lpips = None

logger = logging.getLogger("arcvq_space")

MAX_SIDE_RANGE = (32, 512)
DEFAULT_MAX_SIDE = 256
LPIPS_NET = "alex"
LPIPS_UNAVAILABLE = "n/a (run python -m arcvq_hf.evaluation.perceptual fetch)"


@dataclass
class ModelComparison:
    """One model's result on one image. Images are uint8 (H, W) for 1-channel models, (H, W, 3) otherwise."""

    label: str
    checkpoint: str  # what was asked for: a Hub id, or a folder when custom checkpoints are allowed
    loaded_from: str  # the local folder or Hub id it was loaded from
    reconstruction: np.ndarray
    image_tokens: np.ndarray  # (H / f, W / f) int64 code ids
    downsampling_factor: int
    psnr: float
    ssim: float
    lpips: float | None  # None when LPIPS is unavailable (see ComparisonResult.lpips_note)
    codes_used: int
    codebook_size: int
    perplexity: float
    code_counts: np.ndarray  # (K,) int64 tokens per code in this image


@dataclass
class ComparisonResult:
    """The model input (`original`, uint8, exactly the pixels the metrics compare against), per-model results,
    notices about what was done to the upload (downscaling, cropping, colour conversion) and, when LPIPS could not
    be computed, why not."""

    original: np.ndarray
    models: list[ModelComparison]
    notices: list[str] = field(default_factory=list)
    lpips_note: str | None = None


def _squeeze_grey(images: np.ndarray) -> np.ndarray:
    """The first of postprocess's uint8 (B, H, W, C) images, as (H, W) when it has one channel."""
    return images[0, ..., 0] if images.shape[-1] == 1 else images[0]


def _unit_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W[, C]) -> float (1, C, H, W) in [0, 1], the metrics' input."""
    return torch.from_numpy(to_unit_array(image)).permute(2, 0, 1).unsqueeze(0)


def perceptual_distance(reconstruction: torch.Tensor, target: torch.Tensor) -> tuple[float | None, str | None]:
    """LPIPS (AlexNet, v0.1) between two (1, C, H, W) images in [0, 1]: (distance, None), or (None, why not)."""
    if lpips is None:
        return None, LPIPS_UNAVAILABLE
    if min(target.shape[-2:]) < LPIPS_MIN_SIZE[LPIPS_NET]:
        return None, f"n/a (LPIPS-{LPIPS_NET} needs at least {LPIPS_MIN_SIZE[LPIPS_NET]} px a side)"
    try:
        # LPIPS takes [-1, 1], the processor's default model space.
        distance = lpips(from_unit_range(reconstruction), from_unit_range(target), net=LPIPS_NET)
    except FileNotFoundError:  # the weights were never fetched (PerceptualWeightsMissingError)
        return None, LPIPS_UNAVAILABLE
    return float(distance[0]), None


def _check_request(max_side: int, models: dict[str, LoadedModel]) -> int:
    """Refuse a maximum side outside MAX_SIDE_RANGE or models that take different channels; return the common
    multiple of the models' downsampling factors."""
    if not models:
        raise ValueError("reconstruct_comparison needs at least one model.")
    if not MAX_SIDE_RANGE[0] <= max_side <= MAX_SIDE_RANGE[1]:
        raise InputImageError(f"The maximum side must be between {MAX_SIDE_RANGE[0]} and {MAX_SIDE_RANGE[1]} px.")
    if len({loaded.num_channels for loaded in models.values()}) > 1:
        raise InputImageError(
            "The two checkpoints expect different numbers of channels "
            f"({', '.join(f'{label}: {m.num_channels}' for label, m in models.items())}); pick a matching pair."
        )
    return math.lcm(*(loaded.downsampling_factor for loaded in models.values()))


def reconstruct_comparison(
    image: str | os.PathLike | PIL.Image.Image, max_side: int, models: dict[str, LoadedModel]
) -> ComparisonResult:
    """Downscale `image` so its longer side is at most `max_side`, centre-crop it to a multiple of every model's
    downsampling factor, quantise it to uint8 (the `original`), and run every model on exactly those pixels.

    Args:
        image: a file path or a PIL image.
        max_side: longest side after resizing, within MAX_SIDE_RANGE; smaller images are not enlarged.
        models: label -> LoadedModel; all must take the same number of channels.
    Returns:
        ComparisonResult: `original` uint8 (H, W, 3) or (H, W) and, per model, the reconstruction of that shape,
        image_tokens (H / f, W / f), PSNR, SSIM, LPIPS and codebook usage.
    Raises:
        InputImageError for unusable input (the message is meant for the visitor).
    """
    max_side = int(max_side)
    multiple = _check_request(max_side, models)
    decoded = decode_upload(image, max_side)
    target_width, target_height = decoded.target_size
    # The first checkpoint's processor does the geometry; every model then sees the same 8-bit original. The
    # target size is explicit because the upload may already be decoded at a reduced scale.
    geometry = next(iter(models.values())).processor
    try:
        resized = geometry(
            decoded.image,
            do_resize=True,
            size={"height": target_height, "width": target_width},
            max_side=None,
            size_divisor=multiple,
            divisor_mode="crop",
        )["pixel_values"]
    except ValueError as error:
        raise InputImageError(f"This image's pixels cannot be used: {error}") from error
    original = _squeeze_grey(geometry.postprocess(resized, return_tensors="np"))
    notices = decoded.notices + _geometry_notices(decoded.file_size, decoded.target_size, original, max_side, multiple)
    num_channels = geometry.num_channels
    is_grey = image_num_channels(decoded.image) == 1
    if num_channels == 3 and is_grey:
        notices.append("Grey image: its one channel is repeated to the models' three.")
    if num_channels == 1 and not is_grey:
        notices.append("Colour image reduced to luma for these one-channel models.")

    target = _unit_tensor(original)
    results, lpips_note = [], None
    for label, loaded in models.items():
        pixel_values = loaded.processor(original, do_resize=False, max_side=None, size_divisor=multiple)["pixel_values"]
        with torch.inference_mode():
            image_tokens = loaded.model.encode(pixel_values).image_tokens
            decoded_pixels = loaded.model.decode(image_tokens)
        reconstruction = _squeeze_grey(loaded.processor.postprocess(decoded_pixels, return_tensors="np"))
        predicted = _unit_tensor(reconstruction)
        usage = CodebookUsage(loaded.codebook_size).update(image_tokens)
        counts = usage.counts.numpy()
        distance, lpips_note = perceptual_distance(predicted, target)
        results.append(
            ModelComparison(
                label=label,
                checkpoint=loaded.name,
                loaded_from=loaded.location,
                reconstruction=reconstruction,
                image_tokens=image_tokens[0].numpy(),
                downsampling_factor=loaded.downsampling_factor,
                psnr=float(psnr(predicted, target)[0]),
                ssim=float(ssim(predicted, target)[0]),
                lpips=distance,
                codes_used=int((counts > 0).sum()),
                codebook_size=loaded.codebook_size,
                perplexity=float(usage.perplexity),
                code_counts=counts,
            )
        )
    return ComparisonResult(original=original, models=results, notices=notices, lpips_note=lpips_note)


def _geometry_notices(
    file_size: tuple[int, int], target_size: tuple[int, int], original: np.ndarray, max_side: int, multiple: int
) -> list[str]:
    """What the downscale and the crop did, in the visitor's words."""
    notices = []
    height, width = original.shape[:2]
    if max(file_size) > max_side:
        notices.append(
            f"Downscaled from {file_size[0]}x{file_size[1]} to {target_size[0]}x{target_size[1]} px "
            f"(maximum side {max_side})."
        )
    if (width, height) != target_size:
        notices.append(
            f"Centre-cropped {target_size[0]}x{target_size[1]} to {width}x{height} px, a multiple of the "
            f"downsampling factor {multiple}."
        )
    return notices
