"""Streaming image data for sets too large to download and convert first (ImageNet: about 150 GB).

Sources (`open_image_stream`), all read lazily with `datasets`' streaming `IterableDataset`:
- a Hub data set id (`load_dataset(id, split=..., streaming=True)`), e.g. `ILSVRC/imagenet-1k`;
- a local folder of WebDataset `.tar` shards (flat: the `train` split; or one sub-folder per split, `train/`,
  `validation/`, ...), or one `.tar` file, or a glob such as `shards/train-*.tar` (`load_dataset("webdataset", ...)`;
  each sample's image member, e.g. `000123.jpg`, becomes the `image` column);
- a local image folder (`load_dataset("imagefolder", data_dir=..., streaming=True)`).

Training (`StreamingCrops`): a torch `IterableDataset` of random resized crops, endless (pass after pass, each
shuffled anew), for one process of a run:
1. `split_dataset_by_node(stream, rank, world_size)`: each rank reads its own shards (strategy "shards" whenever
   there are at least as many shards as ranks; otherwise every rank reads everything and keeps one example in
   `world_size`, still disjoint);
2. a seeded shuffle (shard order, then a `shuffle_buffer`-example buffer), the same seed on every rank, so the
   shard assignment agrees across ranks;
3. in each DataLoader worker (datasets gives each worker its own shards), the images are decoded, cut into a
   random resized crop (`random_resized_crop` of the photo corpus: area `crop_scale` of the image, aspect 3/4-4/3,
   flips) and mapped to `pixel_values` by the processor. The image bytes travel undecoded until then.

Resume is a stated skip-ahead, not a restored reader position: the order of the examples is a function of (seed,
pass, rank, world size, worker, number of workers) only, so a run resumed at optimizer step s re-creates the same
stream and drops the micro-batches it had already consumed (s x gradient accumulation of them on each rank, which
each worker converts into its own count) without decoding them. The continuation is then exactly the batches an
uninterrupted run would have seen (tests/test_streaming.py checks it), provided the resumed run uses the same seed,
per-device batch size, number of processes, `--dataloader_num_workers` and shuffle buffer. The skipped examples are
still read (a shuffle buffer cannot be jumped over): resuming late in a pass over a remote set re-downloads the
bytes read so far in that pass, at read speed, not at training speed.

Evaluation: `resize_shorter_center_crop` is the field's protocol (shorter side resized, then centre-cropped), used by
`python -m arcvq_hf.evaluation ... --resolution N` and for the streamed evaluation images of the training example
(`eval_stream_dataset`).
"""

from __future__ import annotations

import glob
import itertools
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import IterableDataset as TorchIterableDataset
from torch.utils.data import get_worker_info

from arcvq_hf.utils.extras import missing_extra

try:
    from datasets import Dataset, IterableDataset, load_dataset
    from datasets import Image as ImageFeature
    from datasets.distributed import split_dataset_by_node
except ImportError as err:
    raise missing_extra("datasets", "train") from err

from .photo_corpus import RANDOM_CROP_RATIO, random_resized_crop
from .transforms import decode_image

# Examples held by the shuffle buffer: enough to mix the images of a few shards (ImageNet's WebDataset shards hold
# about 1000 images each), small enough to fill in seconds.
DEFAULT_SHUFFLE_BUFFER = 1000
# Area fraction of a training crop, torchvision's RandomResizedCrop default (ImageNet-style whole photos).
DEFAULT_CROP_SCALE = (0.08, 1.0)
# File extensions WebDataset and PIL read as images, in the order an image member is preferred.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "gif")
EVAL_SPLITS = ("validation", "val", "test", "valid", "eval")


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------


def tar_shards(source: str | os.PathLike, split: str = "train") -> list[str] | None:
    """The WebDataset shards of `split` at `source`, sorted, or None when `source` is not a shard source.

    `source` is a `.tar` file (its split is `train`), a glob of them, a folder of them (flat: `train`), or a folder
    with one sub-folder of shards per split.
    """
    text = str(source)
    if any(char in text for char in "*?["):
        files = sorted(glob.glob(text))
        return files if files and all(f.endswith(".tar") for f in files) and split == "train" else None
    path = Path(text)
    if path.is_file() and path.suffix == ".tar":
        return [str(path)] if split == "train" else []
    if not path.is_dir():
        return None
    flat = sorted(str(p) for p in path.glob("*.tar"))
    if flat:
        return flat if split == "train" else []
    nested = {child.name: sorted(str(p) for p in child.glob("*.tar")) for child in path.iterdir() if child.is_dir()}
    if not any(nested.values()):
        return None
    return nested.get(split, [])


def stream_split_names(source: str) -> list[str]:
    """Split names a streaming source offers (for a Hub id, asked of the Hub)."""
    shards = tar_shards(source)
    if shards is not None:
        path = Path(source)
        if path.is_dir() and not list(path.glob("*.tar")):
            return sorted(child.name for child in path.iterdir() if child.is_dir() and list(child.glob("*.tar")))
        return ["train"]
    if os.path.isdir(source):
        children = [child.name for child in Path(source).iterdir() if child.is_dir()]
        named = [name for name in children if name in ("train", *EVAL_SPLITS)]
        return sorted(named) or ["train"]
    from datasets import get_dataset_split_names

    return list(get_dataset_split_names(source))


def _image_member(features: Any) -> str | None:
    """The column holding the image in a WebDataset stream (`jpg`, `png`, ...)."""
    names = list(features or {})
    for extension in IMAGE_EXTENSIONS:
        for name in names:
            if name.lower() == extension or name.lower().endswith("." + extension):
                return name
    return next((name for name in names if isinstance(features[name], ImageFeature)), None)


def open_image_stream(source: str, split: str = "train", image_column: str = "image") -> IterableDataset:
    """A streaming `IterableDataset` of `split` with the images, undecoded ({"bytes", "path"}), in column `image`.

    Args:
        source: a Hub data set id, a local image folder, or WebDataset shards (see the module docstring).
        split: the split to stream.
        image_column: where the source keeps its images (Hub ids / image folders; WebDataset: found by extension).
    Returns:
        the stream, every column kept; `image` is a `datasets.Image(decode=False)` column, so bytes are passed on
        and decoded later, in the DataLoader workers.
    Raises:
        ValueError: the split does not exist (naming the ones that do), or no image column is found.
    """
    shards = tar_shards(source, split)
    if shards is not None:
        if not shards:
            raise ValueError(
                f"{source}: no WebDataset shards for split {split!r}; splits with shards: "
                f"{stream_split_names(source)} (a flat folder of .tar files is the `train` split; put other splits "
                "in sub-folders named after them)."
            )
        stream = load_dataset("webdataset", data_files={split: shards}, split=split, streaming=True)
        member = _image_member(stream.features)
        if member is None:
            raise ValueError(f"{shards[0]}: no image member ({'/'.join(IMAGE_EXTENSIONS)}) in its samples.")
        if member != "image":
            if "image" in (stream.features or {}):
                stream = stream.remove_columns("image")
            stream = stream.rename_column(member, "image")
        image_column = "image"
    elif os.path.isdir(source):
        stream = load_dataset("imagefolder", data_dir=source, split=split, streaming=True)
    elif os.path.exists(source):
        raise ValueError(f"{source!r} is a file but not a WebDataset .tar shard; give a folder, shards or a Hub id.")
    else:
        stream = load_dataset(source, split=split, streaming=True)
    features = stream.features or {}
    if image_column not in features:
        raise ValueError(
            f"{source} ({split}): no image column {image_column!r}; columns: {sorted(features)}. "
            "Name it with --image_column."
        )
    if image_column != "image":
        stream = stream.rename_column(image_column, "image")
    # Bytes only: decoding (the expensive part) happens in the DataLoader workers, after the skip-ahead of a resume.
    return stream.cast_column("image", ImageFeature(decode=False))


# ----------------------------------------------------------------------------------------------------------------
# Training crops
# ----------------------------------------------------------------------------------------------------------------


def batches_from_worker(batches: int, worker: int, readers: int) -> int:
    """How many of a DataLoader's first `batches` batches worker `worker` yielded: an in-order DataLoader takes
    batch b from worker b mod `readers` (the workers that have data)."""
    return max(0, math.ceil((batches - worker) / readers))


def _pass_seed(seed: int, epoch: int) -> int:
    # One seed per (run seed, pass): the same on every rank, so all ranks shuffle the shard list alike.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class StreamingCrops(TorchIterableDataset):
    """This rank's endless stream of random resized crops: items `{"pixel_values": (C, size, size), "source": str}`.

    See the module docstring for the split, shuffle, decoding and resume rules. Create the DataLoader with
    `batch_size` and `num_workers` equal to the values given here (`dataloader`), and pass `start_batch` (or call
    `resumed`) to skip the micro-batches a resumed run had consumed.

    Args:
        stream: `open_image_stream`'s stream (undecoded `image` column), the same on every rank.
        size: side of the crops in pixels.
        transform: a batch transform `{"image": [PIL]} -> {"pixel_values": (B, C, size, size)}`, e.g.
            `pixel_values_transform(processor)`.
        rank, world_size: this process and the number of processes.
        seed: shuffle and crop seed (the run's `--seed`).
        shuffle_buffer: examples in the shuffle buffer (0: no buffer shuffle; the shard order is still shuffled).
        batch_size, num_workers: the DataLoader's (the skip-ahead needs them).
        start_batch: micro-batches of this rank already consumed (resume).
        crop_scale: area fraction range of a crop.
    """

    def __init__(
        self,
        stream: IterableDataset,
        size: int,
        transform: Callable[[dict[str, list]], dict[str, torch.Tensor]],
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        batch_size: int = 1,
        num_workers: int = 0,
        start_batch: int = 0,
        crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}.")
        if size < 1 or batch_size < 1 or num_workers < 0 or start_batch < 0 or shuffle_buffer < 0:
            raise ValueError("size and batch_size must be >= 1; num_workers, start_batch, shuffle_buffer >= 0.")
        self.stream, self.size, self.transform = stream, size, transform
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.batch_size, self.num_workers = shuffle_buffer, batch_size, num_workers
        self.start_batch, self.crop_scale = start_batch, crop_scale

    def resumed(self, batches: int) -> StreamingCrops:
        """A copy that starts after this rank's first `batches` micro-batches (what Trainer's resume skips)."""
        copy = object.__new__(StreamingCrops)
        copy.__dict__.update(self.__dict__)
        copy.start_batch = self.start_batch + batches
        return copy

    def first_crops(self, count: int) -> torch.Tensor:
        """The first `count` crops of a one-process, no-worker view of the same stream, (count, C, size, size):
        identical on every rank (e.g. for the data variance)."""
        single = self.resumed(-self.start_batch)
        single.rank, single.world_size, single.num_workers = 0, 1, 0
        crops = itertools.islice(iter(single), count)
        return torch.stack([crop["pixel_values"] for crop in crops])

    def rank_stream(self, epoch: int) -> IterableDataset:
        """This rank's examples of pass `epoch`, shuffled, still undecoded."""
        shuffled = self.stream
        if self.shuffle_buffer:
            shuffled = shuffled.shuffle(seed=_pass_seed(self.seed, epoch), buffer_size=self.shuffle_buffer)
        elif self.stream.num_shards > 1:
            shuffled = shuffled.shuffle(seed=_pass_seed(self.seed, epoch), buffer_size=1)  # shard order only
        if self.world_size == 1:
            return shuffled
        return split_dataset_by_node(shuffled, self.rank, self.world_size, strategy=self._strategy(self.world_size))

    def _strategy(self, parts: int) -> str:
        # "shards" gives each part whole files (no part reads another's bytes); it needs a shard per part.
        return "shards" if self.stream.num_shards >= parts else "examples"

    def readers(self) -> int:
        """How many DataLoader workers read: each needs its own shards (beyond that, workers stay idle), unless the
        ranks already split by example."""
        if self.num_workers == 0:
            return 1
        if self._strategy(self.world_size) == "examples":
            return self.num_workers
        return max(1, min(self.num_workers, self.stream.num_shards // self.world_size))

    def worker_stream(self, epoch: int, role: int, readers: int) -> IterableDataset:
        """Reader `role`'s part of this rank's pass `epoch`: split_dataset_by_node again, by reader."""
        stream = self.rank_stream(epoch)
        if readers == 1:
            return stream
        return split_dataset_by_node(stream, role, readers, strategy=self._strategy(self.world_size * readers))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != max(self.num_workers, 1):
            raise ValueError(
                f"StreamingCrops was set up for {self.num_workers} DataLoader workers but runs in {workers}; build the "
                "DataLoader with the same num_workers (the resume skip-ahead depends on it)."
            )
        readers = self.readers()
        if worker >= readers:
            return
        # An in-order DataLoader takes batch b from worker b mod readers, starting at worker 0 whatever start_batch
        # is: the worker that yields the resumed run's batch b plays the part ("role") of the reader that yielded
        # batch start_batch + b in the uninterrupted run, and skips the batches that reader had yielded.
        role = (worker + self.start_batch) % readers
        skip = batches_from_worker(self.start_batch, role, readers) * self.batch_size
        position = 0
        for epoch in itertools.count():
            seen = 0
            # `.iter` rather than `for example in stream`: in a DataLoader worker the latter would split the shards
            # by worker id a second time.
            for batch in self.worker_stream(epoch, role, readers).iter(batch_size=1):
                seen += 1
                if position >= skip:
                    yield self._crop({name: values[0] for name, values in batch.items()}, position, role)
                position += 1
            if seen == 0:
                raise ValueError(
                    f"Rank {self.rank}, reader {role}: the stream yielded no examples (is the split empty, or are "
                    "there fewer examples than ranks x DataLoader workers?)."
                )

    def _crop(self, example: dict[str, Any], position: int, role: int) -> dict[str, Any]:
        value = example["image"]
        image = decode_image(value)
        # Seeded by where the example sits in this worker's stream: a resumed run draws the same crops.
        rng = np.random.default_rng([self.seed, self.rank, role, position])
        crop = random_resized_crop(image, self.size, rng, scale=self.crop_scale, ratio=RANDOM_CROP_RATIO)
        pixels = self.transform({"image": [crop]})["pixel_values"][0]
        source = example.get("__url__") or (value.get("path") if isinstance(value, dict) else None) or ""
        return {"pixel_values": pixels, "source": f"{source}#{example.get('__key__', '')}"}

    def dataloader(
        self,
        collate_fn: Callable[[list[dict[str, Any]]], Any],
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ) -> torch.utils.data.DataLoader:
        """The DataLoader this stream was set up for (batch_size, num_workers; in order, so resume is exact)."""
        return torch.utils.data.DataLoader(
            self,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if self.num_workers else None,
            in_order=True,
        )


# ----------------------------------------------------------------------------------------------------------------
# The evaluation protocol
# ----------------------------------------------------------------------------------------------------------------


def resize_shorter_center_crop(image: Any, shorter: int, crop: int | None = None) -> PIL.Image.Image:
    """The field's evaluation protocol: resize so that the shorter side is `shorter` (bicubic, antialiased, the
    other side rounded), then cut the centred `crop` x `crop` square (default `shorter`).

    Args:
        image: a PIL image or (H, W[, C]) uint8 array.
    Returns:
        a PIL image, crop x crop.
    """
    crop = shorter if crop is None else crop
    if crop > shorter:
        raise ValueError(f"center crop {crop} is larger than the resized shorter side {shorter}.")
    if not isinstance(image, PIL.Image.Image):
        image = PIL.Image.fromarray(np.asarray(image))
    width, height = image.size
    scale = shorter / min(width, height)
    size = (
        (shorter, max(shorter, round(height * scale)))
        if width <= height
        else (max(shorter, round(width * scale)), shorter)
    )
    if size != (width, height):
        image = image.resize(size, PIL.Image.Resampling.BICUBIC)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    return image.crop((left, top, left + crop, top + crop))


def protocol_transform(
    processor: Any, shorter: int, crop: int | None = None, image_column: str = "image"
) -> Callable[[dict[str, list]], dict[str, torch.Tensor]]:
    """A `with_transform` function: images (undecoded or PIL) -> `pixel_values` (B, C, crop, crop) through
    `resize_shorter_center_crop` and `processor`."""

    def transform(batch: dict[str, list]) -> dict[str, torch.Tensor]:
        images = [
            resize_shorter_center_crop(decode_image(value, position), shorter, crop)
            for position, value in enumerate(batch[image_column])
        ]
        arrays = processor(images, return_tensors=None)["pixel_values"]
        return {"pixel_values": torch.from_numpy(np.stack(arrays))}

    return transform


def eval_stream_dataset(stream: IterableDataset, count: int) -> Dataset:
    """The first `count` examples of a stream (image column undecoded) as an in-memory `Dataset`, for a fixed
    evaluation set every rank holds whole."""
    rows = [{"image": example["image"]} for example in stream.take(count)]
    if not rows:
        raise ValueError("The evaluation stream is empty.")
    return Dataset.from_list(rows).cast_column("image", ImageFeature(decode=False))


__all__ = [
    "DEFAULT_CROP_SCALE",
    "DEFAULT_SHUFFLE_BUFFER",
    "StreamingCrops",
    "batches_from_worker",
    "eval_stream_dataset",
    "open_image_stream",
    "protocol_transform",
    "resize_shorter_center_crop",
    "stream_split_names",
    "tar_shards",
]
