"""Run by tests/test_quantizer_options.py under `torchrun --nproc_per_node 2`: the quantizer's codebook options
(EMA updates, dead-code restarts, k-means init) trained on a different batch in every process, as DDP does; each
rank writes its codebook and statistics so that the test can compare the ranks with each other and with one process
that sees both batches."""

import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from arcvq_hf.model.quantization import SphericalAngularMarginQuantizer

STEPS = 4


def process_batch(rank: int, step: int) -> torch.Tensor:
    """(B, N, D) latents of one process at one step: different in every process and step."""
    return torch.randn(2, 24, 8, generator=torch.Generator().manual_seed(100 * step + rank))


def layer(**options) -> SphericalAngularMarginQuantizer:
    torch.manual_seed(0)  # the same initial codebook in every process, as DDP's broadcast makes it
    return SphericalAngularMarginQuantizer(codebook_size=16, codebook_dim=8, **options).train()


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(1 + rank)  # restart picks differ between processes unless the layer synchronises them
    layers = {
        "ema": layer(codebook_update="ema", use_arc_margin=False, use_ball_bound=False),
        "all": layer(
            codebook_update="ema", dead_code_threshold=2.0, kmeans_init=True, spherical_codes=True, arc_weight=0.01
        ),
        "restart": layer(dead_code_threshold=2.0, use_arc_margin=False),
    }
    tensors = {}
    for name, quantizer in layers.items():
        for step in range(STEPS):
            quantizer(process_batch(rank, step))
        for key, value in quantizer.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().float().contiguous()
    save_file(tensors, os.path.join(sys.argv[1], f"rank{rank}.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
