"""Codebook metrics (docs/method.md §3): code use counted over a whole evaluation set (`CodebookUsage`: utilization,
perplexity, dead codes) and the geometry of the codebook itself (`angular_dispersion`, `code_norm_stats`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# A code counts as "on the BBNR bound" when its norm is at least (1 - this) times the ball radius.
ON_BOUND_RELATIVE_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Codebook use
# ----------------------------------------------------------------------------------------------------------------


def _check_counts(counts: torch.Tensor) -> torch.Tensor:
    if not isinstance(counts, torch.Tensor) or counts.ndim != 1:
        raise ValueError("counts must be a 1-D tensor of per-code use counts (K,).")
    if counts.numel() == 0:
        raise ValueError("counts is empty: the codebook needs at least one code.")
    if (counts < 0).any():
        raise ValueError("counts must be non-negative.")
    return counts


def codebook_utilization(counts: torch.Tensor) -> float:
    """Fraction of the K codes used at least once. counts: (K,) use counts over the whole set."""
    counts = _check_counts(counts)
    return float((counts > 0).sum().item()) / counts.numel()


def dead_codes(counts: torch.Tensor) -> int:
    """K minus the number of codes used at least once. counts: (K,)."""
    counts = _check_counts(counts)
    return int((counts == 0).sum().item())


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code-frequency histogram, natural log; between 1 and K. counts: (K,), not all zero."""
    counts = _check_counts(counts).double()
    total = counts.sum()
    if total <= 0:
        raise ValueError("perplexity needs at least one counted token; all counts are zero.")
    probabilities = counts[counts > 0] / total
    return float(torch.exp(-(probabilities * probabilities.log()).sum()).item())


class CodebookUsage:
    """Accumulates how often each of K codes is used; merge instances with `+=` or `merge`.

    Attributes:
        counts: (K,) int64 use counts.
    """

    def __init__(self, codebook_size: int) -> None:
        if not isinstance(codebook_size, int) or codebook_size < 1:
            raise ValueError(f"codebook_size must be an integer >= 1, got {codebook_size!r}.")
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.long)

    def update(self, image_tokens: torch.Tensor) -> CodebookUsage:
        """Count the code ids in `image_tokens` (any shape, integer ids in [0, K))."""
        if image_tokens.is_floating_point() or image_tokens.dtype == torch.bool:
            raise TypeError(f"image_tokens must hold integer code ids, got dtype {image_tokens.dtype}.")
        flat = image_tokens.detach().reshape(-1).long().cpu()
        if flat.numel():
            low, high = int(flat.min()), int(flat.max())
            if low < 0 or high >= self.codebook_size:
                raise ValueError(f"code ids must lie in [0, {self.codebook_size - 1}], got values in [{low}, {high}].")
            self.counts += torch.bincount(flat, minlength=self.codebook_size)
        return self

    def merge(self, other: CodebookUsage) -> CodebookUsage:
        if other.codebook_size != self.codebook_size:
            raise ValueError(f"Cannot merge usage of K={other.codebook_size} into K={self.codebook_size}.")
        self.counts += other.counts
        return self

    __iadd__ = merge

    @property
    def num_tokens(self) -> int:
        return int(self.counts.sum().item())

    @property
    def utilization(self) -> float:
        return codebook_utilization(self.counts)

    @property
    def perplexity(self) -> float:
        return perplexity(self.counts)

    @property
    def dead_codes(self) -> int:
        return dead_codes(self.counts)


# ----------------------------------------------------------------------------------------------------------------
# The codebook's geometry
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def angular_dispersion(codebook: torch.Tensor, max_elements: int = 2**22) -> float:
    """Mean over codes of the angle (degrees) to the nearest other code.

    Args:
        codebook: (K, D) raw code vectors, K >= 2. Zero vectors count as orthogonal to everything.
        max_elements: at most this many code-by-code cosines exist at once.
    """
    if codebook.ndim != 2 or codebook.shape[0] < 2:
        raise ValueError(f"angular_dispersion needs a (K, D) codebook with K >= 2, got {tuple(codebook.shape)}.")
    units = F.normalize(codebook.detach().double(), dim=1)
    num_codes = units.shape[0]
    rows = max(1, max_elements // num_codes)
    nearest_cosines = []
    for start in range(0, num_codes, rows):
        cosines = units[start : start + rows] @ units.T
        own = torch.arange(start, start + cosines.shape[0], device=cosines.device)
        cosines[torch.arange(cosines.shape[0], device=cosines.device), own] = -2.0
        nearest_cosines.append(cosines.max(dim=1).values)
    angles = torch.rad2deg(torch.acos(torch.cat(nearest_cosines).clamp(-1.0, 1.0)))
    return float(angles.mean().item())


@torch.no_grad()
def code_norm_stats(codebook: torch.Tensor, ball_radius: float | None = None) -> dict[str, float]:
    """Distribution of code norms: mean, std (population), min, max and, given the BBNR radius, the fraction of
    codes on the bound (norm >= (1 - 1e-3) * radius).

    Args:
        codebook: (K, D) raw code vectors.
        ball_radius: R(t) of the model's current step, or None.
    """
    if codebook.ndim != 2 or codebook.shape[0] < 1:
        raise ValueError(f"code_norm_stats needs a (K, D) codebook, got {tuple(codebook.shape)}.")
    norms = codebook.detach().double().norm(dim=1)
    stats = {
        "code_norm_mean": float(norms.mean().item()),
        "code_norm_std": float(norms.std(correction=0).item()),
        "code_norm_min": float(norms.min().item()),
        "code_norm_max": float(norms.max().item()),
    }
    if ball_radius is not None:
        on_bound = norms >= (1.0 - ON_BOUND_RELATIVE_TOLERANCE) * ball_radius
        stats["code_norm_fraction_on_bound"] = float(on_bound.double().mean().item())
    return stats


def codebook_geometry(model: Any) -> dict[str, float]:
    """Angular dispersion and norm statistics of an `ArcVQModel`'s codebook at its current step."""
    codebook = model.codebook
    radius = model.quantizer.current_ball_radius if model.config.use_ball_bound else None
    return {"angular_dispersion": angular_dispersion(codebook), **code_norm_stats(codebook, radius)}


__all__ = [
    "ON_BOUND_RELATIVE_TOLERANCE",
    "CodebookUsage",
    "angular_dispersion",
    "code_norm_stats",
    "codebook_geometry",
    "codebook_utilization",
    "dead_codes",
    "perplexity",
]
