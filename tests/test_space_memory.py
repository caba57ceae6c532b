"""benchmarks/space_memory.py: its verdict and its uploads (the measurement itself is a benchmark, not a test: it
starts the Space and takes minutes, and RSS figures are too noisy for a bound that CI could hold)."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import PIL.Image
import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "space_memory.py"


@pytest.fixture(scope="module")
def space_memory():
    spec = importlib.util.spec_from_file_location("space_memory", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["space_memory"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("rss", "expected"),
    [
        ([800, 900, 940, 1010, 1030, 975, 1005, 1014], True),  # -18 MiB over the last 3 rounds, of +514 since start-up
        ([770, 876, 924, 970, 1020], False),  # a steady climb: +144 over the last 3 rounds, of +520
        ([500, 500, 500, 500], True),  # no growth at all
        ([800, 900, 940], None),  # not more rounds than the window
    ],
)
def test_levels_off_compares_the_last_rounds_with_the_growth_since_start_up(space_memory, rss, expected):
    assert space_memory.levels_off(rss, start=500, window=3, tolerance=0.05) is expected


def test_uploads_differ_every_round_and_cycle_through_the_sizes(space_memory):
    images = {
        (round_index, request_index): space_memory.upload_bytes(round_index, request_index)
        for round_index in range(2)
        for request_index in range(len(space_memory.UPLOAD_SIZES))
    }
    assert len(set(images.values())) == len(images)
    for (_, request_index), data in images.items():
        assert PIL.Image.open(io.BytesIO(data)).size == space_memory.UPLOAD_SIZES[request_index]
    assert space_memory.upload_bytes(1, 2) == images[(1, 2)]  # seeded: every run sends the same pixels
