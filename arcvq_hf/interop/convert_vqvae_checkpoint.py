"""Convert the authors' small VQ-VAE state dicts (`torch.save(model.state_dict(), "best.pt")` of their
`modules.Model`) into an ArcVQ folder.

Source layout (docs/method.md §1; hidden = H, residual hidden = R, code dim = D, codebook size = K, image channels = C):

    _encoder._conv_1.{weight,bias}                         Conv4x4 s2 p1, C -> H/2, then ReLU
    _encoder._conv_2.{weight,bias}                         Conv4x4 s2 p1, H/2 -> H, then ReLU
    _encoder._conv_3.{weight,bias}                         Conv3x3 p1, H -> H
    _encoder._residual_stack._layers.{i}._block.1.{weight,bias}   residual i: in-place ReLU, Conv3x3 p1 H -> R,
    _encoder._residual_stack._layers.{i}._block.3.{weight,bias}     ReLU, Conv1x1 R -> H; the stack ends in ReLU
    _pre_vq_conv.{weight,bias}                             Conv1x1 H -> D
    _vq_vae.embedding.weight                               (K, D) codebook (`_vq_vae._embedding.weight` also read;
                                                           EMA statistics `_vq_vae._ema_*` are dropped)
    _decoder._conv_1.{weight,bias}                         Conv3x3 p1, D -> H
    _decoder._residual_stack._layers.{i}._block.{1,3}.{weight,bias}
    _decoder._conv_trans_1.{weight,bias}                   ConvTranspose4x4 s2 p1, H -> H/2, then ReLU
    _decoder._conv_trans_2.{weight,bias}                   ConvTranspose4x4 s2 p1, H/2 -> C

The in-place first ReLU of each residual block overwrites its input before the skip addition, so the block
computes relu(x) + Conv1x1(relu(Conv3x3(relu(x)))), which is exactly ArcVQ's `VQVAEResidualLayer`. State dicts of
the PyTorch VQ-VAE notebook (the same block with bias-free residual convolutions) convert exactly too: their
residual biases are zero.

Sizes are read from the tensor shapes. What a state dict does not hold comes from the arguments: the quantizer
`preset` (default `arcvq-authors`: assignment by angle and the authors' gamma0 = 1, so fine-tuning continues their
recipe; `vq-baseline` for a plain VQ-VAE trained with Euclidean assignment) and the MSE normaliser
`data_variance` = 4 * var(train / 255) of the training set (default `MNIST_DATA_VARIANCE`, their MNIST model's).

`checkpoint` is a local file or, when online, a file on the Hub: `hf://goals4292/ArcVQ-VAE/<path in the repo>`.

CLI: `python -m arcvq_hf.interop.convert_vqvae_checkpoint IN OUT [--preset arcvq-authors] [--data-variance 0.3797]`.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from arcvq_hf.model.configuration_arcvq import ArcVQConfig
from arcvq_hf.model.modeling_arcvq import ArcVQModel

from .convert_common import (
    build_converted_model,
    convert_checkpoint_file,
    require_key,
    run_converter_cli,
    shared_options,
)

LAYOUT = "authors' VQ-VAE"
_EMBEDDING_KEYS = ("_vq_vae.embedding.weight", "_vq_vae._embedding.weight")
_RESIDUAL_LAYER = re.compile(r"^_encoder\._residual_stack\._layers\.(\d+)\.")
_RESIDUAL_WEIGHT = re.compile(r"^(_(?:en|de)coder\._residual_stack\._layers\.\d+\._block\.[13])\.weight$")
# Our residual convolutions by their index in the authors' nn.Sequential(ReLU, Conv3x3, ReLU, Conv1x1).
_RESIDUAL_CONVS = {"conv_3x3": "_block.1", "conv_1x1": "_block.3"}
# 4 * var(x / 255) over the full MNIST training set (pixel std 0.3081), the normaliser of the authors' MNIST run;
# the mnist-5k training split of docs/method.md §4 gives 0.3814.
MNIST_DATA_VARIANCE = 0.3797


def _embedding_key(state_dict: Mapping[str, torch.Tensor]) -> str:
    for key in _EMBEDDING_KEYS:
        if key in state_dict:
            return key
    raise ValueError(f"The {LAYOUT} state dict has no codebook; expected one of {list(_EMBEDDING_KEYS)}.")


def infer_vqvae_config(
    state_dict: Mapping[str, torch.Tensor],
    preset: str = "arcvq-authors",
    data_variance: float = MNIST_DATA_VARIANCE,
) -> ArcVQConfig:
    """ArcVQConfig (backbone 'vqvae', quantizer settings of `preset`, MSE normaliser `data_variance`) whose sizes
    match the state dict's shapes."""
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
        data_variance=data_variance,
    )


def _source_key_for(embedding_key: str):
    def source_key(target_key: str) -> str | None:
        if target_key == "quantizer.step":
            return None
        if target_key == "quantizer.embedding.weight":
            return embedding_key
        if target_key.startswith("quant_conv."):
            return "_pre_vq_conv." + target_key.removeprefix("quant_conv.")
        # encoder.residual_stack.layers.0.conv_3x3.weight -> _encoder._residual_stack._layers.0._block.1.weight
        *modules, parameter = target_key.split(".")
        names = [_RESIDUAL_CONVS.get(name) or (name if name.isdigit() else f"_{name}") for name in modules]
        return ".".join(names + [parameter])

    return source_key


def _with_zero_residual_biases(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The notebook layout has bias-free residual convolutions: a zero bias computes the same function."""
    filled = dict(state_dict)
    for key, weight in state_dict.items():
        match = _RESIDUAL_WEIGHT.match(key)
        if match and f"{match.group(1)}.bias" not in state_dict:
            filled[f"{match.group(1)}.bias"] = weight.new_zeros(weight.shape[0])
    return filled


def convert_vqvae_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    preset: str = "arcvq-authors",
    data_variance: float = MNIST_DATA_VARIANCE,
) -> ArcVQModel:
    """The authors' VQ-VAE state dict -> ArcVQModel (eval mode) computing the same encoder, codebook and decoder."""
    config = infer_vqvae_config(state_dict, preset, data_variance)
    return build_converted_model(
        config,
        _with_zero_residual_biases(state_dict),
        _source_key_for(_embedding_key(state_dict)),
        ignored=lambda key: key.startswith("_vq_vae._ema_"),
        layout=LAYOUT,
    )


def convert_vqvae_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str = "arcvq-authors",
    data_variance: float = MNIST_DATA_VARIANCE,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Read `checkpoint` (a local torch file loaded with weights_only=True or .safetensors, or `hf://repo/path`) and
    write an ArcVQ folder (model + image processor) to `output_dir` atomically. `image_mean` / `image_std` give the
    processor the normalisation the checkpoint was trained with (default 0.5 / 0.5: pixels in [-1, 1]).
    Returns `output_dir`."""
    return convert_checkpoint_file(
        checkpoint,
        output_dir,
        lambda state_dict: convert_vqvae_state_dict(state_dict, preset, data_variance),
        image_mean,
        image_std,
        overwrite,
    )


def main(argv: Sequence[str] | None = None) -> None:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--data-variance",
            type=float,
            default=MNIST_DATA_VARIANCE,
            help="MSE normaliser the checkpoint was trained with, 4 * var(train / 255) (default: the authors' MNIST "
            "run; compute it from your training set for other data)",
        )

    run_converter_cli(
        argv,
        prog="python -m arcvq_hf.interop.convert_vqvae_checkpoint",
        description="Convert the authors' small VQ-VAE state dict (their best.pt) into an ArcVQ folder.",
        add_arguments=add_arguments,
        convert=lambda args: convert_vqvae_checkpoint(
            args.checkpoint, args.output_dir, data_variance=args.data_variance, **shared_options(args)
        ),
    )


if __name__ == "__main__":
    main()


__all__ = ["MNIST_DATA_VARIANCE", "convert_vqvae_checkpoint", "convert_vqvae_state_dict", "infer_vqvae_config"]
