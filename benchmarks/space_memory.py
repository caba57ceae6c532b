"""Does the Gradio Space's memory level off under load? Resident memory of the server process, round after round.

Starts `space/app.py` in its own process on 127.0.0.1 (a free port, loopback only), waits until it answers, then
sends `--rounds` rounds of `--requests` concurrent `/reconstruct` calls through gradio_client. Each request uploads a
different crop of the example photos, enlarged 2x (new pixels every round, as new visitors would send; the sizes
cycle through a fixed set), so caches keyed by content or by request would show up as growth. After each round the
server's RSS and peak RSS (VmHWM) are read with psutil; the figures go to benchmarks/space_memory.json.

It levels off when the growth over the last `--window` rounds is under `--tolerance` (5 %) of the growth since
start-up (the RSS once the Space answers, with both default checkpoints loaded).

    python benchmarks/space_memory.py                      # 8 rounds of 16 requests, ~2-4 min on 2 CPU cores
    python benchmarks/space_memory.py --rounds 3 --requests 4 --output /tmp/space_memory.json

The whole run is bounded by `--time_limit` seconds (default 900): rounds not started by then are skipped and the
result says so. Exit status 0 whether or not it levels off (this measures; it does not judge), 1 if a request failed.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]

APP_PATH = REPO_ROOT / "space" / "app.py"
EXAMPLES = sorted((REPO_ROOT / "space" / "examples").glob("*.png"))
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "space_memory.json"
# (width, height) of the uploads, cycled over the requests of a round: a few shapes, as real uploads vary.
UPLOAD_SIZES = ((256, 256), (320, 240), (200, 300), (384, 256))
# The example photos are 256 px wide: they are enlarged this much first, so that every crop lies inside the photo.
UPLOAD_SCALE = 2
MIB = 1024 * 1024


def default_checkpoints() -> tuple[str, str]:
    """The Space's default (VQ, ArcVQ) pair; every request names them, as the UI's dropdowns do."""
    # Imported here: the Space's modules load the package, which only a run needs. They import each other by plain
    # name, as `python space/app.py` runs them.
    sys.path.insert(0, str(REPO_ROOT / "space"))
    from checkpoint_catalog import ARCVQ_LABEL, DEFAULT_CHECKPOINTS, VQ_LABEL

    return DEFAULT_CHECKPOINTS[VQ_LABEL], DEFAULT_CHECKPOINTS[ARCVQ_LABEL]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_space(port: int, startup_timeout: float) -> subprocess.Popen:
    """`python space/app.py` on 127.0.0.1:`port`, returned once it answers /config (killed if it never does)."""
    environment = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    process = subprocess.Popen(
        [sys.executable, str(APP_PATH)],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"space/app.py exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    stop_space(process)
    raise TimeoutError(f"space/app.py did not answer on 127.0.0.1:{port} within {startup_timeout} s.")


def stop_space(process: subprocess.Popen) -> None:
    """Terminate the server (kill it if it does not stop within 30 s)."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of `pid` now and its peak so far (Linux VmHWM), in MiB."""
    process = psutil.Process(pid)
    figures = {"rss_mib": process.memory_info().rss / MIB}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        figures["peak_rss_mib"] = peak_kib / 1024
    except (OSError, StopIteration):  # not Linux: the current RSS only
        pass
    return figures


def upload_bytes(round_index: int, request_index: int) -> bytes:
    """A PNG crop of an example photo, different for every (round, request); the size cycles through UPLOAD_SIZES."""
    photo = PIL.Image.open(EXAMPLES[request_index % len(EXAMPLES)]).convert("RGB")
    photo = photo.resize((photo.width * UPLOAD_SCALE, photo.height * UPLOAD_SCALE), PIL.Image.Resampling.BICUBIC)
    width, height = UPLOAD_SIZES[request_index % len(UPLOAD_SIZES)]
    if width > photo.width or height > photo.height:
        raise ValueError(f"{width}x{height} is larger than the enlarged example {photo.width}x{photo.height}.")
    rng = np.random.default_rng([round_index, request_index])
    left = int(rng.integers(0, photo.width - width + 1))
    top = int(rng.integers(0, photo.height - height + 1))
    crop = photo.crop((left, top, left + width, top + height))
    buffer = io.BytesIO()
    crop.save(buffer, format="PNG")
    return buffer.getvalue()


def send_round(
    url: str, folder: Path, round_index: int, requests: int, max_side: int, checkpoints: tuple[str, str]
) -> list[str]:
    """`requests` concurrent /reconstruct calls, one client each; the errors (empty when all succeeded)."""
    from gradio_client import Client, handle_file  # imported here: only a run needs it

    paths = []
    for request_index in range(requests):
        path = folder / f"round{round_index}-{request_index}.png"
        path.write_bytes(upload_bytes(round_index, request_index))
        paths.append(path)

    def one_request(path: Path) -> str | None:
        try:
            status = Client(url, verbose=False).predict(
                handle_file(str(path)), max_side, *checkpoints, api_name="/reconstruct"
            )[0]
        except Exception as error:  # a benchmark reports failures; it does not stop at the first
            return f"{path.name}: {type(error).__name__}: {error}"
        return None if not str(status).startswith("⚠️") else f"{path.name}: {status}"

    with ThreadPoolExecutor(max_workers=requests) as pool:
        errors = [error for error in pool.map(one_request, paths) if error]
    for path in paths:
        path.unlink()
    return errors


def levels_off(rss: Sequence[float], start: float, window: int, tolerance: float) -> bool | None:
    """Whether the growth over the last `window` rounds is below `tolerance` of the growth since `start`; None when
    there are not more than `window` rounds. No growth at all counts as levelled off."""
    if len(rss) <= window:
        return None
    total = rss[-1] - start
    recent = rss[-1] - rss[-1 - window]
    return total <= 0 or recent < tolerance * total


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the Space, send the rounds, and return the figures (see the module docstring)."""
    checkpoints = default_checkpoints()
    began = time.monotonic()
    port = free_port()
    process = start_space(port, args.startup_timeout)
    url = f"http://127.0.0.1:{port}/"
    rounds: list[dict[str, Any]] = []
    skipped = 0
    try:
        started = {"seconds": round(time.monotonic() - began, 1), **memory_mib(process.pid)}
        print(f"start-up: RSS {started['rss_mib']:.0f} MiB ({started['seconds']} s)", flush=True)
        with tempfile.TemporaryDirectory(prefix="space-memory-") as folder:
            for round_index in range(args.rounds):
                if time.monotonic() - began > args.time_limit:
                    skipped = args.rounds - round_index
                    print(f"time limit of {args.time_limit} s reached: {skipped} rounds skipped", flush=True)
                    break
                round_began = time.monotonic()
                errors = send_round(url, Path(folder), round_index, args.requests, args.max_side, checkpoints)
                figures = {
                    "round": round_index + 1,
                    "seconds": round(time.monotonic() - round_began, 1),
                    **memory_mib(process.pid),
                    "errors": errors,
                }
                rounds.append(figures)
                print(
                    f"round {round_index + 1}: RSS {figures['rss_mib']:.0f} MiB, peak "
                    f"{figures.get('peak_rss_mib', float('nan')):.0f} MiB, {figures['seconds']} s, "
                    f"{len(errors)} errors",
                    flush=True,
                )
    finally:
        stop_space(process)
    rss = [figures["rss_mib"] for figures in rounds]
    verdict = levels_off(rss, started["rss_mib"], args.window, args.tolerance)
    return {
        "what": (
            f"RSS of `python space/app.py` after start-up and after each round of {args.requests} concurrent "
            f"/reconstruct requests (different crops of space/examples every round, max_side {args.max_side})"
        ),
        "rounds_requested": args.rounds,
        "rounds_skipped_for_time": skipped,
        "requests_per_round": args.requests,
        "max_side": args.max_side,
        "upload_sizes": [list(size) for size in UPLOAD_SIZES],
        "cpu_count": os.cpu_count(),
        "startup": started,
        "rounds": rounds,
        "growth_since_startup_mib": round(rss[-1] - started["rss_mib"], 1) if rss else None,
        "growth_last_window_mib": round(rss[-1] - rss[-1 - args.window], 1) if len(rss) > args.window else None,
        "window": args.window,
        "tolerance": args.tolerance,
        "levels_off": verdict,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests per round")
    parser.add_argument("--max_side", type=int, default=256, help="the Space's maximum-side slider value")
    parser.add_argument("--window", type=int, default=3, help="rounds whose growth is compared with the total")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed share of the total growth")
    parser.add_argument("--time_limit", type=float, default=900.0, help="no round starts after this many seconds")
    parser.add_argument("--startup_timeout", type=float, default=180.0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < 1 or args.window < 1:
        parser.error("--rounds, --requests and --window must be at least 1.")

    from arcvq_hf.utils.io_utils import atomic_write_json  # the package's atomic writer; imported once it is needed

    result = run(args)
    atomic_write_json(args.output, result)
    start, rounds = result["startup"]["rss_mib"], result["rounds"]
    print(f"RSS (MiB): start-up {start:.0f} -> " + " -> ".join(f"{figures['rss_mib']:.0f}" for figures in rounds))
    if result["levels_off"] is None:
        print(f"levels off: unknown (needs more than {args.window} rounds)")
    else:
        print(
            f"levels off: {'yes' if result['levels_off'] else 'NO'} (last {args.window} rounds "
            f"{result['growth_last_window_mib']:+.1f} MiB of {result['growth_since_startup_mib']:+.1f} MiB since "
            f"start-up; tolerance {args.tolerance:.0%})"
        )
    print(f"written: {args.output}")
    return 1 if any(figures["errors"] for figures in rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
