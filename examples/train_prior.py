"""Train a class-conditional GPT-2 prior over the image tokens of an ArcVQ tokenizer.

Each image becomes [BOS, <class>, h*w raster image tokens]; a small GPT2LMHeadModel learns them with the
transformers Trainer. The token data set is encoded once and cached as Arrow files under --cache_dir.

    python examples/train_prior.py --tokenizer checkpoints/arcvq-vae-mnist --output_dir outputs/prior-arcvq-mnist

Every TrainingArguments flag works (`--bf16`, `--report_to tensorboard`, `--push_to_hub`, `--resume_from_checkpoint`,
`--per_device_train_batch_size`, ...); `python examples/train_prior.py --help` lists them. The saved folder is a plain
GPT-2 (`GPT2LMHeadModel.from_pretrained`) whose config also records the token layout, the latent shape and the
tokenizer path (`config.image_prior`); examples/generate.py samples from it. `--push_to_hub` uploads it once at the
end (weights, config, summary and card; no pickled training_args.bin).
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import ClassLabel
from transformers import GPT2LMHeadModel, HfArgumentParser, Trainer, TrainingArguments, set_seed

from arcvq_hf import ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data.builtin import load_image_dataset, train_eval_splits
from arcvq_hf.prior.language_model import ImageTokenVocabulary, bits_per_token, image_token_nll, prior_config
from arcvq_hf.prior.token_data import ImageTokenCollator, tokenize_image_dataset
from arcvq_hf.training.publish import upload_model_folder
from arcvq_hf.utils.io_utils import atomic_write_json, require_creatable_folder, require_existing_folder


@dataclass
class PriorArguments:
    """The tokenizer, the images and the size of the GPT-2 prior."""

    tokenizer: str = field(default="checkpoints/arcvq-vae-mnist", metadata={"help": "ArcVQ folder or hub id."})
    dataset: str = field(default="mnist-5k", metadata={"help": "built-in name, imagefolder path or saved DatasetDict."})
    cache_dir: str = field(default="outputs/token-cache", metadata={"help": "where encoded token sets are cached."})
    unconditional: bool = field(default=False, metadata={"help": "no class tokens (ignore the labels)."})
    n_layer: int = field(default=4, metadata={"help": "GPT-2 layers."})
    n_embd: int = field(default=128, metadata={"help": "GPT-2 width."})
    n_head: int = field(default=4, metadata={"help": "GPT-2 attention heads."})
    dropout: float = field(default=0.1, metadata={"help": "residual, embedding and attention dropout."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})


def check_budget(training_args: TrainingArguments) -> None:
    """Refuse, before anything is loaded or written, a run that trains nothing (`--max_steps 0` used to end in a
    ZeroDivisionError with an empty output folder left behind) or whose --output_dir cannot be a folder."""
    steps, epochs = training_args.max_steps, training_args.num_train_epochs
    if steps == 0 or steps < -1 or (steps == -1 and not epochs > 0):
        budget = f"--max_steps {steps}" if steps != -1 else f"--num_train_epochs {epochs}"
        raise ValueError(f"{budget} trains nothing: give --max_steps N with N >= 1 (or --num_train_epochs > 0).")
    require_creatable_folder(training_args.output_dir, "--output_dir")


def main(args: Sequence[str] | None = None) -> None:
    parser = HfArgumentParser((PriorArguments, TrainingArguments))
    parser.set_defaults(
        output_dir="outputs/prior-arcvq-mnist",
        max_steps=1500,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        learning_rate=1e-3,
        weight_decay=0.01,
        warmup_steps=100,
        lr_scheduler_type="cosine",
        logging_steps=50,
        eval_strategy="steps",
        eval_steps=0.2,  # five evaluations over the run (a float below 1 is a fraction of max_steps)
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
    )
    prior_args, training_args = parser.parse_args_into_dataclasses(args=args)
    if prior_args.num_threads:
        torch.set_num_threads(prior_args.num_threads)
    require_existing_folder(prior_args.tokenizer, "--tokenizer")
    check_budget(training_args)
    set_seed(training_args.seed)
    # Pushed once at the end, after the summary: Trainer would push inside save_model, with training_args.bin.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False

    tokenizer = ArcVQModel.from_pretrained(prior_args.tokenizer).eval()
    processor = ArcVQImageProcessor.from_pretrained(prior_args.tokenizer)
    train_images, test_images = train_eval_splits(load_image_dataset(prior_args.dataset))
    splits = {"train": train_images, "test": test_images}
    tokens = {
        split: tokenize_image_dataset(images, tokenizer, processor, cache_dir=prior_args.cache_dir)
        for split, images in splits.items()
    }
    with torch.no_grad():
        first = processor(train_images[0]["image"], return_tensors="pt")["pixel_values"]
        latent_shape = tuple(tokenizer.encode(first).image_tokens.shape[1:])
    sequence_length = latent_shape[0] * latent_shape[1]
    if any(len(row) != sequence_length for row in tokens["train"]["image_tokens"]):
        raise ValueError(f"every image must give {latent_shape} tokens; resize the images to one size first.")

    label_feature = train_images.features.get("label")
    if prior_args.unconditional:
        num_classes = 0
    elif isinstance(label_feature, ClassLabel):
        num_classes = label_feature.num_classes
    else:
        raise ValueError("class conditioning needs a `label` column of type ClassLabel; or pass --unconditional.")
    vocabulary = ImageTokenVocabulary(codebook_size=tokenizer.config.codebook_size, num_classes=num_classes)
    config = prior_config(
        vocabulary,
        latent_shape,
        tokenizer_name_or_path=prior_args.tokenizer,
        n_layer=prior_args.n_layer,
        n_embd=prior_args.n_embd,
        n_head=prior_args.n_head,
        resid_pdrop=prior_args.dropout,
        embd_pdrop=prior_args.dropout,
        attn_pdrop=prior_args.dropout,
    )
    prior = GPT2LMHeadModel(config)
    print(f"prior: {prior.num_parameters() / 1e6:.2f} M parameters, vocabulary {config.vocab_size}, "
          f"{config.n_positions} positions, latent shape {latent_shape}")  # fmt: skip

    collator = ImageTokenCollator(vocabulary)
    trainer = Trainer(
        model=prior,
        args=training_args,
        train_dataset=tokens["train"],
        eval_dataset=tokens["test"],
        data_collator=collator,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():
        return
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the summary records the run instead

    test_ids = collator(list(tokens["test"]))["input_ids"]
    test_bits = bits_per_token(image_token_nll(prior, vocabulary, test_ids))
    summary = {
        "tokenizer": prior_args.tokenizer,
        "dataset": prior_args.dataset,
        "max_steps": training_args.max_steps,
        "parameters": prior.num_parameters(),
        "test_bits_per_token": test_bits,
        "test_bits_per_image": test_bits * sequence_length,
        "uniform_bits_per_token": math.log2(vocabulary.codebook_size),
    }
    atomic_write_json(output_dir / "prior_summary.json", summary)
    print(json.dumps(summary, indent=2))
    if push_to_hub:
        trainer.create_model_card(model_name=output_dir.absolute().name, dataset=prior_args.dataset)
        upload_model_folder(
            output_dir,
            training_args.hub_model_id or output_dir.absolute().name,
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
            revision=training_args.hub_revision,
            commit_message="End of training",
        )


if __name__ == "__main__":
    main()
