"""ArcVQImageProcessor: any PIL / numpy / torch image -> pixel_values in [-1, 1], and back to uint8 / PIL."""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

# ITU-R 601-2 luma weights, the ones PIL uses for "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RESAMPLE = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "box": PIL.Image.Resampling.BOX,
}


def _pil_to_unit_array(image: PIL.Image.Image) -> np.ndarray:
    """PIL image of any mode -> float32 (H, W, C) in [0, 1], C in {1, 3}; transparency composited on white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return (np.asarray(image, dtype=np.float32) / 65535.0)[..., None]
    if mode == "I":
        array = np.asarray(image, dtype=np.float64)
        # 32-bit integer images are usually 16-bit data widened by PIL.
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        return np.clip(array / peak, 0.0, 1.0).astype(np.float32)[..., None]
    if mode == "F":
        return _check_unit_range(np.asarray(image, dtype=np.float32)[..., None], "a PIL 'F' image")
    if mode in ("1", "L"):
        return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[..., None]
    if mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _check_unit_range(array: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or Inf values.")
    if array.size and (array.min() < -1e-6 or array.max() > 1 + 1e-6):
        raise ValueError(
            f"{what} holds floats in [{array.min():.4g}, {array.max():.4g}]; float images must lie in [0, 1] "
            "(pass uint8 arrays for 0..255 data)."
        )
    return np.clip(array, 0.0, 1.0)


def _array_to_unit_array(array: np.ndarray) -> np.ndarray:
    """numpy (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4} -> float32 (H, W, C) in [0, 1]."""
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(f"An image array must have 2 or 3 dimensions (H, W[, C]) or (C, H, W), got {array.shape}.")
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"An image array must have 1, 3 or 4 channels, got shape {array.shape}.")
    if array.dtype == np.uint8:
        unit = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        unit = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        unit = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        unit = _check_unit_range(array.astype(np.float32), "The image array")
    else:
        raise ValueError(f"Unsupported image dtype {array.dtype}; use uint8, uint16, bool or floats in [0, 1].")
    if unit.shape[-1] == 4:
        alpha = unit[..., 3:]
        unit = unit[..., :3] * alpha + (1.0 - alpha)
    return unit


def _image_name(image: PIL.Image.Image) -> str:
    """How to name a PIL image in a message: its file name when it was opened from a file."""
    filename = getattr(image, "filename", "") or ""
    return f"the image file {filename}" if filename else f"the {image.format or 'in-memory'} image"


def to_unit_array(image: Any) -> np.ndarray:
    """One image (PIL, numpy, torch) -> float32 (H, W, C) in [0, 1] with C in {1, 3}.

    Raises:
        TypeError: `image` is None or of another type.
        ValueError: a PIL image whose pixel data cannot be decoded (truncated or corrupt file), naming the file.
    """
    if image is None:
        raise TypeError("Expected an image (PIL image, numpy array or torch tensor), got None.")
    if isinstance(image, PIL.Image.Image):
        try:
            # PIL decodes lazily: a truncated or corrupt file only fails here, with no file name in the message.
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(
                f"Could not decode {_image_name(image)} ({image.format}, {image.width}x{image.height}): {err}. "
                "The file is truncated or corrupt; download or save it again."
            ) from err
        unit = _pil_to_unit_array(image)
    elif isinstance(image, torch.Tensor):
        unit = _array_to_unit_array(image.detach().cpu().numpy())
    elif isinstance(image, np.ndarray):
        unit = _array_to_unit_array(image)
    else:
        raise TypeError(f"Expected a PIL image, numpy array or torch tensor, got {type(image).__name__}.")
    if unit.shape[0] == 0 or unit.shape[1] == 0:
        raise ValueError(f"Image has an empty side: {unit.shape[0]}x{unit.shape[1]}.")
    return unit


def _image_height_width(image: Any) -> tuple[int, int]:
    """(height, width) of a PIL image (header only, nothing decoded) or of an array in any accepted layout."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    shape = tuple(image.shape) if isinstance(image, np.ndarray | torch.Tensor) else ()
    if len(shape) == 3 and shape[-1] not in (1, 3, 4) and shape[0] in (1, 3, 4):
        return shape[1], shape[2]
    if len(shape) in (2, 3):
        return shape[0], shape[1]
    # Anything else is reported by to_unit_array with its own message.
    return 0, 0


# The model's pixel convention, defined here only: pixel_values = (unit - mean) / std per channel, unit in [0, 1].
# The defaults (mean 0.5, std 0.5) give pixel_values in [-1, 1].
DEFAULT_IMAGE_MEAN = 0.5
DEFAULT_IMAGE_STD = 0.5


def _per_channel(values: Any, default: float, like: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Per-channel constants shaped (C, 1, 1) (or (1, 1, 1) for one shared value), float32, like `like`."""
    array = np.asarray(default if values is None else values, dtype=np.float32).reshape(-1, 1, 1)
    return torch.as_tensor(array, device=like.device) if isinstance(like, torch.Tensor) else array


def to_unit_range(
    pixel_values: np.ndarray | torch.Tensor,
    image_mean: Any = None,
    image_std: Any = None,
    clip: bool = True,
) -> np.ndarray | torch.Tensor:
    """Model-space pixels (..., C, H, W) -> [0, 1]: x * std + mean per channel (default 0.5 / 0.5, i.e.
    [-1, 1] -> [0, 1]), clipped to [0, 1] unless `clip=False` (e.g. inside a loss, where clipping would stop
    gradients). A torch tensor comes back as float32 on its device, a numpy array as numpy."""
    mean = _per_channel(image_mean, DEFAULT_IMAGE_MEAN, pixel_values)
    std = _per_channel(image_std, DEFAULT_IMAGE_STD, pixel_values)
    if isinstance(pixel_values, torch.Tensor):
        unit = pixel_values.float() * std + mean
        return unit.clamp(0.0, 1.0) if clip else unit
    unit = pixel_values * std + mean
    return np.clip(unit, 0.0, 1.0) if clip else unit


def from_unit_range(
    unit: np.ndarray | torch.Tensor, image_mean: Any = None, image_std: Any = None
) -> np.ndarray | torch.Tensor:
    """Pixels in [0, 1] (..., C, H, W) -> model space: (x - mean) / std per channel (default 0.5 / 0.5, i.e.
    [0, 1] -> [-1, 1]). A torch tensor comes back as float32 on its device, a numpy array as numpy."""
    mean = _per_channel(image_mean, DEFAULT_IMAGE_MEAN, unit)
    std = _per_channel(image_std, DEFAULT_IMAGE_STD, unit)
    if isinstance(unit, torch.Tensor):
        return (unit.float() - mean) / std
    return (unit - mean) / std


# PIL modes holding one grey channel (with or without alpha); every other mode counts as colour.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def image_num_channels(image: Any) -> int:
    """1 for a grey image (a PIL image in GREY_MODES, a 2-D array, or an (H, W, 1) / (1, H, W) array), else 3."""
    if isinstance(image, PIL.Image.Image):
        return 1 if image.mode in GREY_MODES else 3
    shape = tuple(np.shape(image))
    if len(shape) == 2:
        return 1
    if len(shape) == 3:
        channels = shape[-1] if shape[-1] in (1, 3, 4) else shape[0]
        return 1 if channels == 1 else 3
    raise ValueError(f"An image must be a PIL image or an array of 2 or 3 dimensions, got shape {shape}.")


def convert_channels(unit: np.ndarray, num_channels: int) -> np.ndarray:
    """(H, W, 1|3) -> (H, W, num_channels): grey is repeated, colour is reduced to luma."""
    if unit.shape[-1] == num_channels:
        return unit
    if num_channels == 1:
        return (unit @ _LUMA)[..., None]
    if num_channels == 3:
        return np.repeat(unit, 3, axis=-1)
    raise ValueError(f"num_channels must be 1 or 3, got {num_channels}.")


def _resize(unit: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
    """Float-precision resize, one PIL 'F' image per channel."""
    if unit.shape[:2] == (height, width):
        return unit
    channels = [
        np.asarray(PIL.Image.fromarray(unit[..., c]).resize((width, height), _RESAMPLE[resample]), dtype=np.float32)
        for c in range(unit.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def _fit_to_multiple(unit: np.ndarray, multiple: int, mode: str) -> np.ndarray:
    """Center-crop (or edge-pad) height and width to multiples of `multiple`. Sides shorter than one multiple
    are always padded, since cropping them would leave nothing."""
    out = unit
    for axis in (0, 1):
        size = out.shape[axis]
        remainder = size % multiple
        if remainder == 0:
            continue
        if mode == "crop" and size >= multiple:
            start = remainder // 2
            out = out.take(range(start, start + size - remainder), axis=axis)
        else:
            missing = multiple - remainder
            pad = [(0, 0)] * out.ndim
            pad[axis] = (missing // 2, missing - missing // 2)
            out = np.pad(out, pad, mode="edge")
    return out


class ArcVQImageProcessorKwargs(TypedDict, total=False):
    """The options of `ArcVQImageProcessor` (see its docstring), each a constructor argument and a per-call
    override of `preprocess` / `output_size`."""

    num_channels: int
    do_resize: bool
    size: dict[str, int] | None
    max_side: int | None
    max_pixels: int | None
    resample: str
    size_divisor: int
    divisor_mode: str
    image_mean: list[float]
    image_std: list[float]


# Modes that PIL's Image.reduce handles and that reduce without bias (no alpha to premultiply, no palette).
_REDUCIBLE_MODES = frozenset({"L", "RGB", "I", "F", "CMYK", "YCbCr"})


def _reduce_before_decoding(image: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    """A smaller copy of `image` that is still at least (height, width), made before the float conversion.

    Why: converting a 9000x9000 photo to float32 and resizing it per channel peaks at over 2 GB, although only a
    256-pixel version is wanted. A JPEG is decoded at 1/2, 1/4 or 1/8 scale straight from the file (PIL's
    `draft`, on a fresh handle so the caller's image is left as it was); other images are box-reduced by an
    integer factor in their own 8/16-bit mode (`Image.reduce`). The final resize to (height, width) then runs on
    the smaller image. The caller's image is never modified.
    """
    factor = min(image.height // max(height, 1), image.width // max(width, 1))
    if factor < 2:
        return image
    filename = getattr(image, "filename", "") or ""
    # `tile` is non-empty until the image is decoded.
    if image.format == "JPEG" and filename and getattr(image, "tile", None):
        try:
            fresh = PIL.Image.open(filename)
            fresh.draft(fresh.mode, (width, height))
            fresh.load()
        except OSError:
            fresh = None  # the caller's handle reports the error with the file name when it decodes
        if fresh is not None and fresh.height >= height and fresh.width >= width:
            image = fresh
            factor = min(image.height // height, image.width // width)
    if factor >= 2 and image.mode in _REDUCIBLE_MODES:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError):
            return image  # to_unit_array reports it, with the file name
        image = image.reduce(factor)
    return image


class ArcVQImageProcessor(BaseImageProcessor):
    r"""
    Prepares images for [`ArcVQModel`] and turns its outputs back into images.

    Args:
        num_channels (`int`, 3): channels the model expects; grey inputs are repeated, colour is reduced to luma.
        do_resize (`bool`, False) / size (`dict`, None): resize to `{"height", "width"}` or, with
            `{"shortest_edge": n}`, so that the shorter side is n (aspect kept).
        max_side (`int`, None): downscale (aspect kept) any image whose longer side exceeds this.
        max_pixels (`int`, 4096 * 4096): refuse an image that would come out larger than this many pixels (after
            any resize), before decoding it: an 8000x8000 photo would otherwise become a 768 MB tensor and run the
            encoder out of memory. Set `max_side` to downscale large photos instead, or None to lift the guard.
        resample (`str`, `"bicubic"`): one of nearest, bilinear, bicubic, lanczos, box.
        size_divisor (`int`, 4): height and width are made multiples of this (the model's downsampling factor).
        divisor_mode (`str`, `"crop"`): `"crop"` (center crop) or `"pad"` (edge padding) to reach the multiple.
        image_mean / image_std (`list[float]`, 0.5 each): normalisation after scaling to [0, 1]; the defaults give
            pixel_values in [-1, 1].
    """

    model_input_names = ["pixel_values"]
    # The processor's options, declared as transformers' image processors do (a TypedDict; `from_dict` reads its
    # keys): the constructor's arguments, saved in preprocessor_config.json, and the only names `preprocess` /
    # `output_size` accept as per-call overrides (an explicit value, None included, wins).
    valid_kwargs = ArcVQImageProcessorKwargs

    def __init__(
        self,
        num_channels: int = 3,
        do_resize: bool = False,
        size: dict[str, int] | None = None,
        max_side: int | None = None,
        max_pixels: int | None = 4096 * 4096,
        resample: str = "bicubic",
        size_divisor: int = 4,
        divisor_mode: str = "crop",
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.do_resize = do_resize
        self.size = dict(size) if size is not None else None
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.resample = resample
        self.size_divisor = size_divisor
        self.divisor_mode = divisor_mode
        self.image_mean = list(image_mean) if image_mean is not None else [0.5] * num_channels
        self.image_std = list(image_std) if image_std is not None else [0.5] * num_channels
        self._validate_settings(self.settings())

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The declared options (the keys of `valid_kwargs`) with per-call `overrides` applied and validated.

        Raises:
            TypeError: an override that is not one of `valid_kwargs` (a typo would otherwise be ignored).
            ValueError: an invalid value.
        """
        options = list(self.valid_kwargs.__annotations__)
        unknown = sorted(set(overrides) - set(options))
        if unknown:
            raise TypeError(f"Unknown preprocess arguments {unknown}; ArcVQImageProcessor accepts {options}.")
        settings = {name: getattr(self, name) for name in options}
        if overrides:
            settings.update(overrides)
            self._validate_settings(settings)
        return settings

    @staticmethod
    def _validate_settings(settings: dict[str, Any]) -> None:
        if settings["num_channels"] not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {settings['num_channels']!r}.")
        if settings["resample"] not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {settings['resample']!r}.")
        if settings["divisor_mode"] not in ("crop", "pad"):
            raise ValueError(f"divisor_mode must be 'crop' or 'pad', got {settings['divisor_mode']!r}.")
        if not isinstance(settings["size_divisor"], int) or settings["size_divisor"] < 1:
            raise ValueError(f"size_divisor must be an integer >= 1, got {settings['size_divisor']!r}.")
        size = settings["size"]
        if settings["do_resize"]:
            if not size or not (set(size) == {"height", "width"} or set(size) == {"shortest_edge"}):
                raise ValueError(f"do_resize needs size={{'height', 'width'}} or {{'shortest_edge'}}, got {size!r}.")
            if any(not isinstance(v, int) or v < 1 for v in size.values()):
                raise ValueError(f"size values must be integers >= 1, got {size!r}.")
        for name in ("max_side", "max_pixels"):
            if settings[name] is not None and (not isinstance(settings[name], int) or settings[name] < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {settings[name]!r}.")
        for name in ("image_mean", "image_std"):
            if len(settings[name]) != settings["num_channels"]:
                raise ValueError(f"{name} needs {settings['num_channels']} values, got {settings[name]!r}.")
        if any(s <= 0 for s in settings["image_std"]):
            raise ValueError(f"image_std values must be > 0, got {settings['image_std']!r}.")

    def output_size(self, height: int, width: int, **overrides: Any) -> tuple[int, int]:
        """(height, width) at which an image of this size is processed: `do_resize` / `size` and `max_side` applied,
        before the `size_divisor` crop or pad; computed from the size alone, nothing is decoded. Any constructor
        argument can be overridden, as in `preprocess`."""
        return self._target_size(height, width, self.settings(**overrides))

    def _target_size(self, height: int, width: int, settings: dict[str, Any]) -> tuple[int, int]:
        if settings["do_resize"]:
            size = settings["size"]
            if "height" in size:
                height, width = size["height"], size["width"]
            else:
                scale = size["shortest_edge"] / min(height, width)
                height, width = max(1, round(height * scale)), max(1, round(width * scale))
        max_side = settings["max_side"]
        if max_side is not None and max(height, width) > max_side:
            scale = max_side / max(height, width)
            height, width = max(1, round(height * scale)), max(1, round(width * scale))
        return height, width

    def _check_output_size(self, image: Any, settings: dict[str, Any]) -> None:
        """Refuse, from its header size alone, an image whose output would exceed `max_pixels`."""
        if settings["max_pixels"] is None:
            return
        height, width = _image_height_width(image)
        out_height, out_width = self._target_size(height, width, settings)
        if out_height * out_width > settings["max_pixels"]:
            raise ValueError(
                f"The image is {width}x{height} pixels and would be processed at {out_width}x{out_height} "
                f"({out_width * out_height / 1e6:.1f} MP), over max_pixels={settings['max_pixels']} "
                f"({settings['max_pixels'] / 1e6:.1f} MP). Downscale it with max_side=... (e.g. "
                "processor(image, max_side=1024)) or size=..., or raise max_pixels."
            )

    def preprocess_one(self, image: Any, **overrides: Any) -> np.ndarray:
        """One image -> float32 (C, H, W) normalised array."""
        settings = self.settings(**overrides)
        if image is None:
            raise TypeError("Expected an image (PIL image, numpy array or torch tensor), got None.")
        self._check_output_size(image, settings)
        target = None
        if isinstance(image, PIL.Image.Image):
            # The output size comes from the original size, so that reducing first does not change it.
            target = self._target_size(image.height, image.width, settings)
            image = _reduce_before_decoding(image, *target)
        unit = convert_channels(to_unit_array(image), settings["num_channels"])
        height, width = target or self._target_size(unit.shape[0], unit.shape[1], settings)
        unit = _resize(unit, height, width, settings["resample"])
        unit = _fit_to_multiple(unit, settings["size_divisor"], settings["divisor_mode"])
        mean = np.asarray(settings["image_mean"], dtype=np.float32)
        std = np.asarray(settings["image_std"], dtype=np.float32)
        return np.ascontiguousarray(((unit - mean) / std).transpose(2, 0, 1))

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **overrides: Any) -> BatchFeature:
        """Image or list of images -> BatchFeature with `pixel_values` (B, C, H, W).

        `return_tensors`: `"pt"` (default), `"np"`, or None for a list of (C, H, W) arrays (images may then differ
        in size). Any constructor argument can be overridden per call.
        """
        self.settings(**overrides)
        if images is None:
            raise TypeError(
                "No images given (None): pass a PIL image, numpy array or torch tensor, or a non-empty list of them."
            )
        if isinstance(images, str | bytes):
            raise TypeError(
                f"The processor takes a PIL image, numpy array or torch tensor, not {type(images).__name__} "
                f"{str(images)[:80]!r}: open the file first (PIL.Image.open(path)), or use "
                "pipeline('image-tokenization'), which reads paths and URLs."
            )
        if isinstance(images, PIL.Image.Image | np.ndarray | torch.Tensor):
            is_batch = (isinstance(images, np.ndarray | torch.Tensor)) and images.ndim == 4
            images = list(images) if is_batch else [images]
        images = list(images)
        if not images:
            raise ValueError("No images given: pass an image or a non-empty list of images.")
        arrays = [self.preprocess_one(image, **overrides) for image in images]
        if return_tensors is None:
            return BatchFeature(data={"pixel_values": arrays})
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"Images of different sizes {sorted(shapes)} cannot be stacked into one batch; pass "
                "do_resize=True with size=..., or return_tensors=None for a list."
            )
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        return BatchFeature(data={"pixel_values": np.stack(arrays)}, tensor_type=return_tensors)

    def postprocess(self, pixel_values: torch.Tensor | np.ndarray, return_tensors: str = "PIL") -> list | np.ndarray:
        """(B, C, H, W) model-space pixels -> list of PIL images (`"PIL"`) or uint8 (B, H, W, C) array (`"np"`)."""
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().float().cpu().numpy()
        pixel_values = np.asarray(pixel_values, dtype=np.float32)
        if pixel_values.ndim == 3:
            pixel_values = pixel_values[None]
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"postprocess expects (batch, {self.num_channels}, height, width), got {pixel_values.shape}."
            )
        unit = self.to_unit_range(pixel_values)
        images = np.round(unit * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)
        if return_tensors == "np":
            return images
        if return_tensors != "PIL":
            raise ValueError(f"return_tensors must be 'PIL' or 'np', got {return_tensors!r}.")
        if self.num_channels == 1:
            return [PIL.Image.fromarray(image[..., 0], mode="L") for image in images]
        return [PIL.Image.fromarray(image, mode="RGB") for image in images]

    def to_unit_range(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Undo normalisation: (B, C, H, W) model-space -> [0, 1], clipped. Keeps the input's array type."""
        return to_unit_range(pixel_values, self.image_mean, self.image_std)

    def from_unit_range(self, unit: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Apply the normalisation: (B, C, H, W) pixels in [0, 1] -> model space. Keeps the input's array type."""
        return from_unit_range(unit, self.image_mean, self.image_std)


__all__ = [
    "DEFAULT_IMAGE_MEAN",
    "DEFAULT_IMAGE_STD",
    "GREY_MODES",
    "ArcVQImageProcessor",
    "ArcVQImageProcessorKwargs",
    "convert_channels",
    "from_unit_range",
    "image_num_channels",
    "to_unit_array",
    "to_unit_range",
]
