"""Convert the authors' small VQ-VAE state dicts (the PyTorch VQ-VAE notebook layout) into an ArcVQ folder.

Source layout (SPEC.md §1; hidden = H, residual hidden = R, code dim = D, codebook size = K, image channels = C):

    _encoder._conv_1.{weight,bias}                         Conv4x4 s2 p1, C -> H/2, then ReLU
    _encoder._conv_2.{weight,bias}                         Conv4x4 s2 p1, H/2 -> H, then ReLU
    _encoder._conv_3.{weight,bias}                         Conv3x3 p1, H -> H
    _encoder._residual_stack._layers.{i}._block.1.weight   residual i: ReLU, Conv3x3 p1 H -> R (no bias),
    _encoder._residual_stack._layers.{i}._block.3.weight     ReLU, Conv1x1 R -> H (no bias); the stack ends in ReLU
    _pre_vq_conv.{weight,bias}                             Conv1x1 H -> D
    _vq_vae.embedding.weight                               (K, D) codebook (`_vq_vae._embedding.weight` also read;
                                                           EMA statistics `_vq_vae._ema_*` are dropped)
    _decoder._conv_1.{weight,bias}                         Conv3x3 p1, D -> H
    _decoder._residual_stack._layers.{i}._block.{1,3}.weight
    _decoder._conv_trans_1.{weight,bias}                   ConvTranspose4x4 s2 p1, H -> H/2, then ReLU
    _decoder._conv_trans_2.{weight,bias}                   ConvTranspose4x4 s2 p1, H/2 -> C

Sizes are read from the tensor shapes. The quantizer's assignment rule is not stored in a state dict: the
`preset` decides it (default `arcvq`: assignment by angle, as the authors' ArcVQ models were trained; use
`vq-baseline` for a plain VQ-VAE trained with Euclidean assignment).

CLI: `python -m arcvq_hf.convert_vqvae_checkpoint IN OUT [--preset arcvq] [--image-mean 0.5 --image-std 0.5]`.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .configuration_arcvq import ArcVQConfig
from .convert_common import (
    add_converter_arguments,
    build_converted_model,
    converted_processor,
    load_state_dict_file,
    require_key,
    save_converted_folder,
)
from .modeling_arcvq import ArcVQModel

LAYOUT = "authors' VQ-VAE"
_EMBEDDING_KEYS = ("_vq_vae.embedding.weight", "_vq_vae._embedding.weight")
_RESIDUAL_LAYER = re.compile(r"^_encoder\._residual_stack\._layers\.(\d+)\.")
_RESIDUAL_BIAS = re.compile(r"^_(en|de)coder\._residual_stack\._layers\.\d+\._block\.[13]\.bias$")


def _embedding_key(state_dict: Mapping[str, torch.Tensor]) -> str:
    for key in _EMBEDDING_KEYS:
        if key in state_dict:
            return key
    raise ValueError(f"The {LAYOUT} state dict has no codebook; expected one of {list(_EMBEDDING_KEYS)}.")


def infer_vqvae_config(state_dict: Mapping[str, torch.Tensor], preset: str = "arcvq") -> ArcVQConfig:
    """ArcVQConfig (backbone 'vqvae', quantizer settings of `preset`) whose sizes match the state dict's shapes."""
    conv_1 = require_key(state_dict, "_encoder._conv_1.weight", LAYOUT)
    conv_2 = require_key(state_dict, "_encoder._conv_2.weight", LAYOUT)
    codebook = state_dict[_embedding_key(state_dict)]
    hidden_size = conv_2.shape[0]
    if conv_1.shape[0] != hidden_size // 2:
        raise ValueError(
            f"_encoder._conv_1.weight has {conv_1.shape[0]} output channels but the VQ-VAE needs hidden // 2 = "
            f"{hidden_size // 2} (hidden {hidden_size} from _encoder._conv_2.weight)."
        )
    residual_layers = {int(match.group(1)) for key in state_dict if (match := _RESIDUAL_LAYER.match(key))}
    residual_hidden_size = 32
    if residual_layers:
        residual_hidden_size = require_key(
            state_dict, "_encoder._residual_stack._layers.0._block.1.weight", LAYOUT
        ).shape[0]
    return ArcVQConfig.from_preset(
        preset,
        variant="vqvae",
        num_channels=conv_1.shape[1],
        hidden_size=hidden_size,
        residual_hidden_size=residual_hidden_size,
        num_residual_layers=max(residual_layers, default=-1) + 1,
        codebook_size=codebook.shape[0],
        codebook_dim=codebook.shape[1],
    )


def _source_key_for(embedding_key: str):
    def source_key(target_key: str) -> str | None:
        if target_key == "quantizer.step":
            return None
        if target_key == "quantizer.embedding.weight":
            return embedding_key
        if target_key.startswith("quant_conv."):
            return "_pre_vq_conv." + target_key.removeprefix("quant_conv.")
        # encoder.residual_stack.layers.0.block.1.weight -> _encoder._residual_stack._layers.0._block.1.weight
        *modules, parameter = target_key.split(".")
        return ".".join([name if name.isdigit() else f"_{name}" for name in modules] + [parameter])

    return source_key


def convert_vqvae_state_dict(state_dict: Mapping[str, torch.Tensor], preset: str = "arcvq") -> ArcVQModel:
    """The authors' VQ-VAE state dict -> ArcVQModel (eval mode) with identical encoder, codebook and decoder."""
    biases = sorted(key for key in state_dict if _RESIDUAL_BIAS.match(key))
    if biases:
        raise ValueError(
            f"The {LAYOUT} state dict has biases in its residual convolutions ({biases}); ArcVQ's vqvae backbone, "
            "like the reference notebook, has bias-free residual convolutions, so this checkpoint cannot be "
            "converted exactly."
        )
    config = infer_vqvae_config(state_dict, preset)
    return build_converted_model(
        config,
        state_dict,
        _source_key_for(_embedding_key(state_dict)),
        ignored=lambda key: key.startswith("_vq_vae._ema_"),
        layout=LAYOUT,
    )


def convert_vqvae_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str = "arcvq",
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Read `checkpoint_path` (torch file loaded with weights_only=True, or .safetensors) and write an ArcVQ
    folder (model + image processor) to `output_dir` atomically. `image_mean` / `image_std` give the processor the
    normalisation the checkpoint was trained with (default 0.5 / 0.5: pixels in [-1, 1]). Returns `output_dir`."""
    model = convert_vqvae_state_dict(load_state_dict_file(checkpoint_path), preset)
    processor = converted_processor(model.config, image_mean, image_std)
    return save_converted_folder(model, processor, output_dir, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m arcvq_hf.convert_vqvae_checkpoint",
        description="Convert the authors' small VQ-VAE state dict into an ArcVQ folder.",
    )
    add_converter_arguments(parser)
    args = parser.parse_args(argv)
    try:
        output = convert_vqvae_checkpoint(
            args.checkpoint, args.output_dir, args.preset, args.image_mean, args.image_std, args.overwrite
        )
    except (ValueError, OSError) as err:
        parser.exit(1, f"error: {err}\n")
    print(f"Wrote ArcVQ model to {output} (load with ArcVQModel.from_pretrained).")


if __name__ == "__main__":
    main()


__all__ = ["convert_vqvae_checkpoint", "convert_vqvae_state_dict", "infer_vqvae_config"]
