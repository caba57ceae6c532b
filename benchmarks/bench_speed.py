"""Speed and memory of the SAMP quantizer, as ratios measured in one run.

1. Training step (forward + backward + Adam) of the paper's VQ-VAE on a batch of 256 mnist-5k digits, for the
   presets `arcvq`, `cosine-only` and `vq-baseline` with the same backbone. The three models are stepped in turn,
   round after round, so that load from other processes hits all three alike; the medians give the ratios.
   bf16 autocast + channels_last runs in the first `--bf16-rounds` rounds only (on a CPU without bf16 instructions
   it is an order of magnitude slower). With `--authors-code` the authors' release is stepped on the same batches.
1b. Codebook-size scaling: a training step of the photo backbone (the settings of checkpoints/arcvq-vae-photos,
   preset `arcvq`) on a batch of 64 random 32x32 RGB crops at K=8192 against K=512, interleaved likewise, with
   `--photo-threads` torch threads (float32; bf16 + channels_last in the first `--bf16-rounds` rounds).
   `--baseline-quantizer FILE` (a quantization.py of another revision, e.g. from `git show`) adds the same float32
   models with that file's quantizer layer swapped in, stepped in the same rounds: before / after in one run.
2. The arc-margin loss alone (forward + backward) at K=512, N=12544, D=64 (one mnist batch of tokens).
3. The arc-margin loss at K=16384, D=16, N=8192: chunked (`arc_margin_loss`, the config's default chunk size)
   against the dense K x N formula (`dense_arc_margin_loss`). Each variant runs in its own subprocess; its extra
   peak memory is the growth of the process's peak RSS (`ru_maxrss`) over the forward + backward, after the inputs
   exist (Linux VmHWM, reset just before). Values and gradients of the two are compared.

    python benchmarks/bench_speed.py            # writes benchmarks/speed.json, printed as a table
    git show HEAD:arcvq_hf/model/quantization.py > /tmp/before_quantization.py
    python benchmarks/bench_speed.py --threads 2 --authors-code /tmp/authors/ArcVQ-VAE \
        --baseline-quantizer /tmp/before_quantization.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from arcvq_hf import ArcVQConfig, ArcVQModel
from arcvq_hf.data.builtin import mnist_arrays
from arcvq_hf.data.transforms import pixel_variance
from arcvq_hf.model.quantization import arc_margin_loss
from arcvq_hf.utils.io_utils import atomic_write_json

BENCHMARK_DIR = Path(__file__).resolve().parent
# The dense K x N reference of the arc loss lives with the tests (it is not part of the package).
sys.path.insert(0, str(BENCHMARK_DIR.parent / "tests"))
from arc_loss_reference import dense_arc_margin_loss  # noqa: E402

# The authors' release on these machines (docs/method.md §4).
AUTHORS_ARC_LOSS_LARGE_SECONDS = 2.19
AUTHORS_STEP_SECONDS = 0.362
# The photo backbone of codebook-size scaling: these settings of the shipped photo tokenizer's config.
PHOTO_CONFIG = BENCHMARK_DIR.parent / "checkpoints" / "arcvq-vae-photos" / "config.json"
PHOTO_BACKBONE_KEYS = (
    "backbone",
    "num_channels",
    "hidden_size",
    "residual_hidden_size",
    "num_residual_layers",
    "base_channels",
    "channel_multipliers",
    "layers_per_block",
    "norm_num_groups",
    "latent_channels",
    "attention_at_lowest_resolution",
    "codebook_dim",
    "data_variance",
    "reconstruction_loss",
    "arc_weight",
    "arc_weight_decay",
    "arc_scale",
    "arc_margin",
    "arc_top_k",
    "ball_growth_rate",
    "quantizer_chunk_elements",
)
PHOTO_CODEBOOK_SIZES = (512, 8192)


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (`VmRSS`, `VmHWM`) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> float:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux `clear_refs` 5); returns the RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _authors_training_step(code_dir: Path, variance: float) -> Callable[[torch.Tensor, int], None]:
    """One optimizer step of the authors' release (their `modules.Model` and main.py's loss), built from a local
    checkout of their code (github goals4292/ArcVQ-VAE, folder ArcVQ-VAE/; it needs einops). Nothing of it is copied
    here: it is imported from `code_dir` at run time."""
    sys.path.insert(0, str(code_dir))
    from modules import Model  # the authors' VQ-VAE

    torch.manual_seed(0)
    model = Model(1, 128, 2, 32, 512, 64, 0.25, use_arc_loss=True, arc_s=5.0, arc_m=0.1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step(batch: torch.Tensor, index: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        reconstruction, quantizer_and_arc_loss, _, _ = model(batch, step=index, gamma=1.0, gamma_decay=5e-4)
        (torch.nn.functional.mse_loss(reconstruction, batch) / variance + quantizer_and_arc_loss).backward()
        optimizer.step()

    return step


def load_quantizer_module(path: Path) -> ModuleType:
    """A quantization.py of another revision, imported standalone (model/quantization.py imports nothing of the
    package at run time)."""
    spec = importlib.util.spec_from_file_location("baseline_quantization", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _our_training_step(
    preset: str | ArcVQConfig,
    variance: float,
    fast: bool,
    quantizer_module: ModuleType | None = None,
    *,
    channels_last: bool | None = None,
    compiled: bool = False,
) -> Callable[[torch.Tensor, int], None]:
    """One optimizer step of our model (a preset on the mnist backbone, or a config); `fast`: bf16 autocast and
    channels_last weights (assignment and the arc loss stay float32); `quantizer_module`: that module's quantizer
    layer replaces ours, with the same weights; `channels_last` (default: `fast`) alone, without bf16; `compiled`:
    the forward under `torch.compile`."""
    torch.manual_seed(0)
    if isinstance(preset, ArcVQConfig):
        config = preset
    else:
        config = ArcVQConfig.from_preset(preset, num_channels=1, data_variance=variance)
    model = ArcVQModel(config).train()
    if quantizer_module is not None:
        swapped = quantizer_module.SphericalAngularMarginQuantizer.from_config(config)
        swapped.load_state_dict(model.quantizer.state_dict())
        model.quantizer = swapped
    if fast if channels_last is None else channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    forward = torch.compile(model) if compiled else model

    def step(batch: torch.Tensor, index: int) -> None:
        model.set_training_step(index)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            loss = forward(batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _interleave(
    steps: dict[str, Callable[[torch.Tensor, int], None]],
    next_batch: Callable[[], torch.Tensor],
    rounds: int,
    slow_rounds: int,
    slow: tuple[str, ...],
) -> dict[str, list[float]]:
    """Each round, every step in turn on the round's batch; the first two rounds warm up. The `slow` steps run in
    the first `slow_rounds` timed rounds only (and in the warm-up)."""
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds + 2):
        batch = next_batch()
        for name, step in steps.items():
            if name in slow and round_index >= 2 + slow_rounds:
                continue
            started = time.perf_counter()
            step(batch, round_index)
            if round_index >= 2:
                samples[name].append(time.perf_counter() - started)
    return samples


def time_training_steps(
    rounds: int,
    authors_code: Path | None = None,
    bf16_rounds: int = 3,
    baseline_quantizer: ModuleType | None = None,
) -> dict[str, list[float]]:
    """Seconds of one optimizer step per variant, `rounds` samples each, interleaved on the same batches: the presets
    `vq-baseline`, `cosine-only`, `arcvq` in float32, `arcvq` with bf16 autocast + channels_last (`arcvq-fast`,
    `bf16_rounds` samples), `arcvq` with the baseline quantizer (`arcvq-baseline-quantizer`) when given, and the
    authors' release when `authors_code` is given."""
    train, _, _, _ = mnist_arrays()
    pixels = torch.from_numpy(train)
    variance = pixel_variance(train, max_images=None)
    steps = {
        preset: _our_training_step(preset, variance, fast=False) for preset in ("vq-baseline", "cosine-only", "arcvq")
    }
    if baseline_quantizer is not None:
        steps["arcvq-baseline-quantizer"] = _our_training_step("arcvq", variance, False, baseline_quantizer)
    steps["arcvq-fast"] = _our_training_step("arcvq", variance, fast=True)
    working_dir = os.getcwd()
    if authors_code is not None:
        steps["authors"] = _authors_training_step(authors_code, variance)
        os.chdir(tempfile.mkdtemp())  # their quantizer appends a usage log to the working directory every forward
    generator = torch.Generator().manual_seed(0)
    try:
        return _interleave(
            steps,
            lambda: pixels[torch.randint(len(pixels), (256,), generator=generator)],
            rounds,
            bf16_rounds,
            ("arcvq-fast",),
        )
    finally:
        os.chdir(working_dir)


def photo_config(codebook_size: int) -> ArcVQConfig:
    """Preset `arcvq` with the backbone and arc settings of the shipped photo tokenizer, at `codebook_size` codes."""
    shipped = json.loads(PHOTO_CONFIG.read_text())
    settings = {key: shipped[key] for key in PHOTO_BACKBONE_KEYS if key in shipped}
    return ArcVQConfig.from_preset("arcvq", **settings, codebook_size=codebook_size)


def time_photo_steps(
    rounds: int, bf16_rounds: int = 3, baseline_quantizer: ModuleType | None = None
) -> dict[str, list[float]]:
    """Seconds of one optimizer step of the photo backbone at each K of `PHOTO_CODEBOOK_SIZES` (`K512`, `K8192`;
    `-bf16` with bf16 autocast + channels_last, `-baseline-quantizer` with the baseline's layer), interleaved on
    the same batches of 64 random 32x32 RGB crops in [-1, 1]."""
    steps = {}
    for size in PHOTO_CODEBOOK_SIZES:
        config = photo_config(size)
        steps[f"K{size}"] = _our_training_step(config, config.data_variance, fast=False)
        if baseline_quantizer is not None:
            steps[f"K{size}-baseline-quantizer"] = _our_training_step(config, 0.0, False, baseline_quantizer)
    for size in PHOTO_CODEBOOK_SIZES:
        steps[f"K{size}-bf16"] = _our_training_step(photo_config(size), 0.0, fast=True)
    generator = torch.Generator().manual_seed(0)
    slow = tuple(name for name in steps if name.endswith("-bf16"))
    return _interleave(steps, lambda: torch.rand(64, 3, 32, 32, generator=generator) * 2 - 1, rounds, bf16_rounds, slow)


def time_arc_loss(num_codes: int, num_latents: int, dim: int, repeats: int) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(num_latents, dim, generator=generator).requires_grad_()
    codebook = torch.randn(num_codes, dim, generator=generator)
    chunk = ArcVQConfig().quantizer_chunk_elements
    seconds = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        arc_margin_loss(latents, codebook, max_elements=chunk).backward()
        seconds.append(time.perf_counter() - started)
        latents.grad = None
    return seconds[1:]


def memory_child(variant: str, output: str, threads: int) -> None:
    """Subprocess body: one forward + backward at K=16384, D=16, N=8192; write value, gradient, peak growth."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    latents = (torch.randn(8192, 16, generator=generator) * 3).requires_grad_()
    codebook = torch.randn(16384, 16, generator=generator)
    chunk = ArcVQConfig().quantizer_chunk_elements
    before = _reset_peak_rss()
    started = time.perf_counter()
    if variant == "chunked":
        loss = arc_margin_loss(latents, codebook, max_elements=chunk)
    else:
        loss = dense_arc_margin_loss(latents, codebook)
    loss.backward()
    seconds = time.perf_counter() - started
    extra = _status_mb("VmHWM") - before
    timings = [seconds]
    if variant == "chunked":  # a few more timings (memory was measured on the first call)
        for _ in range(2):
            latents.grad = None
            started = time.perf_counter()
            arc_margin_loss(latents, codebook, max_elements=chunk).backward()
            timings.append(time.perf_counter() - started)
    np.savez(output, loss=loss.detach().numpy(), grad=latents.grad.numpy(), extra_mb=extra, seconds=np.array(timings))


def measure_large_arc_loss(threads: int) -> dict[str, Any]:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for variant in ("chunked", "dense"):
            output = os.path.join(folder, f"{variant}.npz")
            subprocess.run(
                [sys.executable, __file__, "--memory-child", variant, output, "--threads", str(threads)], check=True
            )
            with np.load(output, allow_pickle=False) as arrays:
                results[variant] = {key: arrays[key] for key in arrays.files}
    chunked, dense = results["chunked"], results["dense"]
    return {
        "chunked_extra_mb": float(chunked["extra_mb"]),
        "dense_extra_mb": float(dense["extra_mb"]),
        "chunked_seconds": [float(s) for s in chunked["seconds"]],
        "dense_seconds": float(dense["seconds"][0]),
        "value_difference": float(abs(chunked["loss"] - dense["loss"])),
        "max_gradient_difference": float(np.abs(chunked["grad"] - dense["grad"]).max()),
        "max_gradient": float(np.abs(dense["grad"]).max()),
        "relative_gradient_difference": float(
            np.abs(chunked["grad"] - dense["grad"]).max() / np.abs(dense["grad"]).max()
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved training-step samples per preset")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is steadier on a loaded machine)")
    parser.add_argument("--output", type=Path, default=BENCHMARK_DIR / "speed.json")
    parser.add_argument(
        "--authors-code",
        type=Path,
        default=None,
        help="a local checkout of the authors' ArcVQ-VAE/ folder: their training step is timed alongside ours",
    )
    parser.add_argument(
        "--photo-rounds", type=int, default=None, help="interleaved photo-step samples per K (default: --rounds)"
    )
    parser.add_argument("--photo-threads", type=int, default=1, help="torch threads for the photo steps")
    parser.add_argument(
        "--arc-threads", type=int, default=None, help="torch threads for the arc-loss rows (default: --threads)"
    )
    parser.add_argument(
        "--bf16-rounds", type=int, default=3, help="timed rounds of the bf16 + channels_last steps (slow on CPU)"
    )
    parser.add_argument(
        "--baseline-quantizer",
        type=Path,
        default=None,
        help="a quantization.py of another revision: the float32 arcvq steps are also timed with its layer",
    )
    parser.add_argument("--memory-child", nargs=2, metavar=("VARIANT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child, args.threads)
        return
    baseline = load_quantizer_module(args.baseline_quantizer) if args.baseline_quantizer else None
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.photo_threads)
    photo = time_photo_steps(
        args.rounds if args.photo_rounds is None else args.photo_rounds, args.bf16_rounds, baseline
    )
    photo_median = {name: statistics.median(values) for name, values in photo.items()}
    torch.set_num_threads(args.threads)
    steps = time_training_steps(args.rounds, args.authors_code, args.bf16_rounds, baseline)
    median = {preset: statistics.median(values) for preset, values in steps.items()}
    arc_threads = args.threads if args.arc_threads is None else args.arc_threads
    torch.set_num_threads(arc_threads)
    small = time_arc_loss(512, 12544, 64, repeats=10)
    large = measure_large_arc_loss(arc_threads)
    load_after = os.getloadavg()[0]
    before_k512 = photo_median.get("K512-baseline-quantizer", float("nan"))
    before_k8192 = photo_median.get("K8192-baseline-quantizer", float("nan"))
    rows = [
        {
            "what": "ArcVQ step / plain VQ step (median of interleaved steps)",
            "value": f"{median['arcvq'] / median['vq-baseline']:.3f}x",
            "target": "<= 1.15x (issue 4)",
        },
        {
            "what": "ArcVQ step / cosine-only step",
            "value": f"{median['arcvq'] / median['cosine-only']:.3f}x",
            "target": "<= 1.05x (docs/method.md §4.2)",
        },
        {
            "what": "median s/step arcvq / cosine-only / vq-baseline (batch 256, 28x28)",
            "value": " / ".join(f"{median[p]:.3f}" for p in ("arcvq", "cosine-only", "vq-baseline")),
            "target": f"<= {0.8 * AUTHORS_STEP_SECONDS:.3f} s on an idle machine (0.8x the authors' 0.362 s)",
        },
        {
            "what": "ArcVQ step with bf16 autocast + channels_last / float32 ArcVQ step",
            "value": f"{median['arcvq-fast'] / median['arcvq']:.3f}x",
            "target": "",
        },
        *(
            [
                {
                    "what": "ArcVQ step / the authors' release step (float32; bf16 + channels_last), same batches",
                    "value": f"{median['arcvq'] / median['authors']:.3f}x; "
                    f"{median['arcvq-fast'] / median['authors']:.3f}x",
                    "target": "<= 0.40x (issue 25; 0.6x issue 13)",
                },
                *(
                    [
                        {
                            "what": "same, float32, with the baseline quantizer swapped in (before), same batches",
                            "value": f"{median['arcvq-baseline-quantizer'] / median['authors']:.3f}x",
                            "target": "",
                        }
                    ]
                    if "arcvq-baseline-quantizer" in median
                    else []
                ),
                {
                    "what": "median s/step authors' release",
                    "value": f"{median['authors']:.3f}",
                    "target": "",
                },
            ]
            if "authors" in median
            else []
        ),
        *(
            [
                {
                    "what": "ArcVQ step (mnist, float32) / the same with the baseline quantizer",
                    "value": f"{median['arcvq'] / median['arcvq-baseline-quantizer']:.3f}x",
                    "target": "",
                }
            ]
            if "arcvq-baseline-quantizer" in median
            else []
        ),
        {
            "what": f"photo step at K=8192 / at K=512, float32 ({args.photo_threads} thread(s), 64 crops of 32x32)",
            "value": f"{photo_median['K8192'] / photo_median['K512']:.3f}x",
            "target": "<= 1.8x (issue 25; docs/method.md §4.2)",
        },
        *(
            [
                {
                    "what": "same with the baseline quantizer (before), same batches",
                    "value": f"{before_k8192 / before_k512:.3f}x (after / before: K=8192 step "
                    f"{photo_median['K8192'] / before_k8192:.3f}x, K=512 step "
                    f"{photo_median['K512'] / before_k512:.3f}x)",
                    "target": "",
                }
            ]
            if "K512-baseline-quantizer" in photo_median
            else []
        ),
        {
            "what": "median s/step photo K=512 / K=8192, float32",
            "value": f"{photo_median['K512']:.3f} / {photo_median['K8192']:.3f}",
            "target": "",
        },
        {
            "what": f"photo step with bf16 autocast + channels_last / float32 at K=512; K=8192 / K=512 in bf16 "
            f"({args.bf16_rounds} rounds)",
            "value": f"{photo_median['K512-bf16'] / photo_median['K512']:.2f}x; "
            f"{photo_median['K8192-bf16'] / photo_median['K512-bf16']:.3f}x",
            "target": "",
        },
        {
            "what": "arc loss fwd+bwd, K=512 N=12544 D=64 (min / median s)",
            "value": f"{min(small):.4f} / {statistics.median(small):.4f}",
            "target": "authors 0.044 s",
        },
        {
            "what": "arc loss fwd+bwd, K=16384 N=8192 D=16, chunked (s, first call then repeats)",
            "value": ", ".join(f"{s:.3f}" for s in large["chunked_seconds"]),
            "target": "<= 1.0 s (authors 2.19 s)",
        },
        {
            "what": "same, dense K x N formula (s)",
            "value": f"{large['dense_seconds']:.3f}",
            "target": "",
        },
        {
            "what": "extra peak RSS of the arc loss at K=16384: chunked / dense (MB)",
            "value": f"{large['chunked_extra_mb']:.0f} / {large['dense_extra_mb']:.0f}",
            "target": "chunked <= 256 MB (authors about 1.5 GiB)",
        },
        {
            "what": "chunked vs dense: loss value difference; largest gradient difference",
            "value": f"{large['value_difference']:.2e}; {large['max_gradient_difference']:.2e} "
            f"(largest gradient {large['max_gradient']:.2e}; difference / largest gradient "
            f"{large['relative_gradient_difference']:.1e})",
            "target": "<= 1e-5",
        },
    ]
    record = {
        "command": shlex.join(["python", "benchmarks/bench_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "note": f"torch threads: {args.threads} (photo steps: {args.photo_threads}, arc-loss rows: {arc_threads}); "
        f"load average {load_before:.1f} before, {load_after:.1f} after "
        f"(a shared 2-core machine: absolute seconds include other jobs' load, ratios much less so)",
        "rows": rows,
        "training_step_seconds": steps,
        "photo_step_seconds": photo,
        "photo_threads": args.photo_threads,
        "baseline_quantizer": str(args.baseline_quantizer) if args.baseline_quantizer else None,
        "arc_loss_small_seconds": small,
        "large_arc_loss": large,
        "chunk_elements": ArcVQConfig().quantizer_chunk_elements,
    }
    atomic_write_json(args.output, record, indent=1)
    for row in rows:
        print(f"{row['what']}: {row['value']}   [{row['target']}]")


if __name__ == "__main__":
    main()
