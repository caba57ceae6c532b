"""Shared plumbing of the checkpoint converters and the diffusers export: safe reading of state-dict files,
key remapping with errors that name the offending keys, and atomic writing of output folders."""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from arcvq_hf.model.configuration_arcvq import PRESETS, ArcVQConfig
from arcvq_hf.model.image_processing_arcvq import ArcVQImageProcessor
from arcvq_hf.model.modeling_arcvq import ArcVQModel
from arcvq_hf.utils.io_utils import atomic_output_dir, require_creatable_folder, require_replaceable_output

# What torch.load says when weights_only=True refuses a pickled object, rather than failing to parse the file
# (both come as "Weights only load failed"; a parse failure says e.g. "Unsupported operand").
_WEIGHTS_ONLY_REFUSAL = "Unsupported global"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(
            f"{path} ({path.stat().st_size} bytes) is not a readable safetensors file: truncated, corrupt or not "
            f"safetensors at all (safetensors said: {err})."
        ) from err


def _read_torch_file(path: Path) -> object:
    """torch.load(weights_only=True), telling a refused pickle (possible code) from a file that is not a checkpoint."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _WEIGHTS_ONLY_REFUSAL not in str(err):
            raise _unreadable_torch_file(path, err) from err
        raise ValueError(
            f"Refusing to load {path}: it holds pickled objects other than tensors and plain containers, which "
            "could run arbitrary code. Only weights_only=True loading is allowed; re-save just the state dict "
            f"(torch.save(model.state_dict(), ...)) where you trust the file. torch said: {err}"
        ) from err
    except (EOFError, KeyError, OSError, RuntimeError, ValueError) as err:
        # Truncated zip archives, text files and other non-checkpoints fail in the parser with these.
        raise _unreadable_torch_file(path, err) from err


def _unreadable_torch_file(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"{path} ({path.stat().st_size} bytes) is not a readable torch checkpoint: truncated, corrupt or not a "
        f"torch.save file ({type(err).__name__}: {err})."
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat name -> tensor dict from `.safetensors` or a torch file, never running pickled code.

    torch files are opened with `torch.load(..., weights_only=True)`, which refuses any object other than tensors
    and plain containers. A top-level `{"state_dict": {...}}` wrapper (PyTorch Lightning / taming) is unwrapped and
    its other entries (step counters, optimizer states) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); the download or save did not complete.")
    loaded = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_file(path)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors), got {type(loaded)}.")
    not_tensors = sorted(str(key) for key, value in loaded.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path} is not a flat state dict; these entries are not tensors: {not_tensors}.")
    # A converted model with NaN weights gives one constant token everywhere; refuse instead of exiting 0.
    not_finite = sorted(
        str(key) for key, value in loaded.items() if value.is_floating_point() and not torch.isfinite(value).all()
    )
    if not_finite:
        raise ValueError(
            f"{path} holds NaN or infinite values in {len(not_finite)} tensor(s): {not_finite[:8]}. The converted "
            "model would give one constant token everywhere; convert a checkpoint saved before training diverged."
        )
    return dict(loaded)


def remap_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    source_key_for: Callable[[str], str | None],
    ignored: Callable[[str], bool] = lambda key: False,
    layout: str = "source",
) -> dict[str, torch.Tensor]:
    """Build a state dict for a model whose own state dict is `target`, taking every tensor from `source`.

    `source_key_for(target_key)` names the source tensor that fills a target entry (None: the target keeps its own
    value, e.g. a step counter). A source tensor of shape (out, in, 1, 1) may fill a target of shape (out, in)
    (1x1 convolution -> linear). Source keys for which `ignored(key)` holds (loss / discriminator weights) are
    dropped. Missing keys, unexpected keys and shape mismatches raise one ValueError that names all of them in the
    `layout` naming.
    """
    remapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    for target_key, target_value in target.items():
        source_key = source_key_for(target_key)
        if source_key is None:
            remapped[target_key] = target_value.clone()
            continue
        if source_key not in source:
            missing.append(source_key)
            continue
        used.add(source_key)
        value = source[source_key]
        if value.shape != target_value.shape and value.shape == (*target_value.shape, 1, 1):
            value = value.reshape(target_value.shape)
        if value.shape != target_value.shape:
            mismatched.append(f"{source_key}: {tuple(value.shape)} in the file, expected {tuple(target_value.shape)}")
            continue
        remapped[target_key] = value.to(target_value.dtype).clone()
    unexpected = sorted(key for key in source if key not in used and not ignored(key))
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ValueError(f"The {layout} state dict does not fit the inferred model; " + "; ".join(problems) + ".")
    return remapped


def require_key(state_dict: Mapping[str, torch.Tensor], key: str, layout: str) -> torch.Tensor:
    """state_dict[key], or a ValueError naming the missing key of the `layout` checkpoint."""
    if key not in state_dict:
        raise ValueError(f"The {layout} state dict has no {key!r}; it is needed to infer the model's shape.")
    return state_dict[key]


def build_converted_model(
    config: ArcVQConfig,
    source: Mapping[str, torch.Tensor],
    source_key_for: Callable[[str], str | None],
    ignored: Callable[[str], bool] = lambda key: False,
    layout: str = "source",
) -> ArcVQModel:
    """An ArcVQModel for `config` (eval mode, training step 0) holding the tensors of `source`; see
    `remap_state_dict` for the mapping and its errors."""
    model = ArcVQModel(config)
    model.load_state_dict(remap_state_dict(source, model.state_dict(), source_key_for, ignored, layout), strict=True)
    return model.eval()


def converted_processor(
    config: ArcVQConfig, image_mean: list[float] | None = None, image_std: list[float] | None = None
) -> ArcVQImageProcessor:
    """The image processor of a converted model; a single mean / std value applies to every channel, None keeps
    the processor's default 0.5 (pixels in [-1, 1])."""
    channels = config.num_channels

    def per_channel(values: list[float] | None) -> list[float] | None:
        return list(values) * channels if values is not None and len(values) == 1 else values

    return ArcVQImageProcessor(
        num_channels=channels,
        size_divisor=config.downsampling_factor,
        image_mean=per_channel(image_mean),
        image_std=per_channel(image_std),
    )


HUB_PREFIX = "hf://"


def resolve_checkpoint(checkpoint: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint file, or `hf://owner/repo/path/in/repo` downloaded with `hf_hub_download` (needs network,
    or the file in the local Hub cache). Raises FileNotFoundError that names what was looked for."""
    spec = str(checkpoint)
    if not spec.startswith(HUB_PREFIX):
        path = Path(spec)
        if not path.is_file():
            hint = f" For a file on the Hub write {HUB_PREFIX}owner/repo/path/in/repo." if not path.exists() else ""
            raise FileNotFoundError(f"No checkpoint file at {path}.{hint}")
        return path
    parts = spec.removeprefix(HUB_PREFIX).split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{spec!r} is not a Hub file; expected {HUB_PREFIX}owner/repo/path/in/repo.")
    from huggingface_hub import hf_hub_download

    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as err:  # hub errors: offline, missing repo or file, no access
        raise FileNotFoundError(
            f"Could not get {filename!r} from the Hub repo {repo_id!r} ({type(err).__name__}: {err}). Check the "
            "repo and path and that you are online (HF_HUB_OFFLINE unset), or download the file and pass its path."
        ) from err


def add_converter_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by the converter CLIs: checkpoint, output_dir, --preset, --image-mean/-std, --overwrite."""
    parser.add_argument(
        "checkpoint",
        help="state dict file (.pt/.pth/.ckpt read with weights_only=True, or .safetensors), or a Hub file "
        f"{HUB_PREFIX}owner/repo/path/in/repo",
    )
    parser.add_argument("output_dir", help="folder to write (ArcVQModel + ArcVQImageProcessor, safetensors)")
    parser.add_argument(
        "--preset",
        default="arcvq-authors",
        choices=sorted(PRESETS),
        help="quantizer settings and recipe, not stored in a state dict: 'arcvq-authors' (default) assigns codes by "
        "angle with the authors' recipe (their ArcVQ models), 'vq-baseline' by Euclidean distance (plain VQ-VAE / "
        "VQGAN checkpoints)",
    )
    parser.add_argument("--image-mean", type=float, nargs="+", default=None, help="processor mean (default 0.5)")
    parser.add_argument("--image-std", type=float, nargs="+", default=None, help="processor std (default 0.5)")
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir if it exists")


def shared_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments every `convert_*_checkpoint` takes, from the shared command-line arguments."""
    return {
        "preset": args.preset,
        "image_mean": args.image_mean,
        "image_std": args.image_std,
        "overwrite": args.overwrite,
    }


def run_converter_cli(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    convert: Callable[[argparse.Namespace], Path],
) -> None:
    """The converters' command line: shared and converter-specific arguments, then `convert(args)`; a bad input
    exits with status 1 and one line that says what was wrong, not a traceback."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_converter_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        output = convert(args)
    except (ValueError, OSError) as err:
        parser.exit(1, f"error: {err}\n")
    print(f"Wrote ArcVQ model to {output} (load with ArcVQModel.from_pretrained).")


def check_output_dir(
    output_dir: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()
) -> None:
    """Before any work: `output_dir` can be created (no file in the way), and if it exists and is not empty,
    `overwrite` is set and it is a saved model folder that holds none of `inputs` (so --overwrite never deletes
    unrelated files or the checkpoint being converted)."""
    folder = require_creatable_folder(output_dir)
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{folder} exists and is not empty; pass --overwrite to replace it.")
        require_replaceable_output(folder, inputs)


def save_converted_folder(
    model: ArcVQModel,
    processor: ArcVQImageProcessor,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
) -> Path:
    """`save_pretrained` model (safetensors) and processor into `output_dir`, atomically; with `overwrite`, only a
    saved model folder holding none of `inputs` is replaced (see `check_output_dir`). Returns `output_dir`."""
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, model_folder=True) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
    return Path(output_dir)


def convert_checkpoint_file(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    to_model: Callable[[dict[str, torch.Tensor]], ArcVQModel],
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """The converters' one path: check `output_dir` before any work, read `checkpoint` (local file or
    `hf://repo/path`) without unpickling code, build the model with `to_model(state_dict)`, and save model and
    processor into `output_dir` atomically. Returns `output_dir`."""
    check_output_dir(output_dir, overwrite, inputs=[checkpoint])
    source = resolve_checkpoint(checkpoint)
    model = to_model(load_state_dict_file(source))
    processor = converted_processor(model.config, image_mean, image_std)
    return save_converted_folder(model, processor, output_dir, overwrite=overwrite, inputs=[source])


__all__ = [
    "HUB_PREFIX",
    "convert_checkpoint_file",
    "add_converter_arguments",
    "atomic_output_dir",
    "build_converted_model",
    "check_output_dir",
    "converted_processor",
    "load_state_dict_file",
    "remap_state_dict",
    "require_key",
    "resolve_checkpoint",
    "run_converter_cli",
    "shared_options",
    "save_converted_folder",
]
