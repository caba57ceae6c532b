"""Atomic writers leave either the new file or the old one, never a partial or temporary file; a missing local
folder is named instead of being taken for a Hub repo id."""

import os

import PIL.Image
import pytest

from arcvq_hf.utils.io_utils import (
    atomic_output_dir,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    removed_if_left_empty,
    require_existing_folder,
    save_image_atomic,
)


def test_atomic_writers_replace_whole_files_and_leave_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "sub" / "notes.md"
    atomic_write_text(target, "first")
    atomic_write_json(tmp_path / "values.json", {"a": 1})
    save_image_atomic(PIL.Image.new("L", (3, 2), 7), tmp_path / "grid.png")
    assert target.read_text() == "first" and (tmp_path / "values.json").read_text() == '{\n  "a": 1\n}\n'
    assert PIL.Image.open(tmp_path / "grid.png").size == (3, 2)
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def half_then_fail(path: str) -> None:
        with open(path, "w") as handle:
            handle.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["notes.md"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_atomic_output_dir_swaps_a_folder_in_or_leaves_the_old_one(tmp_path) -> None:
    with atomic_output_dir(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("1")
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_output_dir(tmp_path / "out"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "out", overwrite=True) as staging:
            (staging / "b.txt").write_text("2")
            raise RuntimeError("conversion failed")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_removed_if_left_empty_removes_only_a_new_empty_folder(tmp_path) -> None:
    with pytest.raises(ValueError):
        with removed_if_left_empty(tmp_path / "run") as folder:
            folder.mkdir()
            raise ValueError("failed before writing")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError):
        with removed_if_left_empty(tmp_path / "run") as folder:
            (folder / "checkpoint-1").mkdir(parents=True)
            raise ValueError("failed after a checkpoint")
    assert (tmp_path / "run" / "checkpoint-1").is_dir()


def test_require_existing_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "weights.bin").write_text("x")
    assert require_existing_folder(str(tmp_path / "runs"), "--x") == str(tmp_path / "runs")
    assert require_existing_folder("someone/model", "--x") == "someone/model"  # a Hub id: left to the Hub
    for missing in ("runs/model", "./model", str(tmp_path / "nope"), "a/b/c", "bad name"):
        with pytest.raises(FileNotFoundError, match=f"--prior {missing!r}: no such local folder"):
            require_existing_folder(missing, "--prior")
    with pytest.raises(NotADirectoryError, match="is a file"):
        require_existing_folder("weights.bin", "--prior")
