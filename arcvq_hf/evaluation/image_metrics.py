"""Image metrics, on float tensors (B, C, H, W) in [0, 1] with data range 1, one value per image (docs/method.md §3):
- `psnr`: 10 * log10(1 / MSE) per image.
- `ssim`: the usual SSIM (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5, population covariance,
  K1 = 0.01, K2 = 0.03, averaged over the valid window positions and the channels. This is the definition of
  `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1, channel_axis=...)`, computed in torch (float64) so it runs on whole batches.
- `l1_error`: mean absolute error per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# SSIM constants of the usual definition.
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _check_image_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("pred and target must be torch tensors of shape (B, C, H, W) in [0, 1].")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}.")
    if pred.ndim != 4:
        raise ValueError(f"pred and target must have shape (B, C, H, W), got {tuple(pred.shape)}.")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, data range 1.

    Args:
        pred, target: (B, C, H, W) float in [0, 1].
    Returns:
        (B,) float64; +inf for an exact reconstruction.
    """
    _check_image_pair(pred, target)
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


def l1_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image. pred, target: (B, C, H, W) -> (B,) float64."""
    _check_image_pair(pred, target)
    return (pred.double() - target.double()).abs().flatten(1).mean(dim=1)


def _gaussian_window(sigma: float, size: int, device: torch.device) -> torch.Tensor:
    """1-D Gaussian taps (size,), normalised to sum 1, as scipy.ndimage builds them."""
    radius = size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image, data range 1, 11x11 Gaussian window (sigma 1.5), population covariance.

    Only window positions fully inside the image count (skimage crops the 5-pixel border of its padded result,
    which is the same set of positions), so no padding convention is involved.

    Args:
        pred, target: (B, C, H, W) float in [0, 1], H and W >= 11.
    Returns:
        (B,) float64, the mean over channels and positions.
    """
    _check_image_pair(pred, target)
    height, width = pred.shape[-2:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {height}x{width}.")
    batch, channels = pred.shape[:2]
    x = pred.double().reshape(batch * channels, 1, height, width)
    y = target.double().reshape(batch * channels, 1, height, width)
    taps = _gaussian_window(SSIM_SIGMA, SSIM_WINDOW, x.device)
    rows, cols = taps.view(1, 1, -1, 1), taps.view(1, 1, 1, -1)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(image, rows), cols)

    # One pass over the five moments.
    moments = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1).view(-1, 1, height, width))
    moments = moments.view(batch * channels, 5, *moments.shape[-2:])
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = moments.unbind(dim=1)
    var_x = mean_xx - mean_x * mean_x
    var_y = mean_yy - mean_y * mean_y
    cov_xy = mean_xy - mean_x * mean_y
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(batch, -1).mean(dim=1)


__all__ = ["SSIM_SIGMA", "SSIM_WINDOW", "l1_error", "psnr", "ssim"]
