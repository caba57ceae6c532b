"""Checkpoints that are complete or absent, and resumes that refuse an incomplete one.

`transformers.Trainer` writes `checkpoint-N` in place: a run interrupted while saving leaves an empty folder
(SIGINT) or one holding only some files (SIGKILL), and `--resume_from_checkpoint` then fails ("Can't find a valid
checkpoint") or, when only some weights are missing, continues with freshly initialised ones (a random codebook)
after a log line. `AtomicCheckpointsMixin` (mixed into `ArcVQTrainer`) stages each checkpoint in the hidden folder
`output_dir/.checkpoint-staging/` and renames it to `checkpoint-N` only when every process has written its part,
and checks the checkpoint a run resumes from (`require_complete_checkpoint`).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from torch import nn
from transformers.modeling_utils import unwrap_model
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from arcvq_hf.utils.io_utils import terminate_as_exception

# Hidden, so that `get_last_checkpoint` (which matches `checkpoint-N`) never picks it.
STAGING_FOLDER = ".checkpoint-staging"
TRAINER_STATE_NAME = "trainer_state.json"
WEIGHTS_NAME = "model.safetensors"


def require_complete_checkpoint(model: nn.Module, checkpoint: str | bool, output_dir: str) -> str:
    """The checkpoint folder to resume from (`True`: the last `checkpoint-N` of `output_dir`), after checking that
    its `model.safetensors` holds every tensor of `model` with the right shape.

    Raises:
        FileNotFoundError: no such folder, or `True` with no checkpoint in `output_dir`.
        ValueError: no weights file, or weights missing / of another shape; resuming would go on with freshly
            initialised values without a word.
    """
    if checkpoint is True:
        found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if found is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint: no {PREFIX_CHECKPOINT_DIR}-N folder in {output_dir} to resume from; "
                "drop the flag to start afresh."
            )
        checkpoint = found
    checkpoint = os.fspath(checkpoint)
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"--resume_from_checkpoint {checkpoint!r}: no such folder.")
    weights = os.path.join(checkpoint, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: it holds no {WEIGHTS_NAME}, so it is incomplete (a save that "
            "was interrupted, or copied in part). Resume from an earlier checkpoint-N, or start afresh."
        )
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as saved:
        shapes = {key: tuple(saved.get_slice(key).get_shape()) for key in saved.keys()}  # noqa: SIM118
    expected = {key: tuple(value.shape) for key, value in unwrap_model(model).state_dict().items()}
    missing = sorted(key for key in expected if key not in shapes)
    mismatched = sorted(f"{key}: {shapes[key]} saved, {expected[key]} expected" for key in expected
                        if key in shapes and shapes[key] != expected[key])  # fmt: skip
    if missing or mismatched:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: {weights} does not fit the model (missing: {missing[:8]}; "
            f"other shapes: {mismatched[:8]}). Resuming would continue with freshly initialised values (e.g. a "
            "random codebook); resume from a complete checkpoint-N of this model, or start afresh."
        )
    return checkpoint


class AtomicCheckpointsMixin:
    """For a `transformers.Trainer` subclass: each `checkpoint-N` appears by one rename once complete, and
    `train(resume_from_checkpoint=...)` refuses an incomplete checkpoint (`require_complete_checkpoint`)."""

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        if resume_from_checkpoint:
            resume_from_checkpoint = require_complete_checkpoint(
                self.model, resume_from_checkpoint, self.args.output_dir
            )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        run_dir = self._get_output_dir(trial=trial)
        staging_root = os.path.join(run_dir, STAGING_FOLDER)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # what an interrupted save left
        self.accelerator.wait_for_everyone()
        # Trainer writes into `args.output_dir/checkpoint-N` (every process its RNG state): point it at the staging
        # folder for the duration of the save.
        original_output_dir = self.args.output_dir
        self.args.output_dir = staging_root
        try:
            with terminate_as_exception():
                super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = original_output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
            best = self.state.best_model_checkpoint
            if best and os.path.dirname(best) == staging_root:
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            if os.path.isdir(final):  # the same step saved again
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()


__all__ = ["STAGING_FOLDER", "AtomicCheckpointsMixin", "require_complete_checkpoint"]
