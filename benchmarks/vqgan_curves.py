"""The VQGAN recipe on these CPUs (issue 13): a reduced-width `vqgan` ArcVQ and a plain-VQ VQGAN, same budget.

Both are `examples/train_arcvq.py --variant vqgan` on the photo corpus (random resized crops, L1 + LPIPS-VGG +
PatchGAN switched on part-way, `arcvq_hf.training.gan`), with base width 32, channel multipliers 1,2,2 (x4 downsampling)
and the variant's other defaults (K = 1024, D = 16). The training losses and the Trainer's periodic evaluations
(PSNR, SSIM, codebook utilization on the fixed multi-scale crops of the 9 held-out photos) come from each run's
`trainer_state.json`. The ArcVQ checkpoint is then exported with `arcvq_hf.interop.diffusers_export.to_diffusers` and
the export's encode / decode are compared with the model's on the held-out crops.

    ARCVQ_PHOTO_CORPUS=data/photo-corpus python benchmarks/vqgan_curves.py --steps 1600 --disc-start 800 --jobs 2
    python benchmarks/vqgan_curves.py --report-only   # rebuild RESULTS.md (+ NOTES.md) and the plot from the histories
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from arcvq_hf.utils.io_utils import atomic_write_json, atomic_write_text

BENCHMARK_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCHMARK_DIR.parent
OUTPUT_DIR = BENCHMARK_DIR / "vqgan"
PRESETS = {"arcvq": "ArcVQ", "vq-baseline": "plain VQ"}
CROP_SIZE = 32
BATCH_SIZE = 16


def training_command(preset: str, steps: int, disc_start: int, eval_steps: int, output_dir: Path) -> list[str]:
    return [
        sys.executable,
        "examples/train_arcvq.py",
        "--dataset", "photos", "--variant", "vqgan", "--preset", preset,
        "--base_channels", "32", "--channel_multipliers", "1,2,2",
        "--random_crop_size", str(CROP_SIZE),
        "--disc_start", str(disc_start),
        "--output_dir", str(output_dir),
        "--max_steps", str(steps),
        "--per_device_train_batch_size", str(BATCH_SIZE),
        "--bf16", "true", "--channels_last", "true", "--use_cpu",
        "--eval_strategy", "steps", "--eval_steps", str(eval_steps),
        "--save_steps", str(eval_steps), "--save_total_limit", "1",
        "--logging_steps", "25", "--seed", "0", "--report_to", "none",
    ]  # fmt: skip


def train(preset: str, args: argparse.Namespace) -> Path:
    folder = args.runs_dir / f"vqgan-{preset}"
    command = training_command(preset, args.steps, args.disc_start, args.eval_steps, folder)
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    if checkpoints:
        command += ["--resume_from_checkpoint", str(checkpoints[-1])]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with (args.runs_dir / f"vqgan-{preset}.log").open("a") as log:
        subprocess.run(command, cwd=REPO_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    record = {"preset": preset, "command": shlex.join(["python", *command[1:]]), "log_history": history}
    return atomic_write_json(OUTPUT_DIR / f"{preset}_history.json", record, indent=1)


def export_check(folder: Path) -> dict[str, Any]:
    """Max |difference| between the ArcVQ model and its diffusers export on the held-out crops."""
    import torch

    from arcvq_hf import ArcVQImageProcessor, ArcVQModel
    from arcvq_hf.data.builtin import load_image_dataset
    from arcvq_hf.data.photo_corpus import photo_eval_dataset
    from arcvq_hf.interop.diffusers_export import to_diffusers

    model = ArcVQModel.from_pretrained(folder).eval()
    processor = ArcVQImageProcessor.from_pretrained(folder)
    crops = photo_eval_dataset(load_image_dataset("photos")["test"], CROP_SIZE)
    pixels = processor(crops["image"], return_tensors="pt")["pixel_values"]
    vq_model = to_diffusers(model)
    with torch.no_grad():
        ours = model.encode(pixels)
        latents_diff = (vq_model.encode(pixels).latents - ours.latents).abs().max().item()
        tokens = ours.image_tokens
        shape = (*tokens.shape, model.config.codebook_dim)
        exported = vq_model.decode(tokens.flatten(), force_not_quantize=True, shape=shape).sample
        decode_diff = (exported - model.decode(tokens)).abs().max().item()
    return {
        "images": len(crops),
        "max_abs_latent_difference": latents_diff,
        "max_abs_decode_difference": decode_diff,
        "command": "python benchmarks/vqgan_curves.py (export_check)",
    }


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry]
    return [step for step, _ in points], [value for _, value in points]


PANELS = (
    ("reconstruction_loss", "training L1 (reconstruction_loss)"),
    ("perceptual_loss", "training LPIPS-VGG (perceptual_loss)"),
    ("eval_psnr", "held-out PSNR dB"),
    ("eval_codebook_utilization", "held-out codebook utilization"),
)


def plot(records: list[dict[str, Any]], disc_start: int | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for axis, (key, title) in zip(axes, PANELS, strict=True):
        for record in records:
            axis.plot(*_series(record["log_history"], key), label=PRESETS[record["preset"]])
        if disc_start:
            axis.axvline(disc_start, color="grey", linestyle=":", label="discriminator on")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    path = OUTPUT_DIR / "vqgan_curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def evaluation_rows(records: list[dict[str, Any]]) -> list[str]:
    lines = ["| step | " + " | ".join(f"{PRESETS[r['preset']]} util / PSNR / SSIM" for r in records) + " |"]
    lines.append("|---|" + "---|" * len(records))
    steps = sorted({e["step"] for r in records for e in r["log_history"] if "eval_psnr" in e})
    for step in steps:
        cells = []
        for record in records:
            entry = next((e for e in record["log_history"] if e["step"] == step and "eval_psnr" in e), None)
            cells.append(
                f"{entry['eval_codebook_utilization']:.1%} / {entry['eval_psnr']:.2f} / {entry['eval_ssim']:.3f}"
                if entry
                else "n/a"
            )
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def write_report(disc_start: int | None) -> Path:
    records = [
        json.loads(path.read_text()) for preset in PRESETS if (path := OUTPUT_DIR / f"{preset}_history.json").exists()
    ]
    export_path = OUTPUT_DIR / "diffusers_export_check.json"
    export = json.loads(export_path.read_text()) if export_path.exists() else None
    lines = [
        "# The VQGAN recipe, reduced to fit these CPUs",
        "",
        "Built by `python benchmarks/vqgan_curves.py`. The two runs:",
        "",
        *[f"    {record['command']}" for record in records],
        "",
        "Evaluations on the 189 fixed multi-scale 32 px crops of the 9 held-out corpus photos:",
        "",
        *evaluation_rows(records),
        "",
        "![curves](vqgan_curves.png)",
        "",
    ]
    if export:
        lines += [
            "## diffusers export of the ArcVQ run",
            "",
            f"`to_diffusers` on the final ArcVQ checkpoint, {export['images']} held-out crops: max |latent "
            f"difference| {export['max_abs_latent_difference']:.2e}, max |decode difference| "
            f"{export['max_abs_decode_difference']:.2e} (the model's tokens decoded by `VQModel.decode`).",
            "",
        ]
    notes = OUTPUT_DIR / "NOTES.md"
    if notes.exists():  # the hand-written reading of the numbers, kept out of the generated part
        lines += [notes.read_text().strip(), ""]
    if records:
        plot(records, disc_start)
    return atomic_write_text(OUTPUT_DIR / "RESULTS.md", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--disc-start", type=int, default=800)
    parser.add_argument("--eval-steps", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    parser.add_argument("--runs-dir", type=Path, default=REPO_DIR / "runs" / "vqgan")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        args.runs_dir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for path in pool.map(lambda preset: train(preset, args), PRESETS):
                print("wrote", path, flush=True)
        check = export_check(args.runs_dir / "vqgan-arcvq")
        print("wrote", atomic_write_json(OUTPUT_DIR / "diffusers_export_check.json", check, indent=2))
    print("wrote", write_report(args.disc_start))


if __name__ == "__main__":
    main()
