"""Kill a short training run and a conversion at random points (SIGINT, SIGTERM, SIGKILL): what is left is
complete and loadable or absent, and training resumed from the latest checkpoint ends bit-exact with an
uninterrupted run (issue 23). The kill points are random but seeded, so a failure reproduces."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from fault_worker import MAX_STEPS, trainer
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from arcvq_hf import ArcVQModel

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]


def _work(arguments: list[str], ready) -> None:
    """The child's work (after fork: torch, transformers and the package are already imported, so it starts in
    milliseconds instead of the seconds a fresh interpreter needs)."""
    torch.set_num_threads(1)
    if arguments[0] == "train":
        run = trainer(arguments[1])
        run.add_callback(_SetWhenTraining(ready))
        run.train()
    else:
        from arcvq_hf.interop.convert_vqvae_checkpoint import main as convert

        ready.set()
        convert([arguments[1], arguments[2], "--overwrite"])


class _SetWhenTraining(TrainerCallback):
    def __init__(self, ready) -> None:
        self.ready = ready

    def on_train_begin(self, *args, **kwargs):
        self.ready.set()


def _run_and_kill(arguments: list[str], signum: int, delay: float) -> int | None:
    """Fork a worker, wait until its work begins, sleep `delay` seconds, send `signum`; returns the exit code."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=_work, args=(arguments, ready))
    worker.start()
    try:
        assert ready.wait(timeout=60), "the worker never started its work"
        time.sleep(delay)
        if worker.pid is not None and worker.is_alive():
            os.kill(worker.pid, signum)
        worker.join(timeout=60)
        return worker.exitcode
    finally:
        if worker.is_alive():
            worker.kill()
            worker.join()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights after an uninterrupted run (checkpoints saved every step, as in the killed runs)."""
    torch.set_num_threads(1)  # before any parallel work, so that the forked workers inherit no thread pool
    run = trainer(str(tmp_path_factory.mktemp("reference")))
    run.train()
    return {key: value.clone() for key, value in run.model.state_dict().items()}


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_killed_training_leaves_complete_checkpoints_and_resumes_bit_exact(tmp_path, reference, signum):
    delay = random.Random(int(signum)).uniform(0.0, 1.0)
    _run_and_kill(["train", str(tmp_path)], signum, delay)
    checkpoints = sorted(p for p in tmp_path.iterdir() if p.name.startswith("checkpoint-"))
    for checkpoint in checkpoints:  # every visible checkpoint is complete and loadable
        names = {p.name for p in checkpoint.iterdir()}
        assert {"config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"} <= names, names
        ArcVQModel.from_pretrained(checkpoint)
    last = get_last_checkpoint(str(tmp_path)) if checkpoints else None
    resumed = trainer(str(tmp_path))
    resumed.train(resume_from_checkpoint=last)
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, reference[key]), f"{key} differs after resuming from {last} (delay {delay:.2f} s)"
    assert resumed.state.global_step == MAX_STEPS


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from test_convert import authors_vqvae_state_dict

    path = tmp_path_factory.mktemp("source") / "best.pt"
    torch.save(authors_vqvae_state_dict(hidden=64, codes=256, dim=32), path)
    return path


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_killed_conversion_leaves_the_output_complete_or_absent(tmp_path, source, signum):
    output = tmp_path / "converted"
    delay = random.Random(10 + int(signum)).uniform(0.0, 0.5)
    status = _run_and_kill(["convert", str(source), str(output)], signum, delay)
    if output.exists():
        ArcVQModel.from_pretrained(output)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    if signum != signal.SIGKILL:
        assert leftovers == [], f"staging left beside the output after {signal.Signals(signum).name}: {leftovers}"
        assert status != 0 or output.exists()
    # The next run completes the output and removes what a SIGKILL left.
    from arcvq_hf.interop.convert_vqvae_checkpoint import convert_vqvae_checkpoint

    convert_vqvae_checkpoint(source, output, overwrite=True)
    ArcVQModel.from_pretrained(output)
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]
