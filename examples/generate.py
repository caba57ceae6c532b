"""Sample images from a GPT-2 prior over ArcVQ tokens and save them as a PNG grid, one row per class.

    python examples/generate.py --prior outputs/prior-arcvq-mnist --output samples.png \\
        --samples_per_class 10 --temperature 1.0 --top_k 0 --top_p 1.0 --seed 0

The prior (trained by examples/train_prior.py) records its tokenizer path; --tokenizer overrides it. Sampling is
restricted to image tokens at image positions (arcvq_hf.prior.ImageTokenLogitsProcessor), so every sample decodes.
"""

from __future__ import annotations

import argparse

import torch
from transformers import GPT2LMHeadModel, PretrainedConfig

from arcvq_hf import ArcVQImageProcessor, ArcVQModel
from arcvq_hf.prior.language_model import PRIOR_CONFIG_KEY, prior_settings, sample_image_tokens
from arcvq_hf.prior.token_data import decode_image_tokens, image_grid
from arcvq_hf.utils.io_utils import require_existing_folder, save_image_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    args = parser.parse_args(argv)
    if args.samples_per_class < 1:
        parser.error(f"--samples_per_class must be at least 1, got {args.samples_per_class}.")
    if args.scale < 1:
        parser.error(f"--scale must be at least 1, got {args.scale}.")
    return args


def check_prior_folder(path: str) -> None:
    """Refuse, before GPT-2 sees it, a folder that is not a prior written by examples/train_prior.py."""
    require_existing_folder(path, "--prior")
    config, _ = PretrainedConfig.get_config_dict(path)
    if config.get("model_type") == "arcvq":
        raise SystemExit(
            f"--prior {path} is an ArcVQ tokenizer, not a prior. Pass the folder written by examples/train_prior.py "
            f"(train one with: python examples/train_prior.py --tokenizer {path} --output_dir outputs/prior); the "
            "tokenizer goes to --tokenizer."
        )
    if PRIOR_CONFIG_KEY not in config:
        raise SystemExit(
            f"--prior {path} (a {config.get('model_type', 'model')!r} config) has no `{PRIOR_CONFIG_KEY}` entry: it "
            "is not a prior written by examples/train_prior.py."
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    check_prior_folder(args.prior)
    prior = GPT2LMHeadModel.from_pretrained(args.prior).eval()
    vocabulary, _, recorded_tokenizer = prior_settings(prior.config)
    tokenizer_path = args.tokenizer or recorded_tokenizer
    if tokenizer_path is None:
        raise SystemExit("the prior records no tokenizer; pass --tokenizer.")
    require_existing_folder(tokenizer_path, "--tokenizer" if args.tokenizer else "the prior's recorded tokenizer")
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
