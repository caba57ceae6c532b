"""RESULTS.md and plots of the field-baselines benchmark, rebuilt from the result files (`run.py --report-only`)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from arcvq_hf.utils.io_utils import atomic_write_text

# Columns: (title, result key, scale, decimals).
COLUMNS = (
    ("utilization %", "codebook_utilization", 100.0, 1),
    ("perplexity", "perplexity", 1.0, 1),
    ("dead codes", "dead_codes", 1.0, 0),
    ("PSNR dB", "psnr", 1.0, 2),
    ("SSIM", "ssim", 1.0, 3),
    ("LPIPS", "lpips", 1.0, 3),
    ("rFID", "rfid", 1.0, 1),
    ("s/step", "seconds_per_step", 1.0, 2),
)


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(results_dir.glob("*.json"))]


def _cell(values: list[float], scale: float, decimals: int) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{decimals}f}"
    spread = statistics.stdev(values) * scale
    return f"{mean:.{decimals}f} ± {spread:.{decimals}f}"


def summary_rows(results: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Per requested K, one entry per row with its runs grouped (seeds)."""
    grouped: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        grouped[(result["requested_codebook_size"], result["row"])].append(result)
    tables: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (size, row), runs in sorted(grouped.items()):
        tables[size].append({"row": row, "runs": sorted(runs, key=lambda run: run["seed"])})
    for size in tables:
        tables[size].sort(key=lambda entry: -statistics.fmean(run["psnr"] for run in entry["runs"]))
    return tables


def markdown_tables(results: list[dict[str, Any]]) -> str:
    lines = []
    for size, entries in sorted(summary_rows(results).items()):
        first = entries[0]["runs"][0]
        lines.append(
            f"### K = {size} ({first['steps']} steps of batch {first['batch_size']}; "
            f"{first['eval_crops']} held-out crops = {first['eval_tokens']:,} tokens measured)"
        )
        lines.append("")
        header = ["row", "K", "seeds", "tokens / code"] + [title for title, *_ in COLUMNS] + ["rFID images / side"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for entry in entries:
            runs = entry["runs"]
            cells = [
                f"`{entry['row']}`",
                str(runs[0]["codebook_size"]),
                " ".join(str(run["seed"]) for run in runs),
                f"{runs[0]['tokens_per_code']:.1f}",
            ]
            for _, key, scale, decimals in COLUMNS:
                cells.append(_cell([run[key] for run in runs if key in run], scale, decimals))
            cells.append(str(runs[0].get("rfid_num_images", "n/a")))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def per_seed_table(results: list[dict[str, Any]]) -> str:
    # The training loss (MSE / data variance on training crops, last 3 logged values) is what configurations are
    # chosen by; runs recorded before it was written show a dash.
    header = "| row | K | seed | train loss | utilization % | perplexity | PSNR dB | SSIM | LPIPS | rFID |"
    lines = [header, "|" + "---|" * 10]
    for result in sorted(results, key=lambda r: (r["requested_codebook_size"], r["row"], r["seed"])):
        train_loss = result.get("train_reconstruction_loss")
        lines.append(
            f"| `{result['row']}` | {result['codebook_size']} | {result['seed']} | "
            f"{'-' if train_loss is None else f'{train_loss:.4f}'} | "
            f"{100 * result['codebook_utilization']:.1f} | {result['perplexity']:.1f} | {result['psnr']:.2f} | "
            f"{result['ssim']:.3f} | {result.get('lpips', float('nan')):.3f} | {result.get('rfid', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def settings_table(results: list[dict[str, Any]]) -> str:
    seen: dict[str, dict[str, Any]] = {}
    for result in results:
        seen.setdefault(result["row"], result["settings"])
    lines = ["| row | settings |", "|---|---|"]
    for row, settings in sorted(seen.items()):
        text = ", ".join(f"{key}={value}" for key, value in settings.items())
        lines.append(f"| `{row}` | {text} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Utilization against PSNR, one panel per K, one point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = summary_rows(results)
    figure, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.5), squeeze=False)
    for axis, (size, entries) in zip(axes[0], sorted(tables.items()), strict=True):
        for entry in entries:
            xs = [100 * run["codebook_utilization"] for run in entry["runs"]]
            ys = [run["psnr"] for run in entry["runs"]]
            axis.scatter(xs, ys, label=entry["row"], s=40, marker="*" if entry["row"] == "arcvq" else "o")
        axis.set_title(f"K = {size}, held-out photo crops")
        axis.set_xlabel("codebook utilization (%)")
        axis.set_ylabel("PSNR (dB)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def readme_table(results: list[dict[str, Any]]) -> str:
    """The compact table README.md leads its results with: one line per row and K, best PSNR first."""
    lines = [
        "| quantizer | K | seeds | codes used % | perplexity | PSNR dB | SSIM | LPIPS | rFID |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, entries in sorted(summary_rows(results).items()):
        for entry in entries:
            runs = entry["runs"]
            cells = [f"`{entry['row']}`", str(runs[0]["codebook_size"]), str(len(runs))]
            for key, scale, decimals in (
                ("codebook_utilization", 100.0, 1),
                ("perplexity", 1.0, 0),
                ("psnr", 1.0, 2),
                ("ssim", 1.0, 3),
                ("lpips", 1.0, 3),
                ("rfid", 1.0, 0),
            ):
                cells.append(_cell([run[key] for run in runs if key in run], scale, decimals))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_between(text: str, begin: str, end: str, generated: str) -> str:
    """`text` with everything between the markers `begin` and `end` replaced (markers appended when absent)."""
    if begin not in text or end not in text:
        text = f"{text.rstrip()}\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{generated}\n{end}{tail}"


def write_report(results_dir: Path, output: Path, readme: Path | None = None) -> None:
    """Rewrite the generated part of RESULTS.md (between the markers), the plot, and README.md's table (between
    its own markers) from the result files."""
    results = load_results(results_dir)
    if not results:
        raise SystemExit(f"No result files in {results_dir}; run benchmarks/field_baselines/run.py first.")
    plot(results, output.parent / "plots" / "utilization_vs_psnr.png")
    generated = "\n\n".join(
        [
            "## Results (mean ± std over seeds; generated from results/ by `run.py --report-only`)",
            markdown_tables(results),
            "![utilization against PSNR](plots/utilization_vs_psnr.png)",
            "### Every run",
            per_seed_table(results),
            "### The settings of each row",
            settings_table(results),
        ]
    )
    text = output.read_text() if output.exists() else ""
    atomic_write_text(output, replace_between(text, "<!-- generated: begin -->", "<!-- generated: end -->", generated))
    if readme is not None and readme.exists():
        table = readme_table(results)
        marks = ("<!-- field-baselines: begin -->", "<!-- field-baselines: end -->")
        atomic_write_text(readme, replace_between(readme.read_text(), *marks, table))
