"""The photo corpus (`--dataset photos`): where it is found, how it loads, and the crops it is trained and evaluated on.

The corpus is built once with `python examples/build_photo_corpus.py --output data/photo-corpus` (60 whole
photographs from Debian's wallpaper packages and scikit-image, shorter side 512 px, split by source photo: 51 train /
9 test; sources, licenses and sha256 in examples/photo_corpus_manifest.json). It is looked up in
`$ARCVQ_PHOTO_CORPUS` when that is set, else in `data/photo-corpus` under the current directory, then under the
repository root; `load_photo_corpus` raises PhotoCorpusNotFoundError, naming the build command, when it is not built.

Rows are whole photos (columns `image`, `source`, `package`, `license`, ...): train on random resized crops
(`RandomCropDataset`, or `RandomResizedCrop` / `random_resized_crop_transform` with `with_transform`) and evaluate on
the fixed crops of `photo_eval_dataset`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from arcvq_hf.utils.extras import missing_extra

try:
    from datasets import Dataset, DatasetDict, Features, Image, Value, load_from_disk
except ImportError as err:
    raise missing_extra("datasets", "data") from err
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import get_worker_info

PHOTO_CORPUS_ENV = "ARCVQ_PHOTO_CORPUS"
PHOTO_CORPUS_DIR = os.path.join("data", "photo-corpus")
PHOTO_CORPUS_BUILD_COMMAND = "python examples/build_photo_corpus.py --output data/photo-corpus"
_REPO_ROOT = Path(__file__).resolve().parents[1]


class PhotoCorpusNotFoundError(FileNotFoundError):
    """`--dataset photos` was asked for, but the photo corpus has not been built where it is looked for."""


def photo_corpus_candidates() -> list[Path]:
    """Where the photo corpus is looked for, in order: `$ARCVQ_PHOTO_CORPUS` alone when it is set; else
    `data/photo-corpus` under the current directory, then under the repository root (for an editable install)."""
    configured = os.environ.get(PHOTO_CORPUS_ENV)
    if configured:
        return [Path(configured).expanduser()]
    candidates = [Path.cwd() / PHOTO_CORPUS_DIR, _REPO_ROOT / PHOTO_CORPUS_DIR]
    return list(dict.fromkeys(candidate.resolve() for candidate in candidates))


def find_photo_corpus() -> Path | None:
    """The first of photo_corpus_candidates() that holds a saved DatasetDict, or None."""
    for candidate in photo_corpus_candidates():
        if (candidate / "dataset_dict.json").is_file():
            return candidate
    return None


def load_photo_corpus(path: str | os.PathLike | None = None) -> DatasetDict:
    """The photo corpus: a DatasetDict with `train` / `test` (split by source photo), one row per whole photo
    (`image`: RGB PIL, shorter side 512 px; `source`, `package`, `package_version`, `path`, `license`, `copyright`,
    `license_note`, `sha256`, `original_width`, `original_height`).

    Args:
        path: the save_to_disk folder; default: find_photo_corpus().
    Raises:
        PhotoCorpusNotFoundError: not built (the message names the build command and `skimage-photos`).
    """
    folder = Path(path) if path is not None else find_photo_corpus()
    if folder is None or not (folder / "dataset_dict.json").is_file():
        looked = [str(folder)] if folder is not None else [str(c) for c in photo_corpus_candidates()]
        raise PhotoCorpusNotFoundError(
            f"The `photos` data set is the photo corpus, and it is not built (looked in {', '.join(looked)}). "
            f"Build it once with `{PHOTO_CORPUS_BUILD_COMMAND}` (downloads Debian wallpaper packages with apt-get; "
            f"about 550 MB, a minute), or point ${PHOTO_CORPUS_ENV} at a built copy. The small built-in set of 32x32 "
            "crops of scikit-image's photos is `skimage-photos`."
        )
    loaded = load_from_disk(str(folder))
    if not isinstance(loaded, DatasetDict) or not {"train", "test"} <= set(loaded):
        raise ValueError(f"{folder} is not a photo corpus (expected a DatasetDict with train and test splits).")
    return loaded


# ----------------------------------------------------------------------------------------------------------------
# Random resized crops of whole photos, for training
# ----------------------------------------------------------------------------------------------------------------

RANDOM_CROP_SCALE = (0.05, 1.0)
RANDOM_CROP_RATIO = (3 / 4, 4 / 3)
# PIL's reducing_gap for training crops: an integer box reduction before Lanczos, about 2x faster than exact Lanczos
# and within about 0.3 grey levels of it (PIL: "indistinguishable from fair resampling in most cases").
RANDOM_CROP_REDUCING_GAP = 3.0


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = RANDOM_CROP_SCALE,
    ratio: tuple[float, float] = RANDOM_CROP_RATIO,
) -> tuple[int, int, int, int]:
    """A random crop box (left, top, right, bottom) of a width x height image, sampled as torchvision's
    RandomResizedCrop does: up to 10 tries of an area uniform in `scale` x (width * height) and an aspect ratio
    (w / h) log-uniform in `ratio`; if none fits, the largest centred crop whose aspect is clamped to `ratio`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w, crop_h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            return left, top, left + crop_w, top + crop_h
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def random_resized_crop(
    image: PIL.Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = RANDOM_CROP_SCALE,
    ratio: tuple[float, float] = RANDOM_CROP_RATIO,
    flip: bool = True,
    reducing_gap: float | None = RANDOM_CROP_REDUCING_GAP,
) -> PIL.Image.Image:
    """One random resized crop of `image`: a random_resized_crop_box resized (Lanczos with PIL's `reducing_gap`;
    None for exact Lanczos) to (size, size), mirrored left-right with probability 1/2 when `flip`. Returns an RGB
    PIL image, size x size."""
    box = random_resized_crop_box(image.width, image.height, rng, scale, ratio)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    crop = rgb.resize((size, size), PIL.Image.Resampling.LANCZOS, box=box, reducing_gap=reducing_gap)
    if flip and rng.random() < 0.5:
        crop = crop.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


def _worker_id() -> int | None:
    """The torch DataLoader worker id in a worker process, else None."""
    info = get_worker_info()
    return None if info is None else info.id


@dataclasses.dataclass(eq=False)
class RandomResizedCrop:
    """Training augmentation for whole photos, as a seeded `Dataset.with_transform` / `set_transform` function:
    every image of `batch[image_column]` (PIL, any size) becomes a random resized crop (random_resized_crop: area
    fraction in `scale`, default 0.05-1 of the photo; aspect in `ratio`, default 3/4-4/3; resized to size x size RGB;
    mirrored at random when `flip`); other columns pass through. Use as
    `dataset.with_transform(random_resized_crop_transform(32, seed=0))`.

    The crops come from one `numpy.random.Generator` seeded with `seed`, drawn in call order: the same seed and the
    same sequence of batches give the same crops, and each new access draws new crops (new ones every epoch). In a
    torch DataLoader worker the generator is re-seeded with (seed, worker id), so workers do not repeat each other;
    workers that are restarted every epoch (persistent_workers=False) then repeat their own crops. Compose with
    pixel_values_transform to get (B, C, size, size) tensors. `with_transform` decodes the whole photo on every
    access (about 13 ms for a 512x768 PNG): for long runs RandomCropDataset, which decodes each photo once and seeds
    each item by its index, is faster and has no worker caveat.
    """

    size: int
    scale: tuple[float, float] = RANDOM_CROP_SCALE
    ratio: tuple[float, float] = RANDOM_CROP_RATIO
    flip: bool = True
    seed: int = 0
    image_column: str = "image"
    reducing_gap: float | None = RANDOM_CROP_REDUCING_GAP

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size!r}.")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale!r}.")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio!r}.")
        self.reseed(self.seed)

    def reseed(self, seed: int) -> None:
        """Restart the crop sequence from `seed`."""
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._worker: int | None = None

    def crop(self, image: PIL.Image.Image, rng: np.random.Generator) -> PIL.Image.Image:
        """One crop of `image` with these settings, drawn from `rng`."""
        return random_resized_crop(image, self.size, rng, self.scale, self.ratio, self.flip, self.reducing_gap)

    def _generator(self) -> np.random.Generator:
        worker = _worker_id()
        if self._rng is None or worker != self._worker:
            self._rng = np.random.default_rng(self.seed if worker is None else [self.seed, worker + 1])
            self._worker = worker
        return self._rng

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rng = self._generator()
        return {**batch, self.image_column: [self.crop(image, rng) for image in batch[self.image_column]]}


# The transform under the name of what it is for: `random_resized_crop_transform(32, seed=0)`.
random_resized_crop_transform = RandomResizedCrop


class RandomCropDataset(TorchDataset):
    """A torch map-style data set of random resized crops of in-memory photos, for long training runs.

    Item `i` is a random resized crop (see random_resized_crop) of photo `i % len(photos)`, drawn from a generator
    seeded with (seed, epoch, i): reproducible whatever the order, batch size or number of DataLoader workers, and
    every photo is cropped equally often. Make `length` the number of crops the run needs (steps x batch size) so
    that no crop repeats, or call set_epoch (accelerate's data loaders do) for new crops each epoch.

    Args:
        photos: PIL images, or a datasets Dataset whose `image_column` holds them (e.g. the corpus's `train`); each
            is decoded and converted to RGB once, here.
        size: the crop side in pixels.
        length: the number of items (default: one per photo).
        transform: optional batch transform applied to `{"image": [crop]}`, e.g. a pixel_values_transform,
            whose one-element outputs become the item (`{"pixel_values": (C, size, size)}` for that one).
        **crop_options: RandomResizedCrop's `scale`, `ratio`, `flip`, `seed` (the crop seed), `image_column`,
            `reducing_gap`.
    Returns (per item): `{"image": crop}` (RGB PIL, size x size), or the transform's output.
    """

    def __init__(
        self,
        photos: Sequence[PIL.Image.Image] | Dataset,
        size: int,
        length: int | None = None,
        *,
        transform: Callable[[dict[str, list]], dict] | None = None,
        **crop_options: Any,
    ) -> None:
        self.sampler = RandomResizedCrop(size, **crop_options)
        images = photos[self.sampler.image_column] if isinstance(photos, Dataset) else photos
        self.photos = [image.convert("RGB") for image in images]
        if not self.photos:
            raise ValueError("RandomCropDataset needs at least one photo.")
        self.length = len(self.photos) if length is None else length
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of epoch `epoch` (the seed of item i becomes (seed, epoch, i))."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def crop(self, index: int) -> PIL.Image.Image:
        """Item `index`'s crop, RGB PIL, size x size."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} crops")
        rng = np.random.default_rng([self.sampler.seed, self.epoch, index])
        return self.sampler.crop(self.photos[index % len(self.photos)], rng)

    def __getitem__(self, index: int) -> dict:
        batch = {"image": [self.crop(index)]}
        if self.transform is None:
            return {"image": batch["image"][0]}
        return {key: value[0] for key, value in self.transform(batch).items()}


# ----------------------------------------------------------------------------------------------------------------
# Fixed crops for evaluation
# ----------------------------------------------------------------------------------------------------------------

# Side of the training and evaluation crops of `--dataset photos` (training example and `arcvq_hf.evaluation.command`).
PHOTO_CROP_SIZE = 32
EVAL_CROP_SCALES = (1.0, 0.5, 0.25)
EVAL_CROP_GRID = 3


def _grid_positions(length: int, crop: int, count: int) -> list[int]:
    if length <= crop:
        return [0]
    return sorted({int(round(p)) for p in np.linspace(0, length - crop, count)})


def photo_eval_crops(
    image: PIL.Image.Image,
    size: int = PHOTO_CROP_SIZE,
    scales: Sequence[float] = EVAL_CROP_SCALES,
    grid: int = EVAL_CROP_GRID,
) -> list[tuple[float, PIL.Image.Image]]:
    """A deterministic set of square crops of one photo, each resized (Lanczos) to (size, size), RGB.

    For every s in `scales`, the crop side is round(s * min(width, height)) (s = 1: the whole short side, i.e. the
    photo downscaled as a user would feed it), and crops sit on an evenly spaced grid of `grid` positions along each
    axis that the crop does not fill (one position along an axis it fills). A 768x512 photo with the defaults gives
    3 + 9 + 9 = 21 crops. Returns [(s, crop), ...] in scale, then row-major order.
    """
    rgb = image.convert("RGB")
    crops = []
    for s in scales:
        if not 0 < s <= 1:
            raise ValueError(f"scales must be in (0, 1], got {s!r}.")
        side = max(1, round(s * min(rgb.width, rgb.height)))
        for top in _grid_positions(rgb.height, side, grid):
            for left in _grid_positions(rgb.width, side, grid):
                box = (left, top, left + side, top + side)
                crops.append((float(s), rgb.resize((size, size), PIL.Image.Resampling.LANCZOS, box=box)))
    return crops


def photo_eval_dataset(
    dataset: Dataset,
    size: int = PHOTO_CROP_SIZE,
    scales: Sequence[float] = EVAL_CROP_SCALES,
    grid: int = EVAL_CROP_GRID,
    image_column: str = "image",
    source_column: str = "source",
) -> Dataset:
    """The evaluation crops (photo_eval_crops) of every photo of `dataset` (e.g. the corpus's `test` split) as a
    Dataset with columns `image` (size x size RGB), `source` (the photo's `source_column`, or its row index when
    the column is absent) and `scale`. Deterministic: the same photos give the same crops, in row order."""
    rows: dict[str, list] = {"image": [], "source": [], "scale": []}
    has_source = source_column in dataset.column_names
    for index, row in enumerate(dataset):
        source = str(row[source_column]) if has_source else str(index)
        for scale, crop in photo_eval_crops(row[image_column], size, scales, grid):
            rows["image"].append(crop)
            rows["source"].append(source)
            rows["scale"].append(scale)
    features = Features({"image": Image(), "source": Value("string"), "scale": Value("float32")})
    return Dataset.from_dict(rows, features=features)


__all__ = [
    "PHOTO_CROP_SIZE",
    "PHOTO_CORPUS_BUILD_COMMAND",
    "PHOTO_CORPUS_DIR",
    "PHOTO_CORPUS_ENV",
    "PhotoCorpusNotFoundError",
    "RandomCropDataset",
    "RandomResizedCrop",
    "find_photo_corpus",
    "load_photo_corpus",
    "photo_corpus_candidates",
    "photo_eval_crops",
    "photo_eval_dataset",
    "random_resized_crop",
    "random_resized_crop_box",
    "random_resized_crop_transform",
]
