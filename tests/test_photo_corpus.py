"""The photo corpus: builder logic (split by source, manifest checks, reserved photos), the `photos` /
`skimage-photos` built-ins, and the crop functions. Synthetic stand-ins only; nothing downloads."""

import hashlib
import importlib.util
import io
import json
import struct
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, DatasetDict

from arcvq_hf.data import photo_corpus
from arcvq_hf.data.builtin import load_builtin_dataset, load_image_dataset
from arcvq_hf.data.photo_corpus import (
    PhotoCorpusNotFoundError,
    RandomCropDataset,
    load_photo_corpus,
    photo_eval_crops,
    photo_eval_dataset,
    random_resized_crop_box,
    random_resized_crop_transform,
)

REPO = Path(__file__).resolve().parents[1]
# The builder imports its sibling modules by plain name, as `python examples/build_photo_corpus.py` runs it.
sys.path.insert(0, str(REPO / "examples"))
allow_list = importlib.import_module("photo_corpus_sources")
tools = importlib.import_module("photo_corpus_tools")


@pytest.fixture(scope="module")
def builder():
    path = REPO / "examples" / "build_photo_corpus.py"
    spec = importlib.util.spec_from_file_location("build_photo_corpus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _png(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _record(builder, source: str, seed: int, **fields):
    values = {
        "source": source,
        "package": source.split("/")[0],
        "package_version": "1.0-1",
        "path": f"usr/share/backgrounds/{source.split('/')[1]}.png",
        "license": "CC0-1.0",
        "copyright": "2024, Someone",
        "data": _png(seed),
    }
    return tools.PhotoRecord(**(values | fields))


@pytest.fixture()
def records(builder):
    return [_record(builder, f"pkg-{i % 3}/photo{i}", seed=i) for i in range(10)]


TEST_SOURCES = frozenset({"pkg-0/photo3", "pkg-1/photo7"})


# ----------------------------------------------------------------------------------------------------------------
# Builder
# ----------------------------------------------------------------------------------------------------------------


def test_builder_splits_by_source(builder, records) -> None:
    corpus = builder.build_dataset_dict(records, TEST_SOURCES, short_side=16)
    assert isinstance(corpus, DatasetDict) and set(corpus) == {"train", "test"}
    train_sources, test_sources = set(corpus["train"]["source"]), set(corpus["test"]["source"])
    assert test_sources == TEST_SOURCES
    assert not train_sources & test_sources
    assert len(train_sources) + len(test_sources) == len(records) == len(corpus["train"]) + len(corpus["test"])
    row = corpus["test"][0]
    assert row["image"].mode == "RGB" and min(row["image"].size) == 16  # 48x32 downscaled to a 16 px short side
    assert (row["original_width"], row["original_height"]) == (48, 32)
    assert row["sha256"] == hashlib.sha256(_png(3)).hexdigest() and row["license"] == "CC0-1.0"
    with pytest.raises(ValueError, match="not among the photos"):
        builder.split_records(records, frozenset({"pkg-9/missing"}))
    with pytest.raises(ValueError, match="duplicated sources"):
        builder.split_records([*records, records[0]], TEST_SOURCES)


def test_builder_never_upscales(builder) -> None:
    image, original = builder.decode_photo(_png(0, (40, 30)), short_side=512)
    assert image.size == original == (40, 30)


def test_real_allow_list_split_is_by_source_and_about_15_percent(builder) -> None:
    sources = [photo.source for photo in allow_list.DEBIAN_PHOTOS] + [
        photo.source for photo in allow_list.SKIMAGE_PHOTOS
    ]
    assert len(sources) == len(set(sources))
    assert allow_list.TEST_SOURCES <= set(sources)
    assert 0.10 <= len(allow_list.TEST_SOURCES) / len(sources) <= 0.16
    assert not {"scikit-image/stereo_motorcycle_left", "scikit-image/stereo_motorcycle_right"} & allow_list.TEST_SOURCES


def test_committed_manifest_matches_the_allow_list(builder) -> None:
    manifest = json.loads((REPO / "examples" / "photo_corpus_manifest.json").read_text())
    entries = {entry["source"]: entry for entry in manifest["images"]}
    expected = {photo.source for photo in allow_list.DEBIAN_PHOTOS} | {
        photo.source for photo in allow_list.SKIMAGE_PHOTOS
    }
    assert set(entries) == expected
    for source, entry in entries.items():
        assert entry["split"] == ("test" if source in allow_list.TEST_SOURCES else "train")
        assert len(entry["sha256"]) == 64 and entry["license"] and entry["package_version"]
        assert entry["sha256"] not in allow_list.RESERVED_SHA256
        assert Path(entry["member"] or entry["path"]).name not in allow_list.RESERVED_FILE_NAMES


def test_manifest_round_trip_and_mismatch_detection(builder, records) -> None:
    manifest = tools.make_manifest(records, TEST_SOURCES)
    assert [entry["source"] for entry in manifest["images"]] == sorted(r.source for r in records)
    assert tools.compare_with_manifest(records, manifest) == []

    changed = list(records)
    changed[2] = _record(builder, records[2].source, seed=99, package_version="2.0-1")
    problems = tools.compare_with_manifest(changed, manifest)
    assert len(problems) == 1
    assert records[2].source in problems[0] and "sha256" in problems[0] and "version changed" in problems[0]

    relicensed = [*records[:-1], _record(builder, records[-1].source, seed=9, license="GPL-3+")]
    assert any("license changed" in problem for problem in tools.compare_with_manifest(relicensed, manifest))

    extra = [*records[1:], _record(builder, "pkg-5/new", seed=50)]
    problems = tools.compare_with_manifest(extra, manifest)
    assert any("pkg-5/new: not in the manifest" in p for p in problems)
    assert any(f"{records[0].source}: in the manifest but not found" in p for p in problems)


def test_reserved_evaluation_photos_are_rejected(builder, records) -> None:
    tools.check_not_reserved(records)  # synthetic photos pass
    by_name = _record(builder, "sklearn/china", seed=1, path="sklearn/datasets/images/china.jpg")
    with pytest.raises(tools.ReservedImageError, match="china.jpg"):
        tools.check_not_reserved([*records, by_name])
    installed = tools.installed_reserved_files()
    assert {file.name for file in installed} >= {"china.jpg", "flower.jpg", "grace_hopper.jpg"}
    for file in installed:
        assert hashlib.sha256(file.read_bytes()).hexdigest() in tools.reserved_sha256()
    # The same bytes under another name are caught by sha256; a re-encoding by the thumbnail check.
    grace = next(file for file in installed if file.name == "grace_hopper.jpg")
    renamed = _record(
        builder, "pkg/portrait", seed=0, path="usr/share/backgrounds/portrait.jpg", data=grace.read_bytes()
    )
    assert "sha256" in tools.reserved_reason(renamed)
    buffer = io.BytesIO()
    PIL.Image.open(grace).convert("RGB").resize((256, 300)).save(buffer, format="PNG")
    reencoded = _record(builder, "pkg/portrait", seed=0, data=buffer.getvalue())
    assert "looks like" in tools.reserved_reason(reencoded)
    with pytest.raises(tools.ReservedImageError):
        tools.check_not_reserved([reencoded])


def test_dep5_license_lookup(builder) -> None:
    text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: 2014 Group\nLicense: GPL-2+\n\n"
        "Files: nature/Aqua.jpg\n       nature/LadyBird.jpg\nCopyright: 2008, A\n           2009, B\n"
        "License: CC-BY-SA-4.0\n Long text.\n"
    )
    assert tools.dep5_license(text, "nature/LadyBird.jpg") == ("CC-BY-SA-4.0", "2008, A; 2009, B")
    assert tools.dep5_license(text, "*") == ("GPL-2+", "2014 Group")
    with pytest.raises(KeyError):
        tools.dep5_license(text, "nature/Storm.jpg")


def test_eet_entry_reader(builder) -> None:
    names, payloads = [b"edje/images/0\0", b"edje/file\0"], [b"\xff\xd8\xffJPEG", b"zz"]
    header_size = 12 + 24 * len(names)
    blob, table = b"", b""
    offset = header_size
    name_offset = header_size + sum(map(len, payloads))
    for payload, name, flags in zip(payloads, names, (0, 1), strict=True):
        table += struct.pack(">6I", offset, len(payload), len(payload), name_offset, len(name), flags)
        offset += len(payload)
        name_offset += len(name)
    blob = struct.pack(">III", 0x1EE70F42, len(names), 0) + table + b"".join(payloads) + b"".join(names)
    assert tools.read_eet_entry(blob, "edje/images/0") == b"\xff\xd8\xffJPEG"
    with pytest.raises(ValueError, match="compressed"):
        tools.read_eet_entry(blob, "edje/file")
    with pytest.raises(KeyError):
        tools.read_eet_entry(blob, "edje/images/1")


# ----------------------------------------------------------------------------------------------------------------
# `photos` and `skimage-photos`
# ----------------------------------------------------------------------------------------------------------------


def test_photos_without_a_built_corpus_raises_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(photo_corpus.PHOTO_CORPUS_ENV, str(tmp_path / "nowhere"))
    for load in (lambda: load_builtin_dataset("photos"), lambda: load_image_dataset("photos")):
        with pytest.raises(PhotoCorpusNotFoundError) as error:
            load()
        message = str(error.value)
        assert "python examples/build_photo_corpus.py --output data/photo-corpus" in message
        assert "skimage-photos" in message and "nowhere" in message
    assert isinstance(error.value, FileNotFoundError)


def test_photos_uses_the_built_corpus(tmp_path, monkeypatch, builder, records) -> None:
    folder = tmp_path / "corpus"
    builder.build_dataset_dict(records, TEST_SOURCES, short_side=16).save_to_disk(str(folder))
    monkeypatch.setenv(photo_corpus.PHOTO_CORPUS_ENV, str(folder))
    corpus = load_builtin_dataset("photos")
    assert set(corpus["test"]["source"]) == TEST_SOURCES and len(corpus["train"]) == 8
    assert {"image", "source", "package", "license"} <= set(corpus["train"].column_names)
    # Without the variable: data/photo-corpus under the current directory, then under the repository root.
    monkeypatch.delenv(photo_corpus.PHOTO_CORPUS_ENV)
    monkeypatch.setattr(photo_corpus, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PhotoCorpusNotFoundError):
        load_photo_corpus()
    (tmp_path / "data").mkdir()
    folder.rename(tmp_path / "data" / "photo-corpus")
    assert photo_corpus.find_photo_corpus() == (tmp_path / "data" / "photo-corpus").resolve()
    assert len(load_photo_corpus()["test"]) == 2


def test_skimage_photos_is_the_former_photos_set() -> None:
    photos = load_builtin_dataset("skimage-photos")
    assert len(photos["train"]) == 1928 and len(photos["test"]) == 192  # the counts `photos` had before the corpus
    digest = hashlib.sha256()
    for row in photos["test"]:
        digest.update(np.asarray(row["image"]).tobytes())
        digest.update(bytes([row["label"]]))
    assert digest.hexdigest() == "db7cb88b7e2d1224e2f22cec477fdf1c48fc02d8272c713c3e2ce0a9271c3cdf"


# ----------------------------------------------------------------------------------------------------------------
# Crops
# ----------------------------------------------------------------------------------------------------------------


def _photo_dataset(count: int = 3) -> Dataset:
    rng = np.random.default_rng(1)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (60 + 10 * i, 90, 3), dtype=np.uint8)) for i in range(count)]
    return Dataset.from_dict({"image": images, "source": [f"s{i}" for i in range(count)]})


def test_random_resized_crop_box_respects_scale_and_ratio() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(300, 200, rng, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3))
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        width, height = right - left, bottom - top
        assert 0.045 <= width * height / 60000 <= 1.0
        assert 0.70 <= width / height <= 1.40
    # An impossible request falls back to the centred crop with the aspect clamped to `ratio`.
    assert random_resized_crop_box(400, 100, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0)) == (150, 0, 250, 100)


def test_random_resized_crop_transform_shape_range_and_seed() -> None:
    photos = _photo_dataset()
    first = photos.with_transform(random_resized_crop_transform(16, seed=3))[:]
    again = photos.with_transform(random_resized_crop_transform(16, seed=3))[:]
    other = photos.with_transform(random_resized_crop_transform(16, seed=4))[:]
    assert first["source"] == ["s0", "s1", "s2"]
    arrays = [np.asarray(image) for image in first["image"]]
    assert all(image.shape == (16, 16, 3) and image.dtype == np.uint8 for image in arrays)
    assert all(0 <= image.min() and image.max() <= 255 for image in arrays)
    for a, b in zip(first["image"], again["image"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first["image"], other["image"], strict=True)
    )
    # One transform draws new crops on every access (new crops every epoch); reseed restarts the sequence.
    transform = random_resized_crop_transform(16, seed=3)
    batch = {"image": list(photos["image"])}
    one, two = transform(batch)["image"], transform(batch)["image"]
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(one, two, strict=True))
    transform.reseed(3)
    np.testing.assert_array_equal(np.asarray(transform(batch)["image"][0]), np.asarray(first["image"][0]))


def test_random_resized_crop_full_scale_without_flip_is_a_resize() -> None:
    image = _photo_dataset(1)[0]["image"].crop((0, 0, 80, 60))  # 4:3, inside the ratio range
    for reducing_gap in (3.0, None):  # the default (fast) and exact Lanczos
        transform = random_resized_crop_transform(
            8, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), flip=False, reducing_gap=reducing_gap
        )
        crop = transform({"image": [image]})["image"][0]
        expected = image.resize((8, 8), PIL.Image.Resampling.LANCZOS, box=(0, 0, 80, 60), reducing_gap=reducing_gap)
        np.testing.assert_array_equal(np.asarray(crop), np.asarray(expected))
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop_transform(8, scale=(0.0, 1.0))


def test_random_crop_dataset_is_seeded_by_index() -> None:
    photos = _photo_dataset()
    crops = RandomCropDataset(photos, 16, length=12, seed=5)
    assert len(crops) == 12 and len(crops.photos) == 3
    item = crops[4]
    assert set(item) == {"image"} and item["image"].size == (16, 16) and item["image"].mode == "RGB"
    # Any order, any instance: item i depends only on (seed, epoch, i).
    again = RandomCropDataset(list(photos["image"]), 16, length=12, seed=5)
    for index in (11, 4, 0):
        np.testing.assert_array_equal(np.asarray(again[index]["image"]), np.asarray(crops.crop(index)))
    assert not np.array_equal(np.asarray(RandomCropDataset(photos, 16, length=12, seed=6)[4]["image"]), item["image"])
    crops.set_epoch(1)
    assert not np.array_equal(np.asarray(crops[4]["image"]), np.asarray(item["image"]))
    with pytest.raises(IndexError):
        crops[12]

    def to_pixels(batch: dict) -> dict:
        pixels = np.stack([np.asarray(image, dtype=np.float32) / 127.5 - 1 for image in batch["image"]])
        return {"pixel_values": torch.from_numpy(pixels).permute(0, 3, 1, 2)}

    tensors = RandomCropDataset(photos, 16, length=12, seed=5, transform=to_pixels)
    loader = torch.utils.data.DataLoader(tensors, batch_size=4, num_workers=0)
    batch = next(iter(loader))["pixel_values"]
    assert batch.shape == (4, 3, 16, 16) and -1 <= batch.min() and batch.max() <= 1
    expected = np.asarray(again.crop(0), dtype=np.float32) / 127.5 - 1
    np.testing.assert_allclose(batch[0].permute(1, 2, 0).numpy(), expected)


def test_photo_eval_crops_are_deterministic_grid_crops() -> None:
    image = PIL.Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    crops = photo_eval_crops(image, size=16, scales=(1.0, 0.5), grid=3)
    assert [scale for scale, _ in crops] == [1.0] * 3 + [0.5] * 9  # 1 row x 3 columns, then a 3 x 3 grid
    assert all(crop.size == (16, 16) and crop.mode == "RGB" for _, crop in crops)
    whole_left = image.resize((16, 16), PIL.Image.Resampling.LANCZOS, box=(0, 0, 64, 64))
    np.testing.assert_array_equal(np.asarray(crops[0][1]), np.asarray(whole_left))
    last = image.resize((16, 16), PIL.Image.Resampling.LANCZOS, box=(64, 32, 96, 64))
    np.testing.assert_array_equal(np.asarray(crops[-1][1]), np.asarray(last))

    photos = _photo_dataset()
    evaluation = photo_eval_dataset(photos, size=16, scales=(1.0, 0.5), grid=2)
    assert set(evaluation.column_names) == {"image", "source", "scale"}
    assert len(evaluation) == sum(len(photo_eval_crops(im, 16, (1.0, 0.5), 2)) for im in photos["image"])
    again = photo_eval_dataset(photos, size=16, scales=(1.0, 0.5), grid=2)
    assert evaluation["source"] == again["source"]
    np.testing.assert_array_equal(np.asarray(evaluation[5]["image"]), np.asarray(again[5]["image"]))
