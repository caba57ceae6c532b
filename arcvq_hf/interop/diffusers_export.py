"""Export a VQGAN-backbone ArcVQModel as a `diffusers.VQModel`.

The vqgan backbone is built from diffusers' own Encoder / Decoder blocks, so the export is a config translation
plus the codebook: `quantize.embedding.weight` holds the exact code vectors our decoder consumes (the raw codes, or
their unit vectors for a model trained with `spherical_codes`); the quantizer's buffers (schedule step, code-use
statistics of the EMA / restart / k-means options) are training state and are dropped. The VQModel gets
`lookup_from_codebook=True`, so

    vq_model.decode(image_tokens, force_not_quantize=True, shape=(B, h, w, D)).sample == model.decode(image_tokens)
    vq_model.encode(pixel_values).latents == model.encode(pixel_values).latents      (pre-quantization latents)

The one difference: VQModel's own quantizer (`vq_model.quantize`, used by `vq_model(x)` and by `decode` without
`force_not_quantize`) assigns each latent to the nearest code by Euclidean distance, while ArcVQ assigns by angle
(cosine) unless the model was trained with `distance="euclidean"`. To tokenise images for the exported model, use
`ArcVQModel.encode(...).image_tokens` (or `model.quantizer`), then decode the ids with the VQModel as above.

CLI: `python -m arcvq_hf.interop.diffusers_export SRC_FOLDER DST_FOLDER [--overwrite]`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from arcvq_hf.utils.extras import missing_extra

try:
    from diffusers import VQModel
except ImportError as err:
    raise missing_extra("diffusers", "diffusers") from err

from arcvq_hf.model.backbones_arcvq import vqgan_block_types
from arcvq_hf.model.modeling_arcvq import ArcVQModel
from arcvq_hf.utils.io_utils import atomic_output_dir

# Everything outside the quantizer keeps its name (encoder.*, decoder.*, quant_conv.*, post_quant_conv.*). Of the
# quantizer only the codes travel, as `quantize.embedding.weight`; its buffers (the schedule step, and the EMA /
# restart / k-means options' code-use counts, code sums and init flag) are training state with no VQModel place.
_CODEBOOK_KEY = "quantize.embedding.weight"
_QUANTIZER_PREFIX = "quantizer."


def diffusers_vq_config(config: Any) -> dict[str, Any]:
    """The `VQModel` constructor arguments that rebuild an ArcVQConfig's vqgan backbone."""
    if config.backbone != "vqgan":
        raise ValueError(
            f"Only the 'vqgan' backbone can be exported to diffusers.VQModel; this model uses {config.backbone!r}. "
            "The paper's small VQ-VAE (strided convs, bias-free residual stack, transposed-conv decoder) has no "
            "VQModel equivalent: VQModel is built from diffusers' taming-style Encoder/Decoder blocks only."
        )
    down_block_types, up_block_types = vqgan_block_types(config)
    return {
        "in_channels": config.num_channels,
        "out_channels": config.num_channels,
        "down_block_types": down_block_types,
        "up_block_types": up_block_types,
        "block_out_channels": [config.base_channels * multiplier for multiplier in config.channel_multipliers],
        "layers_per_block": config.layers_per_block,
        "act_fn": "silu",
        "latent_channels": config.latent_channels,
        "num_vq_embeddings": config.codebook_size,
        "vq_embed_dim": config.codebook_dim,
        "norm_num_groups": config.norm_num_groups,
        "norm_type": "group",
        "mid_block_add_attention": True,
        "lookup_from_codebook": True,
    }


def to_diffusers(model: torch.nn.Module) -> VQModel:
    """ArcVQModel (vqgan backbone) -> `diffusers.VQModel` in eval mode, on the model's device and dtype.

    See the module docstring for what is equal (decoding token ids, pre-quantization latents) and what is not
    (VQModel's own quantizer assigns by Euclidean distance, ArcVQ by angle).
    """
    vq_model = VQModel(**diffusers_vq_config(model.config))
    state_dict = {key: value for key, value in model.state_dict().items() if not key.startswith(_QUANTIZER_PREFIX)}
    # What our decoder consumes for each id: the raw codes, or their unit vectors with `spherical_codes`.
    with torch.no_grad():
        ids = torch.arange(model.config.codebook_size, device=model.codebook.device)
        state_dict[_CODEBOOK_KEY] = model.quantizer.codes_for(ids)
    vq_model.load_state_dict(state_dict, strict=True)
    parameter = next(model.parameters())
    vq_model.to(parameter.device)
    if parameter.dtype != torch.float32:
        vq_model.to(parameter.dtype)
    return vq_model.eval()


def export_folder(source_dir: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Load a saved ArcVQModel folder, export it, and write a `VQModel.save_pretrained` folder (safetensors) to
    `output_dir` atomically (staged in a temporary folder, then renamed). Returns `output_dir`."""
    inputs = [source_dir] if os.path.exists(source_dir) else []
    model = ArcVQModel.from_pretrained(source_dir)
    vq_model = to_diffusers(model)
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, model_folder=True) as staging:
        vq_model.save_pretrained(staging, safe_serialization=True)
    return Path(output_dir)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m arcvq_hf.interop.diffusers_export",
        description="Export a saved vqgan-backbone ArcVQModel folder as a diffusers VQModel folder.",
    )
    parser.add_argument("source_dir", help="folder written by ArcVQModel.save_pretrained")
    parser.add_argument("output_dir", help="folder to write the VQModel to (config.json + safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir if it exists")
    args = parser.parse_args(argv)
    try:
        output = export_folder(args.source_dir, args.output_dir, overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        parser.exit(1, f"error: {err}\n")
    print(f"Wrote diffusers VQModel to {output} (load with diffusers.VQModel.from_pretrained).")


if __name__ == "__main__":
    main()


__all__ = ["diffusers_vq_config", "export_folder", "to_diffusers"]
