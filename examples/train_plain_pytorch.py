"""Train ArcVQ-VAE on mnist-5k with a plain PyTorch loop (no Trainer), printing test metrics along the way.

    python examples/train_plain_pytorch.py --steps 200 --eval_every 50            # the paper's VQ-VAE, ArcVQ preset
    python examples/train_plain_pytorch.py --preset vq-baseline --steps 200

The protocol is the reference run's (docs/method.md §4): the fixed 4000 / 1000 split, Adam 3e-4, batch 256,
MSE / data variance. Each step is `samp_training_step` (arcvq_hf.training.trainer), the step ArcVQTrainer takes:
it sets the step t that drives the ball radius R(t) and the arc weight gamma_t on the SAMP layer, then runs the
model's loss, backward and the optimizer update.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from arcvq_hf import PRESETS, ArcVQConfig, ArcVQModel
from arcvq_hf.data.builtin import mnist_arrays
from arcvq_hf.data.transforms import pixel_variance
from arcvq_hf.evaluation.loop import evaluate_reconstruction
from arcvq_hf.training.trainer import samp_training_step

REPORTED = ("reconstruction_loss", "codebook_utilization", "perplexity", "dead_codes", "psnr", "ssim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="arcvq", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=None, help="save_pretrained the trained model here")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train, test, _, _ = (torch.as_tensor(array) for array in mnist_arrays())
    data_variance = pixel_variance(train, max_images=None)  # var(x / 255) * 4 on [-1, 1] pixels
    model = ArcVQModel(ArcVQConfig.from_preset(args.preset, num_channels=1, data_variance=data_variance))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    order = torch.Generator().manual_seed(args.seed)

    def report(step: int) -> None:
        """Test-set metrics; reconstruction_loss is the test MSE / data variance."""
        model.eval()
        with torch.no_grad():
            metrics = evaluate_reconstruction(model, test.split(500), with_losses=True)
        model.train()
        print(json.dumps({"step": step, **{k: round(float(metrics[k]), 4) for k in REPORTED}}), flush=True)

    report(0)
    start, permutation, position = time.time(), torch.randperm(len(train), generator=order), 0
    for step in range(args.steps):
        if position + args.batch_size > len(train):
            permutation, position = torch.randperm(len(train), generator=order), 0
        batch = train[permutation[position : position + args.batch_size]]
        position += args.batch_size
        # The Trainer's step: t on the SAMP layer (drives R(t) and gamma_t), the model's loss, backward, update.
        samp_training_step(model, batch, optimizer, step)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            report(step + 1)
    print(json.dumps({"seconds": round(time.time() - start, 1), "steps": args.steps}))
    if args.output_dir:
        model.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
