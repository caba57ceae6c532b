"""Writing files so that a failure leaves nothing half-written, and telling a missing local folder from a Hub id.

Every writer here stages its output under a temporary name in the destination's own folder (same file system, so
the final `os.replace` is atomic) and removes the staging file or folder when anything fails:

- `atomic_write(path, write)`: the general form; `write(temporary_path)` produces the file.
- `atomic_write_text`, `atomic_write_bytes`, `atomic_write_json`, `save_image_atomic`: the usual payloads.
- `atomic_output_dir(folder)`: a whole folder, swapped in by one rename.
- `removed_if_left_empty(folder)`: for tools that create their output folder early (Trainer), a failed run
  leaves no empty folder behind.

`require_existing_folder(path, what)` turns "this looks like a local path but is not there" into a clear error
before transformers / huggingface_hub mistake it for a Hub repo id ("Repo id must be in the form ..."). It is
defined in `configuration_arcvq` (which travels with checkpoints, so `ArcVQConfig.from_pretrained` uses it too) and
re-exported here.

The library, the examples and the benchmarks import this module; it depends on the standard library,
huggingface_hub's repo-id validator and (for `save_image_atomic`) PIL only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from arcvq_hf.model.configuration_arcvq import looks_like_local_path, require_existing_folder


def _staging_file(path: Path) -> Path:
    """A fresh empty file beside `path` whose name keeps the suffix (writers such as PIL read the format from it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(descriptor)
    return Path(staging)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(temporary_path)` and rename the result to `path`; on any error the temporary file is removed and
    `path` keeps its previous content (or stays absent). The file gets the usual umask permissions. Returns `path`."""
    path = Path(path)
    staging = _staging_file(path)
    try:
        write(str(staging))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o666 & ~umask)  # mkstemp makes files private (0600)
        os.replace(staging, path)
    finally:
        if staging.exists():
            staging.unlink()
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda temporary: Path(temporary).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    """Write `value` as JSON (with a final newline) to `path` atomically."""
    return atomic_write_text(path, json.dumps(value, indent=indent) + "\n")


def save_image_atomic(image: Any, path: str | os.PathLike, **save_kwargs: Any) -> Path:
    """Save a PIL image (format from the extension of `path`) atomically."""
    return atomic_write(path, lambda temporary: image.save(temporary, **save_kwargs))


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `output_dir`; on success it replaces `output_dir` by a rename.

    An existing non-empty `output_dir` is an error unless `overwrite`; on failure the temporary folder is removed
    and `output_dir` is left as it was.
    """
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    # mkdtemp makes the folder private (0700); give the final folder the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        yield staging
        if output_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, retired / output_dir.name)
            os.replace(staging, output_dir)
            shutil.rmtree(retired)
        else:
            os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


@contextlib.contextmanager
def removed_if_left_empty(folder: str | os.PathLike) -> Iterator[Path]:
    """Run the block; if it raises while `folder` did not exist before it and is still empty, remove `folder`.

    For runs whose tools create their output folder early (Trainer does in its constructor): a run that fails
    before writing anything leaves no empty folder behind, while one that wrote checkpoints keeps them.
    """
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


# ----------------------------------------------------------------------------------------------------------------
# Local folder or Hub id
# ----------------------------------------------------------------------------------------------------------------


__all__ = [
    "atomic_output_dir",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "looks_like_local_path",
    "removed_if_left_empty",
    "require_existing_folder",
    "save_image_atomic",
]
