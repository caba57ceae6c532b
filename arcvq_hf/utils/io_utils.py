"""Writing files so that a failure leaves nothing half-written, and telling a missing local folder from a Hub id.

Every writer here stages its output under a temporary name in the destination's own folder (same file system, so
the final `os.replace` is atomic) and removes the staging file or folder when anything fails:

- `atomic_write(path, write)`: the general form; `write(temporary_path)` produces the file.
- `atomic_write_text`, `atomic_write_bytes`, `atomic_write_json`, `save_image_atomic`: the usual payloads.
- `atomic_output_dir(folder)`: a whole folder, swapped in by one rename; with `overwrite=True` it replaces only a
  saved model folder that does not hold the input (`require_replaceable_output`); SIGTERM cleans up like Ctrl-C
  (`terminate_as_exception`), and what a SIGKILL left is removed on the next run (`remove_stale_staging`).
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
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
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


def require_creatable_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """`folder` resolved, after checking that it is a folder or can be created: neither it nor any folder above it
    is an existing file. Raises NotADirectoryError naming the file in the way (mkdir would say only "Not a
    directory" or "File exists")."""
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"The {what} {folder} is an existing file, not a folder; choose another path.")
    for ancestor in folder.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise NotADirectoryError(
                    f"Cannot create the {what} {folder}: {ancestor} is a file, not a folder; choose another path."
                )
            break
    return folder


def is_model_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` looks like the output of a save_pretrained (it holds a config.json): the only kind of
    non-empty folder that `overwrite=True` may replace."""
    return (Path(folder) / "config.json").is_file()


def require_replaceable_output(
    output_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] = (),
    model_folder: bool = True,
    flag: str = "--overwrite",
) -> None:
    """Refuse to replace an existing non-empty `output_dir` that holds one of `inputs` (it would delete the input
    being read) or, with `model_folder`, that is not a saved model folder (it would delete unrelated files)."""
    output_dir = Path(output_dir).expanduser().resolve()
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    for source in inputs:
        source = Path(source).expanduser().resolve()
        if source == output_dir or output_dir in source.parents:
            raise FileExistsError(
                f"Refusing to replace {output_dir}: it holds the input {source}, which {flag} would delete. Write "
                "the output to another folder."
            )
    if model_folder and not is_model_folder(output_dir):
        entries = sorted(path.name for path in output_dir.iterdir())
        raise FileExistsError(
            f"Refusing to replace {output_dir}: it is not a saved model folder (no config.json) and {flag} would "
            f"delete everything in it ({len(entries)} entries: {entries[:5]}{' ...' if len(entries) > 5 else ''}). "
            "Choose a new or empty output folder."
        )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(output_dir: Path) -> None:
    """Remove the staging folders that a killed writer of `output_dir` left beside it (hidden
    `.{name}.tmp-{pid}-*` / `.{name}.old-{pid}-*` of processes that no longer run); SIGKILL leaves no chance to
    clean up at the time."""
    for leftover in output_dir.parent.glob(f".{output_dir.name}.*-*-*"):
        kind, _, rest = leftover.name.removeprefix(f".{output_dir.name}.").partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _process_alive(int(pid)) and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Inside the block, SIGTERM raises SystemExit(143) (as SIGINT raises KeyboardInterrupt), so that `finally`
    clauses remove staging files instead of the process dying with them in place. A no-op outside the main
    thread, where signal handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_output_dir(
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
    model_folder: bool = False,
) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `output_dir`; on success it replaces `output_dir` by a rename.

    An existing non-empty `output_dir` is an error unless `overwrite`; even then a folder holding one of `inputs`
    is never replaced, and with `model_folder=True` (the converters, the diffusers export) only a saved model
    folder (holding config.json) is (`require_replaceable_output`). On failure,
    Ctrl-C or SIGTERM the temporary folder is removed and `output_dir` is left as it was; the staging folders a
    SIGKILL leaves are removed by the next call for the same `output_dir`.
    """
    output_dir = require_creatable_folder(output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it."
            )
        require_replaceable_output(output_dir, inputs, model_folder=model_folder)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output_dir)
    with terminate_as_exception():
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-{os.getpid()}-", dir=output_dir.parent))
        # mkdtemp makes the folder private (0700); give the final folder the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        try:
            yield staging
            if output_dir.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-{os.getpid()}-", dir=output_dir.parent))
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
    "is_model_folder",
    "remove_stale_staging",
    "require_creatable_folder",
    "require_replaceable_output",
    "terminate_as_exception",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "looks_like_local_path",
    "removed_if_left_empty",
    "require_existing_folder",
    "save_image_atomic",
]
