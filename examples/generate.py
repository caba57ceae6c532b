"""Sample images from a GPT-2 prior over ArcVQ tokens and save them as a PNG grid, one row per class.

    python examples/generate.py --prior outputs/prior-arcvq-mnist --output samples.png \\
        --samples_per_class 10 --temperature 1.0 --top_k 0 --top_p 1.0 --seed 0

The prior (trained by examples/train_prior.py) records its tokenizer path; --tokenizer overrides it. Sampling is
restricted to image tokens at image positions (arcvq_hf.prior.ImageTokenLogitsProcessor), so every sample decodes.
"""

from __future__ import annotations

import argparse

import torch
from transformers import GPT2LMHeadModel

from arcvq_hf import ArcVQImageProcessor, ArcVQModel
from arcvq_hf.prior import decode_image_tokens, image_grid, prior_settings, sample_image_tokens, save_image_atomic


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", required=True, help="folder written by examples/train_prior.py.")
    parser.add_argument("--tokenizer", default=None, help="ArcVQ folder; default: the one recorded in the prior.")
    parser.add_argument("--output", default="samples.png")
    parser.add_argument("--classes", type=int, nargs="*", default=None, help="class ids to draw; default: all.")
    parser.add_argument("--samples_per_class", type=int, default=10, help="or images in all for an unconditional prior")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="0 disables top-k.")
    parser.add_argument("--top_p", type=float, default=1.0, help="1.0 disables nucleus sampling.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="enlarge each sample this many times in the grid.")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    prior = GPT2LMHeadModel.from_pretrained(args.prior).eval()
    vocabulary, _, recorded_tokenizer = prior_settings(prior.config)
    tokenizer_path = args.tokenizer or recorded_tokenizer
    if tokenizer_path is None:
        raise SystemExit("the prior records no tokenizer; pass --tokenizer.")
    tokenizer = ArcVQModel.from_pretrained(tokenizer_path).eval()
    processor = ArcVQImageProcessor.from_pretrained(tokenizer_path)
    if tokenizer.config.codebook_size != vocabulary.codebook_size:
        raise SystemExit(
            f"the tokenizer has {tokenizer.config.codebook_size} codes but the prior was trained on "
            f"{vocabulary.codebook_size}; pass the tokenizer the prior was trained with."
        )
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    if vocabulary.is_class_conditional:
        classes = args.classes if args.classes else list(range(vocabulary.num_classes))
        labels = torch.tensor(classes).repeat_interleave(args.samples_per_class)
        _, grids = sample_image_tokens(prior, labels=labels, **sampling)
        images = decode_image_tokens(tokenizer, processor, grids)
        rows = [images[i : i + args.samples_per_class] for i in range(0, len(images), args.samples_per_class)]
    else:
        _, grids = sample_image_tokens(prior, num_samples=args.samples_per_class, **sampling)
        rows = [decode_image_tokens(tokenizer, processor, grids)]
    save_image_atomic(image_grid(rows, scale=args.scale), args.output)
    print(f"saved {sum(len(row) for row in rows)} samples in {len(rows)} row(s) to {args.output}")


if __name__ == "__main__":
    main()
