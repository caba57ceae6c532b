"""Build the photo corpus behind `--dataset photos`: natural photographs from Debian's wallpaper packages and
scikit-image, offline after one download, checked file by file against a committed manifest.

    python examples/build_photo_corpus.py --output data/photo-corpus

What it does:
1. `apt-get download NAME=VERSION` for each Debian package in `DEBIAN_PHOTOS` (the version the manifest names; if
   the archive no longer has it, the current version, with a warning) into `--cache-dir` (kept, so a rebuild
   downloads nothing), then reads the listed files and the package's `/usr/share/doc/<package>/copyright` out of the
   .deb (`dpkg-deb --fsys-tarfile`, the archive `dpkg -x` unpacks). Enlightenment's backgrounds are EET containers
   (`.edj`); the photo is the largest JPEG inside, stored raw (`edje/images/0`) and read out byte for byte.
2. Adds scikit-image's colour photos (`SKIMAGE_PHOTOS`, the files inside the installed wheel).
3. Rejects the evaluation-only photos (scikit-learn's `load_sample_images()` china.jpg / flower.jpg, matplotlib's
   sample images such as grace_hopper.jpg) by file name, sha256 and a near-duplicate thumbnail check.
4. Compares every file's sha256, package version and license with `examples/photo_corpus_manifest.json`: a changed
   file stops the build with a list of what changed (`--accept-changes` builds anyway and says so;
   `--write-manifest` rewrites the committed manifest after a reviewed package update).
5. Downscales each photo so that its shorter side is `--short-side` (512; never upscales; EXIF orientation applied),
   and saves a `datasets.DatasetDict` with `train` / `test` split by source photo (`TEST_SOURCES`, fixed), columns
   `image` (PNG) and `source`, `package`, `package_version`, `path`, `license`, `copyright`, `license_note`,
   `sha256`, `original_width`, `original_height`. The manifest is also written into the output folder, and the
   folder is swapped in whole: a failed build leaves the previous corpus as it was.

The allow-list (which photos, which are held out, which are reserved, and why others are left out) is
photo_corpus_sources.py; package reading, reserved-photo rejection and the manifest are in photo_corpus_tools.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import PIL.ImageOps
from datasets import Dataset, DatasetDict, Features, Image, Value
from photo_corpus_sources import DEBIAN_PHOTOS, SHORT_SIDE, SKIMAGE_PHOTOS, TEST_SOURCES
from photo_corpus_tools import (
    MANIFEST_PATH,
    ManifestMismatchError,
    PhotoRecord,
    check_manifest,
    check_not_reserved,
    deb_fields,
    dep5_license,
    download_deb,
    kde_metadata_note,
    load_manifest,
    make_manifest,
    read_deb_files,
    read_eet_entry,
    write_manifest,
)

from arcvq_hf.data.photo_corpus import PHOTO_CORPUS_DIR
from arcvq_hf.utils.io_utils import atomic_output_dir

MANIFEST_NAME = "photo_corpus_manifest.json"
DEFAULT_CACHE = "data/photo-corpus-cache"


# ----------------------------------------------------------------------------------------------------------------
# Source photos
# ----------------------------------------------------------------------------------------------------------------


def debian_records(cache: Path, versions: dict[str, str]) -> list[PhotoRecord]:
    """Download (or reuse) each package of DEBIAN_PHOTOS and read its listed photos and licenses."""
    records = []
    for package in dict.fromkeys(photo.package for photo in DEBIAN_PHOTOS):
        photos = [photo for photo in DEBIAN_PHOTOS if photo.package == package]
        deb = download_deb(cache, package, versions.get(package))
        _, version = deb_fields(deb)
        copyright_path = f"usr/share/doc/{package}/copyright"
        extra = [photo.metadata for photo in photos if photo.metadata]
        files = read_deb_files(deb, [copyright_path, *extra, *(photo.path for photo in photos)])
        copyright_text = files[copyright_path].decode("utf-8")
        for photo in photos:
            data = files[photo.path]
            if photo.member is not None:
                data = read_eet_entry(data, photo.member)
            try:
                license_name, holders = dep5_license(copyright_text, photo.copyright_files)
            except KeyError as error:
                raise ManifestMismatchError(f"{package} {version}: {copyright_path} changed: {error}") from error
            note = kde_metadata_note(files[photo.metadata]) if photo.metadata else ""
            records.append(
                PhotoRecord(photo.source, package, version, photo.path, license_name, holders, data, photo.member, note)
            )
    return records


def skimage_records() -> list[PhotoRecord]:
    """scikit-image's colour photos (the files inside the installed wheel)."""
    import skimage
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    return [
        PhotoRecord(
            photo.source,
            "scikit-image",
            skimage.__version__,
            f"skimage/data/{photo.file}",
            photo.license,
            photo.copyright,
            (folder / photo.file).read_bytes(),
        )
        for photo in SKIMAGE_PHOTOS
    ]


# ----------------------------------------------------------------------------------------------------------------
# Data set
# ----------------------------------------------------------------------------------------------------------------

FEATURES = Features(
    {
        "image": Image(),
        "source": Value("string"),
        "package": Value("string"),
        "package_version": Value("string"),
        "path": Value("string"),
        "license": Value("string"),
        "copyright": Value("string"),
        "license_note": Value("string"),
        "sha256": Value("string"),
        "original_width": Value("int32"),
        "original_height": Value("int32"),
    }
)


def decode_photo(data: bytes, short_side: int = SHORT_SIDE) -> tuple[PIL.Image.Image, tuple[int, int]]:
    """Decode, apply EXIF orientation, convert to RGB and downscale (Lanczos) so the shorter side is `short_side`
    (never upscaled). Returns (the RGB image, the original (width, height))."""
    with PIL.Image.open(io.BytesIO(data)) as opened:
        image = PIL.ImageOps.exif_transpose(opened).convert("RGB")
    original = image.size
    scale = short_side / min(original)
    if scale < 1:
        size = (max(1, round(original[0] * scale)), max(1, round(original[1] * scale)))
        image = image.resize(size, PIL.Image.Resampling.LANCZOS)
    return image, original


def split_records(
    records: Sequence[PhotoRecord], test_sources: frozenset[str] = TEST_SOURCES
) -> dict[str, list[PhotoRecord]]:
    """{'train': [...], 'test': [...]} by source photo: a photo is in `test` iff its source is in `test_sources`.
    Raises ValueError on a duplicated source or a test source that is not among the records."""
    sources = [record.source for record in records]
    duplicated = sorted({source for source in sources if sources.count(source) > 1})
    if duplicated:
        raise ValueError(f"duplicated sources: {duplicated}")
    missing = sorted(set(test_sources) - set(sources))
    if missing:
        raise ValueError(f"test sources not among the photos: {missing}")
    return {
        "train": [record for record in records if record.source not in test_sources],
        "test": [record for record in records if record.source in test_sources],
    }


def build_dataset_dict(
    records: Sequence[PhotoRecord], test_sources: frozenset[str] = TEST_SOURCES, short_side: int = SHORT_SIDE
) -> DatasetDict:
    """The corpus as a DatasetDict (`train` / `test` split by source photo), one row per photo, sorted by source."""
    splits = {}
    for split, part in split_records(records, test_sources).items():
        rows: dict[str, list] = {name: [] for name in FEATURES}
        for record in sorted(part, key=lambda r: r.source):
            image, (width, height) = decode_photo(record.data, short_side)
            values = dataclasses.asdict(record) | {"image": image, "sha256": record.sha256}
            values |= {"original_width": width, "original_height": height}
            for name in FEATURES:
                rows[name].append(values[name])
        splits[split] = Dataset.from_dict(rows, features=FEATURES)
    return DatasetDict(splits)


def summary(records: Sequence[PhotoRecord], test_sources: frozenset[str] = TEST_SOURCES) -> str:
    """A table: photos, test photos and megapixels (original resolution) per package, and licenses."""
    lines = [f"{'package':32} {'version':16} {'photos':>6} {'test':>4} {'megapixels':>10}  licenses"]
    counts = []
    for package in dict.fromkeys(record.package for record in records):
        part = [record for record in records if record.package == package]
        megapixels = 0.0
        for record in part:
            with PIL.Image.open(io.BytesIO(record.data)) as image:
                megapixels += image.width * image.height / 1e6
        test = sum(record.source in test_sources for record in part)
        licenses = ", ".join(sorted({record.license for record in part}))
        lines.append(
            f"{package:32} {part[0].package_version:16} {len(part):6d} {test:4d} {megapixels:10.1f}  {licenses}"
        )
        counts.append((len(part), test, megapixels))
    photos, test, megapixels = (sum(column) for column in zip(*counts, strict=True))
    lines.append(f"{'total':32} {'':16} {photos:6d} {test:4d} {megapixels:10.1f}")
    return "\n".join(lines)


def save_corpus(corpus: DatasetDict, manifest: dict, output: Path) -> None:
    """Save `corpus` and its manifest into `output`, swapped in by one rename. `output` must be absent, empty, or a
    previous corpus (then replaced); a failed save leaves it as it was."""
    if output.is_dir() and not (output / "dataset_dict.json").is_file() and any(output.iterdir()):
        raise FileExistsError(f"{output} exists and is not a photo corpus; choose another --output.")
    with atomic_output_dir(output, overwrite=True) as staging:
        corpus.save_to_disk(str(staging))
        write_manifest(staging / MANIFEST_NAME, manifest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=PHOTO_CORPUS_DIR, help="save_to_disk folder (default %(default)s).")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, help="where the .deb files are kept (%(default)s).")
    parser.add_argument("--short-side", type=int, default=SHORT_SIDE, help="stored shorter side in pixels.")
    parser.add_argument("--manifest", default=str(MANIFEST_PATH), help="the manifest to check against.")
    parser.add_argument("--accept-changes", action="store_true", help="build even if files differ from the manifest.")
    parser.add_argument(
        "--write-manifest", action="store_true", help="rewrite --manifest from the files found (after review)."
    )
    args = parser.parse_args(argv)

    manifest_path = Path(args.manifest)
    manifest = load_manifest(manifest_path)
    records = debian_records(Path(args.cache_dir), manifest.get("packages", {})) + skimage_records()
    check_not_reserved(records)
    found = make_manifest(records, TEST_SOURCES, args.short_side)
    if args.write_manifest:
        write_manifest(manifest_path, found)
        print(f"wrote {manifest_path} ({len(records)} photos)")
    else:
        check_manifest(records, manifest, manifest_path, accept_changes=args.accept_changes)

    corpus = build_dataset_dict(records, TEST_SOURCES, args.short_side)
    output = Path(args.output)
    save_corpus(corpus, found, output)
    print(summary(records, TEST_SOURCES))
    print(f"saved {output}: " + ", ".join(f"{split} {len(part)} photos" for split, part in corpus.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
