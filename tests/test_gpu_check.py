"""benchmarks/gpu_check.py: the GPU check's reduced-size dry run (CPU) goes through the whole path and records every
figure the GPU run records."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_records_speed_memory_arc_share_and_token_agreement(tmp_path) -> None:
    gpu_check = _load()
    output = tmp_path / "dry.json"
    record = gpu_check.main(["--dry-run", "--output", str(output)])
    assert json.loads(output.read_text()) == record
    assert record["dry_run"] and record["device"] and record["losses_finite"]
    assert record["images_per_second"] > 0 and record["step_ms"] > 0
    assert record["peak_memory_gib"] is None  # the CPU has no allocator statistics; a GPU run records GiB
    # One arc-loss call per instrumented step, a share of the step strictly between 0 and 1.
    assert record["arc_loss_calls"] == record["arc_steps"] == 1 and 0 < record["arc_loss_share"] < 1
    # CPU against CPU in float32: the same tokens.
    assert record["token_agreement"] == 1.0 and record["agreement_tokens"] == 2 * 16 * 16
    assert math.isfinite(record["token_agreement_bf16_autocast"])
    originals = gpu_check.ArcLossTimer(torch.device("cpu")).originals
    assert all(getattr(gpu_check.quantization, name) is function for name, function in originals.items())  # restored


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_without_a_gpu_the_full_check_names_the_dry_run() -> None:
    with pytest.raises(SystemExit, match="--dry-run"):
        _load().main([])
