"""The SAMP quantizer (docs/method.md §1) as a drop-in layer, and one function per step of the method.

    quantizer = SphericalAngularMarginQuantizer(codebook_size=512, codebook_dim=64)
    quantized, indices, loss = quantizer(latents)    # (B, D, H, W) channel-first, or (B, N, D) channel-last

Every numbered step of docs/method.md §1 has one named function here:
  1.1 `init_codebook_`          codebook init
  1.2 `assign_codes`            nearest code by angle (or euclidean distance), chunked, float32
  1.3 `vq_loss`                 codebook + beta * commitment
  1.4 `ball_radius_at`, `project_onto_ball_`   BBNR, applied by the layer before training forwards
  1.5 `arc_margin_loss`         additive angular-margin loss, chunked, gradient accumulated in the forward pass
      `arc_weight_at`           gamma_t = gamma0 * exp(-lambda * t)
  1.2 + 1.5 `assign_codes_and_arc_margin_loss`   both from one walk over the cosines: how the layer runs them in
                                training when it assigns by angle (same indices and loss as the two functions)
Options beyond the paper (docs/method.md §1.10): `ema_update_codebook_`, `restart_dead_codes_`, `kmeans_codebook`.
Under torch.distributed (DDP, torchrun) these updates keep every process's codebook identical: the EMA statistics are
summed over processes, and a k-means init or a restart made by process 0 is broadcast to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .configuration_arcvq import ArcVQConfig

# Exponents above this overflow float32; radii and weights saturate instead.
_MAX_EXPONENT = 80.0
# Floor on sin(theta) in the margin's derivative: d cos(theta + m) / d cos(theta) has a 1 / sin(theta) term.
_MIN_SINE = 1e-6


def ball_radius_at(
    step: int | torch.Tensor, growth_rate: float, max_radius: float | None = None
) -> float | torch.Tensor:
    """R(t) = min(exp(alpha * t), max_radius), saturating instead of overflowing. `max_radius` None is the paper's
    unbounded growth; a cap keeps the ball binding after exp(alpha * t) has outgrown every code (an option beyond the
    paper, docs/method.md §1.10).

    A tensor step (the quantizer's buffer) gives a float32 tensor on its device, so a training forward never
    waits for the device to hand the step back to the host.
    """
    if isinstance(step, torch.Tensor):
        radius = torch.exp((step.float() * growth_rate).clamp(max=_MAX_EXPONENT))
        return radius if max_radius is None else radius.clamp(max=max_radius)
    radius = math.exp(min(growth_rate * step, _MAX_EXPONENT))
    return radius if max_radius is None else min(radius, max_radius)


def arc_weight_at(
    step: int | torch.Tensor, initial_weight: float, decay: float, floor: float = 0.0
) -> float | torch.Tensor:
    """gamma_t = max(gamma0 * exp(-lambda * t), floor) (the floor is an option beyond the paper, docs/method.md
    §1.10; 0 gives the paper's schedule exactly); a tensor step gives a float32 tensor (see `ball_radius_at`)."""
    if isinstance(step, torch.Tensor):
        return (initial_weight * torch.exp(-(step.float() * decay).clamp(max=_MAX_EXPONENT))).clamp(min=floor)
    return max(initial_weight * math.exp(-min(decay * step, _MAX_EXPONENT)), floor)


@torch.no_grad()
def init_codebook_(codebook: torch.Tensor, method: str) -> torch.Tensor:
    """Fill `codebook` (K, D) in place: U(-1, 1) rows scaled to unit norm, or U(-1/K, 1/K)."""
    num_codes = codebook.shape[0]
    if method == "uniform_normalized":
        codebook.uniform_(-1.0, 1.0)
        codebook.copy_(F.normalize(codebook, dim=1))
    elif method == "uniform_scaled":
        codebook.uniform_(-1.0 / num_codes, 1.0 / num_codes)
    else:
        raise ValueError(f"Unknown codebook init {method!r}; expected 'uniform_normalized' or 'uniform_scaled'.")
    return codebook


@torch.no_grad()
def project_onto_ball_(codebook: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """BBNR: rescale, in place, every code whose norm exceeds `radius` onto the sphere of that radius.

    Codes inside the ball are untouched (multiplied by exactly 1). Returns the boolean mask (K,) of the codes
    that were projected. Branch-free, so a tensor radius never forces a device-to-host sync.
    """
    norms = codebook.norm(dim=1)
    outside = norms > radius
    scale = torch.where(outside, radius / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.ones_like(norms))
    codebook.mul_(scale.unsqueeze(1).to(codebook.dtype))
    return outside


# Laplace smoothing of the code-use counts in the EMA update: a code nobody chose keeps a finite divisor.
_EMA_EPSILON = 1e-5


def _num_processes() -> int:
    """Processes in torch.distributed's default group (1 without one): they train the layer together, each on its
    own part of the batch, and the optimizer keeps their parameters identical; the codebook updates below are not
    made by the optimizer, so they synchronise themselves."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


@torch.no_grad()
def _sum_over_processes_(*tensors: torch.Tensor) -> None:
    """In place: every tensor becomes its sum over the processes (no-op for one process)."""
    if _num_processes() > 1:
        for tensor in tensors:
            torch.distributed.all_reduce(tensor)


@torch.no_grad()
def _copy_from_first_process_(*tensors: torch.Tensor | None) -> None:
    """In place: every tensor becomes process 0's (no-op for one process; None entries are skipped)."""
    if _num_processes() > 1:
        for tensor in tensors:
            if tensor is not None:
                torch.distributed.broadcast(tensor, src=0)


@torch.no_grad()
def ema_update_codebook_(
    codebook: torch.Tensor,
    code_usage: torch.Tensor,
    code_sum: torch.Tensor,
    latents: torch.Tensor,
    indices: torch.Tensor,
    decay: float,
) -> None:
    """EMA code update (docs/method.md §1.10), in place: each code becomes the moving average of the raw latents
    assigned to it.

    code_usage (K,) <- decay * code_usage + (1 - decay) * count_j; code_sum (K, D) likewise with the sum of the
    latents assigned to code j; codebook (K, D) <- code_sum / Laplace-smoothed code_usage.

    Args:
        latents: (N, D) this batch's latents (raw: under angle assignment the codes still carry the latents' norms,
            which the decoder receives).
        indices: (N,) the codes they were assigned to.
    Under torch.distributed count_j and the sums are added over processes first, so every process makes the update
    that one process seeing the whole batch would make.
    """
    num_codes = codebook.shape[0]
    counts = torch.bincount(indices, minlength=num_codes).to(code_usage.dtype)
    sums = torch.zeros_like(code_sum).index_add_(0, indices, latents.detach().to(code_sum.dtype))
    _sum_over_processes_(counts, sums)
    code_usage.mul_(decay).add_(counts, alpha=1.0 - decay)
    code_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
    total = code_usage.sum()
    smoothed = (code_usage + _EMA_EPSILON) / (total + num_codes * _EMA_EPSILON) * total
    codebook.copy_((code_sum / smoothed.unsqueeze(1)).to(codebook.dtype))


@torch.no_grad()
def restart_dead_codes_(
    codebook: torch.Tensor,
    code_usage: torch.Tensor,
    latents: torch.Tensor,
    threshold: float,
    code_sum: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dead-code restart (docs/method.md §1.10), in place: every code whose moving-average use per step is below
    `threshold` is moved onto a random latent of the batch, and its use is reset to the threshold: a restarted code
    that wins no token in the next step is restarted again (on that step's latents), so unused codes keep following
    where the encoder's latents are, which move fast early in training.

    Args:
        codebook: (K, D); code_usage: (K,); latents: (N, D) this batch's latents; code_sum: (K, D) with the EMA
            update, kept consistent (code_sum_j = code_j * code_usage_j).
    Under torch.distributed (where code_usage is the same on every process) process 0 restarts the codes on its
    latents and the others take its codebook and statistics.
    Returns:
        (K,) bool mask of the restarted codes.
    """
    dead = code_usage < threshold
    num_dead = int(dead.sum())
    if num_dead == 0 or latents.shape[0] == 0:
        return dead
    picks = torch.randint(0, latents.shape[0], (num_dead,), device=latents.device)
    codebook[dead] = latents.detach()[picks].to(codebook.dtype)
    code_usage[dead] = threshold
    if code_sum is not None:
        code_sum[dead] = codebook[dead].to(code_sum.dtype) * code_usage[dead].unsqueeze(1)
    _copy_from_first_process_(codebook, code_usage, code_sum)
    return dead


@torch.no_grad()
def kmeans_codebook(
    latents: torch.Tensor,
    num_codes: int,
    iterations: int = 10,
    distance: str = "euclidean",
    max_elements: int = 2**22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of one batch of latents (docs/method.md §1.10): the data-dependent codebook init of EMA quantizers.

    Starts from `num_codes` distinct latents (drawn with replacement only when the batch holds fewer), then
    `iterations` rounds of: assign every latent to its nearest mean (`assign_codes` with `distance`), move each mean
    to the average of its latents (l2-normalised under "cosine"); a mean that won no latent stays where it was.

    Args:
        latents: (N, D) float32 latents.
    Returns:
        means (K, D) float32, and counts (K,) float32: how many latents each mean held in the last round.
    """
    latents = latents.detach().float()
    if distance == "cosine":
        latents = F.normalize(latents, dim=1)
    num_latents = latents.shape[0]
    if num_latents >= num_codes:
        starts = torch.randperm(num_latents, device=latents.device)[:num_codes]
    else:
        starts = torch.randint(0, num_latents, (num_codes,), device=latents.device)
    means = latents[starts].clone()
    counts = torch.zeros(num_codes, device=latents.device)
    for _ in range(iterations):
        nearest = assign_codes(latents, means, distance, max_elements)
        counts = torch.bincount(nearest, minlength=num_codes).float()
        sums = torch.zeros_like(means).index_add_(0, nearest, latents)
        moved = sums / counts.clamp_min(1.0).unsqueeze(1)
        if distance == "cosine":
            moved = F.normalize(moved, dim=1)
        means = torch.where((counts > 0).unsqueeze(1), moved, means)
    return means, counts


def _rows_per_chunk(columns: int, max_elements: int) -> int:
    return max(1, max_elements // max(1, columns))


# The walks over code-by-latent cosines (assignment by angle, the arc loss, and both at once) on one CPU thread take
# blocks of codes holding about this many cosines, so that a block stays in cache across the passes made over it
# (product, maxima, exponentials, gradient product); `max_elements` still caps the block.
_CACHED_BLOCK_ELEMENTS = 2**20
# ... but at least this many codes per block, so the products stay matrix-matrix products when N is large.
_MIN_BLOCK_CODES = 64


def _codes_per_block(num_latents: int, max_elements: int, device: torch.device) -> int:
    """Codes per (k, N) block of cosines. One rule for `assign_codes` (by angle), `arc_margin_loss` and
    `assign_codes_and_arc_margin_loss`, so that all three compute bit-identical cosines.

    The largest block `max_elements` allows, except on a CPU running torch on one thread: there cache-sized blocks
    are faster. With several threads every pass over a block is a parallel region whose threads must all meet, which
    on a busy CPU costs a scheduler time slice each (2 threads on a loaded 2-core machine: blocks of 2**19 cosines
    made the arc loss 4x slower than blocks of 2**22); on a GPU every block costs kernel launches.
    """
    largest = max(1, max_elements // max(1, num_latents))
    if device.type != "cpu" or torch.get_num_threads() > 1:
        return largest
    return min(largest, max(_MIN_BLOCK_CODES, _CACHED_BLOCK_ELEMENTS // max(1, num_latents)))


def _block_cosines(code_block: torch.Tensor, latents_unit: torch.Tensor) -> torch.Tensor:
    """(k, N) cosines of unit codes (k, D) against unit latents (N, D): the one product every walk uses."""
    return code_block @ latents_unit.T


def _update_nearest_codes_(
    cosines: torch.Tensor,
    first_code: int,
    best: torch.Tensor,
    indices: torch.Tensor,
    improved_columns_only: bool | None = None,
) -> None:
    """Fold the cosines (k, N) of codes first_code .. first_code + k - 1 into the running per-latent maximum `best`
    (N,) and its code `indices` (N,), in place.

    A later block wins only with a strictly larger cosine and, within a block, the first maximal row wins, so ties
    go to the lowest code index, as with one argmax over all codes. A column-wise max with indices is slow on CPU:
    the block's column maxima come first; then, on CPU (`improved_columns_only` None), when they improve few latents
    (the usual case after the first blocks), the rows are looked up in those columns only; otherwise each column's
    first maximal row is the largest of descending row weights where the column equals its maximum. All ways give
    the same result.
    """
    column_max = cosines.amax(dim=0)
    if improved_columns_only is None:
        improved_columns_only = cosines.device.type == "cpu"
    if improved_columns_only:
        improved = (column_max > best).nonzero().squeeze(1)
        if improved.numel() == 0:
            return
        if 4 * improved.numel() <= cosines.shape[1]:
            values, rows = cosines.index_select(1, improved).max(dim=0)
            best.index_copy_(0, improved, values)
            indices.index_copy_(0, improved, rows + first_code)
            return
    num_rows = cosines.shape[0]
    weights = torch.arange(num_rows, 0, -1, dtype=cosines.dtype, device=cosines.device).unsqueeze(1)
    rows = num_rows - torch.where(cosines == column_max, weights, 0.0).amax(dim=0).long()
    improved = column_max > best
    best.copy_(torch.where(improved, column_max, best))
    indices.copy_(torch.where(improved, rows + first_code, indices))


def _nearest_codes_by_angle(latents_unit: torch.Tensor, codes_unit: torch.Tensor, max_elements: int) -> torch.Tensor:
    """argmax_j cos(z_i, e_j) of unit latents (N, D) and unit codes (K, D), walking blocks of codes."""
    num_latents = latents_unit.shape[0]
    best = latents_unit.new_full((num_latents,), -math.inf)
    indices = torch.zeros(num_latents, dtype=torch.long, device=latents_unit.device)
    rows = _codes_per_block(num_latents, max_elements, latents_unit.device)
    for start in range(0, codes_unit.shape[0], rows):
        _update_nearest_codes_(_block_cosines(codes_unit[start : start + rows], latents_unit), start, best, indices)
    return indices


@torch.no_grad()
def assign_codes(
    latents: torch.Tensor, codebook: torch.Tensor, distance: str = "cosine", max_elements: int = 2**22
) -> torch.Tensor:
    """Index of the nearest code for each latent.

    Args:
        latents: (N, D) flattened encoder outputs.
        codebook: (K, D).
        distance: `"cosine"` (argmax of cosine similarity) or `"euclidean"` (argmin of squared distance).
        max_elements: at most this many latent-by-code scores exist at once.
    Returns:
        (N,) int64 code indices. By angle, ties go to the lowest code index, and the cosines are bit-identical to
        those of `assign_codes_and_arc_margin_loss` (same blocks of codes, same product), so both pick the same codes.
    """
    if distance not in ("cosine", "euclidean"):
        raise ValueError(f"Unknown distance {distance!r}; expected 'cosine' or 'euclidean'.")
    # Ties and near-ties must not depend on autocast: score in float32, with autocast off for the products too.
    with torch.autocast(device_type=latents.device.type, enabled=False):
        latents = latents.detach().float()
        codebook = codebook.detach().float()
        if distance == "cosine":
            return _nearest_codes_by_angle(F.normalize(latents, dim=1), F.normalize(codebook, dim=1), max_elements)
        code_sq_norms = codebook.pow(2).sum(dim=1)
        rows = _rows_per_chunk(codebook.shape[0], max_elements)
        indices = []
        for chunk in latents.split(rows):
            # argmin ||z - e||^2 = argmax (2 z.e - ||e||^2); ||z||^2 is constant per row.
            indices.append((2 * (chunk @ codebook.T) - code_sq_norms).argmax(dim=1))
        return torch.cat(indices) if indices else latents.new_zeros(0, dtype=torch.long)


def vq_loss(
    latents: torch.Tensor, codes: torch.Tensor, commitment_cost: float = 0.25, legacy: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook term mean ||sg(z) - e||^2 and commitment term mean ||z - sg(e)||^2.

    Returns (total, commitment) with total = codebook + beta * commitment, or beta * codebook + commitment when
    `legacy` (taming's placement).
    """
    codebook_term = F.mse_loss(codes, latents.detach())
    commitment_term = F.mse_loss(latents, codes.detach())
    if legacy:
        return commitment_cost * codebook_term + commitment_term, commitment_term
    return codebook_term + commitment_cost * commitment_term, commitment_term


def _margin_logits(cosines: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """s * cos(theta + m) = s * (cos(theta) cos(m) - sin(theta) sin(m)), with no acos."""
    sines = (1.0 - cosines.pow(2)).clamp_min(_MIN_SINE**2).sqrt()
    return scale * (cosines * math.cos(margin) - sines * math.sin(margin))


def _margin_logit_slope(cosines: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """d [s * cos(theta + m)] / d cos(theta), consistent with the sine floor in `_margin_logits`."""
    sine_sq = 1.0 - cosines.pow(2)
    slope_of_sine = torch.where(
        sine_sq > _MIN_SINE**2, -cosines / sine_sq.clamp_min(_MIN_SINE**2).sqrt(), torch.zeros_like(cosines)
    )
    return scale * (math.cos(margin) - slope_of_sine * math.sin(margin))


# Row-wise top-k is the slowest part of the arc loss on CPU (torch.topk walks every column). Columns are first
# reduced to the maxima of groups of this many, then torch.topk runs on the members of the top_k best groups only.
_TOP_K_GROUP = 64


def _top_k_per_row(scores: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top_k` largest values of each row of `scores` (k, N) and their column indices, like `scores.topk`.

    Exact: an element among the `top_k` largest of its row lies in a group whose maximum is among the `top_k`
    largest group maxima (at most top_k - 1 elements exceed it). Only the order among exactly tied values may
    differ from `torch.topk`.
    """
    rows, columns = scores.shape
    grouped_columns = columns - columns % _TOP_K_GROUP
    if grouped_columns < 4 * top_k * _TOP_K_GROUP:
        return scores.topk(top_k, dim=1)
    group_maxima = scores[:, :grouped_columns].view(rows, -1, _TOP_K_GROUP).amax(dim=2)
    best_groups = group_maxima.topk(top_k, dim=1).indices
    offsets = torch.arange(_TOP_K_GROUP, device=scores.device)
    candidates = (best_groups[:, :, None] * _TOP_K_GROUP + offsets).reshape(rows, -1)
    if grouped_columns < columns:  # the ragged tail is always a candidate
        tail = torch.arange(grouped_columns, columns, device=scores.device).expand(rows, -1)
        candidates = torch.cat([candidates, tail], dim=1)
    values, positions = scores.gather(1, candidates).topk(top_k, dim=1)
    return values, candidates.gather(1, positions)


def _chunk_loss_and_cosine_gradient(
    cosines: torch.Tensor, top_k: int, scale: float, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-code arc loss of one block of codes against all latents, from their cosines (k, N), and its gradient with
    respect to the cosines.

    Only one (k, N) matrix exists: `cosines`, overwritten in place by the shifted exponentials (a caller that needs
    the cosines, like the assignment, reads them first). Every row is shifted by its largest logit, so no exponential
    overflows and the largest term is at least exp(-s * m).

    Returns:
        losses (k,): log sum_i exp(l_ji) - log sum_{i in P_j} exp(l_ji).
        exponentials (k, N): exp(s * cos_ji - shift_j), zero at the positives (the storage of `cosines`).
        row_scale (k,): d losses_j / d cos_ji = row_scale_j * exponentials_ji for every non-positive i.
        positive_indices (k, top_k): P_j.
        positive_gradient (k, top_k): d losses_j / d cos_ji at the positives.
    """
    positive_cosines, positive_indices = _top_k_per_row(cosines, top_k)
    shift = positive_cosines[:, :1] * scale
    # s * cos - shift in one pass over the block, then the exponentials in place.
    exponentials = torch.add(-shift, cosines, alpha=scale, out=cosines).exp_()
    exponentials.scatter_(1, positive_indices, 0.0)
    positive_exponentials = (_margin_logits(positive_cosines, scale, margin) - shift).exp()
    positive_sum = positive_exponentials.sum(dim=1)
    total_sum = exponentials.sum(dim=1) + positive_sum
    losses = total_sum.log() - positive_sum.log()
    # dL_j/dl_ji = exp(l_ji) / sum_all - [i in P_j] exp(l_ji) / sum_P; dl/dcos is s, or the margin's slope at P_j.
    positive_gradient = (
        positive_exponentials / total_sum[:, None] - positive_exponentials / positive_sum[:, None]
    ) * _margin_logit_slope(positive_cosines, scale, margin)
    return losses, exponentials, scale / total_sum, positive_indices, positive_gradient


class _ChunkedArcMarginLoss(torch.autograd.Function):
    """Arc loss over blocks of codes, and optionally the assignment by angle from the same blocks of cosines. The
    gradient is accumulated block by block during the forward pass (the loss is a scalar, so backward only rescales
    it): no K x N matrix is ever stored and nothing is recomputed. Returns (loss, indices); indices is empty when
    `assign` is False."""

    @staticmethod
    def forward(ctx, latents, codes, top_k, scale, margin, max_elements, assign):  # type: ignore[override]
        num_latents = latents.shape[0]
        rows = _codes_per_block(num_latents, max_elements, latents.device)
        needs_gradient = ctx.needs_input_grad[0]
        total = latents.new_zeros((), dtype=torch.float32)
        # The gradient is accumulated transposed, (D, N): the product then reads the (k, N) block row by row, which
        # is faster than through its transpose.
        grad_latents_t = latents.new_zeros(latents.shape[1], num_latents) if needs_gradient else None
        indices = torch.zeros(num_latents if assign else 0, dtype=torch.long, device=latents.device)
        best = latents.new_full((num_latents,), -math.inf) if assign else None
        for start in range(0, codes.shape[0], rows):
            code_chunk = codes[start : start + rows]
            cosines = _block_cosines(code_chunk, latents)
            if assign:  # before the arc loss overwrites the cosines with its exponentials
                _update_nearest_codes_(cosines, start, best, indices)
            losses, exponentials, row_scale, positive_indices, positive_gradient = _chunk_loss_and_cosine_gradient(
                cosines, top_k, scale, margin
            )
            total = total + losses.sum()
            if needs_gradient:
                # d losses_j / d cos_ji divided by row_scale_j: the exponentials, with the positives' own values put
                # in their zeroed places. d cos_ji / d z_i = e_j, so the gradient is one product with the codes
                # scaled by row_scale (the per-code factor folded into the codes, not into the block). No scatter-add:
                # with 2 threads on a loaded CPU each one cost ~80 ms.
                exponentials.scatter_(1, positive_indices, positive_gradient / row_scale[:, None])
                grad_latents_t.addmm_((code_chunk * row_scale[:, None]).T, exponentials)
        num_codes = codes.shape[0]
        if needs_gradient:
            ctx.save_for_backward(grad_latents_t.T.div(num_codes).contiguous())
        ctx.mark_non_differentiable(indices)
        return total / num_codes, indices

    @staticmethod
    def backward(ctx, grad_output, grad_indices):  # type: ignore[override]
        (grad_latents,) = ctx.saved_tensors
        return grad_latents * grad_output, None, None, None, None, None, None


def _arc_margin_walk(
    latents: torch.Tensor,
    codebook: torch.Tensor,
    scale: float,
    margin: float,
    top_k: int,
    max_elements: int,
    assign: bool,
    caller: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, indices) of `_ChunkedArcMarginLoss` on the l2-normalised float32 rows, autocast off."""
    if latents.shape[0] == 0:
        raise ValueError(f"{caller} needs at least one latent vector, got an empty batch.")
    top_k = min(top_k, latents.shape[0])
    # Cosines near 1 and the top-k choice need float32: under bf16 / fp16 autocast the loss still runs in float32.
    with torch.autocast(device_type=latents.device.type, enabled=False):
        latents_unit = F.normalize(latents.float(), dim=1)
        codes_unit = F.normalize(codebook.detach().float(), dim=1)
        return _ChunkedArcMarginLoss.apply(
            latents_unit, codes_unit, top_k, float(scale), float(margin), max_elements, assign
        )


def arc_margin_loss(
    latents: torch.Tensor,
    codebook: torch.Tensor,
    scale: float = 5.0,
    margin: float = 0.1,
    top_k: int = 3,
    max_elements: int = 2**22,
) -> torch.Tensor:
    """ArcCosine additive-margin loss of docs/method.md §1.5, with the codebook detached.

    For each code j, the `top_k` latents of the batch closest in angle are its positives P_j; their logits get the
    additive angular margin. L = -mean_j log(sum_{i in P_j} exp(l_ji) / sum_i exp(l_ji)), computed with logsumexp.

    Args:
        latents: (N, D) encoder outputs (gradients flow to them).
        codebook: (K, D) codes (detached here).
        max_elements: at most this many code-by-latent entries are held at once, forward and backward.
    Returns:
        scalar float32 loss. With fewer latents than `top_k`, all latents are positives.
    """
    loss, _ = _arc_margin_walk(latents, codebook, scale, margin, top_k, max_elements, False, "arc_margin_loss")
    return loss


def assign_codes_and_arc_margin_loss(
    latents: torch.Tensor,
    codebook: torch.Tensor,
    scale: float = 5.0,
    margin: float = 0.1,
    top_k: int = 3,
    max_elements: int = 2**22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1.2 (assignment by angle) and 1.5 (arc-margin loss) from one walk over the code-by-latent cosines: how
    the layer runs both in training when it assigns by angle. Both steps need all K x N cosines; here each block of
    them is computed once, its per-latent maxima are taken for the assignment, then it becomes the arc loss's
    exponentials.

    Returns:
        indices (N,) int64, equal to `assign_codes(latents, codebook, "cosine", max_elements)`, and the scalar
        float32 loss of `arc_margin_loss(latents, codebook, scale, margin, top_k, max_elements)` with its gradient.
    """
    loss, indices = _arc_margin_walk(
        latents, codebook, scale, margin, top_k, max_elements, True, "assign_codes_and_arc_margin_loss"
    )
    return indices, loss


@torch.no_grad()
def arc_positive_directions(
    codes: torch.Tensor, latents: torch.Tensor, top_k: int = 3, max_elements: int = 2**22
) -> torch.Tensor:
    """The mean direction of each code's arc-loss positives: for each code j of `codes` (U, D), the unit vector of
    the mean of the unit latents among its `top_k` closest in angle (P_j of docs/method.md §1.5) in `latents` (N, D).

    Returns (U, D) float32 unit vectors (a code with positives that cancel keeps a zero row).
    """
    latents_unit = F.normalize(latents.detach().float(), dim=1)
    codes_unit = F.normalize(codes.detach().float(), dim=1)
    top_k = min(top_k, latents_unit.shape[0])
    rows = _rows_per_chunk(latents_unit.shape[0], max_elements)
    means = []
    for block in codes_unit.split(rows):
        _, positives = _top_k_per_row(block @ latents_unit.T, top_k)  # the arc loss's own choice of P_j
        means.append(latents_unit[positives].mean(dim=1))
    return F.normalize(torch.cat(means), dim=1) if means else codes_unit.new_zeros(0, codes.shape[1])


def unused_code_pull_loss(codes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_j (1 - cos(e_j, t_j)) over the unused codes `codes` (U, D) (rows selected from the codebook, so the
    gradient reaches those rows only) and the directions `targets` (U, D) of their arc positives; zero, with a zero
    gradient, when U = 0."""
    if codes.shape[0] == 0:
        return codes.sum().float()
    return (1.0 - F.cosine_similarity(codes.float(), targets, dim=1)).mean()


@dataclass
class QuantizerLosses:
    """The parts of the layer's loss, returned with `return_loss_breakdown=True`.

    vq_loss: scalar codebook + beta * commitment (docs/method.md §1.3); zero when not computed.
    commitment_loss: scalar mean ||z - sg(e)||^2; zero when not computed.
    arc_loss: scalar unweighted arc-margin loss (docs/method.md §1.5); None when switched off or not computed.
    arc_weight: scalar gamma_t at the layer's step (zero when the arc loss is switched off).
    ball_radius: scalar R(t) at the layer's step.
    unused_code_pull: scalar unweighted pull on the unused codes (`unused_code_window`); None when off.
    """

    vq_loss: torch.Tensor
    commitment_loss: torch.Tensor
    arc_loss: torch.Tensor | None
    arc_weight: torch.Tensor
    ball_radius: torch.Tensor
    unused_code_pull: torch.Tensor | None = None


# The layer's keywords and the config fields they come from (ArcVQConfig names them for the whole model).
_CONFIG_FIELDS = {
    "codebook_size": "codebook_size",
    "codebook_dim": "codebook_dim",
    "distance": "distance",
    "codebook_init": "codebook_init",
    "commitment_cost": "commitment_cost",
    "legacy_beta_placement": "legacy_beta_placement",
    "use_ball_bound": "use_ball_bound",
    "ball_growth_rate": "ball_growth_rate",
    "ball_max_radius": "ball_max_radius",
    "use_arc_margin": "use_arc_margin",
    "arc_weight_floor": "arc_weight_floor",
    "arc_memory_size": "arc_memory_size",
    "unused_code_window": "unused_code_window",
    "codebook_update": "codebook_update",
    "ema_decay": "ema_decay",
    "dead_code_threshold": "dead_code_threshold",
    "spherical_codes": "spherical_codes",
    "kmeans_init": "kmeans_init",
    "kmeans_iters": "kmeans_iters",
    "arc_scale": "arc_scale",
    "arc_margin": "arc_margin",
    "arc_top_k": "arc_top_k",
    "arc_weight": "arc_weight",
    "arc_weight_decay": "arc_weight_decay",
    "chunk_elements": "quantizer_chunk_elements",
}


class SphericalAngularMarginQuantizer(nn.Module):
    """Vector quantizer with the spherical angular-margin prior (SAMP), usable in any autoencoder.

    `quantized, indices, loss = quantizer(x)` with x of shape (B, D, H, W) (channel-first image latents), (B, N, D)
    (token sequences; (B, D, N) with `channel_first=True`) or (N, D). `quantized` has the shape of x and holds the raw
    codes through the straight-through estimator; `indices` is (B, H, W), (B, N) or (N,) int64; `loss` is the float32
    scalar vq_loss + gamma_t * arc_loss (+ gamma_t * the pull of `unused_code_window`) to add to the reconstruction
    loss.

    Every keyword defaults to the paper's VQ-VAE setting (docs/method.md §1.7). The training step t that drives the
    ball radius R(t) and the arc weight gamma_t is the persistent buffer `step`: call `set_step(t)` before each
    optimizer step (`ArcVQScheduleCallback` does it for a Trainer, on every such layer in the model). The ball bound
    is applied before every forward in training mode; the arc loss is computed in training mode unless
    `compute_arc_loss` says otherwise.

    Args:
        codebook_size (`int`, 512) / codebook_dim (`int`, 64): K codes of dimension D.
        distance (`str`, "cosine"): assignment by angle, or "euclidean" (the textbook VQ-VAE).
        codebook_init (`str`, "uniform_normalized"): U(-1, 1) rows scaled to norm 1, or "uniform_scaled" U(-1/K, 1/K).
        commitment_cost (`float`, 0.25) / legacy_beta_placement (`bool`, False): beta, and taming's swapped placement.
        use_ball_bound (`bool`, True) / ball_growth_rate (`float`, 3e-4): BBNR with R(t) = exp(alpha * t).
        use_arc_margin (`bool`, True), arc_scale (s, 5.0), arc_margin (m, 0.1), arc_top_k (3), arc_weight (gamma0,
            1.0), arc_weight_decay (lambda, 5e-4): the arc-margin loss weighted by gamma_t = gamma0 * exp(-lambda t).
        chunk_elements (`int`, 2**22): most code-by-token similarities held at once (bounds memory at large K).
        Options beyond the paper (docs/method.md §1.10), off by default:
        arc_weight_floor (`float`, 0.0): gamma_t never falls below this.
        ball_max_radius (`float` or None, None): R(t) never grows past this, so the ball keeps binding.
        arc_memory_size (`int`, 0): the arc loss also sees this many latents of the previous training forwards
            (unit vectors, detached, first in first out), so its positives and negatives are not one batch's.
        unused_code_window (`int`, 0): > 0 pulls, in training, every code that won no latent over the last this many
            training forwards toward the mean direction of its arc positives, weighted by gamma_t (needs
            `codebook_update="gradient"`: the pull is a loss on the codes).
        codebook_update (`str`, "gradient"): or "ema": codes are moving averages of the raw latents assigned to them
            (the codebook gets no gradient; the VQ loss keeps only beta * commitment).
        ema_decay (`float`, 0.99): decay of those averages and of the code-use counts.
        dead_code_threshold (`float`, 0.0): > 0 restarts, in training, every code whose moving-average use per step
            is below it on a random latent of the batch.
        spherical_codes (`bool`, False): the decoder receives unit vectors: the latent and its code are both
            l2-normalised after the assignment (the codes' norms, which the assignment by angle ignores, no longer
            reach the decoder).
        kmeans_init (`bool`, False) / kmeans_iters (`int`, 10): the first training forward replaces the codebook
            with the k-means means of its batch of latents (unit latents with `spherical_codes`), and the code-use
            counts with the cluster sizes. The persistent buffer `codebook_initialized` records that it happened,
            so a loaded or resumed model is never re-initialised.
        channel_first (`bool`, False): 3-D input is (B, D, N) instead of (B, N, D). 4-D input is always (B, D, H, W).
        init_codebook (`bool`, True): initialise the codebook here; `ArcVQModel` passes False because its
            `_init_weights` does it (and skips codes loaded from a checkpoint).
    """

    def __init__(
        self,
        codebook_size: int = 512,
        codebook_dim: int = 64,
        *,
        distance: str = "cosine",
        codebook_init: str = "uniform_normalized",
        commitment_cost: float = 0.25,
        legacy_beta_placement: bool = False,
        use_ball_bound: bool = True,
        ball_growth_rate: float = 3e-4,
        use_arc_margin: bool = True,
        arc_scale: float = 5.0,
        arc_margin: float = 0.1,
        arc_top_k: int = 3,
        arc_weight: float = 1.0,
        arc_weight_decay: float = 5e-4,
        arc_weight_floor: float = 0.0,
        ball_max_radius: float | None = None,
        arc_memory_size: int = 0,
        unused_code_window: int = 0,
        codebook_update: str = "gradient",
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.0,
        spherical_codes: bool = False,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        chunk_elements: int = 2**22,
        channel_first: bool = False,
        init_codebook: bool = True,
    ) -> None:
        super().__init__()
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}.")
        if codebook_init not in ("uniform_normalized", "uniform_scaled"):
            raise ValueError(f"codebook_init must be 'uniform_normalized' or 'uniform_scaled', got {codebook_init!r}.")
        if codebook_update not in ("gradient", "ema"):
            raise ValueError(f"codebook_update must be 'gradient' or 'ema', got {codebook_update!r}.")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}.")
        named_integers = (
            ("codebook_size", codebook_size),
            ("codebook_dim", codebook_dim),
            ("arc_top_k", arc_top_k),
            ("kmeans_iters", kmeans_iters),
        )
        for name, value in named_integers:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        for name, value in (("arc_memory_size", arc_memory_size), ("unused_code_window", unused_code_window)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: off), got {value!r}.")
        if ball_max_radius is not None and not ball_max_radius > 0:
            raise ValueError(f"ball_max_radius must be a number > 0, or None for no cap; got {ball_max_radius!r}.")
        if unused_code_window and codebook_update != "gradient":
            raise ValueError(
                "unused_code_window pulls unused codes by gradient, but codebook_update='ema' gives the codebook no "
                "gradient; use dead_code_threshold to revive unused codes of an EMA codebook, or set "
                "unused_code_window=0."
            )
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.distance = distance
        self.codebook_init = codebook_init
        self.commitment_cost = commitment_cost
        self.legacy_beta_placement = legacy_beta_placement
        self.use_ball_bound = use_ball_bound
        self.ball_growth_rate = ball_growth_rate
        self.use_arc_margin = use_arc_margin
        self.arc_scale = arc_scale
        self.arc_margin = arc_margin
        self.arc_top_k = arc_top_k
        self.arc_weight = arc_weight
        self.arc_weight_decay = arc_weight_decay
        self.arc_weight_floor = arc_weight_floor
        self.ball_max_radius = ball_max_radius
        self.arc_memory_size = arc_memory_size
        self.unused_code_window = unused_code_window
        self.codebook_update = codebook_update
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.spherical_codes = spherical_codes
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.chunk_elements = chunk_elements
        self.channel_first = channel_first
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        if codebook_update == "ema":
            self.embedding.weight.requires_grad_(False)  # moved by the moving averages, never by the optimizer
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=True)
        # Only the options that need them add buffers, so checkpoints saved without the options load unchanged.
        if self.tracks_code_usage:
            self.register_buffer("code_usage", torch.ones(codebook_size), persistent=True)
        if codebook_update == "ema":
            self.register_buffer("code_sum", torch.zeros(codebook_size, codebook_dim), persistent=True)
        if kmeans_init:
            self.register_buffer("codebook_initialized", torch.zeros((), dtype=torch.bool), persistent=True)
        if arc_memory_size:
            # Saved with the weights, so a resumed run sees the same memory as the uninterrupted one.
            self.register_buffer("latent_memory", torch.zeros(arc_memory_size, codebook_dim), persistent=True)
            self.register_buffer("latent_memory_filled", torch.zeros((), dtype=torch.long), persistent=True)
        if unused_code_window:
            self.register_buffer("steps_since_used", torch.zeros(codebook_size, dtype=torch.long), persistent=True)
        if init_codebook:
            init_codebook_(self.embedding.weight, codebook_init)
            self.reset_code_statistics()

    @classmethod
    def from_config(cls, config: ArcVQConfig) -> SphericalAngularMarginQuantizer:
        """The layer `ArcVQModel` builds: every keyword read from the config, so the two can never disagree."""
        settings = {keyword: getattr(config, field) for keyword, field in _CONFIG_FIELDS.items()}
        return cls(**settings, init_codebook=False)

    @property
    def tracks_code_usage(self) -> bool:
        """Whether the layer keeps moving-average code-use counts (EMA updates or dead-code restarts)."""
        return self.codebook_update == "ema" or self.dead_code_threshold > 0

    @torch.no_grad()
    def reset_code_statistics(self) -> None:
        """Code-use counts of 1 (every code starts as if it had one latent: itself), sums equal to the codes, and
        with `kmeans_init` a codebook that the next training forward initialises."""
        if self.kmeans_init:
            self.codebook_initialized.fill_(False)
        if self.tracks_code_usage:
            self.code_usage.fill_(1.0)
        if self.codebook_update == "ema":
            self.code_sum.copy_(self.embedding.weight.detach().to(self.code_sum.dtype))
        if self.arc_memory_size:
            self.latent_memory_filled.zero_()
        if self.unused_code_window:
            self.steps_since_used.zero_()

    # ----- the schedules -----------------------------------------------------------------------------------
    def set_step(self, step: int) -> None:
        """Set the optimizer step t that drives R(t) and gamma_t."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}.")
        self.step.fill_(step)

    @property
    def current_step(self) -> int:
        return int(self.step.item())

    @property
    def current_ball_radius(self) -> float:
        """R(t) at the current step, as a Python float."""
        return ball_radius_at(self.current_step, self.ball_growth_rate, self.ball_max_radius)

    @property
    def current_arc_weight(self) -> float:
        """gamma_t at the current step (0 when the arc loss is switched off), as a Python float."""
        if not self.use_arc_margin:
            return 0.0
        return arc_weight_at(self.current_step, self.arc_weight, self.arc_weight_decay, self.arc_weight_floor)

    def schedule_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(R(t), gamma_t) as float32 scalars on the step buffer's device, computed there (no host sync)."""
        radius = ball_radius_at(self.step, self.ball_growth_rate, self.ball_max_radius)
        weight = arc_weight_at(self.step, self.arc_weight, self.arc_weight_decay, self.arc_weight_floor)
        return radius, weight if self.use_arc_margin else torch.zeros_like(weight)

    # ----- the codebook ------------------------------------------------------------------------------------
    @property
    def codebook(self) -> torch.Tensor:
        """(K, D) raw code vectors."""
        return self.embedding.weight

    def reset_codebook(self) -> None:
        init_codebook_(self.embedding.weight, self.codebook_init)
        self.reset_code_statistics()

    def apply_ball_bound(self) -> torch.Tensor:
        """Project the codebook into the ball of radius R(step); returns the mask (K,) of codes that moved."""
        return project_onto_ball_(
            self.embedding.weight, ball_radius_at(self.step, self.ball_growth_rate, self.ball_max_radius)
        )

    def codes_for(self, indices: torch.Tensor) -> torch.Tensor:
        """(...,) ids -> (..., D) code vectors, exactly what the decoder consumes (unit vectors with
        `spherical_codes`, the raw codes otherwise)."""
        codes = self.embedding(indices)
        return F.normalize(codes, dim=-1) if self.spherical_codes else codes

    # ----- the forward pass --------------------------------------------------------------------------------
    def _flatten(self, latents: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Input of any accepted layout -> (N, D) rows, and a function mapping (N, D) / (N,) back to that layout."""
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError(f"latents must be a floating-point torch.Tensor, got {type(latents).__name__}.")
        dim = self.codebook_dim
        if latents.ndim == 4:  # (B, D, H, W)
            batch, channels, height, width = latents.shape
            found = channels
            flat = latents.permute(0, 2, 3, 1).reshape(-1, channels)

            def restore(rows: torch.Tensor) -> torch.Tensor:
                if rows.ndim == 1:
                    return rows.view(batch, height, width)
                return rows.view(batch, height, width, dim).permute(0, 3, 1, 2).contiguous()

        elif latents.ndim == 3 and self.channel_first:  # (B, D, N)
            batch, found, length = latents.shape
            flat = latents.transpose(1, 2).reshape(-1, found)

            def restore(rows: torch.Tensor) -> torch.Tensor:
                if rows.ndim == 1:
                    return rows.view(batch, length)
                return rows.view(batch, length, dim).transpose(1, 2).contiguous()

        elif latents.ndim == 3:  # (B, N, D)
            batch, length, found = latents.shape
            flat = latents.reshape(-1, found)

            def restore(rows: torch.Tensor) -> torch.Tensor:
                return rows.view(batch, length) if rows.ndim == 1 else rows.view(batch, length, dim)

        elif latents.ndim == 2:  # (N, D)
            found = latents.shape[1]
            flat = latents

            def restore(rows: torch.Tensor) -> torch.Tensor:
                return rows

        else:
            raise ValueError(
                f"latents must be (B, D, H, W), (B, N, D) (or (B, D, N) with channel_first=True) or (N, D), got shape "
                f"{tuple(latents.shape)}."
            )
        if found != dim:
            layout = "(B, D, H, W)" if latents.ndim == 4 else "(B, D, N)" if self.channel_first else "(B, N, D)"
            raise ValueError(
                f"latents have {found} channels where the codebook has codebook_dim={dim} (input read as {layout}, "
                f"shape {tuple(latents.shape)}); project them to {dim} dims first, or build the layer with "
                f"codebook_dim={found}"
                + ("" if latents.ndim != 3 else ", or set channel_first to match the input")
                + "."
            )
        if flat.shape[0] == 0:
            raise ValueError(f"latents hold no vectors (shape {tuple(latents.shape)}).")
        return flat, restore

    @torch.no_grad()
    def _kmeans_init_codebook(self, latents: torch.Tensor) -> None:
        """The `kmeans_init` option: codebook <- k-means means of this batch, code use <- the cluster sizes."""
        rows = F.normalize(latents.float(), dim=1) if self.spherical_codes else latents.float()
        means, counts = kmeans_codebook(rows, self.codebook_size, self.kmeans_iters, self.distance, self.chunk_elements)
        self.embedding.weight.copy_(means.to(self.embedding.weight.dtype))
        if self.tracks_code_usage:
            self.code_usage.copy_(counts)
        if self.codebook_update == "ema":
            self.code_sum.copy_(means * counts.unsqueeze(1))
        # Under torch.distributed every process starts from process 0's k-means (of its part of the batch).
        _copy_from_first_process_(
            self.embedding.weight,
            self.code_usage if self.tracks_code_usage else None,
            self.code_sum if self.codebook_update == "ema" else None,
        )
        self.codebook_initialized.fill_(True)

    @torch.no_grad()
    def _update_codebook(self, latents: torch.Tensor, indices: torch.Tensor) -> None:
        """The training-time codebook updates of the options (after the codes were looked up, so this step's
        outputs used the codes as they were): EMA averages, then dead-code restarts."""
        if self.codebook_update == "ema":
            ema_update_codebook_(
                self.embedding.weight, self.code_usage, self.code_sum, latents, indices, self.ema_decay
            )
        elif self.tracks_code_usage:
            counts = torch.bincount(indices, minlength=self.codebook_size).to(self.code_usage.dtype)
            _sum_over_processes_(counts)
            self.code_usage.mul_(self.ema_decay).add_(counts, alpha=1.0 - self.ema_decay)
        if self.dead_code_threshold > 0:
            code_sum = self.code_sum if self.codebook_update == "ema" else None
            restart_dead_codes_(self.embedding.weight, self.code_usage, latents, self.dead_code_threshold, code_sum)
        if self.tracks_code_usage and self.use_ball_bound:
            # The updates place codes where the raw latents are, outside the ball; the codebook that is saved and
            # used in evaluation must be the one training decodes from (the ball applies only in training).
            self.apply_ball_bound()

    def _unused_code_pull(self, latents: torch.Tensor) -> torch.Tensor:
        """The `unused_code_window` option: `unused_code_pull_loss` of the codes that won no latent over the last
        `unused_code_window` training forwards, toward the mean direction of their arc positives in `latents` (N, D)."""
        codes = self.embedding.weight[self.steps_since_used >= self.unused_code_window]
        targets = arc_positive_directions(codes, latents, self.arc_top_k, self.chunk_elements)
        return unused_code_pull_loss(codes, targets)

    @torch.no_grad()
    def _count_steps_since_used(self, indices: torch.Tensor) -> None:
        """Training forwards since each code last won a latent (of any process)."""
        counts = torch.bincount(indices, minlength=self.codebook_size)
        _sum_over_processes_(counts)
        self.steps_since_used.add_(1).masked_fill_(counts > 0, 0)

    @torch.no_grad()
    def _remember_latents(self, latents: torch.Tensor) -> None:
        """Push this batch's unit latents (N, D) in front of the memory, dropping the oldest beyond its size."""
        size = self.arc_memory_size
        newest = F.normalize(latents.detach().float(), dim=1)[-size:]
        kept = min(int(self.latent_memory_filled), size - newest.shape[0])
        self.latent_memory[newest.shape[0] : newest.shape[0] + kept] = self.latent_memory[:kept].clone()
        self.latent_memory[: newest.shape[0]] = newest.to(self.latent_memory.dtype)
        self.latent_memory_filled.fill_(newest.shape[0] + kept)

    def forward(
        self,
        latents: torch.Tensor,
        *,
        compute_vq_loss: bool = True,
        compute_arc_loss: bool | None = None,
        return_loss_breakdown: bool = False,
    ) -> (
        tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        | tuple[torch.Tensor, torch.Tensor, torch.Tensor, QuantizerLosses]
    ):
        """latents -> (quantized, indices, loss), plus `QuantizerLosses` with `return_loss_breakdown`; shapes in the
        class docstring.

        Args:
            compute_vq_loss: compute the codebook + commitment loss (False: it is 0 in `loss`).
            compute_arc_loss: compute the arc-margin loss; None means "in training mode". Ignored when the layer's
                arc loss is switched off.
            return_loss_breakdown: also return the loss parts and the schedules as `QuantizerLosses`.
        """
        flat, restore = self._flatten(latents)
        if self.training and self.kmeans_init and not self.codebook_initialized:
            self._kmeans_init_codebook(flat)
        if self.training and self.use_ball_bound:
            self.apply_ball_bound()
        arc = None
        with_arc = (self.training if compute_arc_loss is None else compute_arc_loss) and self.use_arc_margin
        # The `arc_memory_size` option: the remembered latents join this batch's in the arc loss (not in the
        # assignment, so the indices stay exactly `assign_codes`'s).
        memory = self.latent_memory[: int(self.latent_memory_filled)] if with_arc and self.arc_memory_size else None
        if with_arc and self.distance == "cosine" and memory is None:
            # Assignment and arc loss from one walk over the code-by-latent cosines (the same indices and loss as
            # `assign_codes` and `arc_margin_loss`, which both compute all of them).
            indices, arc = assign_codes_and_arc_margin_loss(
                flat, self.embedding.weight, self.arc_scale, self.arc_margin, self.arc_top_k, self.chunk_elements
            )
        else:
            indices = assign_codes(flat, self.embedding.weight, self.distance, self.chunk_elements)
        codes = self.embedding(indices)
        if self.spherical_codes:
            # Both sides on the unit sphere: the decoder receives the code's direction, all that the assignment by
            # angle looked at; the losses, the EMA averages and the restarts see unit vectors too.
            flat, codes = F.normalize(flat, dim=1), F.normalize(codes, dim=1)
        flat_f32 = flat.float()
        zero = flat_f32.new_zeros(())
        vq, commitment = zero, zero
        if compute_vq_loss:
            vq, commitment = vq_loss(flat_f32, codes.float(), self.commitment_cost, self.legacy_beta_placement)
            if self.codebook_update == "ema":
                # The codes follow the moving averages; only the commitment term trains the encoder.
                vq = commitment * (1.0 if self.legacy_beta_placement else self.commitment_cost)
        if with_arc and arc is None:
            arc_latents = flat_f32 if memory is None else torch.cat([flat_f32, memory])
            arc = arc_margin_loss(
                arc_latents, self.embedding.weight, self.arc_scale, self.arc_margin, self.arc_top_k, self.chunk_elements
            )
        # Schedules as device tensors: reading the step buffer on the host would sync a GPU every forward.
        radius, arc_weight = self.schedule_tensors()
        loss = vq if arc is None else vq + arc_weight * arc
        pull = None
        if with_arc and self.training and self.unused_code_window:
            pull = self._unused_code_pull(flat_f32)
            loss = loss + arc_weight * pull
        if self.training:
            self._update_codebook(flat_f32, indices)
            if with_arc and self.arc_memory_size:
                self._remember_latents(flat_f32)
            if self.unused_code_window:
                self._count_steps_since_used(indices)
        # Straight-through estimator written as e + (z - sg(z)): the value is exactly e (z - z == 0), the gradient
        # with respect to z is the identity.
        straight_through = codes.detach().to(flat.dtype) + (flat - flat.detach())
        quantized, indices = restore(straight_through), restore(indices)
        if return_loss_breakdown:
            return quantized, indices, loss, QuantizerLosses(vq, commitment, arc, arc_weight, radius, pull)
        return quantized, indices, loss


__all__ = [
    "QuantizerLosses",
    "ema_update_codebook_",
    "kmeans_codebook",
    "restart_dead_codes_",
    "SphericalAngularMarginQuantizer",
    "arc_margin_loss",
    "arc_positive_directions",
    "arc_weight_at",
    "assign_codes",
    "assign_codes_and_arc_margin_loss",
    "ball_radius_at",
    "init_codebook_",
    "project_onto_ball_",
    "unused_code_pull_loss",
    "vq_loss",
]
