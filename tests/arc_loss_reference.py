"""The arc-margin loss written straight from docs/method.md §1.5 with one dense K x N matrix and autograd.

A reference for the tests and for benchmarks/bench_speed.py; training uses the chunked `arc_margin_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dense_arc_margin_loss(
    latents: torch.Tensor, codebook: torch.Tensor, scale: float = 5.0, margin: float = 0.1, top_k: int = 3
) -> torch.Tensor:
    """latents (N, D), codebook (K, D) -> scalar float32 loss; the codebook is detached."""
    latents_unit = F.normalize(latents.float(), dim=1)
    codes_unit = F.normalize(codebook.detach().float(), dim=1)
    top_k = min(top_k, latents.shape[0])
    cosines = codes_unit @ latents_unit.T
    positive_indices = cosines.topk(top_k, dim=1).indices
    is_positive = torch.zeros_like(cosines, dtype=torch.bool).scatter_(1, positive_indices, True)
    # cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m); the sine floor keeps the gradient finite at |cos| = 1.
    sines = (1.0 - cosines.pow(2)).clamp_min(1e-12).sqrt()
    margin_cosines = cosines * math.cos(margin) - sines * math.sin(margin)
    logits = scale * torch.where(is_positive, margin_cosines, cosines)
    positive_logits = logits.masked_fill(~is_positive, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(positive_logits, dim=1)).mean()
