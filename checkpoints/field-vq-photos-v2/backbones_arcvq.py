"""The two backbones of ArcVQ-VAE as named blocks: the paper's small VQ-VAE and the VQGAN-class net.

`modeling_arcvq.ArcVQModel` composes one of them with the SAMP quantizer. This file travels with saved checkpoints
(remote code): it imports only torch, its sibling config file and, inside a try, diffusers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_arcvq import ArcVQConfig

# ----------------------------------------------------------------------------------------------------------------
# Blocks of the paper's small VQ-VAE (docs/method.md §1): x4 down/up-sampling, residual stack of ReLU-3x3-ReLU-1x1.
# Every convolution has a bias, as in the authors' release, so their trained weights load unchanged.
# ----------------------------------------------------------------------------------------------------------------


class VQVAEResidualLayer(nn.Module):
    """relu(x) + Conv1x1(ReLU(Conv3x3(relu(x)))); shape-preserving (B, hidden, h, w).

    The skip carries relu(x), not x: the authors' block starts with an in-place ReLU that overwrites its input
    before the addition, and a model that loads their weights must compute the same function.
    """

    def __init__(self, hidden_size: int, residual_hidden_size: int) -> None:
        super().__init__()
        self.conv_3x3 = nn.Conv2d(hidden_size, residual_hidden_size, kernel_size=3, padding=1)
        self.conv_1x1 = nn.Conv2d(residual_hidden_size, hidden_size, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        activated = F.relu(hidden_states)
        return activated + self.conv_1x1(F.relu(self.conv_3x3(activated)))


class VQVAEResidualStack(nn.Module):
    """`num_layers` residual layers followed by a ReLU."""

    def __init__(self, hidden_size: int, residual_hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VQVAEResidualLayer(hidden_size, residual_hidden_size) for _ in range(num_layers))
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states = self._gradient_checkpointing_func(layer.__call__, hidden_states)
            else:
                hidden_states = layer(hidden_states)
        return F.relu(hidden_states)


class VQVAEEncoder(nn.Module):
    """(B, C, H, W) -> (B, hidden, H/4, W/4)."""

    def __init__(self, config: ArcVQConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.conv_1 = nn.Conv2d(config.num_channels, hidden // 2, kernel_size=4, stride=2, padding=1)
        self.conv_2 = nn.Conv2d(hidden // 2, hidden, kernel_size=4, stride=2, padding=1)
        self.conv_3 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.residual_stack = VQVAEResidualStack(hidden, config.residual_hidden_size, config.num_residual_layers)
        self.out_channels = hidden

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = F.relu(self.conv_1(pixel_values))
        hidden_states = F.relu(self.conv_2(hidden_states))
        return self.residual_stack(self.conv_3(hidden_states))


class VQVAEDecoder(nn.Module):
    """(B, D, h, w) -> (B, C, 4h, 4w)."""

    def __init__(self, config: ArcVQConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.conv_1 = nn.Conv2d(config.codebook_dim, hidden, kernel_size=3, padding=1)
        self.residual_stack = VQVAEResidualStack(hidden, config.residual_hidden_size, config.num_residual_layers)
        self.conv_trans_1 = nn.ConvTranspose2d(hidden, hidden // 2, kernel_size=4, stride=2, padding=1)
        self.conv_trans_2 = nn.ConvTranspose2d(hidden // 2, config.num_channels, kernel_size=4, stride=2, padding=1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        hidden_states = self.residual_stack(self.conv_1(codes))
        hidden_states = F.relu(self.conv_trans_1(hidden_states))
        return self.conv_trans_2(hidden_states)


# ----------------------------------------------------------------------------------------------------------------
# VQGAN-class blocks: diffusers' Encoder / Decoder, so that a diffusers VQModel export is a key rename.
# ----------------------------------------------------------------------------------------------------------------


def vqgan_block_types(config: ArcVQConfig) -> tuple[list[str], list[str]]:
    """diffusers down/up block types; attention in the lowest-resolution level when configured."""
    levels = len(config.channel_multipliers)
    lowest_down = "AttnDownEncoderBlock2D" if config.attention_at_lowest_resolution else "DownEncoderBlock2D"
    lowest_up = "AttnUpDecoderBlock2D" if config.attention_at_lowest_resolution else "UpDecoderBlock2D"
    return ["DownEncoderBlock2D"] * (levels - 1) + [lowest_down], [lowest_up] + ["UpDecoderBlock2D"] * (levels - 1)


def _diffusers_vae_blocks() -> Any:
    """diffusers' VAE block module; only the vqgan backbone needs it.

    The import sits in a try block so that transformers' remote-code check, which lists every other import of this
    file, does not demand diffusers for a vqvae checkpoint.
    """
    try:
        from diffusers.models.autoencoders import vae
    except ImportError as err:
        raise ImportError(
            "The vqgan backbone is built from diffusers' Encoder / Decoder blocks: pip install diffusers."
        ) from err
    return vae


def build_vqgan_encoder(config: ArcVQConfig) -> nn.Module:
    """(B, C, H, W) -> (B, latent_channels, H/f, W/f) with f = 2^(levels-1)."""
    down_types, _ = vqgan_block_types(config)
    encoder = _diffusers_vae_blocks().Encoder(
        in_channels=config.num_channels,
        out_channels=config.latent_channels,
        down_block_types=tuple(down_types),
        block_out_channels=tuple(config.base_channels * m for m in config.channel_multipliers),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        act_fn="silu",
        double_z=False,
        mid_block_add_attention=True,
    )
    encoder.out_channels = config.latent_channels
    return encoder


def build_vqgan_decoder(config: ArcVQConfig) -> nn.Module:
    """(B, latent_channels, h, w) -> (B, C, h*f, w*f)."""
    _, up_types = vqgan_block_types(config)
    return _diffusers_vae_blocks().Decoder(
        in_channels=config.latent_channels,
        out_channels=config.num_channels,
        up_block_types=tuple(up_types),
        block_out_channels=tuple(config.base_channels * m for m in config.channel_multipliers),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        act_fn="silu",
        norm_type="group",
        mid_block_add_attention=True,
    )


__all__ = [
    "VQVAEDecoder",
    "VQVAEEncoder",
    "VQVAEResidualLayer",
    "VQVAEResidualStack",
    "build_vqgan_decoder",
    "build_vqgan_encoder",
    "vqgan_block_types",
]
