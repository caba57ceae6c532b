"""Gradio demo: one image through a plain VQ-VAE and an ArcVQ-VAE, side by side.

Shows the lossless (PNG) reconstructions, PSNR / SSIM / LPIPS of each against the input the models saw, a
colour-coded map of the image tokens and the image's codebook usage. Runs on CPU and offline with the checkpoints
shipped in `checkpoints/`.

Launch: `python space/app.py`. The host comes from `GRADIO_SERVER_NAME` (127.0.0.1 when unset; Hugging Face Spaces
set 0.0.0.0), the port from `GRADIO_SERVER_PORT` (7860 when unset); never a share link. This file is the UI only:
`checkpoint_catalog` says which checkpoints may be loaded and loads them, `uploads` opens the file, `comparison`
runs the models and computes the metrics, `rendering` draws and writes what is shown.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from checkpoint_catalog import (
    ALLOW_CUSTOM_ENV_VAR,
    ARCVQ_LABEL,
    VQ_LABEL,
    CheckpointCatalog,
    CheckpointError,
    load_default_models,
)
from comparison import DEFAULT_MAX_SIDE, MAX_SIDE_RANGE, reconstruct_comparison
from rendering import metrics_record, metrics_table, render_token_map, render_usage_plot, write_png
from uploads import InputImageError

logger = logging.getLogger("arcvq_space")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Uploads above this many bytes are refused by Gradio before they reach the app.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# status, original, VQ / ArcVQ reconstructions, VQ / ArcVQ token maps, table, usage plot, record
NUM_OUTPUTS = 9


def _failure(message: str) -> tuple[Any, ...]:
    gr.Warning(message)
    return f"⚠️ **{message}**", None, None, None, None, None, "", None, None


@dataclass(frozen=True, eq=False)  # eq=False keeps hashing by identity, as for any bound handler
class DemoHandlers:
    """The UI's event handlers, bound to the catalog of checkpoints this server offers."""

    catalog: CheckpointCatalog

    def reconstruct(self, file_path: str | None, max_side: float, vq_checkpoint: str, arcvq_checkpoint: str) -> tuple:
        """Never raises. Returns (status markdown, original, VQ reconstruction, ArcVQ reconstruction, VQ token map,
        ArcVQ token map, metrics markdown, usage plot, metrics record); images are PNG file paths, None after an
        error."""
        try:
            models = {
                VQ_LABEL: self.catalog.load(vq_checkpoint or ""),
                ARCVQ_LABEL: self.catalog.load(arcvq_checkpoint or ""),
            }
            result = reconstruct_comparison(file_path, int(max_side), models)
            vq, arcvq = result.models
            return (
                " ".join(f"ℹ️ {notice}" for notice in result.notices) or "Done.",
                write_png(result.original, "original"),
                write_png(vq.reconstruction, "vq_reconstruction"),
                write_png(arcvq.reconstruction, "arcvq_reconstruction"),
                write_png(render_token_map(vq.image_tokens, vq.codebook_size, vq.downsampling_factor), "vq_tokens"),
                write_png(
                    render_token_map(arcvq.image_tokens, arcvq.codebook_size, arcvq.downsampling_factor),
                    "arcvq_tokens",
                ),
                metrics_table(result),
                write_png(render_usage_plot(result), "codebook_usage"),
                metrics_record(result),
            )
        except (InputImageError, CheckpointError) as error:
            return _failure(str(error))
        except Exception as error:  # the server must keep serving; the trace goes to the log, not to the visitor
            logger.exception("unexpected failure in reconstruct")
            return _failure(f"Unexpected error ({type(error).__name__}); the details are in the server log.")

    def reconstruct_new_upload(
        self, file_path: str | None, max_side: float, vq_checkpoint: str, arcvq_checkpoint: str
    ) -> tuple:
        """`reconstruct` for the upload box's change event (new upload or example click); clearing the box changes
        nothing instead of warning about a missing image."""
        if file_path is None:
            return tuple(gr.skip() for _ in range(NUM_OUTPUTS))
        return self.reconstruct(file_path, max_side, vq_checkpoint, arcvq_checkpoint)


def _startup_problems(catalog: CheckpointCatalog, default_failures: dict[str, str]) -> dict[str, str]:
    """Every checkpoint this server lists but cannot load now: name -> why."""
    failures = {catalog.default(label): message for label, message in default_failures.items()}
    return {**failures, **catalog.missing()}


def _checkpoint_choices(catalog: CheckpointCatalog, problems: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value) pairs for the checkpoint dropdowns; a checkpoint that cannot load now says so in its label."""
    return [(f"{name} (unavailable)" if name in problems else name, name) for name in catalog.offered()]


def build_demo(concurrency_limit: int = 4, allow_custom_checkpoints: bool | None = None) -> gr.Blocks:
    """The Blocks app with its queue configured.

    Loads the default checkpoints first: an operator's VQ_CHECKPOINT / ARCVQ_CHECKPOINT that does not load raises
    CheckpointError (naming it and the fix); a shipped checkpoint that is missing is named on the page and in the
    log, and the demo still starts. `allow_custom_checkpoints` None reads ARCVQ_SPACE_ALLOW_CUSTOM_CHECKPOINTS.
    """
    catalog = CheckpointCatalog.from_environment(allow_custom_checkpoints)
    _, default_failures = load_default_models(catalog)
    problems = _startup_problems(catalog, default_failures)
    for problem in problems.values():
        logger.warning(problem)
    choices = _checkpoint_choices(catalog, problems)
    handlers = DemoHandlers(catalog)
    examples = [[str(path)] for path in sorted(EXAMPLES_DIR.glob("*.png"))]
    where = "a listed checkpoint, local folder or Hub id" if catalog.allow_custom else "listed checkpoints only"
    # Result PNGs are removed from the cache an hour after they were last handed out.
    with gr.Blocks(title="ArcVQ-VAE vs VQ-VAE", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# ArcVQ-VAE vs plain VQ-VAE\n"
            "Upload an image: both tokenizers encode it to discrete codes and decode it back. The reconstructions are "
            "lossless PNGs; PSNR / SSIM / LPIPS compare them with the (resized) input the models saw. The token maps "
            "give each code id one colour; the histogram shows how much of each codebook this image uses."
        )
        gr.Markdown("\n".join(f"⚠️ {problem}  " for problem in problems.values()), visible=bool(problems))
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", type="filepath", file_count="single")
                max_side = gr.Slider(
                    *MAX_SIDE_RANGE, value=DEFAULT_MAX_SIDE, step=16, label="Maximum side (px); larger is downscaled"
                )
                with gr.Accordion(f"Checkpoints ({where})", open=False):
                    checkpoint_boxes = [
                        gr.Dropdown(
                            choices,
                            value=catalog.default(label),
                            allow_custom_value=catalog.allow_custom,
                            label=f"{label} checkpoint",
                        )
                        for label in (VQ_LABEL, ARCVQ_LABEL)
                    ]
                    if not catalog.allow_custom:
                        gr.Markdown(f"Other checkpoints need `{ALLOW_CUSTOM_ENV_VAR}=1` on the server.")
                run = gr.Button("Reconstruct", variant="primary")
                gr.Examples(
                    examples,
                    inputs=[upload],
                    label="Example photos (scikit-image; the photo pair held out chelsea and coffee, not astronaut)",
                )
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
        inputs = [upload, max_side, *checkpoint_boxes]
        outputs = [status, original, vq_image, arcvq_image, vq_tokens, arcvq_tokens, table, usage_plot, record]
        run.click(handlers.reconstruct, inputs, outputs, api_name="reconstruct")
        upload.change(handlers.reconstruct_new_upload, inputs, outputs, api_visibility="private")
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=64)
    return demo


def launch(demo: gr.Blocks, server_port: int | None = None, **options: Any) -> Any:
    """`demo.launch` as a Space needs it: `server_name=None`, because Gradio reads GRADIO_SERVER_NAME (loopback when
    unset) only then; the port from `server_port` or GRADIO_SERVER_PORT; never a share link. `options` go to
    `launch` (tests pass prevent_thread_lock and quiet)."""
    return demo.launch(
        server_name=None, server_port=server_port, share=False, max_file_size=MAX_UPLOAD_BYTES, **options
    )


def main() -> None:
    try:
        demo = build_demo()
    except CheckpointError as error:
        sys.exit(f"arcvq space: {error}")
    launch(demo)


if __name__ == "__main__":
    main()
