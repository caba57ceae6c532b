"""Data glue: pixel_values from images (through the processor), clear errors for corrupt images and mixed sizes,
one pixel variance for arrays and data sets, grey detection."""

import io

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Image

from arcvq_hf import ArcVQImageProcessor
from arcvq_hf.data.transforms import (
    CorruptImageError,
    infer_num_channels,
    lazy_image_decoding,
    pixel_values_transform,
    pixel_variance,
)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pixel_values_match_the_processor_and_a_corrupt_image_is_named_by_position() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    data = lazy_image_decoding(Dataset.from_dict({"image": [PIL.Image.fromarray(a) for a in arrays]}).cast_column(
        "image", Image()
    ))  # fmt: skip
    processor = ArcVQImageProcessor(num_channels=3)
    batch = data.with_transform(pixel_values_transform(processor))[:3]["pixel_values"]
    torch.testing.assert_close(batch, processor(arrays, return_tensors="pt")["pixel_values"], atol=0, rtol=0)
    broken = Dataset.from_dict({"image": [{"bytes": _png_bytes(arrays[0])[:40], "path": None}]}).cast_column(
        "image", Image(decode=False)
    )
    with pytest.raises(CorruptImageError, match="image 0 of the batch .* corrupt"):
        broken.with_transform(pixel_values_transform(processor))[0]


def test_mixed_sizes_name_the_sizes_and_the_image_size_flag_which_fixes_them() -> None:
    images = [PIL.Image.new("RGB", (16, 16)), PIL.Image.new("RGB", (24, 20))]
    transform = pixel_values_transform(ArcVQImageProcessor(num_channels=3))
    with pytest.raises(ValueError, match=r"16x16, 24x20.*--image_size N"):
        transform({"image": images})
    fixed = pixel_values_transform(ArcVQImageProcessor(num_channels=3), image_size=12)({"image": images})
    assert fixed["pixel_values"].shape == (2, 3, 12, 12)


def test_pixel_variance_is_the_population_variance_for_arrays_and_data_sets() -> None:
    rng = np.random.default_rng(1)
    pixels = (rng.random((37, 1, 6, 5), dtype=np.float32) * 2 - 1) * 0.7 - 0.2  # mean far from 0
    expected = float(np.var(pixels.astype(np.float64)))
    assert pixel_variance(pixels, max_images=None) == pytest.approx(expected, rel=1e-12)
    assert pixel_variance(torch.from_numpy(pixels), max_images=None, batch_size=4) == pytest.approx(expected, rel=1e-12)
    data = Dataset.from_dict({"pixel_values": list(pixels)}).with_format("torch")
    assert pixel_variance(data, batch_size=5) == pytest.approx(expected, rel=1e-12)
    assert pixel_variance(pixels, max_images=10) == pytest.approx(float(np.var(pixels[:10].astype(np.float64))))
    with pytest.raises(ValueError, match="empty"):
        pixel_variance(pixels[:0])


def test_grey_data_sets_get_one_channel() -> None:
    grey = Dataset.from_dict({"image": [PIL.Image.new("I;16", (4, 4))]}).cast_column("image", Image())
    colour = Dataset.from_dict({"image": [PIL.Image.new("RGB", (4, 4))]}).cast_column("image", Image())
    assert infer_num_channels(lazy_image_decoding(grey)) == 1
    assert infer_num_channels(colour) == 3
