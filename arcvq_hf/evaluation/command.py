"""Re-evaluate a saved ArcVQ folder on its evaluation split and rewrite its `eval_results.json`.

    python -m arcvq_hf.evaluation checkpoints/arcvq-vae-mnist --dataset mnist-5k --perceptual
    python -m arcvq_hf.training.model_card checkpoints/arcvq-vae-mnist     # then re-card it from the new file
    python -m arcvq_hf.evaluation checkpoints/arcvq-vae-photos --dataset photos --max_side 256 --output whole.json

The field's protocol (rFID / LPIPS on ImageNet-val at 256 px: shorter side resized to 256, centre crop 256, all 50,000
images), on a local copy or streamed from the Hub, on as many processes as you launch:

    python -m arcvq_hf.evaluation runs/arcvq-vqgan --dataset path/to/imagenet-val --eval_split train \
        --resolution 256 --perceptual --batch_size 50 --output imagenet-val-256.json
    torchrun --nproc_per_node 8 -m arcvq_hf.evaluation runs/arcvq-vqgan --dataset ILSVRC/imagenet-1k \
        --streaming --eval_split validation --resolution 256 --perceptual --output imagenet-val-256.json

`--resolution N` is `--resize_shorter N --center_crop N` (`arcvq_hf.data.streaming.resize_shorter_center_crop`:
bicubic, antialiased); give the two separately for e.g. 292 -> 256. Under torchrun each process evaluates a disjoint
part of the split (every world-size-th image; with `--streaming`, its own shards) and the metric sums, Inception
feature moments included, are added up over processes before anything is computed, so the numbers are those of one
pass over the whole split; rank 0 writes the file. Every rFID is written and printed with its image count
(`eval_rfid_num_images`).

`--dataset photos` (the corpus of whole photos) is measured as the training example measures it: on the fixed
multi-scale crops of `photo_eval_dataset` (`--crop_size`, default 32; `--crop_grid`, default 3 positions per axis and
scale: 189 crops, 12 tokens per code at K=1024; `--crop_grid 12` gives 2700 crops, the density of
benchmarks/field_baselines, for counting codebook use at K up to 8192). `--max_side N` measures whole images instead,
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
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, Subset
from transformers import TrainerState

from arcvq_hf.data.builtin import load_image_dataset, train_eval_splits
from arcvq_hf.data.photo_corpus import EVAL_CROP_GRID, PHOTO_CROP_SIZE, photo_eval_dataset
from arcvq_hf.data.streaming import open_image_stream, protocol_transform
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
    crop_grid: int | None = None,
    max_side: int | None = None,
    resize_shorter: int | None = None,
    center_crop: int | None = None,
    streaming: bool = False,
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
        crop_grid: crop positions per axis and scale of those crops (default EVAL_CROP_GRID).
        max_side: evaluate whole images, downscaled by the processor to this longer side, one image per batch.
        resize_shorter, center_crop: the field's protocol: resize the shorter side to `resize_shorter`, then cut the
            centred `center_crop` square (either alone: both the same).
        streaming: stream `eval_split` of `dataset` (a Hub id, WebDataset shards, an image folder) instead of
            loading it; `max_eval_samples` then takes the first N of each process's part.
    Under torch.distributed (torchrun) every process evaluates a disjoint part of the split and the metric sums are
    added over processes (`ReconstructionMetrics.all_reduce_`), so every process returns the whole split's metrics.
    Returns:
        the record `ArcVQTrainer.evaluate` returns (`eval_` keys, speed metrics and `epoch`: the training run's
        from the folder's trainer_state.json, else TrainerState's default 0).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such local folder (a folder written by save_pretrained).")
    protocol = resize_shorter is not None or center_crop is not None
    if crop_size is not None and max_side is not None:
        raise ValueError("crop_size and max_side exclude each other: crops, or whole downscaled images.")
    if crop_grid is not None and (crop_grid < 1 or max_side is not None or protocol):
        raise ValueError(
            f"crop_grid={crop_grid!r}: give a positive number of crop positions, and only for crops (not with "
            "max_side or resize_shorter / center_crop)."
        )
    if protocol and (crop_size is not None or max_side is not None or image_size is not None):
        raise ValueError(
            "resize_shorter / center_crop (--resolution) is a preprocessing of its own: drop crop_size, max_side "
            "and image_size."
        )
    if streaming and not protocol:
        raise ValueError("streaming evaluates with the protocol: give resize_shorter / center_crop (--resolution N).")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = ArcVQModel.from_pretrained(folder).to(device)
    processor = ArcVQImageProcessor.from_pretrained(folder)
    rank, world_size = _process_group(device)
    if protocol:
        shorter = resize_shorter if resize_shorter is not None else center_crop
        transform = protocol_transform(processor, shorter, center_crop, image_column="image")
    if streaming:
        stream = open_image_stream(dataset, eval_split or "validation", image_column)
        if world_size > 1:
            strategy = "shards" if stream.num_shards >= world_size else "examples"
            stream = split_dataset_by_node(stream, rank, world_size, strategy=strategy)
        if max_eval_samples is not None:
            stream = stream.take(max_eval_samples)
        batches: Any = _stream_batches(stream, transform, batch_size)
    else:
        if crop_size is None and max_side is None and not protocol and dataset == "photos":
            crop_size = PHOTO_CROP_SIZE
        if crop_grid is not None and crop_size is None:
            raise ValueError(f"crop_grid places fixed crops: give crop_size too (e.g. {PHOTO_CROP_SIZE}).")
        splits = load_image_dataset(dataset)
        # A named split is evaluated as it is (any split: ImageNet's `validation` needs no `train` beside it).
        split = splits[eval_split] if eval_split in splits else train_eval_splits(splits, train_split, eval_split)[1]
        if max_eval_samples is not None:
            split = split.select(range(min(max_eval_samples, len(split))))
        if max_side is not None:
            # Whole images of different sizes: one per batch, downscaled as the Space's processor does.
            processor.max_side, batch_size = max_side, 1
        crops = (crop_size, crop_grid or EVAL_CROP_GRID) if crop_size is not None else None
        split = _prepared_split(split, processor, image_column, image_size, crops, transform if protocol else None)
        # Every world_size-th image from `rank`: disjoint parts, none padded or counted twice.
        part = Subset(split, range(rank, len(split), world_size)) if world_size > 1 else split
        batches = DataLoader(part, batch_size=batch_size, shuffle=False, collate_fn=collate_pixel_values)
    start_time = time.time()
    metrics = whole_set_metrics(
        model, batches, processor, perceptual=perceptual, sum_over_processes=_sum_over_processes(world_size)
    )
    report = evaluation_report(metrics, "eval", start_time, int(metrics["num_images"]), batch_size * world_size)
    # Trainer.log adds the Trainer state's epoch to the record: the training run's, else the state's default.
    state = folder / STATE_FILE
    epoch = json.loads(state.read_text()).get("epoch") if state.is_file() else None
    report["epoch"] = epoch if epoch is not None else TrainerState().epoch
    return report


def _prepared_split(
    split: Any,
    processor: Any,
    image_column: str,
    image_size: int | None,
    crops: tuple[int, int] | None,
    protocol: Any,
) -> Any:
    """The evaluation split with its images mapped to `pixel_values` (fixed crops given as (side, grid), the
    protocol, or as trained)."""
    if crops is not None:
        crop_size, crop_grid = crops
        split = photo_eval_dataset(split, crop_size, grid=crop_grid, image_column=image_column)
        image_column, image_size = "image", None
    if protocol is not None:
        if image_column != "image":
            split = split.rename_column(image_column, "image")
        return lazy_image_decoding(split, "image").with_transform(protocol)
    return lazy_image_decoding(split, image_column).with_transform(
        pixel_values_transform(processor, image_column, image_size)
    )


def _stream_batches(stream: Any, transform: Any, batch_size: int) -> Any:
    """(B, C, H, W) batches of a stream through `transform` (a generator: one pass)."""
    for batch in stream.iter(batch_size=batch_size):
        yield transform({"image": batch["image"]})


def _process_group(device: str) -> tuple[int, int]:
    """(rank, world size): joins the process group torchrun describes in the environment (gloo on the CPU, nccl on
    CUDA) when there is one and it is not joined yet; (0, 1) for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _sum_over_processes(world_size: int) -> Any:
    """None for one process, else the default group's all-reduce (sum) of the packed metric accumulators."""
    if world_size == 1:
        return None

    def summed(packed: torch.Tensor) -> torch.Tensor:
        packed = packed.cuda() if torch.distributed.get_backend() == "nccl" else packed
        torch.distributed.all_reduce(packed)
        return packed

    return summed


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
    parser.add_argument("--crop_grid", type=int, help="crop positions per axis and scale (default 3; 12: 2700 crops)")
    parser.add_argument("--max_side", type=int, help="whole images downscaled to this longer side, one per batch")
    parser.add_argument("--resize_shorter", type=int, help="the protocol: resize the shorter side to N, then ...")
    parser.add_argument("--center_crop", type=int, help="... cut the centred N x N square (default: --resize_shorter)")
    parser.add_argument("--resolution", type=int, help="--resize_shorter N --center_crop N (ImageNet-val: 256)")
    parser.add_argument("--streaming", action="store_true", help="stream --eval_split (Hub id, .tar shards, folder)")
    parser.add_argument("--output", help="write the record here instead of the folder's eval_results.json")
    args = parser.parse_args(argv)
    if args.resolution is not None:
        if args.resize_shorter is not None or args.center_crop is not None:
            parser.error("--resolution N is --resize_shorter N --center_crop N: give one form, not both.")
        args.resize_shorter = args.center_crop = args.resolution
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
        crop_grid=args.crop_grid,
        max_side=args.max_side,
        resize_shorter=args.resize_shorter,
        center_crop=args.center_crop,
        streaming=args.streaming,
    )
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return report  # every rank holds the whole split's numbers; rank 0 writes them
    if args.output:
        path = atomic_write_json(Path(args.output), dict(sorted(report.items())), indent=4)
    else:
        path = write_eval_results(args.folder, report)
    shown = ("eval_psnr", "eval_ssim", "eval_codebook_utilization", "eval_lpips", "eval_rfid")
    line = ", ".join(f"{key.removeprefix('eval_')} {report[key]:.4g}" for key in shown if key in report)
    if "eval_rfid" in report:  # an rFID means little without the number of images it was computed from
        line = line.replace(
            f"rfid {report['eval_rfid']:.4g}",
            f"rfid {report['eval_rfid']:.4g} ({report['eval_rfid_num_images']} images)",
        )
    print(f"{line}, images {report['eval_num_images']}")
    print(
        f"wrote {path}"
        + ("" if args.output else f"; re-card it with: python -m arcvq_hf.training.model_card {args.folder}")
    )
    return report


__all__ = ["evaluate_folder", "main", "write_eval_results"]


if __name__ == "__main__":
    main()
