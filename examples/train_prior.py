"""Train a class-conditional GPT-2 prior over the image tokens of an ArcVQ tokenizer.

Each image becomes [BOS, <class>, h*w raster image tokens]; a small GPT2LMHeadModel learns them with the
transformers Trainer. The token data set is encoded once and cached as Arrow files under --cache_dir.

    python examples/train_prior.py --tokenizer checkpoints/arcvq-vae-mnist --output_dir outputs/prior-arcvq-mnist

The saved folder is a plain GPT-2 (`GPT2LMHeadModel.from_pretrained`) whose config also records the token layout,
the latent shape and the tokenizer path (`config.image_prior`); examples/generate.py samples from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
from datasets import ClassLabel
from transformers import GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

from arcvq_hf import ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data import load_image_dataset, train_eval_splits
from arcvq_hf.prior import (
    ImageTokenCollator,
    ImageTokenVocabulary,
    bits_per_token,
    image_token_nll,
    prior_config,
    tokenize_image_dataset,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="checkpoints/arcvq-vae-mnist", help="ArcVQ folder or hub id.")
    parser.add_argument("--dataset", default="mnist-5k", help="built-in name, imagefolder path or saved DatasetDict.")
    parser.add_argument("--output_dir", default="outputs/prior-arcvq-mnist")
    parser.add_argument("--cache_dir", default="outputs/token-cache", help="where encoded token sets are cached.")
    parser.add_argument("--unconditional", action="store_true", help="no class tokens (ignore the labels).")
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=128)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    set_seed(args.seed)
    tokenizer = ArcVQModel.from_pretrained(args.tokenizer).eval()
    processor = ArcVQImageProcessor.from_pretrained(args.tokenizer)
    train_images, test_images = train_eval_splits(load_image_dataset(args.dataset))
    splits = {"train": train_images, "test": test_images}
    tokens = {
        split: tokenize_image_dataset(images, tokenizer, processor, cache_dir=args.cache_dir)
        for split, images in splits.items()
    }
    with torch.no_grad():
        first = processor(train_images[0]["image"], return_tensors="pt")["pixel_values"]
        latent_shape = tuple(tokenizer.encode(first).image_tokens.shape[1:])
    sequence_length = latent_shape[0] * latent_shape[1]
    if any(len(row) != sequence_length for row in tokens["train"]["image_tokens"]):
        raise ValueError(f"every image must give {latent_shape} tokens; resize the images to one size first.")

    label_feature = train_images.features.get("label")
    if args.unconditional:
        num_classes = 0
    elif isinstance(label_feature, ClassLabel):
        num_classes = label_feature.num_classes
    else:
        raise ValueError("class conditioning needs a `label` column of type ClassLabel; or pass --unconditional.")
    vocabulary = ImageTokenVocabulary(codebook_size=tokenizer.config.codebook_size, num_classes=num_classes)
    config = prior_config(
        vocabulary,
        latent_shape,
        tokenizer_name_or_path=args.tokenizer,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        resid_pdrop=args.dropout,
        embd_pdrop=args.dropout,
        attn_pdrop=args.dropout,
    )
    prior = GPT2LMHeadModel(config)
    print(f"prior: {prior.num_parameters() / 1e6:.2f} M parameters, vocabulary {config.vocab_size}, "
          f"{config.n_positions} positions, latent shape {latent_shape}")  # fmt: skip

    collator = ImageTokenCollator(vocabulary)
    arguments = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine",
        logging_steps=50,
        eval_strategy="steps",
        eval_steps=max(1, args.max_steps // 5),
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
    )
    trainer = Trainer(
        model=prior,
        args=arguments,
        train_dataset=tokens["train"],
        eval_dataset=tokens["test"],
        data_collator=collator,
    )
    trainer.train()
    trainer.save_model(args.output_dir)

    test_ids = collator(list(tokens["test"]))["input_ids"]
    test_bits = bits_per_token(image_token_nll(prior, vocabulary, test_ids))
    summary = {
        "tokenizer": args.tokenizer,
        "dataset": args.dataset,
        "max_steps": args.max_steps,
        "parameters": prior.num_parameters(),
        "test_bits_per_token": test_bits,
        "test_bits_per_image": test_bits * sequence_length,
        "uniform_bits_per_token": math.log2(vocabulary.codebook_size),
    }
    path = os.path.join(args.output_dir, "prior_summary.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(summary, handle, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
