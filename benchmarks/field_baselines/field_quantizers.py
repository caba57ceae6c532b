"""The field's codebook-collapse remedies (vector-quantize-pytorch 1.32.0) behind the project's quantizer convention.

Every adapter is a drop-in for the project's own ArcVQ layer inside the project's autoencoder backbone:

    quantized, indices, loss = layer(x)   # x: (B, D, H, W) channel-first latents
    quantized: (B, D, H, W), x.dtype      indices: (B, H, W) int64      loss: () float32 (a zero tensor if none)

and exposes `codebook_size` (int), `set_step(step)` (a no-op: none of these layers has a schedule) and
`codebook_vectors()` -> (K, D): what the decoder receives for each index.

Rows (`FIELD_QUANTIZERS` holds each row's exact keyword arguments as plain data; `build_field_quantizer` builds one):

- `ema-kmeans-restart`: VectorQuantize, EMA codebook (decay 0.99), k-means init (10 iterations) on the first batch,
  dead-code restart (EMA cluster size < 2 -> a random vector of the current batch), Euclidean, classic
  straight-through estimator, commitment weight 1.0.
- `ema-kmeans-restart-rotation`: the same with the rotation trick (Fifty et al. 2024) instead of straight-through.
- `cosine-lowdim`: VectorQuantize with l2-normalised 8-dim codes (Improved VQGAN / LlamaGen style: Linear D -> 8,
  l2-normalise, nearest code by cosine, Linear 8 -> D), EMA, k-means init, dead-code restart, straight-through.
- `simvq`: SimVQ (Zhu et al. 2024): a frozen Gaussian codebook through a learned Linear(D, D, bias=False);
  commitment ||sg(z) - q||^2 + 0.25 ||z - sg(q)||^2, straight-through.
- `fsq`: FSQ (Mentzer et al. 2023): Linear D -> len(levels), bound with tanh, round per channel, Linear back to D;
  no codebook, no loss. Levels per codebook size in `FSQ_LEVELS`.

What the library does that these adapters rely on, correct or document (read from the 1.32.0 source):

- Precision. VectorQuantize's codebook math and FSQ's rounding switch off only *CUDA* autocast (FSQ does round in
  float32 on any device); under the CPU bf16 autocast this project trains with, the VectorQuantize and FSQ
  projections, VectorQuantize's distances and SimVQ's code transform run in bf16 and the outputs come back in bf16.
  Every adapter therefore runs its layer in float32 with autocast off for `x`'s device type and casts `quantized`
  back to `x.dtype` (the quantizer's parameters must stay float32).
- Indices. VectorQuantize and SimVQ return int64; FSQ returns int32 (cast to int64 here).
- Loss. VectorQuantize computes its commitment loss only in train mode; in eval mode it returns its shared `zero`
  buffer, which any earlier train-mode call has flagged `requires_grad` (the adapter returns a fresh zero instead).
  SimVQ computes its loss in both modes. FSQ returns no loss (the adapter returns a zero).
- Gradients in eval mode. VectorQuantize applies its straight-through / rotation estimator only in train mode, so
  in eval mode `quantized` carries no gradient to `x`; SimVQ applies straight-through in both modes; FSQ's rounding
  is always straight-through.
- k-means init (VectorQuantize rows) runs on the first forward in *either* mode, on that call's batch: an eval pass
  before training initialises the codebook from eval data. Until then the codebook is all zeros
  (`is_initialized` says which). With fewer tokens in that batch than codes, k-means samples duplicates (the library
  logs a warning).
- EMA updates and dead-code restarts happen inside the train-mode forward, after the codes were looked up, so
  `codebook_vectors()` after a train step is the updated codebook, not the one that produced that step's output.
- Cost. In train mode VectorQuantize builds a dense (N, K) one-hot and runs three (N, K) x (K, d) products plus an
  explicit sqrt-cdist per call; at K = 8192 that dominates its time on CPU (`--time`).
- Commitment weight 1.0 (the library default and its README's value) on the VectorQuantize and SimVQ rows; the
  project's own layers use beta = 0.25.
- `sync_codebook` defaults to "whatever torch.distributed says"; it is pinned to False here (single process). Under
  DDP each rank would keep its own EMA codebook.

Self-check (`python benchmarks/field_baselines/field_quantizers.py`, add `--time` for the speed table); the
library is an optional extra, so this is not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from importlib import metadata
from typing import Any

import torch
from torch import nn

LIBRARY = "vector-quantize-pytorch"
LIBRARY_VERSION = "1.32.0"

# FSQ levels per requested codebook size. 2^8 ... 2^16 are the FSQ paper's recommended sets (every level >= 5 and the
# product allowed to miss the power of two by a few percent: 2^12 -> 4375, 2^16 -> 64000). 512 and 8192 are not in the
# paper: 512 uses [8, 8, 8] (exact), 8192 uses [8, 8, 5, 5, 5] = 8000 (-2.3%), the paper's style (5 channels, levels
# >= 5) rather than an exact [8, 8, 8, 4, 4].
FSQ_LEVELS: dict[int, list[int]] = {
    256: [8, 6, 5],
    512: [8, 8, 8],
    1024: [8, 5, 5, 5],
    4096: [7, 5, 5, 5, 5],
    8192: [8, 8, 5, 5, 5],
    16384: [8, 8, 8, 6, 5],
    65536: [8, 8, 8, 5, 5, 5],
}

_EMA_KMEANS_RESTART: dict[str, Any] = {
    "decay": 0.99,
    "kmeans_init": True,
    "kmeans_iters": 10,
    "threshold_ema_dead_code": 2,
    "use_cosine_sim": False,
    "commitment_weight": 1.0,
    "rotation_trick": False,
    "accept_image_fmap": True,
    "sync_codebook": False,
}

# Library defaults that the VectorQuantize rows override, with the default each replaces.
_VQ_OVERRIDDEN_DEFAULTS: dict[str, Any] = {
    "decay": 0.8,
    "kmeans_init": False,
    "threshold_ema_dead_code": 0,
    "rotation_trick": "None (-> True when dim > 1)",
    "accept_image_fmap": False,
    "sync_codebook": "None (-> True when torch.distributed has > 1 process)",
}

FIELD_QUANTIZERS: dict[str, dict[str, Any]] = {
    "ema-kmeans-restart": {
        "library_class": "VectorQuantize",
        "kwargs": dict(_EMA_KMEANS_RESTART),
        "overridden_defaults": dict(_VQ_OVERRIDDEN_DEFAULTS),
        "summary": "Euclidean EMA codebook, k-means init, dead-code restart, straight-through",
    },
    "ema-kmeans-restart-rotation": {
        "library_class": "VectorQuantize",
        "kwargs": {**_EMA_KMEANS_RESTART, "rotation_trick": True},
        "overridden_defaults": {k: v for k, v in _VQ_OVERRIDDEN_DEFAULTS.items() if k != "rotation_trick"},
        "summary": "as ema-kmeans-restart, gradients through the rotation trick",
    },
    "cosine-lowdim": {
        "library_class": "VectorQuantize",
        "kwargs": {**_EMA_KMEANS_RESTART, "use_cosine_sim": True, "codebook_dim": 8},
        "overridden_defaults": {**_VQ_OVERRIDDEN_DEFAULTS, "use_cosine_sim": False, "codebook_dim": "None (-> dim)"},
        "summary": "l2-normalised 8-dim codes (Linear D->8, cosine, Linear 8->D), EMA, k-means init, restart",
    },
    "simvq": {
        "library_class": "SimVQ",
        "kwargs": {
            "channel_first": True,
            "rotation_trick": False,
            "input_to_quantize_commit_loss_weight": 0.25,
            "commitment_weight": 1.0,
        },
        "overridden_defaults": {"channel_first": False, "rotation_trick": True},
        "summary": "frozen Gaussian codebook through a learned Linear(D, D, bias=False), straight-through",
    },
    "fsq": {
        "library_class": "FSQ",
        "kwargs": {"channel_first": True},
        "levels_by_codebook_size": {k: list(v) for k, v in FSQ_LEVELS.items()},
        "overridden_defaults": {"channel_first": False},
        "summary": "per-channel rounding on a Linear D->len(levels) projection and back; no codebook, no loss",
    },
}


def _require_library() -> None:
    """Raise unless exactly the pinned library version is importable (the rows' numbers depend on it)."""
    try:
        version = metadata.version(LIBRARY)
    except metadata.PackageNotFoundError as error:
        raise ImportError(f"The field baselines need `pip install {LIBRARY}=={LIBRARY_VERSION}`.") from error
    if version != LIBRARY_VERSION:
        raise ImportError(f"The field baselines are pinned to {LIBRARY}=={LIBRARY_VERSION}; found {version}.")


class FieldQuantizer(nn.Module):
    """Shared convention of the adapters; subclasses implement `_quantize` and `codebook_vectors`.

    Attributes: `name` (the row), `dim` (D), `codebook_size` (K, the number of distinct indices),
    `settings` (the exact keyword arguments the library layer was built with, as plain data).
    """

    def __init__(self, name: str, dim: int, codebook_size: int, settings: dict[str, Any]) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.codebook_size = codebook_size
        self.settings = settings

    def set_step(self, step: int) -> None:
        """No-op: none of these layers has a step-dependent schedule (kept for the shared convention)."""
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, D, H, W) -> (quantized (B, D, H, W) in x.dtype, indices (B, H, W) int64, loss () float32)."""
        if x.ndim != 4 or x.shape[1] != self.dim:
            raise ValueError(f"{self.name} expects (B, {self.dim}, H, W) latents, got {tuple(x.shape)}.")
        # Float32 with autocast off: the library protects only CUDA autocast, and bf16 distances over thousands of
        # codes would change which code wins.
        with torch.autocast(device_type=x.device.type, enabled=False):
            quantized, indices, loss = self._quantize(x.float())
        return quantized.to(x.dtype), indices.long(), loss.float().reshape(())

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, D, H, W) float32 -> (quantized (B, D, H, W), indices (B, H, W), loss ())."""
        raise NotImplementedError

    def codebook_vectors(self) -> torch.Tensor | None:
        """(K, D) float32, detached: the vector the decoder receives for each index (row k for index k)."""
        raise NotImplementedError


class VectorQuantizeAdapter(FieldQuantizer):
    """`vector_quantize_pytorch.VectorQuantize` on image feature maps (`accept_image_fmap=True`)."""

    def __init__(self, name: str, dim: int, codebook_size: int, kwargs: dict[str, Any]) -> None:
        from vector_quantize_pytorch import VectorQuantize

        settings = {"dim": dim, "codebook_size": codebook_size, **kwargs}
        super().__init__(name, dim, codebook_size, settings)
        self.layer = VectorQuantize(**settings)

    @property
    def is_initialized(self) -> bool:
        """False until the first forward has run k-means (the codebook is all zeros until then)."""
        return bool(self.layer._codebook.initted)

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        quantized, indices, loss = self.layer(x)
        if loss is self.layer.zero:
            # Eval mode computes no commitment term and hands back the layer's shared `zero` buffer, which train-mode
            # calls flag requires_grad; a fresh zero keeps callers from accumulating into or mutating that buffer.
            loss = x.new_zeros(())
        return quantized, indices, loss

    @torch.no_grad()
    def codebook_vectors(self) -> torch.Tensor:
        """(K, D): project_out of the (K, codebook_dim) EMA codebook (identity when codebook_dim == D).

        All zeros (or project_out's bias) before the first forward's k-means init; see `is_initialized`.
        """
        codes = self.layer.codebook.float()
        with torch.autocast(device_type=codes.device.type, enabled=False):
            # clone: with no projection this would alias the EMA buffer, which training updates in place.
            return self.layer.project_out(codes).detach().clone()


class SimVQAdapter(FieldQuantizer):
    """`vector_quantize_pytorch.SimVQ` (`channel_first=True`)."""

    def __init__(self, name: str, dim: int, codebook_size: int, kwargs: dict[str, Any]) -> None:
        from vector_quantize_pytorch import SimVQ

        settings = {"dim": dim, "codebook_size": codebook_size, **kwargs}
        super().__init__(name, dim, codebook_size, settings)
        self.layer = SimVQ(**settings)

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.layer(x)

    @torch.no_grad()
    def codebook_vectors(self) -> torch.Tensor:
        """(K, D): the frozen (K, D) Gaussian codebook through the learned code transform."""
        frozen = self.layer.frozen_codebook.float()
        with torch.autocast(device_type=frozen.device.type, enabled=False):
            return self.layer.code_transform(frozen).detach()


class FSQAdapter(FieldQuantizer):
    """`vector_quantize_pytorch.FSQ` with projections D -> len(levels) -> D inside the layer.

    `codebook_size` is the product of the levels, which can differ from the size asked for (see `FSQ_LEVELS`);
    `requested_codebook_size` keeps the size asked for.
    """

    def __init__(self, name: str, dim: int, codebook_size: int, kwargs: dict[str, Any]) -> None:
        from vector_quantize_pytorch import FSQ

        if codebook_size not in FSQ_LEVELS:
            raise ValueError(f"No FSQ level set for codebook_size={codebook_size}; known: {sorted(FSQ_LEVELS)}.")
        levels = list(FSQ_LEVELS[codebook_size])
        settings = {"levels": levels, "dim": dim, **kwargs}
        super().__init__(name, dim, math.prod(levels), settings)
        self.requested_codebook_size = codebook_size
        self.layer = FSQ(**settings)

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # FSQ returns (quantized, indices) only: it has no auxiliary loss.
        quantized, indices = self.layer(x)
        return quantized, indices, x.new_zeros(())

    @torch.no_grad()
    def codebook_vectors(self) -> torch.Tensor:
        """(K, D): every grid point of the implicit (K, len(levels)) codebook in [-1, 1], through project_out."""
        grid = self.layer.implicit_codebook.float()
        with torch.autocast(device_type=grid.device.type, enabled=False):
            return self.layer.project_out(grid).detach()


_ADAPTERS: dict[str, type[FieldQuantizer]] = {
    "VectorQuantize": VectorQuantizeAdapter,
    "SimVQ": SimVQAdapter,
    "FSQ": FSQAdapter,
}


def build_field_quantizer(name: str, codebook_size: int, dim: int) -> FieldQuantizer:
    """Build row `name` of `FIELD_QUANTIZERS` for K = codebook_size codes on D = dim channel latents.

    The returned module maps (B, D, H, W) -> ((B, D, H, W), (B, H, W) int64, () float32). Requires
    vector-quantize-pytorch==1.32.0; FSQ needs a codebook_size listed in `FSQ_LEVELS`.
    """
    if name not in FIELD_QUANTIZERS:
        raise ValueError(f"Unknown field quantizer {name!r}; choose from {sorted(FIELD_QUANTIZERS)}.")
    if not isinstance(codebook_size, int) or codebook_size < 2:
        raise ValueError(f"codebook_size must be an integer >= 2, got {codebook_size!r}.")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}.")
    _require_library()
    row = FIELD_QUANTIZERS[name]
    # Deep copy: the adapters keep their kwargs as `settings`, which must not alias the shared table.
    return _ADAPTERS[row["library_class"]](name, dim, codebook_size, copy.deepcopy(row["kwargs"]))


# ---------------------------------------------------------------------------------------------------------------------
# Self-check and timing (run as a script).


def _check_outputs(
    layer: FieldQuantizer, x: torch.Tensor, quantized: torch.Tensor, indices: torch.Tensor, loss: torch.Tensor
) -> None:
    batch, dim, height, width = x.shape
    assert quantized.shape == x.shape and quantized.dtype == x.dtype, (quantized.shape, quantized.dtype)
    assert indices.shape == (batch, height, width) and indices.dtype == torch.int64, (indices.shape, indices.dtype)
    assert int(indices.min()) >= 0 and int(indices.max()) < layer.codebook_size, (indices.min(), indices.max())
    assert loss.shape == () and loss.dtype == torch.float32 and bool(torch.isfinite(loss)), loss
    assert bool(torch.isfinite(quantized).all())


def _check_codebook_vectors(layer: FieldQuantizer, quantized: torch.Tensor, indices: torch.Tensor) -> str:
    vectors = layer.codebook_vectors()
    if vectors is None:
        return "codebook_vectors: None"
    assert vectors.shape == (layer.codebook_size, layer.dim), vectors.shape
    expected = vectors[indices]  # (B, H, W, D)
    error = (expected - quantized.permute(0, 2, 3, 1)).abs().max().item()
    assert error <= 1e-5, f"{layer.name}: codebook_vectors()[indices] differs from quantized by {error:.3g}"
    return f"codebook_vectors()[indices] == quantized (max err {error:.1e})"


def _self_check(dim: int, sizes: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    for codebook_size in sizes:
        for name in FIELD_QUANTIZERS:
            layer = build_field_quantizer(name, codebook_size, dim)
            x = torch.randn(4, dim, 8, 8, requires_grad=True)

            layer.train()
            quantized, indices, loss = layer(x)
            _check_outputs(layer, x, quantized, indices, loss)
            (quantized.square().mean() + loss).backward()
            assert x.grad is not None and bool(torch.isfinite(x.grad).all()), f"{name}: no input gradient in train"
            used_train, train_loss = indices.unique().numel(), loss.item()

            layer.eval()
            x.grad = None
            quantized, indices, loss = layer(x)
            _check_outputs(layer, x, quantized, indices, loss)
            objective = quantized.square().mean() + loss
            # VectorQuantize has no gradient path in eval mode unless a projection carries parameters (and even
            # then none to x); backward whenever anything requires grad.
            if objective.requires_grad:
                objective.backward()
            eval_grad = x.grad is not None
            vq_row = isinstance(layer, VectorQuantizeAdapter)
            assert eval_grad != vq_row, f"{name}: eval-mode input gradient {eval_grad}, expected {not vq_row}"
            cv_note = _check_codebook_vectors(layer, quantized.detach(), indices)

            # Under bf16 autocast the adapter still returns x.dtype, and a bf16 input comes back in bf16.
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                q_auto, _, loss_auto = layer(x)
            assert q_auto.dtype == torch.float32 and loss_auto.dtype == torch.float32
            with torch.no_grad():
                q_bf16, i_bf16, _ = layer(x.detach().bfloat16())
            assert q_bf16.dtype == torch.bfloat16 and i_bf16.dtype == torch.int64

            print(
                f"ok  {name:28s} K={layer.codebook_size:5d}  train loss {train_loss:.4f}  eval loss {loss.item():.4f}"
                f"  codes used in train batch {used_train:4d}  eval grad to x: {eval_grad!s:5s}  {cv_note}"
            )

        # k-means init runs on the first forward in either mode.
        layer = build_field_quantizer("ema-kmeans-restart", codebook_size, dim).eval()
        assert isinstance(layer, VectorQuantizeAdapter) and not layer.is_initialized
        with torch.no_grad():
            layer(torch.randn(4, dim, 8, 8))
        assert layer.is_initialized, "expected k-means init on the first eval-mode forward"
    print("self-check passed")


def _time_rows(dim: int, sizes: tuple[int, ...], tokens: int, repeats: int) -> None:
    torch.set_num_threads(1)
    side = math.isqrt(tokens // 4)
    assert 4 * side * side == tokens, "tokens must be 4 * a square"
    print(f"\nforward+backward, train mode, N={tokens} tokens (4, {dim}, {side}, {side}), 1 thread, float32 CPU")
    print(f"torch {torch.__version__}, {LIBRARY} {metadata.version(LIBRARY)}")
    print(f"{'row':30s} {'K':>6s} {'first call s':>13s} {'median s/call':>14s} {'min':>8s}")
    for codebook_size in sizes:
        for name in FIELD_QUANTIZERS:
            torch.manual_seed(0)
            layer = build_field_quantizer(name, codebook_size, dim).train()
            inputs = [torch.randn(4, dim, side, side, requires_grad=True) for _ in range(repeats + 2)]
            seconds = []
            for x in inputs:
                start = time.perf_counter()
                quantized, _, loss = layer(x)
                (quantized.square().mean() + loss).backward()
                seconds.append(time.perf_counter() - start)
            # The first call includes k-means init for the VectorQuantize rows; one more call is warm-up.
            steady = seconds[2:]
            print(
                f"{name:30s} {layer.codebook_size:6d} {seconds[0]:13.4f} {statistics.median(steady):14.4f}"
                f" {min(steady):8.4f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="also time forward+backward per row (1 thread)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 8192])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = tuple(args.sizes)
    _self_check(args.dim, sizes)
    if args.time:
        _time_rows(args.dim, sizes, args.tokens, args.repeats)


if __name__ == "__main__":
    main()
