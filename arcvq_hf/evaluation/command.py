"""Re-evaluate a saved ArcVQ folder on its evaluation split and rewrite its `eval_results.json`.

    python -m arcvq_hf.evaluation checkpoints/arcvq-vae-mnist --dataset mnist-5k --perceptual
    python -m arcvq_hf.training.model_card checkpoints/arcvq-vae-mnist     # then re-card it from the new file
    python -m arcvq_hf.evaluation checkpoints/arcvq-vae-photos --dataset photos --max_side 256 --output whole.json

`--dataset photos` (the corpus of whole photos) is measured as the training example measures it: on the fixed
multi-scale crops of `photo_eval_dataset` (`--crop_size`, default 32). `--max_side N` measures whole images instead,
each downscaled by the folder's processor so that its longer side is at most N (as the Space does), one per batch.

The evaluation is `ArcVQTrainer.evaluate`'s: `whole_set_metrics` (the one evaluation loop, `loop`) over the whole
split in one process, reported by `evaluation_report`. The file therefore holds exactly the keys a training run
writes: the `eval_`-prefixed metrics, Trainer's speed metrics and `epoch` (Trainer.log adds it to the evaluation's
record), from the folder's `trainer_state.json` when it has one.
`all_results.json`, when present, is updated with the same values (as `Trainer.save_metrics` does). Both are
written atomically. `--perceptual` adds LPIPS and rFID (weights: `python -m arcvq_hf.evaluation.perceptual fetch`).

The evaluation batch size matters only for `eval_arc_loss` / `eval_loss` (the arc loss depends on which images
share a batch); the default 8 is TrainingArguments' `per_device_eval_batch_size`, what the training example used.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import TrainerState

from arcvq_hf.data.builtin import load_image_dataset, train_eval_splits
from arcvq_hf.data.photo_corpus import PHOTO_CROP_SIZE, photo_eval_dataset
from arcvq_hf.data.transforms import collate_pixel_values, lazy_image_decoding, pixel_values_transform
from arcvq_hf.model.image_processing_arcvq import ArcVQImageProcessor
from arcvq_hf.model.modeling_arcvq import ArcVQModel
from arcvq_hf.utils.io_utils import atomic_write_json

from .loop import evaluation_report, whole_set_metrics

RESULTS_FILE = "eval_results.json"
ALL_RESULTS_FILE = "all_results.json"
STATE_FILE = "trainer_state.json"
# TrainingArguments' default per_device_eval_batch_size.
DEFAULT_BATCH_SIZE = 8


def evaluate_folder(
    folder: str | os.PathLike,
    dataset: str,
    eval_split: str | None = None,
    train_split: str = "train",
    image_column: str = "image",
    image_size: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_eval_samples: int | None = None,
    perceptual: bool = False,
    device: str | None = None,
    crop_size: int | None = None,
    max_side: int | None = None,
) -> dict[str, float]:
    """Evaluate the model saved in `folder` as `ArcVQTrainer.evaluate` would, without writing anything.

    Args:
        folder: a folder written by `save_pretrained` (config, weights, preprocessor_config.json).
        dataset: a `--dataset` value of the training example (`mnist-5k`, `skimage-photos`, a folder, a Hub id).
        eval_split, train_split: as the training example picks them (default: test / validation, else a seeded
            10% of `train_split`).
        image_column, image_size: as the training example's `--image_column` / `--image_size`.
        batch_size: images per evaluation batch.
        max_eval_samples: only the first N evaluation images.
        perceptual: add LPIPS and rFID.
        device: default `cuda` when available, else `cpu`.
        crop_size: evaluate on `photo_eval_dataset`'s fixed crops of this side (default: PHOTO_CROP_SIZE for
            `photos`, whole images otherwise).
        max_side: evaluate whole images, downscaled by the processor to this longer side, one image per batch.
    Returns:
        the record `ArcVQTrainer.evaluate` returns (`eval_` keys, speed metrics and `epoch`: the training run's
        from the folder's trainer_state.json, else TrainerState's default 0).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such local folder (a folder written by save_pretrained).")
    if crop_size is not None and max_side is not None:
        raise ValueError("crop_size and max_side exclude each other: crops, or whole downscaled images.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = ArcVQModel.from_pretrained(folder).to(device)
    processor = ArcVQImageProcessor.from_pretrained(folder)
    if crop_size is None and max_side is None and dataset == "photos":
        crop_size = PHOTO_CROP_SIZE
    _, split = train_eval_splits(load_image_dataset(dataset), train_split, eval_split)
    if max_eval_samples is not None:
        split = split.select(range(min(max_eval_samples, len(split))))
    if crop_size is not None:
        split = photo_eval_dataset(split, crop_size, image_column=image_column)
        image_column, image_size = "image", None
    if max_side is not None:
        # Whole images of different sizes: one per batch, downscaled as the Space's processor does.
        processor.max_side, batch_size = max_side, 1
    split = lazy_image_decoding(split, image_column).with_transform(
        pixel_values_transform(processor, image_column, image_size)
    )
    batches = DataLoader(split, batch_size=batch_size, shuffle=False, collate_fn=collate_pixel_values)
    start_time = time.time()
    metrics = whole_set_metrics(model, batches, processor, perceptual=perceptual)
    report = evaluation_report(metrics, "eval", start_time, len(split), batch_size)
    # Trainer.log adds the Trainer state's epoch to the record: the training run's, else the state's default.
    state = folder / STATE_FILE
    epoch = json.loads(state.read_text()).get("epoch") if state.is_file() else None
    report["epoch"] = epoch if epoch is not None else TrainerState().epoch
    return report


def write_eval_results(folder: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write `report` as `folder/eval_results.json` and merge it into `folder/all_results.json` when that exists,
    sorted and indented as `Trainer.save_metrics` writes them, atomically. Returns the eval_results.json path."""
    folder = Path(folder)
    combined = folder / ALL_RESULTS_FILE
    if combined.is_file():
        merged = {**json.loads(combined.read_text()), **report}
        atomic_write_json(combined, dict(sorted(merged.items())), indent=4)
    return atomic_write_json(folder / RESULTS_FILE, dict(sorted(report.items())), indent=4)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Re-evaluate a saved ArcVQ folder on its evaluation split and rewrite its eval_results.json."
    )
    parser.add_argument("folder", help="a local folder written by save_pretrained (the results are written into it)")
    parser.add_argument("--dataset", required=True, help="mnist-5k | skimage-photos | photos | data folder | hub id")
    parser.add_argument("--eval_split", help="default: test / validation, else a seeded 10%% of --train_split")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--image_size", type=int, help="center-crop and resize to this size (as when training)")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--max_eval_samples", type=int, help="only the first N evaluation images")
    parser.add_argument("--perceptual", action="store_true", help="add LPIPS-alex and rFID")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--crop_size", type=int, help="fixed multi-scale crops of this side (default 32 for photos)")
    parser.add_argument("--max_side", type=int, help="whole images downscaled to this longer side, one per batch")
    parser.add_argument("--output", help="write the record here instead of the folder's eval_results.json")
    args = parser.parse_args(argv)
    report = evaluate_folder(
        args.folder,
        args.dataset,
        eval_split=args.eval_split,
        train_split=args.train_split,
        image_column=args.image_column,
        image_size=args.image_size,
        batch_size=args.batch_size,
        max_eval_samples=args.max_eval_samples,
        perceptual=args.perceptual,
        device=args.device,
        crop_size=args.crop_size,
        max_side=args.max_side,
    )
    if args.output:
        path = atomic_write_json(Path(args.output), dict(sorted(report.items())), indent=4)
    else:
        path = write_eval_results(args.folder, report)
    shown = ("eval_psnr", "eval_ssim", "eval_codebook_utilization", "eval_lpips", "eval_rfid", "eval_rfid_num_images")
    print(", ".join(f"{key.removeprefix('eval_')} {report[key]:.4g}" for key in shown if key in report))
    print(
        f"wrote {path}"
        + ("" if args.output else f"; re-card it with: python -m arcvq_hf.training.model_card {args.folder}")
    )
    return report


__all__ = ["evaluate_folder", "main", "write_eval_results"]


if __name__ == "__main__":
    main()
