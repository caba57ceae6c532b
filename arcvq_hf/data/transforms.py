"""Data glue between `datasets` and the Trainer: images -> `pixel_values`, batching, and the data variance.

- `pixel_values_transform`: a `Dataset.with_transform` function, `image` column -> `pixel_values` (B, C, H, W) in
  [-1, 1] through the `ArcVQImageProcessor`; it decodes the images itself (`lazy_image_decoding`), so a corrupt file
  is reported by name, and a batch of mixed sizes by its sizes with the fix (`--image_size N`).
- `collate_pixel_values`: the Trainer's collator.
- `pixel_variance`: the VQ-VAE paper's MSE normaliser, one definition for the Trainer example, the plain loop and
  the benchmarks.
- `infer_num_channels`: 1 for a grey data set, else 3.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import PIL.Image
import torch

from arcvq_hf.utils.extras import missing_extra

try:
    from datasets import Dataset
    from datasets import Image as ImageFeature
except ImportError as err:
    raise missing_extra("datasets", "train") from err

from arcvq_hf.model.image_processing_arcvq import ArcVQImageProcessor, image_num_channels

IMAGE_SIZE_FLAG = "--image_size"


class CorruptImageError(ValueError):
    """An image of a data set cannot be decoded (truncated, not an image, unknown format)."""


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


def lazy_image_decoding(dataset: Dataset, image_column: str = "image") -> Dataset:
    """`dataset` with its `datasets.Image` column left undecoded ({"bytes", "path"} dicts), so that
    `pixel_values_transform` decodes each image itself and can name a corrupt one. Other columns: unchanged."""
    feature = dataset.features.get(image_column)
    if isinstance(feature, ImageFeature) and feature.decode:
        return dataset.cast_column(image_column, ImageFeature(decode=False))
    return dataset


def decode_image(value: Any, position: int | None = None) -> Any:
    """An undecoded `datasets.Image` value ({"bytes", "path"}) -> a loaded PIL image; anything else is returned
    as it is. Raises CorruptImageError naming the file (or the position in the batch for in-memory bytes)."""
    if not (isinstance(value, dict) and ("bytes" in value or "path" in value)):
        return value
    try:
        return ImageFeature().decode_example(value)
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        path = value.get("path")
        where = f"file {path}" if path else f"image {position} of the batch (stored bytes, no file name)"
        raise CorruptImageError(
            f"Cannot decode {where}: it is corrupt or not an image ({type(error).__name__}: {error}). "
            "Remove or replace it."
        ) from error


def _describe_sizes(images: list[Any], values: list[Any]) -> str:
    sizes: dict[tuple[int, int], str] = {}
    for image, value in zip(images, values, strict=True):
        size = (image.width, image.height) if isinstance(image, PIL.Image.Image) else tuple(np.shape(image)[:2])
        path = value.get("path") if isinstance(value, dict) else None
        sizes.setdefault(size, f"{size[0]}x{size[1]}" + (f" ({os.path.basename(path)})" if path else ""))
    return ", ".join(list(sizes.values())[:4])


def pixel_values_transform(
    processor: ArcVQImageProcessor, image_column: str = "image", image_size: int | None = None
) -> Callable[[dict[str, list]], dict[str, torch.Tensor]]:
    """A `Dataset.with_transform` function: `image_column` -> `pixel_values` (B, C, H, W) float32 in [-1, 1].

    With `image_size`, every image is first center-cropped to a square and resized to image_size x image_size.
    Apply it to `lazy_image_decoding(dataset)` so that a corrupt image raises CorruptImageError naming its file.
    Raises ValueError, suggesting `--image_size N`, when the images of one batch come out at different sizes.
    """

    def transform(batch: dict[str, list]) -> dict[str, torch.Tensor]:
        if image_column not in batch:
            raise KeyError(f"No image column {image_column!r}; the data set has columns {sorted(batch)}.")
        values = list(batch[image_column])
        images = [decode_image(value, position) for position, value in enumerate(values)]
        if image_size is not None:
            images = [center_square(image, image_size) for image in images]
        arrays = processor(images, return_tensors=None)["pixel_values"]
        if len({array.shape for array in arrays}) > 1:
            raise ValueError(
                f"The images have different sizes ({_describe_sizes(images, values)}, ...) and cannot form one "
                f"batch. Crop and resize them all to one square size with {IMAGE_SIZE_FLAG} N (e.g. "
                f"{IMAGE_SIZE_FLAG} 32; `image_size=N` of pixel_values_transform)."
            )
        return {"pixel_values": torch.from_numpy(np.stack(arrays))}

    return transform


def collate_pixel_values(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-example `pixel_values` (C, H, W) into (B, C, H, W)."""
    return {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}


def _pixel_batches(pixels: Dataset | torch.Tensor | np.ndarray, count: int, batch_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, count, batch_size):
        if isinstance(pixels, Dataset):
            batch = pixels[start : min(start + batch_size, count)]["pixel_values"]
            yield torch.stack(list(batch)) if isinstance(batch, list) else batch
        else:
            yield torch.as_tensor(pixels[start : min(start + batch_size, count)])


def pixel_variance(
    pixels: Dataset | torch.Tensor | np.ndarray, max_images: int | None = 4096, batch_size: int = 256
) -> float:
    """Population variance of every pixel value of the first `max_images` images (None: all), in float64: the
    VQ-VAE paper's MSE normaliser. For [-1, 1] pixels it equals 4 * var(x / 255).

    Args:
        pixels: (N, C, H, W) model-space pixels as a tensor or array, or a data set with a `pixel_values` column
            (e.g. after `pixel_values_transform`), read `batch_size` images at a time.
    """
    count = len(pixels) if max_images is None else min(len(pixels), max_images)
    if count == 0:
        raise ValueError("Cannot compute the pixel variance of an empty data set.")
    # Batch means and squared deviations merged exactly (Chan et al.): no cancellation of a sum-of-squares formula.
    elements, mean, squared_deviations = 0, 0.0, 0.0
    for batch in _pixel_batches(pixels, count, batch_size):
        values = batch.double()
        batch_elements = values.numel()
        batch_mean = float(values.mean())
        batch_squared_deviations = float((values - batch_mean).pow(2).sum())
        total = elements + batch_elements
        delta = batch_mean - mean
        mean += delta * batch_elements / total
        squared_deviations += batch_squared_deviations + delta * delta * elements * batch_elements / total
        elements = total
    return squared_deviations / elements


def infer_num_channels(dataset: Dataset, image_column: str = "image") -> int:
    """1 if the first image of `dataset` is grey (see `image_num_channels`), else 3."""
    return image_num_channels(decode_image(dataset[0][image_column], 0))


__all__ = [
    "CorruptImageError",
    "center_square",
    "collate_pixel_values",
    "decode_image",
    "infer_num_channels",
    "lazy_image_decoding",
    "pixel_values_transform",
    "pixel_variance",
]
