"""Opening an upload: refuse what the demo cannot use, with a message meant for the visitor, before decoding it.

The size the models will see follows the image processor's max-side rule; this module only decides how to decode
the file cheaply towards that size (a reduced-scale JPEG decode, an integer box reduction), so that a 40 MP photo
never becomes a full-size float image. Everything about pixel values (modes, transparency, bit depth, channels)
is left to `ArcVQImageProcessor`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import PIL.ImageOps

from arcvq_hf import ArcVQImageProcessor

# Images are refused above this many pixels, checked from the header before any pixel is decoded (JPEGs are first
# asked for a reduced-scale decode). 40 MP is above any phone camera and bounds memory per request.
MAX_INPUT_PIXELS = 40_000_000
# SSIM uses an 11x11 Gaussian window, so both sides of the compared image must hold at least that; 16 keeps a margin.
MIN_SIDE = 16
# Modes that PIL's integer box `reduce` supports; others (P, 1, I;16) go to the processor's exact resize as they are.
_REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"}
_SIXTEEN_BIT = "16-bit image scaled to 8 bits."
# What the processor will do to each mode, said to the visitor.
_MODE_NOTICES = {
    "P": "Palette image converted to colour.",
    "PA": "Palette image: its transparency is composited on white.",
    "RGBA": "Transparency composited on white.",
    "LA": "Transparency composited on white.",
    "I;16": _SIXTEEN_BIT,
    "I;16B": _SIXTEEN_BIT,
    "I;16L": _SIXTEEN_BIT,
    "I": "32-bit integer image scaled to 8 bits.",
    "CMYK": "CMYK image converted to RGB.",
}
# The processor's geometry only: its max-side rule does not depend on any other setting.
_GEOMETRY = ArcVQImageProcessor()


class InputImageError(ValueError):
    """The uploaded file cannot be used; the message is meant for the visitor."""


def fitted_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) after the processor's `max_side` downscale (aspect kept, never enlarged), before the
    downsampling-factor crop; the demo must know the size before it decodes the file."""
    fitted_height, fitted_width = _GEOMETRY.output_size(height, width, do_resize=False, size=None, max_side=max_side)
    return fitted_width, fitted_height


@dataclass
class DecodedImage:
    """An upload after `decode_upload`: the decoded PIL image (any mode; EXIF rotation applied; maybe decoded at
    reduced scale or box-reduced towards the target), the size the file declared, the size the models will see
    before cropping, and notices for the visitor."""

    image: PIL.Image.Image
    file_size: tuple[int, int]
    target_size: tuple[int, int]
    notices: list[str]


def decode_upload(
    source: str | os.PathLike | PIL.Image.Image | None, max_side: int, max_input_pixels: int = MAX_INPUT_PIXELS
) -> DecodedImage:
    """Open and decode an upload, refusing what the demo cannot use.

    Refused with InputImageError: missing / unreadable / truncated / non-image files, more than `max_input_pixels`
    pixels (checked from the header before decoding; a JPEG is first asked to decode at 1/2, 1/4 or 1/8 scale when
    that still covers the target), and images whose target size would have a side below MIN_SIDE.
    """
    if isinstance(source, PIL.Image.Image):
        image, name = source, "The image"
    else:
        if source is None or not Path(source).is_file():
            raise InputImageError("No image: upload a picture (PNG, JPEG, ...) or pick one of the examples.")
        name = Path(source).name
        image = _open_header(source, name, max_input_pixels)

    def refuse(message: str) -> InputImageError:
        if image is not source:  # release the file handle of an image opened here
            image.close()
        return InputImageError(message)

    file_size = image.size
    target_size = fitted_size(*file_size, max_side)
    if min(target_size) < MIN_SIDE:
        raise refuse(
            f"{name} is {file_size[0]}x{file_size[1]} pixels; at a maximum side of {max_side} px it would be "
            f"{target_size[0]}x{target_size[1]}, but both sides must be at least {MIN_SIDE} px. Use a larger image "
            "(or, for a thin strip, a larger maximum side)."
        )
    if image.format == "JPEG" and file_size[0] * file_size[1] > max_input_pixels:
        image.draft(image.mode, target_size)
    if image.size[0] * image.size[1] > max_input_pixels:
        raise refuse(
            f"{name} is {file_size[0]}x{file_size[1]} pixels ({file_size[0] * file_size[1] / 1e6:.1f} MP); this "
            f"demo accepts up to {max_input_pixels / 1e6:.0f} MP. Downscale it first."
        )
    try:
        image.load()
        image = PIL.ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise refuse(f"{name} could not be decoded (truncated or corrupt file: {error}).") from error
    if image.size != file_size:  # EXIF rotation by 90 degrees swaps the sides
        target_size = fitted_size(*image.size, max_side)
    factor = min(image.size[0] // (2 * target_size[0]), image.size[1] // (2 * target_size[1]))
    if factor >= 2 and image.mode in _REDUCIBLE_MODES:
        # Cheap integer box reduction first, so that the exact float resize only sees at most ~4x the target.
        image = image.reduce(factor)
    notices = []
    mode_notice = _MODE_NOTICES.get("PA" if image.mode == "P" and "transparency" in image.info else image.mode)
    if mode_notice:
        notices.append(mode_notice)
    return DecodedImage(image=image, file_size=file_size, target_size=target_size, notices=notices)


def _open_header(path: str | os.PathLike, name: str, max_input_pixels: int) -> PIL.Image.Image:
    """PIL.Image.open (reads the header only), with its failures turned into InputImageError."""
    try:
        return PIL.Image.open(path)
    except PIL.Image.DecompressionBombError as error:
        raise InputImageError(
            f"{name} is far too large to open ({error}). This demo accepts up to {max_input_pixels / 1e6:.0f} MP; "
            "downscale it first."
        ) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InputImageError(
            f"{name} is not an image this demo can read (PNG, JPEG, WebP, BMP, GIF, TIFF, ...)."
        ) from error
