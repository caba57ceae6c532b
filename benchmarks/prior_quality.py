"""Measure GPT-2 priors over image tokens on mnist-5k: test NLL and class accuracy of their samples.

For each prior (trained by examples/train_prior.py on its tokenizer):
- test NLL in bits per image token on the 1000 mnist-5k test digits, under the prior restricted to image tokens;
  next to it, the bits per token of a unigram model of the training tokens (add-one smoothing), which a prior
  must beat to have learned any structure, and log2 of the number of codes the tokenizer uses on the test set;
- class-conditional sample accuracy: `--samples_per_class` samples per digit, decoded by the tokenizer, classified
  by the CNN of benchmarks/digit_classifier.py; the fraction classified as the digit they were drawn for;
- the same classifier's accuracy on the tokenizer's reconstructions of the real test digits (what samples could
  reach if the prior were perfect) and on the real test digits.

    python benchmarks/prior_quality.py --prior arcvq=outputs/prior-arcvq-mnist --prior vq=outputs/prior-vq-mnist \\
        --output benchmarks/prior_results.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from digit_classifier import DEFAULT_WEIGHTS, load_digit_classifier, predict_digits
from transformers import GPT2LMHeadModel

from arcvq_hf import ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data.builtin import load_builtin_dataset, mnist_arrays
from arcvq_hf.evaluation.codebook_metrics import CodebookUsage
from arcvq_hf.prior.language_model import bits_per_token, image_token_nll, prior_settings, sample_image_tokens
from arcvq_hf.prior.token_data import ImageTokenCollator, tokenize_image_dataset
from arcvq_hf.utils.io_utils import atomic_write_json


def unigram_bits_per_token(train_tokens: torch.Tensor, test_tokens: torch.Tensor, codebook_size: int) -> float:
    """Bits per test token under the add-one-smoothed code frequencies of the training tokens."""
    counts = torch.bincount(train_tokens.flatten(), minlength=codebook_size).double() + 1.0
    log_probabilities = torch.log2(counts / counts.sum())
    return float(-log_probabilities[test_tokens.flatten()].mean())


def codes_used(image_tokens: torch.Tensor, codebook_size: int) -> int:
    """How many distinct codes occur in `image_tokens`."""
    return codebook_size - CodebookUsage(codebook_size).update(image_tokens).dead_codes


@torch.no_grad()
def evaluate_prior(
    prior_path: str, classifier: torch.nn.Module, samples_per_class: int, sampling: dict, cache_dir: str
) -> dict:
    prior = GPT2LMHeadModel.from_pretrained(prior_path).eval()
    vocabulary, latent_shape, tokenizer_path = prior_settings(prior.config)
    tokenizer = ArcVQModel.from_pretrained(tokenizer_path).eval()
    processor = ArcVQImageProcessor.from_pretrained(tokenizer_path)
    dataset = load_builtin_dataset("mnist-5k")
    tokens = {split: tokenize_image_dataset(dataset[split], tokenizer, processor, cache_dir) for split in dataset}
    train_tokens = torch.tensor(tokens["train"]["image_tokens"])
    test_tokens = torch.tensor(tokens["test"]["image_tokens"])
    test_ids = ImageTokenCollator(vocabulary)(list(tokens["test"]))["input_ids"]
    test_bits = bits_per_token(image_token_nll(prior, vocabulary, test_ids))
    train_codes_used = codes_used(train_tokens, vocabulary.codebook_size)
    test_codes_used = codes_used(test_tokens, vocabulary.codebook_size)

    _, test_pixels, _, test_labels = mnist_arrays()
    test_labels = torch.from_numpy(np.asarray(test_labels))
    reconstructions = tokenizer.decode(test_tokens, latent_shape=latent_shape).clamp(-1, 1)
    reconstruction_accuracy = float((predict_digits(classifier, reconstructions) == test_labels).float().mean())
    real_accuracy = float(
        (predict_digits(classifier, torch.from_numpy(np.asarray(test_pixels))) == test_labels).float().mean()
    )

    labels = torch.arange(vocabulary.num_classes).repeat_interleave(samples_per_class)
    start = time.perf_counter()
    _, grids = sample_image_tokens(prior, labels=labels, **sampling)
    sampling_seconds = time.perf_counter() - start
    samples = tokenizer.decode(grids).clamp(-1, 1)
    predicted = predict_digits(classifier, samples)
    per_class = [float((predicted[labels == c] == c).float().mean()) for c in range(vocabulary.num_classes)]
    return {
        "prior": prior_path,
        "tokenizer": tokenizer_path,
        "prior_parameters": prior.num_parameters(),
        "test_bits_per_token": test_bits,
        "test_bits_per_image": test_bits * latent_shape[0] * latent_shape[1],
        "unigram_bits_per_token": unigram_bits_per_token(train_tokens, test_tokens, vocabulary.codebook_size),
        "train_codes_used": train_codes_used,
        "test_codes_used": test_codes_used,
        "log2_test_codes_used": math.log2(test_codes_used),
        "sample_codes_used": codes_used(grids, vocabulary.codebook_size),
        "sample_accuracy": float((predicted == labels).float().mean()),
        "sample_accuracy_per_class": per_class,
        "reconstruction_accuracy": reconstruction_accuracy,
        "real_test_accuracy": real_accuracy,
        "num_samples": int(labels.numel()),
        "sampling": sampling,
        "sampling_seconds": sampling_seconds,
    }


def markdown_table(results: dict[str, dict]) -> str:
    lines = [
        "| tokens | prior test NLL (bits/token) | unigram baseline (bits/token) | log2(codes used on test) "
        "| sample class accuracy | classifier on tokenizer reconstructions | codes used: train / test / samples |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['test_bits_per_token']:.3f} | {r['unigram_bits_per_token']:.3f} "
            f"| {r['log2_test_codes_used']:.2f} | {100 * r['sample_accuracy']:.1f} % "
            f"| {100 * r['reconstruction_accuracy']:.1f} % "
            f"| {r['train_codes_used']} / {r['test_codes_used']} / {r['sample_codes_used']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", action="append", required=True, help="name=path, repeatable.")
    parser.add_argument("--classifier", default=DEFAULT_WEIGHTS)
    parser.add_argument("--samples_per_class", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default="outputs/token-cache")
    parser.add_argument("--output", default=None, help="JSON file for the results (written atomically).")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    args = parser.parse_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    classifier = load_digit_classifier(args.classifier)
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    results = {}
    for entry in args.prior:
        name, _, path = entry.partition("=")
        if not path:
            raise SystemExit(f"--prior takes name=path, got {entry!r}.")
        results[name] = evaluate_prior(path, classifier, args.samples_per_class, sampling, args.cache_dir)
        print(json.dumps({name: results[name]}, indent=2))
    print(markdown_table(results))
    if args.output:
        atomic_write_json(args.output, results)


if __name__ == "__main__":
    main()
