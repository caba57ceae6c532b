"""What the visitor sees of a comparison: token maps, the codebook-usage chart, the metrics table and record, and the
lossless PNG files handed to Gradio."""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from comparison import ComparisonResult
from gradio.utils import get_upload_folder
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from arcvq_hf.utils.io_utils import atomic_write_bytes


@functools.cache
def token_palette(codebook_size: int) -> np.ndarray:
    """(K, 3) uint8: K distinct colours, a fixed shuffle of an even RGB grid (so neighbouring ids look different)."""
    levels_per_channel = 1
    while levels_per_channel**3 < codebook_size:
        levels_per_channel += 1
    levels = np.linspace(40, 255, levels_per_channel).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    palette = grid[np.random.RandomState(0).permutation(len(grid))[:codebook_size]]
    palette.flags.writeable = False  # shared between requests
    return palette


def render_token_map(image_tokens: np.ndarray, codebook_size: int, factor: int) -> np.ndarray:
    """(h, w) code ids -> (h * factor, w * factor, 3) uint8 colour map, one colour per code id (nearest upsampling)."""
    colours = token_palette(codebook_size)[image_tokens]
    return np.repeat(np.repeat(colours, factor, axis=0), factor, axis=1)


def render_usage_plot(result: ComparisonResult) -> np.ndarray:
    """(H, W, 3) uint8 bar charts: tokens per code id for each model on this image."""
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


def _checkpoint_cell(checkpoint: str, loaded_from: str) -> str:
    return f"`{checkpoint}`" if loaded_from == checkpoint else f"`{checkpoint}` (local copy)"


def metrics_table(result: ComparisonResult) -> str:
    """Markdown table of PSNR / SSIM / LPIPS / codebook usage per model."""
    height, width = result.original.shape[:2]
    lines = [
        f"Input to the models: **{width}x{height} px**.",
        "",
        "| model | PSNR (dB) | SSIM | LPIPS | codes used / K | perplexity | checkpoint |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in result.models:
        lpips = "n/a" if model.lpips is None else f"{model.lpips:.4f}"
        checkpoint = _checkpoint_cell(model.checkpoint, model.loaded_from)
        lines.append(
            f"| {model.label} | {model.psnr:.2f} | {model.ssim:.4f} | {lpips} | {model.codes_used} / "
            f"{model.codebook_size} | {model.perplexity:.1f} | {checkpoint} |"
        )
    if result.lpips_note:
        lines += ["", f"LPIPS: {result.lpips_note}"]
    return "\n".join(lines)


def metrics_record(result: ComparisonResult) -> dict[str, Any]:
    """The numbers of `result` at full precision, JSON-ready (shown in the UI and returned to API clients).
    An exact reconstruction's PSNR (+inf) and an unavailable LPIPS are given as None, which JSON can hold."""
    height, width = result.original.shape[:2]
    return {
        "height": height,
        "width": width,
        "models": {
            model.label: {
                "psnr": model.psnr if math.isfinite(model.psnr) else None,
                "ssim": model.ssim,
                "lpips": model.lpips,
                "codes_used": model.codes_used,
                "codebook_size": model.codebook_size,
                "perplexity": model.perplexity,
                "checkpoint": model.checkpoint,
                "loaded_from": model.loaded_from,
            }
            for model in result.models
        },
        "lpips_note": result.lpips_note,
    }


def write_png(image: np.ndarray, name: str) -> str:
    """uint8 (H, W) or (H, W, 3) -> path of a lossless PNG in Gradio's upload cache, named by its content hash and
    written atomically; an existing identical file is reused.

    Gradio's own array-to-file step rewrites a shared content-addressed file in place, so two requests with identical
    outputs can serve a half-written PNG (seen with concurrent clients on the same example). Handing Gradio a
    finished file inside its cache avoids that, and Blocks' `delete_cache` still removes it later.
    """
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    data = buffer.getvalue()
    path = Path(get_upload_folder()) / "arcvq-space" / hashlib.sha256(data).hexdigest() / f"{name}.png"
    if path.exists():
        os.utime(path)  # Gradio's cache clean-up ages files by ctime: this file is being handed out again
        return str(path)
    return str(atomic_write_bytes(path, data))
