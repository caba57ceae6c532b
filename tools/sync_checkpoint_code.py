"""Regenerate the model code that travels with every shipped checkpoint (remote code for `trust_remote_code=True`).

    python tools/sync_checkpoint_code.py            # copy arcvq_hf/model/*.py into every folder under checkpoints/
    python tools/sync_checkpoint_code.py --check    # exit 1 and list the stale copies instead

A checkpoint folder holds flat copies of the files in `arcvq_hf/model/` (they import only each other, with
single-dot relative imports, so the copies run without the package). Each copy is written to a temporary name and
renamed, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_CODE = REPO / "arcvq_hf" / "model"
CHECKPOINTS = REPO / "checkpoints"


def model_code_files() -> list[Path]:
    """The files that travel: every module of `arcvq_hf/model/` except its package `__init__.py`."""
    return sorted(path for path in MODEL_CODE.glob("*.py") if path.name != "__init__.py")


def checkpoint_folders(root: Path = CHECKPOINTS) -> list[Path]:
    """Every saved model folder under `root` (a folder with a config.json)."""
    return sorted(folder for folder in root.iterdir() if (folder / "config.json").is_file())


def stale_copies(folder: Path) -> list[str]:
    """Names of the model files whose copy in `folder` is missing or differs, plus stray .py files there."""
    wanted = {path.name: path.read_bytes() for path in model_code_files()}
    stale = [
        name for name, data in wanted.items() if not (folder / name).is_file() or (folder / name).read_bytes() != data
    ]
    stale += sorted(path.name for path in folder.glob("*.py") if path.name not in wanted)
    return stale


def sync_folder(folder: Path) -> list[str]:
    """Copy the model files into `folder` atomically and delete .py files that are not model files; returns changes."""
    changed = stale_copies(folder)
    wanted = {path.name for path in model_code_files()}
    for source in model_code_files():
        if source.name not in changed:
            continue
        handle, temporary = tempfile.mkstemp(prefix=f".{source.name}.", dir=folder)
        with os.fdopen(handle, "wb") as file:
            file.write(source.read_bytes())
        os.replace(temporary, folder / source.name)
    for stray in folder.glob("*.py"):
        if stray.name not in wanted:
            stray.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale copies and exit 1 instead of writing")
    args = parser.parse_args(argv)
    status = 0
    for folder in checkpoint_folders():
        stale = stale_copies(folder) if args.check else sync_folder(folder)
        if stale:
            print(f"{folder.relative_to(REPO)}: {'stale' if args.check else 'updated'} {', '.join(stale)}")
            status = 1 if args.check else status
    return status


if __name__ == "__main__":
    sys.exit(main())
