"""ArcVQImageProcessor: every input kind and PIL mode, channel conversion, divisibility, exact round trips."""

import numpy as np
import PIL.Image
import pytest
import torch

from arcvq_hf import ArcVQImageProcessor


@pytest.fixture
def rgb_uint8():
    return np.random.RandomState(0).randint(0, 256, size=(20, 24, 3), dtype=np.uint8)


def test_uint8_round_trip_is_exact(rgb_uint8):
    processor = ArcVQImageProcessor()
    pixel_values = processor(PIL.Image.fromarray(rgb_uint8)).pixel_values
    assert pixel_values.shape == (1, 3, 20, 24) and pixel_values.dtype == torch.float32
    assert pixel_values.min() >= -1 and pixel_values.max() <= 1
    torch.testing.assert_close(pixel_values[0], torch.tensor(rgb_uint8).permute(2, 0, 1) / 127.5 - 1)
    assert np.array_equal(processor.postprocess(pixel_values, return_tensors="np")[0], rgb_uint8)
    assert np.array_equal(np.asarray(processor.postprocess(pixel_values)[0]), rgb_uint8)


def test_numpy_and_torch_layouts_give_the_same_pixels(rgb_uint8):
    processor = ArcVQImageProcessor()
    reference = processor(rgb_uint8).pixel_values
    chw = np.ascontiguousarray(rgb_uint8.transpose(2, 0, 1))
    for image in (chw, torch.tensor(rgb_uint8), torch.tensor(chw), rgb_uint8.astype(np.float32) / 255.0):
        torch.testing.assert_close(processor(image).pixel_values, reference)
    batch = processor(np.stack([rgb_uint8, rgb_uint8])).pixel_values
    assert batch.shape == (2, 3, 20, 24)


def test_pil_modes_are_converted_to_the_models_channels(rgb_uint8):
    grey = PIL.Image.fromarray(rgb_uint8).convert("L")
    rgba = PIL.Image.fromarray(np.dstack([rgb_uint8, np.full((20, 24), 255, np.uint8)]), mode="RGBA")
    palette = PIL.Image.fromarray(rgb_uint8).convert("P")
    deep = PIL.Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    assert deep.mode == "I;16"
    colour = ArcVQImageProcessor(num_channels=3)
    mono = ArcVQImageProcessor(num_channels=1)
    for image in (grey, rgba, palette, deep):
        assert colour(image).pixel_values.shape == (1, 3, 20, 24)
        assert mono(image).pixel_values.shape == (1, 1, 20, 24)
    # opaque RGBA == RGB; 16-bit grey == its 8-bit version; grey repeated on 3 channels
    torch.testing.assert_close(colour(rgba).pixel_values, colour(rgb_uint8).pixel_values)
    torch.testing.assert_close(mono(deep).pixel_values, mono(grey).pixel_values, atol=1e-6, rtol=0)
    grey_as_rgb = colour(grey).pixel_values
    assert torch.equal(grey_as_rgb[:, 0], grey_as_rgb[:, 2])
    # colour -> 1 channel uses the same luma weights as PIL's "L" (to rounding)
    torch.testing.assert_close(mono(rgb_uint8).pixel_values, mono(grey).pixel_values, atol=2 / 255, rtol=0)


def test_transparency_is_composited_on_white():
    transparent = np.zeros((8, 8, 4), dtype=np.uint8)
    pixel_values = ArcVQImageProcessor()(transparent).pixel_values
    assert torch.all(pixel_values == 1.0)


@pytest.mark.parametrize(("mode", "expected"), [("crop", (1, 3, 16, 20)), ("pad", (1, 3, 20, 24))])
def test_sizes_become_multiples_of_the_divisor(rgb_uint8, mode, expected):
    image = rgb_uint8[:18, :22]
    pixel_values = ArcVQImageProcessor(divisor_mode=mode)(image).pixel_values
    assert pixel_values.shape == expected
    if mode == "crop":  # centered crop: rows 1..17, cols 1..21
        torch.testing.assert_close(pixel_values, ArcVQImageProcessor()(image[1:17, 1:21]).pixel_values)
    else:  # edge padding keeps the original in the middle
        unpadded = ArcVQImageProcessor(size_divisor=1)(image).pixel_values
        torch.testing.assert_close(pixel_values[..., 1:19, 1:23], unpadded)


def test_a_one_pixel_image_is_padded_up_to_one_token():
    pixel_values = ArcVQImageProcessor(size_divisor=8)(np.full((1, 1, 3), 200, np.uint8)).pixel_values
    assert pixel_values.shape == (1, 3, 8, 8)
    torch.testing.assert_close(pixel_values, torch.full((1, 3, 8, 8), 200 / 127.5 - 1))


def test_resize_options(rgb_uint8):
    fixed = ArcVQImageProcessor(do_resize=True, size={"height": 32, "width": 32})
    assert fixed(rgb_uint8).pixel_values.shape == (1, 3, 32, 32)
    shortest = ArcVQImageProcessor(do_resize=True, size={"shortest_edge": 40})
    assert shortest(rgb_uint8).pixel_values.shape == (1, 3, 40, 48)
    capped = ArcVQImageProcessor(max_side=12)
    assert capped(rgb_uint8).pixel_values.shape == (1, 3, 8, 12)
    constant = np.full((20, 24, 3), 77, np.uint8)  # resizing a flat image keeps it flat
    torch.testing.assert_close(fixed(constant).pixel_values, torch.full((1, 3, 32, 32), 77 / 127.5 - 1))


def test_save_and_load(tmp_path):
    processor = ArcVQImageProcessor(num_channels=1, max_side=64, divisor_mode="pad", size_divisor=8)
    processor.save_pretrained(tmp_path)
    loaded = ArcVQImageProcessor.from_pretrained(tmp_path)
    for key in ("num_channels", "max_side", "divisor_mode", "size_divisor", "image_mean", "image_std"):
        assert getattr(loaded, key) == getattr(processor, key)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "No images"),
        (np.full((4, 4, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 3, 2, 2), np.uint8), "dimensions"),
        (np.zeros((6, 6, 5), np.uint8), "channels"),
        (np.zeros((4, 4), np.int64), "dtype"),
        (np.zeros((0, 4, 3), np.uint8), "empty side"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)], "different sizes"),
    ],
)
def test_bad_images_are_rejected_clearly(images, message):
    with pytest.raises(ValueError, match=message):
        ArcVQImageProcessor()(images)


def test_bad_settings_and_arguments():
    with pytest.raises(TypeError, match="PIL image"):
        ArcVQImageProcessor()("not-an-image.png")
    with pytest.raises(ValueError, match="num_channels"):
        ArcVQImageProcessor(num_channels=4)
    with pytest.raises(ValueError, match="size"):
        ArcVQImageProcessor(do_resize=True)
    with pytest.raises(ValueError, match="divisor_mode"):
        ArcVQImageProcessor(divisor_mode="stretch")
    with pytest.raises(TypeError, match="Unknown preprocess"):
        ArcVQImageProcessor()(np.zeros((4, 4, 3), np.uint8), colour=True)
    with pytest.raises(ValueError, match="postprocess"):
        ArcVQImageProcessor().postprocess(torch.zeros(1, 1, 4, 4))


def test_list_output_keeps_different_sizes():
    images = [np.zeros((4, 4, 3), np.uint8), np.zeros((8, 12, 3), np.uint8)]
    arrays = ArcVQImageProcessor()(images, return_tensors=None).pixel_values
    assert [a.shape for a in arrays] == [(3, 4, 4), (3, 8, 12)]


def test_an_oversize_image_is_refused_from_its_header_with_the_fix():
    processor = ArcVQImageProcessor(max_pixels=64 * 64)
    huge = PIL.Image.new("RGB", (65, 64))
    with pytest.raises(ValueError, match=r"65x64 pixels .* over max_pixels=4096 .* max_side="):
        processor(huge)
    # The guard reads the size after resizing: the same photo downscaled by max_side passes.
    assert processor(huge, max_side=32).pixel_values.shape == (1, 3, 32, 32)
    assert ArcVQImageProcessor(max_pixels=None)(huge).pixel_values.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="max_pixels"):
        processor(np.zeros((3, 100, 100), dtype=np.uint8))


def test_the_default_guard_refuses_an_8000_pixel_photo_before_decoding():
    # A PIL image built lazily would be decoded by to_unit_array; the guard must fire from the header first.
    processor = ArcVQImageProcessor()
    assert processor.max_pixels == 4096 * 4096
    with pytest.raises(ValueError, match="8000x8000 pixels"):
        processor(PIL.Image.new("L", (8000, 8000)))


def test_output_size_is_the_size_preprocess_produces_before_the_divisor_fit():
    processor = ArcVQImageProcessor(size_divisor=1)
    for size, overrides in [
        ((300, 200), {"max_side": 64}),
        ((50, 40), {}),
        ((90, 60), {"do_resize": True, "size": {"shortest_edge": 30}}),
    ]:
        height, width = processor.output_size(*size, **overrides)
        image = PIL.Image.new("RGB", (size[1], size[0]))
        assert processor(image, **overrides).pixel_values.shape[2:] == (height, width)
    with pytest.raises(ValueError, match="max_side"):
        processor.output_size(10, 10, max_side=0)
