"""Side-by-side quantizer benchmark: the same backbone, data, budget and seeds for every preset.

Presets (`ArcVQConfig.from_preset`): `vq-baseline` (textbook VQ-VAE), `cosine-only`, `no-ball`, `no-arc`, `arcvq`;
`arcvq-lowdim` and `ema-kmeans-restart` (options beyond the paper) when named with `--presets`.
Data sets: `mnist-5k` with exactly the protocol of docs/method.md §4 (the paper's VQ-VAE, Adam 3e-4, batch 256,
MSE / data variance with data variance = var(train / 255) * 4, metrics on the 1000 test images) and `photos`
(32x32 RGB crops of scikit-image's photos, split by source photo; data variance computed the same way).

Each run is trained in its own subprocess (so its peak RSS is its own) and writes one JSON file (plus an .npz with
its reconstruction grid) under `benchmarks/authors-backbone/results/` (the current backbone; `benchmarks/results/`
holds the earlier backbone's runs); runs whose file exists are skipped, so the grid can be finished over several
sittings. The RESULTS.md and PNG plots beside the results folder are regenerated from all files present
(`--report-only --results-dir benchmarks/results` rebuilds the earlier backbone's report).

    python benchmarks/compare_quantizers.py                       # 5 presets x 2 data sets x 3 seeds x 1500 steps
    python benchmarks/compare_quantizers.py --quick               # 1 seed, 200 steps, smoke test
    python benchmarks/compare_quantizers.py --datasets mnist-5k --presets arcvq --seeds 0 --steps 400 \\
        --override arc_weight=4 --eval-every 100                  # one sweep point (recorded in the sweep table)
    python benchmarks/compare_quantizers.py --report-only         # rebuild RESULTS.md and plots from the files

`--perceptual` (on by default when the weights of `python -m arcvq_hf.evaluation.perceptual fetch` are installed)
adds LPIPS and rFID to each run's final evaluation (`arcvq_hf.evaluation.loop`, the same loop: LPIPS-alex per test
image upsampled to 64 px, rFID between all test images and their reconstructions). On CPU rFID costs about 0.3 s
per image and side; the test images' side is computed once per data set and cached (`rfid_reference_features`).
Result files written before these metrics show "n/a" in their columns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data.builtin import load_builtin_dataset, mnist_arrays
from arcvq_hf.data.transforms import pixel_variance
from arcvq_hf.evaluation.loop import (
    evaluate_reconstruction,
    perceptual_weights_available,
    reference_inception_features,
    require_perceptual_weights,
)
from arcvq_hf.evaluation.perceptual.weights import perceptual_cache_dir, weights_path
from arcvq_hf.model.image_processing_arcvq import to_unit_range
from arcvq_hf.training.trainer import samp_training_step
from arcvq_hf.utils.io_utils import atomic_write, atomic_write_json, atomic_write_text

BENCHMARK_DIR = Path(__file__).resolve().parent
# Runs on the current backbone (the authors' residual block, issue 11). benchmarks/results/ holds the runs on the
# earlier bias-free backbone, kept as history: a file name records the quantizer settings, not the backbone, so the
# two must not share a folder (a run there would be skipped as already done).
RESULTS_DIR = BENCHMARK_DIR / "authors-backbone" / "results"
PRESET_ORDER = ("vq-baseline", "cosine-only", "no-ball", "no-arc", "arcvq")
# Presets beyond the paper's ablations (docs/method.md §1.10), run only when named with --presets: the best ArcVQ of
# benchmarks/field_baselines and the field's EMA remedy, for choosing the default on mnist-5k as well as photos.
OPTION_PRESETS = ("arcvq-lowdim", "ema-kmeans-restart")
DATASETS = ("mnist-5k", "photos")
# Training precision of a run: the protocol's float32, or `--fast` (issue 13's speed levers).
FP32, FAST = "fp32", "bf16+channels_last"
# The SAMP knobs a sweep may override (docs/method.md §1): alpha, lambda, gamma0, s, m, top_k.
SWEEP_KNOBS = ("ball_growth_rate", "arc_weight_decay", "arc_weight", "arc_scale", "arc_margin", "arc_top_k")
BATCH_SIZE = 256
LEARNING_RATE = 3e-4
EVAL_BATCH = 500
GRID_IMAGES = 16


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def load_arrays(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(train (N, C, H, W), test (M, C, H, W)) float32 in [-1, 1]."""
    if dataset == "mnist-5k":
        train, test, _, _ = mnist_arrays()
        return train, test
    if dataset == "photos":
        splits = load_builtin_dataset("skimage-photos")  # the benchmark's `photos` is the 32x32 scikit-image crop set
        processor = ArcVQImageProcessor(num_channels=3)

        def to_array(split: str) -> np.ndarray:
            return processor(splits[split]["image"], return_tensors="np")["pixel_values"]

        return to_array("train"), to_array("test")
    raise ValueError(f"Unknown data set {dataset!r}; expected one of {DATASETS}.")


# ----------------------------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------------------------


def parse_overrides(items: list[str]) -> dict[str, float | int]:
    """`["arc_weight=4", "arc_top_k=8"]` -> {"arc_weight": 4.0, "arc_top_k": 8}; only SWEEP_KNOBS are allowed."""
    overrides: dict[str, float | int] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in SWEEP_KNOBS or not value:
            raise ValueError(f"--override takes NAME=VALUE with NAME in {SWEEP_KNOBS}, got {item!r}.")
        overrides[name] = int(value) if name == "arc_top_k" else float(value)
    return overrides


def run_name(dataset: str, preset: str, seed: int, steps: int, overrides: dict[str, Any], fast: bool = False) -> str:
    """File name of a run; it hashes the effective quantizer settings, so a run made under older defaults is never
    mistaken for a run of the current ones. `--fast` runs carry a `_bf16cl` suffix."""
    settings = effective_settings(quantizer_settings(ArcVQConfig.from_preset(preset, **overrides)))
    text = ",".join(f"{key}={settings[key]}" for key in sorted(settings))
    suffix = "_bf16cl" if fast else ""
    return f"{dataset}_{preset}_s{seed}_{steps}steps_{hashlib.sha1(text.encode()).hexdigest()[:8]}{suffix}"


def quantizer_settings(config: ArcVQConfig) -> dict[str, Any]:
    return {key: getattr(config, key) for key in ("distance", "codebook_init", "use_ball_bound", "use_arc_margin")} | {
        key: getattr(config, key) for key in SWEEP_KNOBS
    }


def effective_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that change what a run does: arc knobs only with the arc loss, alpha only with the ball."""
    unused = set()
    if not settings["use_arc_margin"]:
        unused |= {"arc_weight_decay", "arc_weight", "arc_scale", "arc_margin", "arc_top_k"}
    if not settings["use_ball_bound"]:
        unused.add("ball_growth_rate")
    return {key: value for key, value in settings.items() if key not in unused}


def is_default_run(record: dict[str, Any]) -> bool:
    """Whether a result file's run used the current defaults of its preset, in float32 (the protocol)."""
    return record.get("precision", FP32) == FP32 and effective_settings(record["settings"]) == effective_settings(
        default_settings(record["preset"])
    )


def rfid_reference_features(test: torch.Tensor) -> torch.Tensor:
    """(N, 2048) Inception features of the test split as the evaluation loop's rFID sees them.

    Every run of a data set compares its reconstructions with the same test images, so their features are computed
    once and kept in the perceptual cache folder (mnist's 1000 images: 8 MB, about 5 CPU minutes saved per run),
    under a name that hashes the test pixels and the Inception weights, so other data or weights never reuse them.
    """
    key = hashlib.sha256(test.numpy().tobytes())
    key.update(weights_path("inception").read_bytes())
    path = perceptual_cache_dir() / "rfid-reference" / f"{key.hexdigest()[:20]}.safetensors"
    if path.exists():
        return safetensors.torch.load_file(str(path))["features"]
    features = reference_inception_features(test.split(EVAL_BATCH))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda staging: safetensors.torch.save_file({"features": features}, staging))
    return features


def _evaluate(model: ArcVQModel, test: torch.Tensor, perceptual: bool = False) -> dict[str, float]:
    reference = rfid_reference_features(test) if perceptual else None
    return evaluate_reconstruction(
        model, list(test.split(EVAL_BATCH)), perceptual=perceptual, rfid_reference_features=reference
    )


def train_and_evaluate(
    dataset: str,
    preset: str,
    seed: int,
    steps: int,
    overrides: dict[str, Any],
    eval_every: int,
    perceptual: bool = False,
    fast: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Train one preset with the protocol's plain loop and evaluate it on the test split (the final evaluation with
    LPIPS and rFID when `perceptual`; the utilization curve's evaluations never, they are only for the curve).
    `fast`: train under bf16 autocast with channels_last weights (assignment and the arc loss stay float32);
    evaluation is float32 either way.

    Returns (record for the JSON file, arrays for the .npz: test originals and reconstructions of the grid).
    """
    torch.set_num_threads(int(os.environ.get("ARCVQ_BENCH_THREADS", "2")))
    train_np, test_np = load_arrays(dataset)
    train, test = torch.from_numpy(train_np), torch.from_numpy(test_np)
    variance = pixel_variance(train_np, max_images=None)  # the protocol's var(train / 255) * 4
    torch.manual_seed(seed)
    config = ArcVQConfig.from_preset(preset, num_channels=train.shape[1], data_variance=variance, **overrides)
    model = ArcVQModel(config)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    order = torch.Generator().manual_seed(seed)
    permutation, cursor = torch.randperm(len(train), generator=order), 0
    curve, train_losses, train_seconds = [], [], 0.0
    load_before = os.getloadavg()
    model.train()
    for step in range(steps):
        if cursor + BATCH_SIZE > len(permutation):
            permutation, cursor = torch.randperm(len(train), generator=order), 0
        batch = train[permutation[cursor : cursor + BATCH_SIZE]]
        cursor += BATCH_SIZE
        started = time.perf_counter()
        # The step ArcVQTrainer takes (schedule step, the model's loss, backward, update), in a plain loop.
        output = samp_training_step(model, batch, optimizer, step, torch.bfloat16 if fast else None)
        train_seconds += time.perf_counter() - started
        if step % 50 == 0 or step == steps - 1:
            train_losses.append(
                {
                    "step": step,
                    "loss": float(output.loss.detach()),
                    "reconstruction_loss": float(output.reconstruction_loss.detach()),
                    "quantization_loss": float(output.quantization_loss.detach()),
                    "arc_loss": _maybe(output.arc_loss),
                }
            )
        done = step + 1
        if done % eval_every == 0 or done == steps:
            metrics = _evaluate(model, test)
            model.train()
            curve.append({"step": done, **{k: metrics[k] for k in ("codebook_utilization", "perplexity", "psnr")}})
            print(f"[{dataset} {preset} seed {seed}] step {done}: {_short(metrics)}", flush=True)
    final = _evaluate(model, test, perceptual)
    codebook = model.codebook.detach().double()
    record = {
        "dataset": dataset,
        "preset": preset,
        "seed": seed,
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "overrides": overrides,
        "precision": FAST if fast else FP32,
        "settings": quantizer_settings(config),
        "data_variance": variance,
        "num_test_images": len(test),
        "metrics": final,
        "seconds_per_step": train_seconds / steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0],
        "utilization_curve": curve,
        "train_losses": train_losses,
        "code_norms": codebook.norm(dim=1).tolist(),
        "nearest_code_angles": _nearest_code_angles(codebook).tolist(),
    }
    model.eval()
    with torch.no_grad():
        originals = test[:GRID_IMAGES]
        reconstructions = model(originals, return_loss=False).reconstruction
    arrays = {"originals": _to_uint8(originals), "reconstructions": _to_uint8(reconstructions)}
    return record, arrays


def _maybe(value: torch.Tensor | None) -> float | None:
    return None if value is None else float(value.detach())


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(
        f"{key} {metrics[key]:.4g}"
        for key in ("codebook_utilization", "perplexity", "psnr", "ssim", "lpips", "rfid")
        if key in metrics
    )


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) model-space pixels -> uint8 (B, C, H, W)."""
    return (to_unit_range(pixels) * 255).round().to(torch.uint8).numpy()


def _nearest_code_angles(codebook: torch.Tensor) -> np.ndarray:
    """(K,) angle in degrees from each code to its nearest other code (the per-code terms of angular_dispersion)."""
    units = torch.nn.functional.normalize(codebook, dim=1)
    cosines = units @ units.T
    cosines.fill_diagonal_(-2.0)
    return torch.rad2deg(torch.acos(cosines.max(dim=1).values.clamp(-1, 1))).numpy()


def run_single(args: argparse.Namespace) -> None:
    """Child-process entry point: train one run and write its files."""
    overrides = parse_overrides(args.override)
    dataset, preset, seed = args.datasets[0], args.presets[0], args.seeds[0]
    name = run_name(dataset, preset, seed, args.steps, overrides, args.fast)
    record, arrays = train_and_evaluate(
        dataset, preset, seed, args.steps, overrides, args.eval_every, perceptual=args.perceptual, fast=args.fast
    )
    record["name"] = name
    atomic_write(args.results_dir / f"{name}.npz", lambda path: np.savez_compressed(open(path, "wb"), **arrays))
    atomic_write_json(args.results_dir / f"{name}.json", record, indent=1)


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    # Hidden names are files still being written (io_utils stages them as `.<name>.<random>.tmp.json`).
    return [json.loads(path.read_text()) for path in sorted(results_dir.glob("[!.]*.json"))]


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    array = np.asarray(values, dtype=np.float64) * scale
    if len(array) == 1:
        return f"{array[0]:.{digits}f}"
    return f"{array.mean():.{digits}f} ± {array.std(ddof=1):.{digits}f}"


def default_settings(preset: str) -> dict[str, Any]:
    return quantizer_settings(ArcVQConfig.from_preset(preset))


def _table_runs(records: list[dict[str, Any]], dataset: str, steps: int, preset: str) -> list[dict[str, Any]]:
    """The runs of one main-table row: `preset` at its current defaults on `dataset` with `steps` steps."""
    return [
        r
        for r in records
        if r["dataset"] == dataset and r["preset"] == preset and r["steps"] == steps and is_default_run(r)
    ]


def _optional_mean_std(metrics: list[dict[str, Any]], key: str, digits: int) -> str:
    """Mean ± std of `key` over the runs, or "n/a" unless every run has it (files from before the metric)."""
    if not metrics or any(key not in m for m in metrics):
        return "n/a"
    return _mean_std([m[key] for m in metrics], 1, digits)


def perceptual_caption(records: list[dict[str, Any]], dataset: str, steps: int) -> str:
    """The main table's sentence on LPIPS and rFID: the LPIPS input size and the images per rFID of its runs."""
    metrics = [r["metrics"] for preset in PRESET_ORDER for r in _table_runs(records, dataset, steps, preset)]
    sizes = sorted({m["lpips_resize"] for m in metrics if "lpips_resize" in m})
    counts = sorted({m["rfid_num_images"] for m in metrics if "rfid_num_images" in m})
    if not sizes and not counts:
        return "LPIPS / rFID: n/a (these runs were recorded before the perceptual metrics)."
    size_text = " / ".join(f"upsampled to {s} px" if s else "native size" for s in sizes) or "n/a"
    count_text = " / ".join(str(c) for c in counts) or "n/a"
    return (
        f"LPIPS: v0.1 AlexNet, mean per test image ({size_text}). rFID: Fréchet Inception distance between the "
        f"{count_text} test images and their reconstructions; rFID from so few images is biased upward, so compare "
        'it only within this table. "n/a": runs recorded before these metrics.'
    )


def main_table(records: list[dict[str, Any]], dataset: str, steps: int) -> list[str]:
    """Mean ± std over seeds per preset, for runs at the current defaults of each preset."""
    lines = [
        "| preset | seeds | utilization % | perplexity | dead codes | angular dispersion ° | PSNR dB | SSIM | L1 "
        "| LPIPS | rFID | s/step | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in (*PRESET_ORDER, *OPTION_PRESETS):
        runs = _table_runs(records, dataset, steps, preset)
        if not runs:
            continue
        metric = [r["metrics"] for r in runs]
        lines.append(
            f"| {preset} | {','.join(str(r['seed']) for r in sorted(runs, key=lambda r: r['seed']))} "
            f"| {_mean_std([m['codebook_utilization'] for m in metric], 100, 1)} "
            f"| {_mean_std([m['perplexity'] for m in metric], 1, 1)} "
            f"| {_mean_std([m['dead_codes'] for m in metric], 1, 1)} "
            f"| {_mean_std([m['angular_dispersion'] for m in metric], 1, 1)} "
            f"| {_mean_std([m['psnr'] for m in metric])} "
            f"| {_mean_std([m['ssim'] for m in metric], 1, 3)} "
            f"| {_mean_std([m['l1'] for m in metric], 1, 4)} "
            f"| {_optional_mean_std(metric, 'lpips', 4)} "
            f"| {_optional_mean_std(metric, 'rfid', 2)} "
            f"| {_mean_std([r['seconds_per_step'] for r in runs], 1, 3)} "
            f"| {_mean_std([r['peak_rss_mb'] for r in runs], 1, 0)} |"
        )
    return lines


def sweep_table(records: list[dict[str, Any]]) -> list[str]:
    """Every arcvq run, one row each, with its SAMP settings."""
    lines = [
        "| data set | steps | seed | precision | alpha | lambda | gamma0 | s | m | top_k | utilization % | perplexity "
        "| PSNR dB | SSIM | utilization along the run (step: %) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [r for r in records if r["preset"] == "arcvq"]
    runs.sort(key=lambda r: (r["dataset"], r["steps"], [str(r["settings"][k]) for k in SWEEP_KNOBS], r["seed"]))
    for r in runs:
        s, m = r["settings"], r["metrics"]
        curve = " ".join(f"{p['step']}: {100 * p['codebook_utilization']:.0f}" for p in r["utilization_curve"])
        lines.append(
            f"| {r['dataset']} | {r['steps']} | {r['seed']} | {r.get('precision', FP32)} "
            f"| {s['ball_growth_rate']:g} | {s['arc_weight_decay']:g} "
            f"| {s['arc_weight']:g} | {s['arc_scale']:g} | {s['arc_margin']:g} | {s['arc_top_k']} "
            f"| {100 * m['codebook_utilization']:.1f} | {m['perplexity']:.1f} | {m['psnr']:.2f} | {m['ssim']:.3f} "
            f"| {curve} |"
        )
    return lines


def write_plots(records: list[dict[str, Any]], results_dir: Path, steps: int, plots_dir: Path) -> list[str]:
    """PNG plots per data set from the seed-0 (or lowest-seed) default runs, into `plots_dir`; returns Markdown image
    lines (paths relative to the report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: list[str] = []
    plots_dir.mkdir(parents=True, exist_ok=True)
    for dataset in DATASETS:
        chosen: dict[str, list[dict[str, Any]]] = {}
        for preset in PRESET_ORDER:
            runs = _table_runs(records, dataset, steps, preset)
            if runs:
                chosen[preset] = sorted(runs, key=lambda r: r["seed"])
        if not chosen:
            continue
        figure, axis = plt.subplots(figsize=(6, 4))
        for preset, runs in chosen.items():
            steps_axis = [p["step"] for p in runs[0]["utilization_curve"]]
            values = np.array([[p["codebook_utilization"] * 100 for p in r["utilization_curve"]] for r in runs])
            axis.plot(steps_axis, values.mean(axis=0), marker="o", label=f"{preset} (n={len(runs)})")
        axis.set(xlabel="optimizer step", ylabel="test codebook utilization %", title=f"{dataset}: utilization")
        axis.grid(alpha=0.3)
        axis.legend()
        caption = f"{dataset}: test utilization vs step (mean over seeds)"
        lines += _save(figure, plots_dir, f"{dataset}_utilization.png", caption)
        for key, label, file in (
            ("code_norms", "code norm", "code_norms"),
            ("nearest_code_angles", "angle to nearest other code (°)", "nearest_angles"),
        ):
            figure, axis = plt.subplots(figsize=(6, 4))
            for preset, runs in chosen.items():
                axis.hist(runs[0][key], bins=40, histtype="step", label=preset)
            axis.set(xlabel=label, ylabel="codes", title=f"{dataset}: {label} (seed {runs[0]['seed']})")
            axis.legend()
            lines += _save(figure, plots_dir, f"{dataset}_{file}.png", f"{dataset}: histogram of {label}")
        rows = []
        originals = None
        for preset, runs in chosen.items():
            with np.load(results_dir / f"{runs[0]['name']}.npz", allow_pickle=False) as arrays:
                originals = arrays["originals"]
                rows.append((preset, arrays["reconstructions"]))
        rows.insert(0, ("original", originals))
        figure, axes = plt.subplots(len(rows), 1, figsize=(8, 0.7 * len(rows) + 0.3))
        for axis, (label, images) in zip(np.atleast_1d(axes), rows, strict=True):
            strip = np.concatenate(list(images.transpose(0, 2, 3, 1)), axis=1)
            axis.imshow(strip.squeeze(-1) if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=255)
            axis.set_yticks([])
            axis.set_xticks([])
            axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        caption = f"{dataset}: first {GRID_IMAGES} test images"
        lines += _save(figure, plots_dir, f"{dataset}_reconstructions.png", caption)
    return lines


def _save(figure: Any, plots_dir: Path, file: str, caption: str) -> list[str]:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    atomic_write(plots_dir / file, lambda path: figure.savefig(path, dpi=110, format="png"))
    plt.close(figure)
    return [f"![{caption}](plots/{file})", ""]


def write_report(results_dir: Path, steps: int) -> Path:
    """Regenerate RESULTS.md and plots/ beside `results_dir` (for the default benchmarks/results: benchmarks/RESULTS.md,
    benchmarks/plots; a scratch --results-dir leaves the committed report alone) from every result file (and
    speed.json from bench_speed.py).

    Main tables: one per data set and budget, for runs at the current defaults of their preset. Plots: runs of
    `steps` steps (falling back to the largest budget with runs of several presets)."""
    records = load_records(results_dir)
    report_dir = results_dir.resolve().parent
    # The hand-written notes live beside the report they belong to (benchmarks/NOTES.md for the default one).
    notes = report_dir / "NOTES.md"
    shown = (
        results_dir.resolve().relative_to(BENCHMARK_DIR.parent)
        if results_dir.resolve().is_relative_to(BENCHMARK_DIR.parent)
        else results_dir
    )
    lines = [
        "# Quantizer benchmark results",
        "",
        f"Generated by `python benchmarks/compare_quantizers.py --report-only --results-dir {shown}` from the files in"
        f" `{shown}/` (one JSON per run). Do not edit by hand: edit the NOTES.md beside this file, which is appended"
        " below.",
        "",
        f"Protocol: plain PyTorch loop through `samp_training_step` (the step ArcVQTrainer takes: schedule step t,"
        f" the model's loss, backward, update), Adam lr {LEARNING_RATE}, batch {BATCH_SIZE}, MSE / data variance"
        " (variance of the [-1, 1] training pixels = var(train / 255) * 4),"
        " the paper's VQ-VAE (hidden 128, 2 residual layers of 32, K=512, D=64, beta 0.25). Metrics from"
        " `arcvq_hf.evaluation` on the whole test split: utilization / perplexity / dead codes over all test tokens,"
        " PSNR / SSIM / L1 per image on outputs clamped to [0, 1] in float, averaged; LPIPS and rFID (when"
        " measured) on the same clamped outputs, see the caption under each table. s/step is wall time of the"
        " training step on a shared 2-core machine (other jobs were running: see `load_average_*` in the JSON"
        " files), so compare s/step only through the ratios of `bench_speed.py` below. Peak RSS is the run's own"
        " process (data, model, optimizer, evaluation).",
        "",
    ]
    budgets = sorted({r["steps"] for r in records if is_default_run(r)}, reverse=True)
    for dataset in DATASETS:
        for budget in budgets:
            table = main_table(records, dataset, budget)
            if len(table) > 2:
                caption = perceptual_caption(records, dataset, budget)
                lines += [f"## {dataset}, {budget} steps, current defaults of each preset", "", *table, "", caption, ""]
    lines += [
        "## Every ArcVQ run (the SAMP sweep)",
        "",
        "alpha = ball_growth_rate, lambda = arc_weight_decay, gamma0 = arc_weight, s = arc_scale, m = arc_margin."
        " Utilization is on the test split at the listed steps.",
        "",
        *sweep_table(records),
        "",
    ]
    speed_file = BENCHMARK_DIR / "speed.json"
    if speed_file.exists():
        lines += [
            "## Speed and memory (benchmarks/bench_speed.py)",
            "",
            *speed_lines(json.loads(speed_file.read_text())),
        ]
    plots = write_plots(records, results_dir, _plot_budget(records, steps), report_dir / "plots")
    lines += ["## Plots", "", *plots]
    if notes.exists():
        lines += ["", notes.read_text()]
    path = report_dir / "RESULTS.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _plot_budget(records: list[dict[str, Any]], steps: int) -> int:
    """`steps` if at least two presets have default runs at that budget, else the largest budget that has."""
    presets_per_budget: dict[int, set[str]] = {}
    for r in records:
        if is_default_run(r):
            presets_per_budget.setdefault(r["steps"], set()).add(r["preset"])
    if len(presets_per_budget.get(steps, ())) >= 2:
        return steps
    candidates = [budget for budget, presets in presets_per_budget.items() if len(presets) >= 2]
    return max(candidates, default=steps)


def speed_lines(speed: dict[str, Any]) -> list[str]:
    lines = [f"Command: `{speed['command']}` ({speed['note']})", ""]
    lines += ["| measurement | value | target |", "|---|---|---|"]
    for row in speed["rows"]:
        lines.append(f"| {row['what']} | {row['value']} | {row.get('target', '')} |")
    return [*lines, ""]


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--presets", nargs="+", default=list(PRESET_ORDER), choices=PRESET_ORDER + OPTION_PRESETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=250, help="test utilization every this many steps")
    parser.add_argument("--override", action="append", default=[], help=f"NAME=VALUE, NAME in {SWEEP_KNOBS}")
    parser.add_argument("--quick", action="store_true", help="one seed, 200 steps, evaluation every 100")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--report-only", action="store_true", help="only rebuild RESULTS.md and the plots")
    parser.add_argument("--report-steps", type=int, default=None, help="budget of the main tables (default --steps)")
    parser.add_argument(
        "--perceptual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="LPIPS and rFID in each run's final evaluation (default: on when their weights are installed)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="train under bf16 autocast with channels_last weights (files named *_bf16cl; the main tables keep the "
        "float32 protocol runs, the sweep table lists both)",
    )
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_every = args.seeds[:1], 200, 100
    if args.perceptual is None:
        args.perceptual = not args.report_only and perceptual_weights_available()
    elif args.perceptual:
        require_perceptual_weights()  # asked for explicitly: missing weights stop the grid before it starts
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.single:
        run_single(args)
        return
    overrides = parse_overrides(args.override)
    if not args.report_only:
        for seed in args.seeds:
            for dataset in args.datasets:
                for preset in args.presets:
                    name = run_name(dataset, preset, seed, args.steps, overrides, args.fast)
                    if (args.results_dir / f"{name}.json").exists():
                        print(f"skip {name} (done)", flush=True)
                        continue
                    print(f"run {name}", flush=True)
                    command = [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--single",
                        "--datasets",
                        dataset,
                        "--presets",
                        preset,
                        "--seeds",
                        str(seed),
                        "--steps",
                        str(args.steps),
                        "--eval-every",
                        str(args.eval_every),
                        "--results-dir",
                        str(args.results_dir),
                        "--perceptual" if args.perceptual else "--no-perceptual",
                        *(f"--override={item}" for item in args.override),
                        *(["--fast"] if args.fast else []),
                    ]
                    subprocess.run(command, check=True)
    print(f"wrote {write_report(args.results_dir, args.report_steps or 1500)}")


if __name__ == "__main__":
    main()
