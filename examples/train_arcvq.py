"""Train or fine-tune an ArcVQ image tokenizer with transformers.Trainer.

Examples (all offline):

    # the paper's small VQ-VAE with the full SAMP prior on the built-in MNIST subset
    python examples/train_arcvq.py --dataset mnist-5k --preset arcvq --output_dir runs/arcvq-mnist \
        --per_device_train_batch_size 256 --learning_rate 3e-4 --max_steps 1500 --logging_steps 50

    # the textbook VQ-VAE baseline on the built-in 32x32 crops of scikit-image's photos
    python examples/train_arcvq.py --dataset skimage-photos --preset vq-baseline --output_dir runs/vq-photos \
        --max_steps 1500

    # fine-tune a saved model on a local image folder (the ball radius continues from the saved step)
    python examples/train_arcvq.py --model_name_or_path runs/arcvq-mnist --dataset path/to/images \
        --image_size 32 --output_dir runs/finetuned --max_steps 500

    # two processes on CPU (gloo): torchrun, or accelerate's torchrun-based launcher
    torchrun --nproc_per_node 2 examples/train_arcvq.py --dataset mnist-5k --output_dir runs/ddp --max_steps 100
    accelerate launch --multi_gpu --num_processes 2 examples/train_arcvq.py --use_cpu --dataset mnist-5k \
        --output_dir runs/acc --max_steps 100
    (`accelerate launch --cpu` starts a single process unless MPI is set up.)

    # stream local WebDataset shards (or an image folder, or a Hub id) instead of loading the data set first; each
    # rank reads its own shards, random resized crops are cut in the DataLoader workers (arcvq_hf.data.streaming)
    python examples/train_arcvq.py --dataset path/to/shards --streaming --random_crop_size 256 --variant vqgan \
        --output_dir runs/stream --max_steps 1000 --dataloader_num_workers 2

Options: `--dataset` (mnist-5k | skimage-photos | photos, the photo corpus that examples/build_photo_corpus.py builds |
save_to_disk folder | image folder | hub id), `--variant vqvae|vqgan`,
`--preset` (any of arcvq_hf.PRESETS: arcvq, arcvq-lowdim, ema-kmeans-restart, vq-baseline, ...),
`--model_name_or_path`, `--perceptual_metrics` (LPIPS and
rFID in the evaluation; weights from `python -m arcvq_hf.evaluation.perceptual fetch`), the VQGAN recipe's `--disc_*` /
`--perceptual_weight` (arcvq_hf.training.gan.GANSettings; its LPIPS-VGG loss needs the same weights), every
TrainingArguments flag; `python examples/train_arcvq.py --help`
lists them all. The output folder gets config.json, model.safetensors, preprocessor_config.json, the model code
files (for trust_remote_code), the metrics JSONs, training_run.json and a README.md model card
(arcvq_hf.training.model_card).

`--push_to_hub` (with `--hub_model_id`, `--hub_token`, `--hub_private_repo`, `--hub_revision`) uploads that folder
once, at the end, after the card is written: card, config, weights, code and metrics JSONs, never Trainer's pickled
`training_args.bin` or the checkpoint folders.
"""

import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Image as ImageFeature
from transformers import HfArgumentParser, TrainingArguments, set_seed

from arcvq_hf import PRESETS, ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data.builtin import BUILTIN_DATASETS, load_image_dataset, train_eval_splits
from arcvq_hf.data.photo_corpus import PHOTO_CROP_SIZE, RandomCropDataset, photo_eval_dataset
from arcvq_hf.data.streaming import (
    DEFAULT_SHUFFLE_BUFFER,
    EVAL_SPLITS,
    StreamingCrops,
    eval_stream_dataset,
    open_image_stream,
    protocol_transform,
    stream_split_names,
)
from arcvq_hf.data.transforms import (
    infer_num_channels,
    lazy_image_decoding,
    pixel_values_transform,
    pixel_variance,
)
from arcvq_hf.training.gan import ArcVQGANTrainer, GANSettings
from arcvq_hf.training.model_card import TrainingRun, write_model_card
from arcvq_hf.training.publish import upload_model_folder
from arcvq_hf.training.streaming import with_streaming
from arcvq_hf.training.trainer import ArcVQTrainer
from arcvq_hf.utils.io_utils import (
    is_model_folder,
    looks_like_local_path,
    removed_if_left_empty,
    require_creatable_folder,
    require_existing_folder,
)


@dataclass
class ModelArguments:
    """What to train: a fresh model from a preset, or a saved model to fine-tune."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Saved ArcVQ folder or hub id to fine-tune; the schedules continue from it."}
    )
    variant: str = field(default="vqvae", metadata={"help": "Backbone of a fresh model: vqvae or vqgan."})
    preset: str = field(default="arcvq", metadata={"help": f"Quantizer preset: {', '.join(PRESETS)}."})
    num_channels: int | None = field(default=None, metadata={"help": "1 or 3; default: from the data / the model."})
    codebook_size: int | None = field(default=None, metadata={"help": "K (preset default if unset)."})
    codebook_dim: int | None = field(default=None, metadata={"help": "D (preset default if unset)."})
    hidden_size: int | None = field(default=None, metadata={"help": "vqvae backbone width."})
    base_channels: int | None = field(default=None, metadata={"help": "vqgan backbone base width."})
    channel_multipliers: str | None = field(default=None, metadata={"help": "vqgan widths, e.g. '1,2,2,4'."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Further ArcVQConfig fields: JSON ('{\"ball_growth_rate\": 1e-3}') or transformers' "
            "'ball_growth_rate=1e-3,arc_top_k=4'."
        },
    )
    data_variance: float | None = field(
        default=None, metadata={"help": "MSE normaliser; default: the pixel variance of the training set."}
    )
    use_gan: bool | None = field(
        default=None, metadata={"help": "VQGAN recipe (perceptual + PatchGAN); default: on for the vqgan backbone."}
    )
    channels_last: bool = field(
        default=False,
        metadata={
            "help": "channels_last weights: with --bf16 true (autocast) the fastest CPU step on CPUs with bf16 "
            "instructions (about 0.6x float32 there; 8-13x slower without them, benchmarks/speed.json); code "
            "assignment and the arc loss stay float32."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Needed for hub ids without arcvq_hf."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the final model already saved in --output_dir (else refused)."}
    )
    license: str = field(default="apache-2.0", metadata={"help": "License in the model card."})


@dataclass
class DataArguments:
    """Where the images come from, and what the evaluation measures."""

    dataset: str = field(
        default="mnist-5k",
        metadata={"help": f"{' / '.join(BUILTIN_DATASETS)}, a save_to_disk folder, an image folder or a hub id."},
    )
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    eval_split: str | None = field(default=None, metadata={"help": "Default: test / validation, else a held-out part."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Held-out fraction when there is no eval split."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    image_size: int | None = field(
        default=None, metadata={"help": "Center-crop to a square and resize to this size (needed for mixed sizes)."}
    )
    random_crop_size: int | None = field(
        default=None,
        metadata={
            "help": "Train on random resized crops of this side (area 5-100 %%, aspect 3/4-4/3, flips; "
            "arcvq_hf.data.RandomCropDataset) and evaluate on the fixed multi-scale crops of photo_eval_dataset; "
            "for sets of whole photos. Default: 32 for --dataset photos, off otherwise."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream --dataset (a Hub id, WebDataset .tar shards or an image folder) instead of downloading "
            "and converting it first: each rank reads its own shards, shuffled in a --shuffle_buffer, decoded and "
            "cut into --random_crop_size random resized crops (default 256) in the DataLoader workers; evaluation "
            "on the first --max_eval_samples (default 1000) images of the eval split, shorter side resized and "
            "centre-cropped. Needs --max_steps. Resume (--resume_from_checkpoint) skips the consumed batches; "
            "keep the seed, batch size, processes and --dataloader_num_workers (arcvq_hf.data.streaming)."
        },
    )
    shuffle_buffer: int = field(
        default=DEFAULT_SHUFFLE_BUFFER, metadata={"help": "With --streaming: examples in the shuffle buffer."}
    )
    perceptual_metrics: bool = field(
        default=False,
        metadata={
            "help": "Also report LPIPS-alex and rFID on the evaluation split (slow on CPU: ~0.5 s per image for "
            "rFID); their weights come from `python -m arcvq_hf.evaluation.perceptual fetch`."
        },
    )


def check_arguments(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Refuse, before anything is loaded or written, what would train nothing or look for missing folders."""
    if model_args.variant not in ("vqvae", "vqgan"):
        raise ValueError(f"--variant must be vqvae or vqgan, got {model_args.variant!r}.")
    if model_args.preset not in PRESETS:
        raise ValueError(f"Unknown preset {model_args.preset!r}; expected one of {tuple(PRESETS)}.")
    steps, epochs = training_args.max_steps, training_args.num_train_epochs
    # -1 is TrainingArguments' "not set": then --num_train_epochs decides.
    if steps == 0 or steps < -1 or (steps == -1 and not epochs > 0):
        budget = f"--max_steps {steps}" if steps != -1 else f"--num_train_epochs {epochs}"
        raise ValueError(
            f"{budget} trains nothing: give --max_steps N with N >= 1 (or --num_train_epochs > 0). Refusing to "
            "train, so that no untrained model is saved or published."
        )
    if data_args.streaming and (steps < 1 or data_args.dataset in BUILTIN_DATASETS):
        raise ValueError(
            "--streaming reads a Hub id, WebDataset shards or an image folder for --max_steps N steps (a stream has "
            f"no length, so epochs are undefined); got --dataset {data_args.dataset!r}, --max_steps {steps}."
        )
    if model_args.model_name_or_path:
        require_existing_folder(model_args.model_name_or_path, "--model_name_or_path")
    check_output_arguments(model_args, data_args, training_args)
    dataset = data_args.dataset
    if dataset not in BUILTIN_DATASETS and not os.path.exists(dataset) and looks_like_local_path(dataset):
        raise FileNotFoundError(f"--dataset {dataset!r}: no such local folder, and not one of {BUILTIN_DATASETS}.")


def check_output_arguments(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> None:
    """Refuse what would fail only after training (so the trained model would be lost) or overwrite a model."""
    if data_args.image_size is not None and data_args.image_size < 11:
        raise ValueError(
            f"--image_size {data_args.image_size}: the evaluation's SSIM needs images of at least 11x11 pixels; "
            "give --image_size 11 or more (or leave it unset to keep the images' own size)."
        )
    if data_args.max_eval_samples is not None and data_args.max_eval_samples < 1:
        raise ValueError(
            f"--max_eval_samples {data_args.max_eval_samples} leaves nothing to evaluate; give N >= 1 or leave it "
            "unset (the whole evaluation split)."
        )
    output_dir = require_creatable_folder(training_args.output_dir, "--output_dir")
    resuming = bool(training_args.resume_from_checkpoint)
    if is_model_folder(output_dir) and not resuming and not model_args.overwrite_output_dir:
        raise FileExistsError(
            f"--output_dir {output_dir} already holds a trained model (config.json); this run would overwrite it. "
            "Choose another --output_dir, pass --overwrite_output_dir to replace it, or --resume_from_checkpoint "
            "to continue its run."
        )


def load_dataset_argument(dataset: str) -> Any:
    """`load_image_dataset(dataset)`, with the errors of a name that is neither a local folder nor reachable on
    the Hub, or a folder with no images, naming `--dataset` and what to give instead."""
    try:
        datasets = load_image_dataset(dataset)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as err:
        where = "a local folder with no images in it" if os.path.isdir(dataset) else "not a local folder"
        raise ValueError(
            f"--dataset {dataset!r} could not be loaded: {where}, not one of {BUILTIN_DATASETS}, and not a data set "
            f"the Hub could provide ({type(err).__name__}: {err}). Give an image folder, a save_to_disk folder, a "
            "built-in name, or a Hub id (online, or in the local cache)."
        ) from err
    if not any(len(split) for split in datasets.values()):
        raise ValueError(f"--dataset {dataset!r} holds no images; give a folder with image files in it.")
    return datasets


def save_final_model(trainer: ArcVQTrainer, output_dir: Path) -> None:
    """`trainer.save_model` into a hidden staging folder, then each file renamed into `output_dir`, config.json
    last: an interruption leaves either the previous files or a folder without config.json, which loading refuses,
    never a half-written weights file. Trainer's pickled training_args.bin is dropped (a folder meant to be shared
    holds no pickle; the exact command is in training_run.json and the model card)."""
    staging = output_dir / ".final-staging"
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        (staging / "training_args.bin").unlink(missing_ok=True)
        files = sorted(staging.iterdir(), key=lambda path: path.name == "config.json")
        for path in files:
            os.replace(path, output_dir / path.name)
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()


def build_config(model_args: ModelArguments, num_channels: int) -> ArcVQConfig:
    """A fresh model's config: the preset on the variant, the command-line sizes, then `--config_overrides`."""
    sizes = {name: getattr(model_args, name) for name in ("codebook_size", "codebook_dim", "hidden_size")}
    sizes["base_channels"] = model_args.base_channels
    if model_args.channel_multipliers:
        sizes["channel_multipliers"] = [int(m) for m in model_args.channel_multipliers.split(",")]
    sizes = {name: value for name, value in sizes.items() if value is not None}
    config = ArcVQConfig.from_preset(model_args.preset, variant=model_args.variant, num_channels=num_channels, **sizes)
    overrides = model_args.config_overrides
    if overrides and overrides.lstrip().startswith("{"):
        try:
            values = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--config_overrides {overrides!r} is not valid JSON ({err}); write e.g. "
                "'{\"ball_growth_rate\": 1e-3}' or ball_growth_rate=1e-3,arc_top_k=4."
            ) from err
        unknown = sorted(name for name in values if not hasattr(config, name))
        if unknown:
            raise ValueError(f"--config_overrides: ArcVQConfig has no fields {unknown}.")
        config.update(values)
    elif overrides:
        config.update_from_string(overrides)
    # Rebuilt so that ArcVQConfig validates the overridden values.
    return ArcVQConfig.from_dict(config.to_dict())


def main(args: Sequence[str] | None = None) -> tuple[ArcVQTrainer, dict[str, float]]:
    """Parse `args` (default: the command line), train, evaluate, save and card the model, push it if asked.
    Returns (trainer, final evaluation metrics)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, GANSettings, TrainingArguments))
    # The paper's VQ-VAE optimizer: Adam, constant rate 3e-4, no gradient clipping (override on the command line).
    parser.set_defaults(learning_rate=3e-4, lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=50)
    model_args, data_args, gan_settings, training_args = parser.parse_args_into_dataclasses(args=args)
    check_arguments(model_args, data_args, training_args)
    argv = list(sys.argv) if args is None else ["examples/train_arcvq.py", *args]
    command = shlex.join(["python", *argv])
    if training_args.world_size > 1:
        command += f"  # run on {training_args.world_size} processes (torchrun / accelerate launch)"
    set_seed(training_args.seed)
    # Pushed once at the end, after our card: Trainer would push inside save_model, with its own card and pickle.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    training_args.remove_unused_columns = False  # the transform reads the `image` column

    # Data: the splits, decoded by the transform below (so that a corrupt image is reported by its file name).
    if data_args.streaming:
        # The training images stay a stream; the evaluation images are the eval split's first N, held in memory.
        train_stream = open_image_stream(data_args.dataset, data_args.train_split, data_args.image_column)
        splits = stream_split_names(data_args.dataset)
        eval_split = data_args.eval_split or next((name for name in EVAL_SPLITS if name in splits), None)
        if eval_split is None:
            raise ValueError(
                f"--streaming: {data_args.dataset} has no evaluation split (it has {splits}); name one with "
                "--eval_split (a stream cannot hold out a fraction of its training split)."
            )
        eval_stream = open_image_stream(data_args.dataset, eval_split, data_args.image_column)
        eval_dataset = eval_stream_dataset(eval_stream, data_args.max_eval_samples or 1000)
        train_dataset = eval_dataset  # a stand-in until the stream replaces it below (channel count)
        data_args.image_column = "image"
    else:
        datasets = load_dataset_argument(data_args.dataset)
        train_dataset, eval_dataset = train_eval_splits(
            datasets, data_args.train_split, data_args.eval_split, data_args.eval_fraction, training_args.seed
        )
        eval_split = next((name for name, split in datasets.items() if split is eval_dataset), None)
    held_out = f"{data_args.train_split} (held-out {data_args.eval_fraction:.0%}, seed {training_args.seed})"
    eval_split = eval_split or held_out
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    train_dataset = lazy_image_decoding(train_dataset, data_args.image_column)
    eval_dataset = lazy_image_decoding(eval_dataset, data_args.image_column)

    # Config: the saved one to fine-tune, or a fresh one from the preset.
    finetune_from = model_args.model_name_or_path
    if finetune_from:
        config = ArcVQConfig.from_pretrained(finetune_from, trust_remote_code=model_args.trust_remote_code)
        if model_args.num_channels is not None and model_args.num_channels != config.num_channels:
            raise ValueError(
                f"The model expects {config.num_channels}-channel images but --num_channels is "
                f"{model_args.num_channels}."
            )
    else:
        num_channels = model_args.num_channels or infer_num_channels(train_dataset, data_args.image_column)
        config = build_config(model_args, num_channels)

    # Processor and dataset transform: images -> pixel_values in [-1, 1], sides a multiple of the token size.
    processor = ArcVQImageProcessor(num_channels=config.num_channels, size_divisor=config.downsampling_factor)
    transform = pixel_values_transform(processor, data_args.image_column, data_args.image_size)
    crop_size = data_args.random_crop_size or (PHOTO_CROP_SIZE if data_args.dataset == "photos" else None)
    if data_args.streaming:
        crop_size = crop_size or 256
        # Evaluation: the field's protocol at the training resolution (shorter side resized, centre crop).
        eval_dataset = eval_dataset.with_transform(protocol_transform(processor, crop_size))
        train_dataset = StreamingCrops(
            train_stream,
            crop_size,
            pixel_values_transform(processor),
            rank=training_args.process_index,
            world_size=training_args.world_size,
            seed=training_args.seed,
            shuffle_buffer=data_args.shuffle_buffer,
            batch_size=training_args.per_device_train_batch_size,
            num_workers=training_args.dataloader_num_workers,
        )
        # The normaliser from the first crops of a one-process view: the same on every rank.
        variance_sample = train_dataset.first_crops(256)
    elif crop_size:
        # Whole photos: fresh random crops for every sample of the run (nothing repeats), fixed crops to evaluate.
        samples = training_args.max_steps * training_args.per_device_train_batch_size * training_args.world_size
        train_dataset = RandomCropDataset(
            train_dataset.cast_column(data_args.image_column, ImageFeature()),
            crop_size,
            length=max(samples, 1),
            transform=transform,
            seed=training_args.seed,
            image_column=data_args.image_column,
        )
        eval_dataset = photo_eval_dataset(
            eval_dataset.cast_column(data_args.image_column, ImageFeature()),
            crop_size,
            image_column=data_args.image_column,
        ).with_transform(pixel_values_transform(processor))
        variance_sample = torch.stack([train_dataset[i]["pixel_values"] for i in range(min(len(train_dataset), 2048))])
    else:
        train_dataset = train_dataset.with_transform(transform)
        eval_dataset = eval_dataset.with_transform(transform)
        variance_sample = train_dataset
    if model_args.data_variance is not None:
        config.data_variance = model_args.data_variance
    elif not finetune_from:
        config.data_variance = pixel_variance(variance_sample)

    # Model
    if finetune_from:
        model = ArcVQModel.from_pretrained(finetune_from, config=config, trust_remote_code=model_args.trust_remote_code)
    else:
        model = ArcVQModel(config)
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # Trainer: the VQGAN recipe adds a discriminator and (unless --perceptual_weight 0) the LPIPS-VGG loss.
    use_gan = model_args.use_gan if model_args.use_gan is not None else config.backbone == "vqgan"
    trainer_kwargs: dict[str, Any] = {
        "model": model,
        "args": training_args,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "processing_class": processor,
        "perceptual_metrics": data_args.perceptual_metrics,
    }
    # Trainer creates output_dir at once; a run that fails before saving anything must not leave it behind.
    output_dir = Path(training_args.output_dir)
    with removed_if_left_empty(output_dir):
        trainer_class = ArcVQGANTrainer if use_gan else ArcVQTrainer
        if data_args.streaming:
            trainer_class = with_streaming(trainer_class)  # the stream's own DataLoader and resume skip-ahead
        if use_gan:
            trainer: ArcVQTrainer = trainer_class(gan_settings=gan_settings, **trainer_kwargs)
        else:
            trainer = trainer_class(**trainer_kwargs)

        # Train, save, then evaluate on the whole evaluation split: the trained model is on disk before anything
        # that can still fail (an evaluation error used to lose it).
        start = time.time()
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_seconds = time.time() - start
        save_final_model(trainer, output_dir)
        metrics = trainer.evaluate()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        trainer.save_state()

    # The model card from the measured metrics, then (if asked) the upload.
    if trainer.is_world_process_zero():
        total_batch = (
            training_args.per_device_train_batch_size
            * training_args.world_size
            * training_args.gradient_accumulation_steps
        )
        preset = model_args.preset if not finetune_from else f"fine-tuned from {finetune_from}"
        run = TrainingRun(
            command=command,
            dataset=data_args.dataset,
            train_split=data_args.train_split,
            eval_split=eval_split,
            summary={
                "variant / preset": f"{config.backbone} / {preset}",
                "optimizer steps this run": trainer.state.global_step,
                "batch size per device x processes x accumulation": (
                    f"{training_args.per_device_train_batch_size} x {training_args.world_size} x "
                    f"{training_args.gradient_accumulation_steps}"
                ),
                "learning rate": training_args.learning_rate,
                "training images / evaluation images": (
                    f"{len(train_dataset)} / {len(eval_dataset)}"
                    if not data_args.streaming
                    else f"streamed, {trainer.state.global_step * total_batch} crops / {len(eval_dataset)}"
                ),
                "data variance (MSE normaliser)": config.data_variance,
                "GAN recipe": asdict(gan_settings) if use_gan else "off",
                "wall time (s)": round(train_seconds, 1),
            },
            license=model_args.license,
            base_model=finetune_from if finetune_from and not os.path.exists(finetune_from) else None,
            repo_id=(training_args.hub_model_id or output_dir.absolute().name) if push_to_hub else None,
        )
        run.save(output_dir)
        write_model_card(output_dir, run, model=trainer.model, metrics=metrics)
        if push_to_hub:
            repo_id = upload_model_folder(
                output_dir,
                run.repo_id,
                token=training_args.hub_token,
                private=training_args.hub_private_repo,
                revision=training_args.hub_revision,
                commit_message="End of training",
            )
            print(f"pushed {output_dir} to https://huggingface.co/{repo_id}")
    return trainer, metrics


if __name__ == "__main__":
    main()
