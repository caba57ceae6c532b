"""Gradio demo: one image through a plain VQ-VAE and an ArcVQ-VAE, side by side.

Shows the lossless (PNG) reconstructions, PSNR / SSIM of each against the input the models saw, a colour-coded map
of the image tokens and the image's codebook usage. Runs on CPU and offline with the checkpoints shipped in
`checkpoints/`; the environment variables `VQ_CHECKPOINT` / `ARCVQ_CHECKPOINT` (or the "Checkpoints" boxes in the UI)
pick any other local folder or Hub id.

Launch: `python space/app.py` (serves on 127.0.0.1, port from `GRADIO_SERVER_PORT` or 7860, never a share link).
Everything except `build_demo` / `main` is plain Python so that tests can call it directly.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from gradio.utils import get_upload_folder
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers import PretrainedConfig

from arcvq_hf import ArcVQImageProcessor, ArcVQModel
from arcvq_hf.metrics import CodebookUsage, psnr, ssim

logger = logging.getLogger("arcvq_space")

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
# Checked in this order: a Space repository holds `checkpoints/` beside app.py, this repository one level up.
CHECKPOINT_DIRS = (APP_DIR / "checkpoints", REPO_ROOT / "checkpoints")
EXAMPLES_DIR = APP_DIR / "examples"

VQ_LABEL = "VQ-VAE"
ARCVQ_LABEL = "ArcVQ-VAE"
DEFAULT_CHECKPOINTS = {VQ_LABEL: "vq-vae-photos", ARCVQ_LABEL: "arcvq-vae-photos"}
CHECKPOINT_ENV_VARS = {VQ_LABEL: "VQ_CHECKPOINT", ARCVQ_LABEL: "ARCVQ_CHECKPOINT"}
DEFAULT_PRESETS = {VQ_LABEL: "vq-baseline", ARCVQ_LABEL: "arcvq"}

MAX_SIDE_RANGE = (32, 512)
DEFAULT_MAX_SIDE = 256
# Images are refused above this many pixels, checked from the header before any pixel is decoded (JPEGs are first
# asked for a reduced-scale decode, see `load_image`). 40 MP is above any phone camera and bounds memory per request.
MAX_INPUT_PIXELS = 40_000_000
# Uploads above this many bytes are refused by Gradio before they reach the app.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# SSIM uses an 11x11 Gaussian window, so both sides of the compared image must hold at least that; 16 keeps a margin.
MIN_SIDE = 16
# Modes that PIL's integer box `reduce` supports; others (P, 1, I;16) go straight to the float resize.
_REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"}
_SIXTEEN_BIT = "16-bit image scaled to 8 bits."
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
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class InputImageError(ValueError):
    """The uploaded file cannot be used; the message is meant for the user."""


class CheckpointError(ValueError):
    """A checkpoint cannot be found or loaded; the message names the source and how to fix it."""


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A checkpoint ready for inference: the model in eval mode and the processor that matches its normalisation."""

    source: str
    model: ArcVQModel
    processor: ArcVQImageProcessor

    @property
    def num_channels(self) -> int:
        return self.model.config.num_channels

    @property
    def codebook_size(self) -> int:
        return self.model.config.codebook_size

    @property
    def downsampling_factor(self) -> int:
        return self.model.config.downsampling_factor


def default_checkpoint(label: str) -> str:
    """The checkpoint for `label` (VQ_LABEL or ARCVQ_LABEL): its environment variable if set, else the shipped
    folder (the first of CHECKPOINT_DIRS that holds it; the repository's path when none does)."""
    from_env = os.environ.get(CHECKPOINT_ENV_VARS[label], "").strip()
    if from_env:
        return from_env
    name = DEFAULT_CHECKPOINTS[label]
    for directory in CHECKPOINT_DIRS:
        if (directory / name).is_dir():
            return str(directory / name)
    return str(REPO_ROOT / "checkpoints" / name)


def local_checkpoint_choices() -> list[str]:
    """Every ArcVQ checkpoint folder under CHECKPOINT_DIRS, for the UI's dropdowns."""
    found = []
    for directory in CHECKPOINT_DIRS:
        if directory.is_dir():
            found += [str(path.parent) for path in sorted(directory.glob("*/config.json"))]
    return list(dict.fromkeys(found))


def _looks_like_local_path(source: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else (absolute, relative with ./, more slashes) is a path."""
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1 or Path(source).exists()


# Loaded checkpoints by source, oldest first; bounded because the UI accepts any folder or Hub id.
MAX_LOADED_CHECKPOINTS = 6
_model_cache: dict[str, LoadedModel] = {}
_model_cache_lock = threading.Lock()


def load_checkpoint(source: str) -> LoadedModel:
    """Load (once per process) an ArcVQ checkpoint from a local folder or a Hub id; safetensors weights only.

    Raises CheckpointError with a message that names `source` and what to do.
    """
    source = source.strip()
    if not source:
        raise CheckpointError("No checkpoint given: enter a local folder or a Hugging Face Hub id.")
    with _model_cache_lock:
        if source in _model_cache:
            return _model_cache[source]
        is_local = _looks_like_local_path(source)
        if is_local:
            folder = Path(source).expanduser()
            if not (folder / "config.json").is_file():
                raise CheckpointError(
                    f"Checkpoint folder not found: {folder} (no config.json there). Set "
                    f"{' / '.join(CHECKPOINT_ENV_VARS.values())} (or the Checkpoints boxes) to a save_pretrained "
                    "folder or a Hub id."
                )
        try:
            config_dict, _ = PretrainedConfig.get_config_dict(source)
        except OSError as error:
            where = "local folder" if is_local else "Hugging Face Hub id (offline, or no such repository?)"
            raise CheckpointError(f"Cannot read the checkpoint {source!r} as a {where}: {error}") from error
        if config_dict.get("model_type") != "arcvq":
            raise CheckpointError(
                f"{source!r} is a {config_dict.get('model_type')!r} checkpoint, not an ArcVQ one (model_type 'arcvq')."
            )
        try:
            model = ArcVQModel.from_pretrained(source, use_safetensors=True).eval()
        except (OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"Cannot load the weights of {source!r}: {error}") from error
        try:
            saved_processor = ArcVQImageProcessor.get_image_processor_dict(source)[0]
        except OSError:  # no preprocessor_config.json: the package's default normalisation
            saved_processor = {}
        # Only the normalisation is taken from the saved processor; the app does the geometry itself.
        processor = ArcVQImageProcessor(
            num_channels=model.config.num_channels,
            image_mean=saved_processor.get("image_mean"),
            image_std=saved_processor.get("image_std"),
        )
        loaded = LoadedModel(source=source, model=model, processor=processor)
        while len(_model_cache) >= MAX_LOADED_CHECKPOINTS:
            del _model_cache[next(iter(_model_cache))]
        _model_cache[source] = loaded
        return loaded


def load_default_models() -> dict[str, LoadedModel]:
    """The two default checkpoints (environment variables or the shipped folders), keyed by label. A missing one
    raises CheckpointError that also says how to train it."""
    models = {}
    for label in (VQ_LABEL, ARCVQ_LABEL):
        source = default_checkpoint(label)
        try:
            models[label] = load_checkpoint(source)
        except CheckpointError as error:
            raise CheckpointError(
                f"{error} Or train it: python examples/train_arcvq.py --dataset photos --preset "
                f"{DEFAULT_PRESETS[label]} --output_dir {source}"
            ) from error
    return models


# ----------------------------------------------------------------------------------------------------------------
# Input image
# ----------------------------------------------------------------------------------------------------------------


def _fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so that the longer side is at most max_side (never up)."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class DecodedImage:
    """An upload after `load_image`: the decoded PIL image (any mode; EXIF rotation applied; maybe decoded at reduced
    scale or box-reduced towards the target), the size the file declared, the size the models will see before
    cropping, and notices for the user."""

    image: PIL.Image.Image
    file_size: tuple[int, int]
    target_size: tuple[int, int]
    notices: list[str]


def load_image(
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
    target_size = _fit_within(*file_size, max_side)
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
        target_size = _fit_within(image.size[0], image.size[1], max_side)
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


# ----------------------------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelComparison:
    """One model's result on one image. Arrays are uint8 (H, W) for 1-channel models, (H, W, 3) otherwise."""

    label: str
    source: str
    reconstruction: np.ndarray
    image_tokens: np.ndarray  # (H / f, W / f) int64 code ids
    token_map: np.ndarray  # (H, W, 3) uint8, one colour per code id, nearest-upsampled
    psnr: float
    ssim: float
    codes_used: int
    codebook_size: int
    perplexity: float
    code_counts: np.ndarray  # (K,) int64 tokens per code in this image


@dataclass
class ComparisonResult:
    """The model input (`original`, uint8, exactly the pixels the metrics compare against), per-model results and
    notices about what was done to the upload (downscaling, cropping, colour conversion)."""

    original: np.ndarray
    models: list[ModelComparison]
    notices: list[str] = field(default_factory=list)


def _to_display(unit_chw: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> uint8 (H, W) or (H, W, 3)."""
    image = np.round(np.clip(unit_chw, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)
    return image[..., 0] if image.shape[-1] == 1 else image


def _as_unit_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W[, C]) -> float (1, C, H, W) in [0, 1]."""
    chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return torch.from_numpy(chw.astype(np.float32) / 255.0).unsqueeze(0)


_palettes: dict[int, np.ndarray] = {}


def token_palette(codebook_size: int) -> np.ndarray:
    """(K, 3) uint8: K distinct colours, a fixed shuffle of an even RGB grid (so neighbouring ids look different)."""
    if codebook_size not in _palettes:
        levels_per_channel = 1
        while levels_per_channel**3 < codebook_size:
            levels_per_channel += 1
        levels = np.linspace(40, 255, levels_per_channel).round().astype(np.uint8)
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
        _palettes[codebook_size] = grid[np.random.RandomState(0).permutation(len(grid))[:codebook_size]]
    return _palettes[codebook_size]


def render_token_map(image_tokens: np.ndarray, codebook_size: int, factor: int) -> np.ndarray:
    """(h, w) code ids -> (h * factor, w * factor, 3) uint8 colour map (nearest upsampling)."""
    colours = token_palette(codebook_size)[image_tokens]
    return np.repeat(np.repeat(colours, factor, axis=0), factor, axis=1)


def reconstruct_comparison(
    image: str | os.PathLike | PIL.Image.Image, max_side: int, models: dict[str, LoadedModel]
) -> ComparisonResult:
    """Resize `image` so its longer side is at most `max_side`, centre-crop to a multiple of every model's
    downsampling factor, quantise to uint8 (the `original`), and run every model on exactly those pixels.

    PSNR / SSIM compare the uint8 reconstruction with the uint8 original, i.e. exactly the PNGs the UI shows.

    Args:
        image: a file path or a PIL image.
        max_side: longest side after resizing, within MAX_SIDE_RANGE; smaller images are not enlarged.
        models: label -> LoadedModel; all must take the same number of channels.
    Returns:
        ComparisonResult: `original` uint8 (H, W, 3) or (H, W) and, per model, the reconstruction of that shape,
        image_tokens (H / f, W / f), the token map (H, W, 3), PSNR, SSIM and codebook usage.
    Raises:
        InputImageError for unusable input (the message is meant for the user).
    """
    if not models:
        raise ValueError("reconstruct_comparison needs at least one model.")
    max_side = int(max_side)
    if not MAX_SIDE_RANGE[0] <= max_side <= MAX_SIDE_RANGE[1]:
        raise InputImageError(f"The maximum side must be between {MAX_SIDE_RANGE[0]} and {MAX_SIDE_RANGE[1]} px.")
    channels = {loaded.num_channels for loaded in models.values()}
    if len(channels) > 1:
        raise InputImageError(
            "The two checkpoints expect different numbers of channels "
            f"({', '.join(f'{label}: {m.num_channels}' for label, m in models.items())}); pick a matching pair."
        )
    multiple = math.lcm(*(loaded.downsampling_factor for loaded in models.values()))
    decoded = load_image(image, max_side)
    notices = list(decoded.notices)
    num_channels = channels.pop()
    target_width, target_height = decoded.target_size
    # Geometry and colour conversion in [0, 1] (mean 0, std 1): exact resize to the target, then crop to the common
    # multiple of the downsampling factors.
    try:
        unit = ArcVQImageProcessor(
            num_channels=num_channels,
            do_resize=True,
            size={"height": target_height, "width": target_width},
            size_divisor=multiple,
            divisor_mode="crop",
            image_mean=[0.0] * num_channels,
            image_std=[1.0] * num_channels,
        ).preprocess(decoded.image, return_tensors="np")["pixel_values"][0]
    except ValueError as error:
        raise InputImageError(f"This image's pixels cannot be used: {error}") from error
    original = _to_display(unit)
    height, width = original.shape[:2]
    if max(decoded.file_size) > max_side:
        notices.append(
            f"Downscaled from {decoded.file_size[0]}x{decoded.file_size[1]} to {target_width}x{target_height} px "
            f"(maximum side {max_side})."
        )
    if (width, height) != (target_width, target_height):
        notices.append(
            f"Centre-cropped {target_width}x{target_height} to {width}x{height} px, a multiple of the "
            f"downsampling factor {multiple}."
        )
    is_grey = decoded.image.mode in GREY_MODES
    if num_channels == 3 and is_grey:
        notices.append("Grey image: its one channel is repeated to the models' three.")
    if num_channels == 1 and not is_grey:
        notices.append("Colour image reduced to luma for these one-channel models.")

    target = _as_unit_tensor(original)
    results = []
    for label, loaded in models.items():
        mean = torch.tensor(loaded.processor.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(loaded.processor.image_std, dtype=torch.float32).view(1, -1, 1, 1)
        with torch.inference_mode():
            output = loaded.model(((target - mean) / std), return_loss=False)
        reconstruction = _to_display(loaded.processor.to_unit_range(output.reconstruction)[0].numpy())
        image_tokens = output.image_tokens[0].numpy()
        usage = CodebookUsage(loaded.codebook_size)
        usage.update(output.image_tokens)
        counts = usage.counts.numpy()
        predicted = _as_unit_tensor(reconstruction)
        results.append(
            ModelComparison(
                label=label,
                source=loaded.source,
                reconstruction=reconstruction,
                image_tokens=image_tokens,
                token_map=render_token_map(image_tokens, loaded.codebook_size, loaded.downsampling_factor),
                psnr=float(psnr(predicted, target)[0]),
                ssim=float(ssim(predicted, target)[0]),
                codes_used=int((counts > 0).sum()),
                codebook_size=loaded.codebook_size,
                perplexity=float(usage.perplexity),
                code_counts=counts,
            )
        )
    return ComparisonResult(original=original, models=results, notices=notices)


# ----------------------------------------------------------------------------------------------------------------
# Presentation
# ----------------------------------------------------------------------------------------------------------------


def render_usage_plot(result: ComparisonResult) -> np.ndarray:
    """(H, W, 3) uint8 PNG-ready bar charts: tokens per code id for each model on this image."""
    figure = Figure(figsize=(8.0, 1.8 * len(result.models) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(result.models), 1, squeeze=False)[:, 0]
    for axis, model in zip(axes, result.models, strict=True):
        # One filled step patch instead of K bar patches: the same picture, drawn in a fraction of the time.
        axis.stairs(model.code_counts, np.arange(model.codebook_size + 1) - 0.5, fill=True, color="#3b6fb6")
        axis.set_xlim(-0.5, model.codebook_size - 0.5)
        axis.set_title(
            f"{model.label}: {model.codes_used} / {model.codebook_size} codes used, perplexity {model.perplexity:.1f}",
            fontsize=10,
        )
        axis.set_ylabel("tokens")
    axes[-1].set_xlabel("code id")
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def metrics_table(result: ComparisonResult) -> str:
    """Markdown table of PSNR / SSIM / codebook usage per model."""
    height, width = result.original.shape[:2]
    lines = [
        f"Input to the models: **{width}x{height} px**.",
        "",
        "| model | PSNR (dB) | SSIM | codes used / K | perplexity | checkpoint |",
        "|---|---|---|---|---|---|",
    ]
    for model in result.models:
        lines.append(
            f"| {model.label} | {model.psnr:.2f} | {model.ssim:.4f} | {model.codes_used} / {model.codebook_size} "
            f"| {model.perplexity:.1f} | `{model.source}` |"
        )
    return "\n".join(lines)


def metrics_record(result: ComparisonResult) -> dict[str, Any]:
    """The numbers of `result` at full precision, JSON-ready (shown in the UI and returned to API clients).
    An exact reconstruction's PSNR (+inf) is given as None, which JSON can hold."""
    height, width = result.original.shape[:2]
    return {
        "height": height,
        "width": width,
        "models": {
            model.label: {
                "psnr": model.psnr if math.isfinite(model.psnr) else None,
                "ssim": model.ssim,
                "codes_used": model.codes_used,
                "codebook_size": model.codebook_size,
                "perplexity": model.perplexity,
                "checkpoint": model.source,
            }
            for model in result.models
        },
    }


def write_png(image: np.ndarray, name: str) -> str:
    """uint8 (H, W) or (H, W, 3) -> path of a lossless PNG in Gradio's upload cache, named by its content hash and
    written atomically (temporary name, then os.replace); an existing identical file is reused.

    Gradio's own array-to-file step rewrites a shared content-addressed file in place, so two requests with identical
    outputs can serve a half-written PNG (seen with concurrent clients on the same example). Handing Gradio a
    finished file inside its cache avoids that, and Blocks' `delete_cache` still removes it later.
    """
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    data = buffer.getvalue()
    folder = Path(get_upload_folder()) / "arcvq-space" / hashlib.sha256(data).hexdigest()
    path = folder / f"{name}.png"
    if path.exists():
        os.utime(path)  # Gradio's cache clean-up ages files by ctime: this file is being handed out again
        return str(path)
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.replace(staging, path)
    return str(path)


def run_demo(
    file_path: str | None, max_side: float, vq_source: str, arcvq_source: str
) -> tuple[str, str | None, str | None, str | None, str | None, str | None, str, str | None, dict | None]:
    """The UI's handler: never raises. Returns (status markdown, original, VQ reconstruction, ArcVQ reconstruction,
    VQ token map, ArcVQ token map, metrics markdown, usage plot, metrics record); images are PNG file paths, and
    None after an error."""
    try:
        models = {VQ_LABEL: load_checkpoint(vq_source or ""), ARCVQ_LABEL: load_checkpoint(arcvq_source or "")}
        result = reconstruct_comparison(file_path, int(max_side), models)
        vq, arcvq = (next(m for m in result.models if m.label == label) for label in (VQ_LABEL, ARCVQ_LABEL))
        status = " ".join(f"ℹ️ {notice}" for notice in result.notices) or "Done."
        return (
            status,
            write_png(result.original, "original"),
            write_png(vq.reconstruction, "vq_reconstruction"),
            write_png(arcvq.reconstruction, "arcvq_reconstruction"),
            write_png(vq.token_map, "vq_tokens"),
            write_png(arcvq.token_map, "arcvq_tokens"),
            metrics_table(result),
            write_png(render_usage_plot(result), "codebook_usage"),
            metrics_record(result),
        )
    except (InputImageError, CheckpointError) as error:
        return _failure(str(error))
    except Exception as error:  # the server must keep serving; the trace goes to the log, not to the user
        logger.exception("unexpected failure in run_demo")
        return _failure(f"Unexpected error ({type(error).__name__}); the details are in the server log.")


def run_on_new_file(file_path: str | None, max_side: float, vq_source: str, arcvq_source: str) -> tuple[Any, ...]:
    """`run_demo` for the upload box's change event (new upload or example click); clearing the box changes nothing
    instead of warning about a missing image."""
    if file_path is None:
        return tuple(gr.skip() for _ in range(9))
    return run_demo(file_path, max_side, vq_source, arcvq_source)


def _failure(message: str) -> tuple[str, None, None, None, None, None, str, None, None]:
    gr.Warning(message)
    return f"⚠️ **{message}**", None, None, None, None, None, "", None, None


# ----------------------------------------------------------------------------------------------------------------
# UI
# ----------------------------------------------------------------------------------------------------------------


def build_demo(concurrency_limit: int = 4) -> gr.Blocks:
    """The Blocks app with its queue configured. Loads the default checkpoints first, so a missing one raises
    CheckpointError (naming the path and the fix) before any UI exists."""
    defaults = {label: loaded.source for label, loaded in load_default_models().items()}
    choices = list(dict.fromkeys([*defaults.values(), *local_checkpoint_choices()]))
    examples = [[str(path)] for path in sorted(EXAMPLES_DIR.glob("*.png"))]
    # Result PNGs are removed from the cache an hour after they were last handed out.
    with gr.Blocks(title="ArcVQ-VAE vs VQ-VAE", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# ArcVQ-VAE vs plain VQ-VAE\n"
            "Upload an image: both tokenizers encode it to discrete codes and decode it back. The reconstructions are "
            "lossless PNGs; PSNR / SSIM compare them with the (resized) input the models saw. The token maps give "
            "each code id one colour; the histogram shows how much of each codebook this image uses."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", type="filepath", file_count="single")
                max_side = gr.Slider(
                    *MAX_SIDE_RANGE, value=DEFAULT_MAX_SIDE, step=16, label="Maximum side (px); larger is downscaled"
                )
                with gr.Accordion("Checkpoints (local folder or Hub id)", open=False):
                    vq_source = gr.Dropdown(
                        choices, value=defaults[VQ_LABEL], allow_custom_value=True, label=f"{VQ_LABEL} checkpoint"
                    )
                    arcvq_source = gr.Dropdown(
                        choices, value=defaults[ARCVQ_LABEL], allow_custom_value=True, label=f"{ARCVQ_LABEL} checkpoint"
                    )
                run = gr.Button("Reconstruct", variant="primary")
                gr.Examples(examples, inputs=[upload], label="Example photos (scikit-image)")
            with gr.Column(scale=3):
                status = gr.Markdown()
                with gr.Row():
                    original = gr.Image(label="Original (model input)", format="png", interactive=False)
                    vq_image = gr.Image(label=f"{VQ_LABEL} reconstruction", format="png", interactive=False)
                    arcvq_image = gr.Image(label=f"{ARCVQ_LABEL} reconstruction", format="png", interactive=False)
                with gr.Row():
                    vq_tokens = gr.Image(label=f"{VQ_LABEL} tokens", format="png", interactive=False)
                    arcvq_tokens = gr.Image(label=f"{ARCVQ_LABEL} tokens", format="png", interactive=False)
                table = gr.Markdown()
                usage_plot = gr.Image(label="Codebook usage on this image", format="png", interactive=False)
                with gr.Accordion("Raw numbers", open=False):
                    record = gr.JSON(label="metrics")
        inputs = [upload, max_side, vq_source, arcvq_source]
        outputs = [status, original, vq_image, arcvq_image, vq_tokens, arcvq_tokens, table, usage_plot, record]
        run.click(run_demo, inputs, outputs, api_name="reconstruct")
        upload.change(run_on_new_file, inputs, outputs, api_visibility="private")
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=64)
    return demo


def main() -> None:
    try:
        demo = build_demo()
    except CheckpointError as error:
        sys.exit(f"arcvq space: {error}")
    demo.launch(
        server_name="127.0.0.1",
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        share=False,
        max_file_size=MAX_UPLOAD_BYTES,
    )


if __name__ == "__main__":
    main()
