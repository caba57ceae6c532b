"""rFID: the Fréchet distance between Gaussians fitted to the FID Inception V3 2048-d pool features (`inception`)
of the real images and of the reconstructions.

`frechet_distance` uses symmetric eigen-decompositions in float64 (no scipy); `FrechetInceptionDistance`
accumulates the feature moments over batches and ranks; `frechet_inception_distance` is the one-call form.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .inception import FEATURE_DIM, InceptionFeatureExtractor, inception_features


def _as_float64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()


def _drop_round_off(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Zero the eigenvalues below the round-off level (max |eigenvalue| * D * machine eps).

    Why: covariances of fewer than D images are singular; their null-space eigenvalues come out as +-1e-13 and
    their square roots (~3e-7 each, over ~2000 of them) would bias tr(sqrtm) by ~1e-3. Dropping them is the usual
    pseudo-rank tolerance; a genuine eigenvalue that small changes the trace by less than 1e-6.
    """
    tolerance = eigenvalues.abs().max() * eigenvalues.numel() * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * _drop_round_off(eigenvalues).sqrt()) @ eigenvectors.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD (D, D) matrices, float64.

    sigma1 @ sigma2 is similar to the symmetric PSD matrix S = sqrt(sigma1) @ sigma2 @ sqrt(sigma1), so the
    eigenvalues of its square root are sqrt(eig(S)): two symmetric eigen-decompositions, real throughout (no
    complex sqrtm, no eps * I offset for singular covariances).
    """
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    return _drop_round_off(torch.linalg.eigvalsh((middle + middle.T) / 2)).sqrt().sum()


def frechet_distance(
    mu1: torch.Tensor | np.ndarray,
    sigma1: torch.Tensor | np.ndarray,
    mu2: torch.Tensor | np.ndarray,
    sigma2: torch.Tensor | np.ndarray,
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2)), in float64.

    Args:
        mu1, mu2: (D,) means; sigma1, sigma2: (D, D) covariances (torch or numpy).
    """
    mu1, mu2, sigma1, sigma2 = (_as_float64(v) for v in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"Inconsistent shapes: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}.")
    mean_term = (mu1 - mu2).square().sum()
    cov_term = sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(mean_term + cov_term)


class _FeatureMoments:
    """Sum, sum of outer products and count of feature vectors (float64), mergeable across batches and ranks."""

    def __init__(self, dim: int) -> None:
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)  # a tensor so it all-reduces with the rest

    def update(self, features: torch.Tensor) -> None:
        features = features.detach().cpu().double()
        self.sum += features.sum(0)
        self.outer += features.T @ features
        self.count += features.shape[0]

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (D,), unbiased covariance (D, D)), as numpy.cov(rowvar=False) gives."""
        n = float(self.count)
        if n < 2:
            raise ValueError(f"FID needs at least 2 images per side, got {int(n)}.")
        mean = self.sum / n
        cov = (self.outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov


class FrechetInceptionDistance:
    """rFID accumulator: Inception features of real images and reconstructions, summed over batches (and ranks).

    State per side is a float64 sum (D,), sum of outer products (D, D) and count (a 0-d tensor); `state_tensors()`
    lists them in a fixed order so a caller can all-reduce them in place (`all_reduce_` does that for the default
    process group). Merging disjoint shards gives the statistics of the whole set exactly (up to summation order).

    rFID from few images is biased upward (the covariance of 2048-d features needs thousands of images); compare
    only values computed on the same number of images.
    """

    def __init__(
        self,
        extractor: InceptionFeatureExtractor | None = None,
        batch_size: int = 32,
        feature_dim: int = FEATURE_DIM,
    ) -> None:
        self.extractor = extractor
        self.batch_size = batch_size
        self.real = _FeatureMoments(feature_dim)
        self.fake = _FeatureMoments(feature_dim)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return inception_features(images, batch_size=self.batch_size, extractor=self.extractor)

    def update(self, real: torch.Tensor | None = None, fake: torch.Tensor | None = None) -> FrechetInceptionDistance:
        """Add a batch of real images and / or reconstructions, (B, 3 | 1, H, W) in [-1, 1]."""
        return self.update_features(
            None if real is None else self._features(real), None if fake is None else self._features(fake)
        )

    def update_features(
        self, real_features: torch.Tensor | None = None, fake_features: torch.Tensor | None = None
    ) -> FrechetInceptionDistance:
        """Add precomputed (B, D) features (e.g. from `inception_features`)."""
        if real_features is not None:
            self.real.update(real_features)
        if fake_features is not None:
            self.fake.update(fake_features)
        return self

    def state_tensors(self) -> list[torch.Tensor]:
        """[real sum, real outer, real count, fake sum, fake outer, fake count]: the raw sums, to all-reduce."""
        return [self.real.sum, self.real.outer, self.real.count, self.fake.sum, self.fake.outer, self.fake.count]

    def merge(self, other: FrechetInceptionDistance) -> FrechetInceptionDistance:
        for mine, theirs in zip(self.state_tensors(), other.state_tensors(), strict=True):
            mine += theirs
        return self

    __iadd__ = merge

    def all_reduce_(self) -> FrechetInceptionDistance:
        """Sum the state over the ranks of the default torch.distributed group (no-op without one)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        for tensor in self.state_tensors():
            buffer = tensor.cuda() if torch.distributed.get_backend() == "nccl" else tensor
            torch.distributed.all_reduce(buffer)
            tensor.copy_(buffer.cpu())
        return self

    def reset(self) -> None:
        self.real = _FeatureMoments(self.real.sum.numel())
        self.fake = _FeatureMoments(self.fake.sum.numel())

    @property
    def num_real(self) -> int:
        return int(self.real.count)

    @property
    def num_fake(self) -> int:
        return int(self.fake.count)

    def compute(self) -> float:
        """Fréchet distance between the Gaussians fitted to the real and the reconstructed features."""
        mu1, sigma1 = self.real.statistics()
        mu2, sigma2 = self.fake.statistics()
        return frechet_distance(mu1, sigma1, mu2, sigma2)


def frechet_inception_distance(
    real_images: torch.Tensor | Iterable[torch.Tensor],
    reconstructions: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 32,
) -> float:
    """rFID between two image sets in [-1, 1]: (N, 3 | 1, H, W) tensors or iterables of batches.

    Uses the cached pretrained extractor (8-bit quantised, TF1-bilinear resized to 299). Biased for small N:
    compare only like with like.
    """
    fid = FrechetInceptionDistance(batch_size=batch_size)
    fid.update_features(inception_features(real_images, batch_size), inception_features(reconstructions, batch_size))
    return fid.compute()
