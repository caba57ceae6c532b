"""Codebook scaling on the photo corpus (issue 13): does ArcVQ keep its codebook in use as K grows?

K in {512, 2048, 8192} (D = 64, the default vqvae backbone) for `arcvq`, `no-arc` and `vq-baseline`, all at one
budget. Each run is `examples/train_arcvq.py --dataset photos` in its own subprocess (random resized 32 px crops of
the 51 training photos, Adam 3e-4, batch 64, bf16 autocast + channels_last on CPU) and is then measured twice with
`arcvq_hf.evaluation.command` (the one evaluation loop):

- `test`: the 189 fixed multi-scale 32 px crops of the 9 held-out photos (what the table reports);
- `train_split`: the same crops of the 51 training photos, the evidence the shipped backbone size is chosen on
  (choosing on held-out photos would tune to the evaluation split).

Each run writes `benchmarks/codebook-scaling/results/<preset>_K<K>_s<seed>_<steps>steps.json`; runs whose file
exists are skipped. RESULTS.md and the plots beside the results are rebuilt from all files present, with
NOTES.md (hand-written) appended.

    ARCVQ_PHOTO_CORPUS=data/photo-corpus python benchmarks/codebook_scaling.py --steps 2000 --seeds 0 --jobs 2
    ARCVQ_PHOTO_CORPUS=data/photo-corpus python benchmarks/codebook_scaling.py --seeds 0 --perceptual --jobs 2
    python benchmarks/codebook_scaling.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from arcvq_hf.utils.io_utils import atomic_write_json, atomic_write_text

BENCHMARK_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCHMARK_DIR.parent
OUTPUT_DIR = BENCHMARK_DIR / "codebook-scaling"
PRESETS = ("arcvq", "no-arc", "vq-baseline")
CODEBOOK_SIZES = (512, 2048, 8192)
BATCH_SIZE = 64
# Columns of the table: (record key, heading, format).
COLUMNS = (
    ("codebook_utilization", "utilization", "{:.1%}"),
    ("used_codes", "codes used", "{:.0f}"),
    ("perplexity", "perplexity", "{:.1f}"),
    ("dead_codes", "dead codes", "{:.0f}"),
    ("psnr", "PSNR dB", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("lpips", "LPIPS", "{:.3f}"),
    ("rfid", "rFID (189)", "{:.1f}"),
)


def run_name(preset: str, codebook_size: int, seed: int, steps: int) -> str:
    return f"{preset}_K{codebook_size}_s{seed}_{steps}steps"


def training_command(preset: str, codebook_size: int, seed: int, steps: int, output_dir: Path) -> list[str]:
    return [
        sys.executable,
        "examples/train_arcvq.py",
        "--dataset", "photos",
        "--preset", preset,
        "--codebook_size", str(codebook_size),
        "--output_dir", str(output_dir),
        "--max_steps", str(steps),
        "--per_device_train_batch_size", str(BATCH_SIZE),
        "--bf16", "true", "--channels_last", "true", "--use_cpu",
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "100",
        "--seed", str(seed), "--report_to", "none",
    ]  # fmt: skip


def evaluation_command(folder: Path, split: str, output: Path, perceptual: bool) -> list[str]:
    command = [sys.executable, "-m", "arcvq_hf.evaluation", str(folder), "--dataset", "photos", "--eval_split", split]
    return command + ["--output", str(output)] + (["--perceptual"] if perceptual else [])


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def measure(folder: Path, split: str, perceptual: bool, log: Any) -> dict[str, Any]:
    """`arcvq_hf.evaluation.command` of a trained run folder on `split` (test / train), unprefixed metric names."""
    output = folder.parent / f"{folder.name}.{split}.json"
    command = evaluation_command(folder, split, output, perceptual)
    subprocess.run(command, cwd=REPO_DIR, env=_subprocess_env(), stdout=log, stderr=subprocess.STDOUT, check=True)
    record = json.loads(output.read_text())
    return {key.removeprefix("eval_"): value for key, value in record.items() if key.startswith("eval_")}


def run_one(preset: str, codebook_size: int, seed: int, steps: int, runs_dir: Path, perceptual: bool) -> Path:
    """Train, measure on both splits, write the result file; returns its path."""
    name = run_name(preset, codebook_size, seed, steps)
    folder = runs_dir / name
    train = training_command(preset, codebook_size, seed, steps, folder)
    with (runs_dir / f"{name}.log").open("w") as log:
        start = time.time()
        subprocess.run(train, cwd=REPO_DIR, env=_subprocess_env(), stdout=log, stderr=subprocess.STDOUT, check=True)
        train_seconds = time.time() - start
        test = measure(folder, "test", perceptual, log)
        train_split = measure(folder, "train", False, log)
    result = {
        "preset": preset,
        "codebook_size": codebook_size,
        "seed": seed,
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "train_seconds": round(train_seconds, 1),
        "command": shlex.join(["python", *train[1:]]),
        "test": test,
        "train_split": train_split,
    }
    return atomic_write_json(OUTPUT_DIR / "results" / f"{name}.json", result, indent=2)


def add_perceptual(result_path: Path, runs_dir: Path) -> Path:
    """Re-measure a finished run's held-out crops with LPIPS and rFID (its run folder must still exist)."""
    result = json.loads(result_path.read_text())
    with (runs_dir / f"{result_path.stem}.log").open("a") as log:
        result["test"] = measure(runs_dir / result_path.stem, "test", True, log)
    return atomic_write_json(result_path, result, indent=2)


def load_results() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((OUTPUT_DIR / "results").glob("*.json"))]


def _cell(records: list[dict[str, Any]], split: str, key: str, fmt: str) -> str:
    """Mean (± std over seeds when there are several) of `key`; `(n=k)` when only k of the row's runs measured it."""
    values = [record[split][key] for record in records if key in record[split]]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    text = fmt.format(mean)
    if len(values) > 1:
        spread = (sum((value - mean) ** 2 for value in values) / (len(values) - 1)) ** 0.5
        text += " ± " + fmt.format(spread).rstrip("%")
    return text + (f" (n={len(values)})" if len(values) < len(records) else "")


def table(results: list[dict[str, Any]], split: str) -> list[str]:
    """One row per (preset, K): means over the seeds present; a column only when some run measured it."""
    columns = [column for column in COLUMNS if any(column[0] in r[split] for r in results)]
    lines = ["| preset | K | seeds | " + " | ".join(h for _, h, _ in columns) + " | training s |"]
    lines.append("|---|---|---|" + "---|" * (len(columns) + 1))
    for preset in PRESETS:
        for size in CODEBOOK_SIZES:
            records = [r for r in results if r["preset"] == preset and r["codebook_size"] == size]
            if records:
                cells = [_cell(records, split, key, fmt) for key, _, fmt in columns]
                seconds = sum(r["train_seconds"] for r in records) / len(records)
                seeds = ",".join(str(r["seed"]) for r in sorted(records, key=lambda r: r["seed"]))
                lines.append(f"| {preset} | {size} | {seeds} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return lines


PLOTS = (
    ("codebook_utilization", "codebook utilization (held-out crops)"),
    ("perplexity", "code perplexity (held-out crops)"),
    ("psnr", "PSNR dB (held-out crops)"),
)


def plot(results: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, label in PLOTS:
        figure, axis = plt.subplots(figsize=(5, 3.5))
        for preset in PRESETS:
            by_size: dict[int, list[float]] = {}
            for r in results:
                if r["preset"] == preset and key in r["test"]:
                    by_size.setdefault(r["codebook_size"], []).append(r["test"][key])
            sizes = sorted(by_size)
            if sizes:  # the mean over the seeds present at each K
                axis.plot(sizes, [sum(by_size[k]) / len(by_size[k]) for k in sizes], marker="o", label=preset)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("codebook size K")
        axis.set_ylabel(label)
        axis.legend()
        figure.tight_layout()
        path = OUTPUT_DIR / "plots" / f"{key}_vs_K.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def write_report(results: list[dict[str, Any]]) -> Path:
    steps = ", ".join(str(step) for step in sorted({r["steps"] for r in results}))
    seeds = ", ".join(str(seed) for seed in sorted({r["seed"] for r in results}))
    example = results[0]["command"] if results else ""
    lines = [
        "# Codebook scaling on the photo corpus",
        "",
        f"Built by `python benchmarks/codebook_scaling.py` from {len(results)} runs: {steps} optimizer steps, batch "
        f"{BATCH_SIZE}, seed(s) {seeds}, the default vqvae backbone (hidden 128, D = 64, x4 downsampling). "
        "Training s: wall time of one run, two runs side by side on 2 cores (at times beside other jobs). One run:",
        "",
        f"    {example}",
        "",
        "## Held-out photos (189 fixed multi-scale 32 px crops of the 9 test photos)",
        "",
        *table(results, "test"),
        "",
        "## Training photos (the same crops of the 51 training photos; the evidence for choosing K)",
        "",
        *table(results, "train_split"),
        "",
        " ".join(f"![{key}](plots/{key}_vs_K.png)" for key, _ in PLOTS),
        "",
    ]
    notes = OUTPUT_DIR / "NOTES.md"
    if notes.exists():  # the hand-written reading of the numbers, kept out of the generated part
        lines += [notes.read_text().strip(), ""]
    if results:
        plot(results)
    return atomic_write_text(OUTPUT_DIR / "RESULTS.md", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--codebook-sizes", type=int, nargs="+", default=list(CODEBOOK_SIZES))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    parser.add_argument("--runs-dir", type=Path, default=REPO_DIR / "runs" / "codebook-scaling")
    parser.add_argument(
        "--perceptual",
        action="store_true",
        help="LPIPS and rFID on the held-out crops (also re-measures the finished runs asked for whose folders remain)",
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        from concurrent.futures import ThreadPoolExecutor

        args.runs_dir.mkdir(parents=True, exist_ok=True)
        asked = [(preset, size, seed) for size in args.codebook_sizes for preset in args.presets for seed in args.seeds]
        todo, unmeasured = [], []
        for preset, size, seed in asked:
            result_path = OUTPUT_DIR / "results" / f"{run_name(preset, size, seed, args.steps)}.json"
            if not result_path.exists():
                todo.append((preset, size, seed))
            # With --perceptual, a finished run without LPIPS / rFID is re-measured when its folder is still there.
            elif (
                args.perceptual
                and "lpips" not in json.loads(result_path.read_text())["test"]
                and (args.runs_dir / result_path.stem).is_dir()
            ):
                unmeasured.append(result_path)
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(run_one, preset, size, seed, args.steps, args.runs_dir, args.perceptual)
                for preset, size, seed in todo
            ]
            futures += [pool.submit(add_perceptual, path, args.runs_dir) for path in unmeasured]
            for future in futures:
                print("wrote", future.result(), flush=True)
    print("wrote", write_report(load_results()))


if __name__ == "__main__":
    main()
