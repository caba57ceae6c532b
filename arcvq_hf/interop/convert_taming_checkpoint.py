"""Convert taming-transformers style VQGAN checkpoints into an ArcVQ folder (vqgan backbone).

Source: `{"state_dict": {...}}` (or a flat dict / .safetensors) with

    encoder.conv_in, encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut},
    encoder.down.{i}.attn.{j}.{norm,q,k,v,proj_out}, encoder.down.{i}.downsample.conv,
    encoder.mid.{block_1,attn_1,block_2}, encoder.norm_out, encoder.conv_out,
    decoder.conv_in, decoder.mid.*, decoder.up.{i}.block.{j}.*, decoder.up.{i}.attn.{j}.*, decoder.up.{i}.upsample.conv,
    decoder.norm_out, decoder.conv_out, quant_conv, post_quant_conv, quantize.embedding.weight;
    loss.* (perceptual loss, discriminator) is dropped.

Target: diffusers' Encoder/Decoder layout used by ArcVQ's vqgan backbone. Level i of the encoder is
`down_blocks[i]`; taming's decoder `up[i]` is stored by resolution level (up[0] = full resolution) while
diffusers' `up_blocks[0]` is the lowest resolution, so `up[i]` -> `up_blocks[L - 1 - i]`. Taming's attention
q / k / v / proj_out are 1x1 convolutions; diffusers' are linears `to_q` / `to_k` / `to_v` / `to_out.0` with
`group_norm`, so (out, in, 1, 1) weights become (out, in).

Channels, ch_mult, num_res_blocks, z_channels, K and D come from the tensor shapes; attention must be either
absent or only at the lowest resolution (what ArcVQ's config can express). GroupNorm group counts are not visible
in shapes: taming uses 32 (`norm_num_groups`). The assignment rule and the recipe come from `preset`: default
`arcvq-authors` (by angle, with the authors' ImageNet recipe: gamma0 1, lambda 1e-4, s 10, m 0.1, top-k 3,
alpha 5e-5, legacy beta placement); a plain taming VQGAN was trained with Euclidean assignment, convert it with
`preset="vq-baseline"`.

`checkpoint` is a local file or, when online, a file on the Hub: `hf://goals4292/ArcVQ-VAE/<path in the repo>`.

CLI: `python -m arcvq_hf.interop.convert_taming_checkpoint IN OUT [--preset arcvq-authors] [--norm-num-groups 32]`.
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

LAYOUT = "taming VQGAN"
_ENCODER_LEVEL = re.compile(r"^encoder\.down\.(\d+)\.")
_ENCODER_BLOCK_OF_LEVEL_0 = re.compile(r"^encoder\.down\.0\.block\.(\d+)\.")
_ENCODER_ATTENTION_LEVEL = re.compile(r"^encoder\.down\.(\d+)\.attn\.")
_RESNET_PARTS = {"conv_shortcut": "nin_shortcut"}
_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_MID_PARTS = {"resnets.0": "block_1", "attentions.0": "attn_1", "resnets.1": "block_2"}


def infer_taming_config(
    state_dict: Mapping[str, torch.Tensor], preset: str = "arcvq-authors", norm_num_groups: int = 32
) -> ArcVQConfig:
    """ArcVQConfig (backbone 'vqgan', quantizer settings of `preset`) whose sizes match the state dict's shapes."""
    conv_in = require_key(state_dict, "encoder.conv_in.weight", LAYOUT)
    base_channels, num_channels = conv_in.shape[0], conv_in.shape[1]
    levels = sorted({int(match.group(1)) for key in state_dict if (match := _ENCODER_LEVEL.match(key))})
    if levels != list(range(len(levels))) or not levels:
        raise ValueError(f"The {LAYOUT} state dict's encoder.down levels are {levels}; expected 0, 1, ..., L-1.")
    multipliers = []
    for level in levels:
        width = require_key(state_dict, f"encoder.down.{level}.block.0.conv1.weight", LAYOUT).shape[0]
        if width % base_channels:
            raise ValueError(
                f"encoder.down.{level} has width {width}, not a multiple of the base width {base_channels} "
                "(encoder.conv_in); taming's ch_mult must be integers."
            )
        multipliers.append(width // base_channels)
    blocks = {int(match.group(1)) for key in state_dict if (match := _ENCODER_BLOCK_OF_LEVEL_0.match(key))}
    attention_levels = {int(match.group(1)) for key in state_dict if (match := _ENCODER_ATTENTION_LEVEL.match(key))}
    if attention_levels - {levels[-1]}:
        raise ValueError(
            f"The {LAYOUT} encoder has attention at levels {sorted(attention_levels)}; ArcVQ (like the VQGAN "
            f"variant) supports attention only at the lowest resolution (level {levels[-1]})."
        )
    output_channels = require_key(state_dict, "decoder.conv_out.weight", LAYOUT).shape[0]
    if output_channels != num_channels:
        raise ValueError(
            f"The {LAYOUT} decoder outputs {output_channels} channels but the encoder reads {num_channels}; ArcVQ "
            "needs the same number in and out."
        )
    codebook = require_key(state_dict, "quantize.embedding.weight", LAYOUT)
    return ArcVQConfig.from_preset(
        preset,
        variant="vqgan",
        num_channels=num_channels,
        base_channels=base_channels,
        channel_multipliers=multipliers,
        layers_per_block=max(blocks, default=-1) + 1,
        norm_num_groups=norm_num_groups,
        latent_channels=require_key(state_dict, "encoder.conv_out.weight", LAYOUT).shape[0],
        attention_at_lowest_resolution=bool(attention_levels),
        codebook_size=codebook.shape[0],
        codebook_dim=codebook.shape[1],
    )


def _rename_part(part: str, table: Mapping[str, str]) -> str:
    """'to_out.0.weight' -> 'proj_out.weight' for table entries that prefix `part`."""
    for diffusers_name, taming_name in table.items():
        if part.startswith(diffusers_name + "."):
            return taming_name + part[len(diffusers_name) :]
    return part


def _source_key_for(num_levels: int):
    """Our (diffusers-layout) key -> the taming key holding the same tensor."""
    patterns = [
        (
            re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$"),
            "encoder.down.{0}.block.{1}.",
            _RESNET_PARTS,
        ),
        (
            re.compile(r"^encoder\.down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$"),
            "encoder.down.{0}.attn.{1}.",
            _ATTENTION_PARTS,
        ),
        (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)$"), "encoder.down.{0}.downsample.", {}),
        (re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$"), "decoder.up.{0}.block.{1}.", _RESNET_PARTS),
        (
            re.compile(r"^decoder\.up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$"),
            "decoder.up.{0}.attn.{1}.",
            _ATTENTION_PARTS,
        ),
        (re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$"), "decoder.up.{0}.upsample.", {}),
    ]

    def source_key(target_key: str) -> str | None:
        if target_key == "quantizer.step":
            return None
        if target_key == "quantizer.embedding.weight":
            return "quantize.embedding.weight"
        for pattern, template, table in patterns:
            match = pattern.match(target_key)
            if match is None:
                continue
            *indices, rest = match.groups()
            level = int(indices[0])
            if target_key.startswith("decoder."):
                level = num_levels - 1 - level
            return template.format(level, *indices[1:]) + _rename_part(rest, table)
        coder, _, rest = target_key.partition(".")
        if rest.startswith("mid_block."):
            block, _, parameter = _rename_part(rest.removeprefix("mid_block."), _MID_PARTS).partition(".")
            table = _ATTENTION_PARTS if block == "attn_1" else _RESNET_PARTS
            return f"{coder}.mid.{block}.{_rename_part(parameter, table)}"
        if rest.startswith("conv_norm_out."):
            return f"{coder}.norm_out.{rest.removeprefix('conv_norm_out.')}"
        return target_key

    return source_key


def convert_taming_state_dict(
    state_dict: Mapping[str, torch.Tensor], preset: str = "arcvq-authors", norm_num_groups: int = 32
) -> ArcVQModel:
    """A taming VQGAN state dict -> ArcVQModel (vqgan backbone, eval mode) computing the same functions."""
    config = infer_taming_config(state_dict, preset, norm_num_groups)
    return build_converted_model(
        config,
        state_dict,
        _source_key_for(len(config.channel_multipliers)),
        ignored=lambda key: key.startswith("loss."),
        layout=LAYOUT,
    )


def convert_taming_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str = "arcvq-authors",
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    overwrite: bool = False,
    norm_num_groups: int = 32,
) -> Path:
    """Read `checkpoint` (a local torch / Lightning file loaded with weights_only=True or .safetensors, or
    `hf://repo/path`) and write an ArcVQ folder (model + image processor) to `output_dir` atomically.
    Returns `output_dir`."""
    return convert_checkpoint_file(
        checkpoint,
        output_dir,
        lambda state_dict: convert_taming_state_dict(state_dict, preset, norm_num_groups),
        image_mean,
        image_std,
        overwrite,
    )


def main(argv: Sequence[str] | None = None) -> None:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--norm-num-groups", type=int, default=32, help="GroupNorm groups (taming uses 32)")

    run_converter_cli(
        argv,
        prog="python -m arcvq_hf.interop.convert_taming_checkpoint",
        description="Convert a taming-transformers VQGAN checkpoint (e.g. the authors' ArcVQ VQGAN .ckpt) into an "
        "ArcVQ folder (vqgan backbone).",
        add_arguments=add_arguments,
        convert=lambda args: convert_taming_checkpoint(
            args.checkpoint, args.output_dir, norm_num_groups=args.norm_num_groups, **shared_options(args)
        ),
    )


if __name__ == "__main__":
    main()


__all__ = ["convert_taming_checkpoint", "convert_taming_state_dict", "infer_taming_config"]
