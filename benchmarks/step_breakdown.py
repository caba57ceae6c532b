"""Where the training step's time goes, ours against the authors' release, and what torch.compile buys on CPU.

The reference work of benchmarks/bench_speed.py (the paper's VQ-VAE, batch 256 of mnist-5k digits, float32, Adam),
three things measured in one run on the same batches:

1. A profile (torch.profiler, self CPU time per operator, summed over `--profile-steps` steps after warm-up) of our
   `arcvq` step and of the authors' step, grouped into convolutions (forward and backward), other matrix products,
   the optimizer, and the rest. Whatever our quantizer does, a step cannot take less than its convolutions, so the
   convolution time bounds the ratio to the authors' step from below.
2. Our step eager against the same model under `torch.compile` (inductor, CPU C++ kernels: fused elementwise work)
   and with channels_last weights (float32), interleaved round by round after a compile warm-up; medians, ratios.
3. Both against the authors' step, interleaved in the same rounds.

    python benchmarks/step_breakdown.py --authors-code /tmp/authors/ArcVQ-VAE     # writes step_breakdown.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from arcvq_hf.data.builtin import mnist_arrays
from arcvq_hf.data.transforms import pixel_variance
from arcvq_hf.utils.io_utils import atomic_write_json

BENCHMARK_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARK_DIR))
from bench_speed import _authors_training_step, _interleave, _our_training_step  # noqa: E402

Step = Callable[[torch.Tensor, int], None]
# Operator names (self CPU time) by group; the first group whose words appear in the name wins.
GROUPS = (
    ("convolutions", ("conv",)),
    ("other matrix products", ("addmm", "::mm", "bmm", "matmul", "linear")),
    ("optimizer", ("adam", "_foreach", "lerp", "addcdiv", "addcmul")),
)


def grouped_profile(step: Step, batch: torch.Tensor, steps: int) -> dict[str, float]:
    """Self CPU seconds per group over `steps` steps (after one warm-up step), and the total."""
    step(batch, 0)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for index in range(steps):
            step(batch, index + 1)
    seconds: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        name = event.key.lower()
        group = next((group for group, words in GROUPS if any(word in name for word in words)), "rest")
        seconds[group] += event.self_cpu_time_total / 1e6 / steps
    seconds["total"] = sum(seconds.values())
    return dict(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-code", type=Path, required=True, help="checkout of goals4292/ArcVQ-VAE/ArcVQ-VAE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6, help="timed interleaved rounds (after two warm-up rounds)")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--output", type=Path, default=BENCHMARK_DIR / "step_breakdown.json")
    args = parser.parse_args(argv)
    if not (args.authors_code / "modules.py").is_file():
        raise SystemExit(f"--authors-code {args.authors_code} holds no modules.py: point it at the ArcVQ-VAE/ folder.")
    torch.set_num_threads(args.threads)
    train, _, _, _ = mnist_arrays()
    pixels = torch.from_numpy(train)
    variance = pixel_variance(train, max_images=None)
    generator = torch.Generator().manual_seed(0)
    batches = [pixels[torch.randint(len(pixels), (256,), generator=generator)] for _ in range(args.rounds + 2)]

    def our_step(**options: bool) -> Step:
        return _our_training_step("arcvq", variance, False, **options)

    working_dir = os.getcwd()
    authors = _authors_training_step(args.authors_code, variance)
    os.chdir(tempfile.mkdtemp())  # their quantizer appends a usage log to the working directory every forward
    try:
        profiles = {
            "ours": grouped_profile(our_step(), batches[0], args.profile_steps),
            "authors": grouped_profile(authors, batches[0], args.profile_steps),
        }
        compile_started = time.perf_counter()
        compiled = our_step(compiled=True)
        compiled(batches[0], 0)
        compile_seconds = time.perf_counter() - compile_started
        samples = _interleave(
            {
                "ours": our_step(),
                "ours-compiled": compiled,
                "ours-channels-last": our_step(channels_last=True),
                "authors": authors,
            },
            iter(batches).__next__,
            args.rounds,
            0,
            (),
        )
        medians = {name: statistics.median(values) for name, values in samples.items()}
    finally:
        os.chdir(working_dir)

    conv_share = {name: groups.get("convolutions", 0.0) / groups["total"] for name, groups in profiles.items()}
    result: dict[str, Any] = {
        "command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *(argv or sys.argv[1:])]),
        "threads": args.threads,
        "load_average": os.getloadavg()[0],
        "profile_seconds_per_step": profiles,
        "convolution_share": conv_share,
        "median_seconds_per_step": medians,
        "compile_seconds": compile_seconds,
        "ratios": {
            "ours / authors": medians["ours"] / medians["authors"],
            "ours compiled / ours eager": medians["ours-compiled"] / medians["ours"],
            "ours compiled / authors": medians["ours-compiled"] / medians["authors"],
            "ours channels_last / ours": medians["ours-channels-last"] / medians["ours"],
            # No quantizer, however fast, can take the step below its convolutions.
            "lower bound of ours / authors at our convolution time": profiles["ours"].get("convolutions", 0.0)
            / profiles["authors"]["total"],
        },
    }
    atomic_write_json(args.output, result)
    for name, groups in profiles.items():
        print(name, {group: round(value, 3) for group, value in groups.items()})
    for name, value in result["ratios"].items():
        print(f"{name}: {value:.3f}")
    print(f"compile warm-up: {compile_seconds:.1f} s; wrote {args.output}")


if __name__ == "__main__":
    main()
