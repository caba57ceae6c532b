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
   `sha256`, `original_width`, `original_height`. The manifest is also written into the output folder.

The allow-list is explicit: every candidate file of the packages was looked at, and only photographs are listed.
Left out on purpose: vector art, renders, gradients and abstract art (gnome-backgrounds, ukui-wallpapers,
sway-backgrounds, xfdesktop4-data, lxde-common, desktop-base, propaganda-debian, most of plasma-workspace-wallpapers),
mate-backgrounds' Elephants (a painting) and its blurred Ubuntu-Mate-* backgrounds, lomiri's umang / Fossa /
Painting-Colors (vector art), Infinite-Sea (a composite), analogpattern (a processed texture), enlightenment's Dunes,
Sunset-Hills, Flat-Fan (vector art), Flat-Stone-Pattern and Paper-Flower (flat textures).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
from datasets import Dataset, DatasetDict, Features, Image, Value

PIL.Image.MAX_IMAGE_PIXELS = None  # the largest listed photo is 5312x2988; all are trusted package files

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST_PATH = REPO_ROOT / "examples" / "photo_corpus_manifest.json"
MANIFEST_NAME = "photo_corpus_manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_OUTPUT = "data/photo-corpus"
DEFAULT_CACHE = "data/photo-corpus-cache"
BUILD_COMMAND = "python examples/build_photo_corpus.py --output data/photo-corpus"
SHORT_SIDE = 512


@dataclasses.dataclass(frozen=True)
class DebianPhoto:
    """One photograph inside a Debian package.

    Attributes:
        package: Debian binary package name.
        path: the file inside the package (as `dpkg -x` lays it out, no leading `./`).
        copyright_files: the `Files:` pattern of the package's DEP-5 copyright file that covers this file (upstream
            paths differ from installed ones, so the pattern is named here rather than matched).
        name: the photo's name in `source` (default: the file's stem).
        member: the entry inside an EET container (`.edj`) holding the photo, or None for a plain image file.
        metadata: a KDE wallpaper `metadata.json` whose author / license are recorded in `license_note`.
    """

    package: str
    path: str
    copyright_files: str
    name: str | None = None
    member: str | None = None
    metadata: str | None = None

    @property
    def source(self) -> str:
        return f"{self.package}/{self.name or Path(self.path).stem}"


def _mate(path: str) -> DebianPhoto:
    return DebianPhoto("mate-backgrounds", f"usr/share/backgrounds/mate/{path}", path)


def _plasma(name: str, file: str = "2560x1600.jpg") -> DebianPhoto:
    root = f"usr/share/wallpapers/{name}"
    return DebianPhoto(
        "plasma-workspace-wallpapers",
        f"{root}/contents/images/{file}",
        "*",
        name=name,
        metadata=f"{root}/metadata.json",
    )


def _lomiri(version: str, file: str) -> DebianPhoto:
    return DebianPhoto(f"lomiri-wallpapers-{version}", f"usr/share/backgrounds/{file}", f"{version}/{file}")


def _enlightenment(name: str) -> DebianPhoto:
    path = f"usr/share/enlightenment/data/backgrounds/{name}.edj"
    return DebianPhoto("enlightenment-data", path, "*", name=name, member="edje/images/0")


DEBIAN_PHOTOS: tuple[DebianPhoto, ...] = (
    # mate-backgrounds: the nature/ folder, all photographs.
    *(
        _mate(f"nature/{name}.jpg")
        for name in (
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        )
    ),
    # plasma-workspace-wallpapers: the photographic wallpapers (the rest are renders / vector art). Kite is a photo
    # of the sky with a small kite that may be pasted in.
    *(
        _plasma(name)
        for name in (
            "BytheWater",
            "ColdRipple",
            "ColorfulCups",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
        )
    ),
    # lomiri-wallpapers-16.04 / -20.04 (Ubuntu Touch community wallpapers): the photographs.
    *(
        _lomiri("16.04", file)
        for file in (
            "Bridge_by_Sander_Klootwijk.jpg",
            "Dragonfly_by_Bolly.jpg",
            "Picture_0B_by_freespace.jpg",
            "Picture_1A_by_freespace.jpg",
            "Wine_by_Jakkub_Mede.jpg",
            "aitzgorri_by_Aitzol_Berasategi.jpg",
            "free_by_Peter_Nerlich.jpg",
            "friends_by_Aitzol_Berasategi.jpg",
            "greentock_by_Peter_Nerlich.jpg",
            "life_by_Aitzol_Berasategi.jpg",
            "picosdeeuropa_by_Aitzol_Berasategi.jpg",
            "seeding_by_Clements_Engelhardt.jpg",
            "sunset_by_Aitzol_Berasategi.jpg",
        )
    ),
    _lomiri("20.04", "Kleiber_by_Lukas_Baubkus.jpg"),
    # enlightenment-data: the photographic desktop backgrounds (3840x2160 JPEGs inside .edj containers).
    *(
        _enlightenment(name)
        for name in (
            "Bamboo",
            "Foggy-Trees",
            "God-Rays",
            "Green-Maple",
            "Lichen-Branches",
            "Mountain",
            "Peaks",
            "Red-Maple",
            "Sea-of-Lanterns",
            "Snow-Trees",
            "Spruce-Needles",
            "Sunset-Clouds",
            "White-Flower",
            "Yellow-Flower",
        )
    ),
)


@dataclasses.dataclass(frozen=True)
class SkimagePhoto:
    """One colour photo shipped inside the scikit-image wheel (`skimage/data/<file>`), with its license as the
    scikit-image docstring states it."""

    name: str
    file: str
    license: str
    copyright: str

    @property
    def source(self) -> str:
        return f"scikit-image/{self.name}"


SKIMAGE_PHOTOS: tuple[SkimagePhoto, ...] = (
    SkimagePhoto("astronaut", "astronaut.png", "public-domain", "NASA (Eileen Collins portrait)"),
    SkimagePhoto("chelsea", "chelsea.png", "CC0-1.0", "Stefan van der Walt"),
    SkimagePhoto("coffee", "coffee.png", "CC0-1.0", "Rachel Michetti (Pikolo Espresso Bar)"),
    SkimagePhoto("rocket", "rocket.jpg", "public-domain", "SpaceX (DSCOVR launch)"),
    SkimagePhoto("hubble_deep_field", "hubble_deep_field.jpg", "public-domain", "NASA (Hubble eXtreme Deep Field)"),
    SkimagePhoto(
        "immunohistochemistry",
        "ihc.png",
        "no-known-copyright-restrictions",
        "Center for Microscopy And Molecular Imaging (CMMI)",
    ),
    SkimagePhoto("retina", "retina.jpg", "CC0-1.0", "Mikael Häggström"),
    SkimagePhoto(
        "stereo_motorcycle_left",
        "motorcycle_left.png",
        "unstated",
        "Middlebury 2014 stereo benchmark (Scharstein et al.); redistributed in the scikit-image wheel",
    ),
    SkimagePhoto(
        "stereo_motorcycle_right",
        "motorcycle_right.png",
        "unstated",
        "Middlebury 2014 stereo benchmark (Scharstein et al.); redistributed in the scikit-image wheel",
    ),
)

# Held-out photos (about 15 %, chosen for variety: animals, food, a macro, sky, water, forest, mountains, leaves).
# The two stereo_motorcycle views are near-duplicates and both stay in train. chelsea and coffee are also the test
# photos of the built-in `skimage-photos` set.
TEST_SOURCES: frozenset[str] = frozenset(
    {
        "scikit-image/chelsea",
        "scikit-image/coffee",
        "mate-backgrounds/LadyBird",
        "mate-backgrounds/Storm",
        "plasma-workspace-wallpapers/EveningGlow",
        "plasma-workspace-wallpapers/Path",
        "lomiri-wallpapers-16.04/friends_by_Aitzol_Berasategi",
        "lomiri-wallpapers-16.04/picosdeeuropa_by_Aitzol_Berasategi",
        "enlightenment-data/Red-Maple",
    }
)

# Evaluation-only photos: never in the corpus. Names and sha256 of the files as scikit-learn 1.9 and matplotlib 3.11
# ship them; the installed copies are hashed too (reserved_sha256), and a thumbnail check catches re-encodings.
RESERVED_FILE_NAMES: frozenset[str] = frozenset(
    {"china.jpg", "flower.jpg", "grace_hopper.jpg", "grace_hopper.png", "Minduka_Present_Blue_Pack.png", "logo2.png"}
)
RESERVED_SHA256: frozenset[str] = frozenset(
    {
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",  # scikit-learn china.jpg
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",  # scikit-learn flower.jpg
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",  # matplotlib grace_hopper.jpg
        "5e72868826a7a4329a950e5a9efa393594807833fb7f27e5cd001a8afb9cd081",  # matplotlib Minduka_Present_Blue_Pack.png
        "0d7371e055decaac47cb6e809af3442e9c1ecd02f1c1e2d063d1cfee4b4a21d7",  # matplotlib logo2.png
    }
)
RESERVED_THUMBNAIL = 16
RESERVED_THUMBNAIL_TOLERANCE = 6.0  # mean absolute difference (0..255) below which a photo counts as the same


class ReservedImageError(ValueError):
    """A photo reserved for evaluation (scikit-learn's or matplotlib's sample photos) was about to enter the corpus."""


class ManifestMismatchError(RuntimeError):
    """The files found differ from the committed manifest (a package update changed, added or removed a photo)."""


@dataclasses.dataclass(frozen=True)
class PhotoRecord:
    """One source photo as read, before decoding: its bytes and everything the manifest records about it."""

    source: str
    package: str
    package_version: str
    path: str
    license: str
    copyright: str
    data: bytes = dataclasses.field(repr=False)
    member: str | None = None
    license_note: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def file_name(self) -> str:
        return Path(self.member or self.path).name


# ----------------------------------------------------------------------------------------------------------------
# Reserved evaluation photos
# ----------------------------------------------------------------------------------------------------------------


def installed_reserved_files() -> list[Path]:
    """The evaluation-only photo files of the installed scikit-learn / matplotlib (those that are installed)."""
    files = []
    try:
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        files += [folder / name for name in ("china.jpg", "flower.jpg")]
    except ImportError:
        pass
    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "sample_data"
        files += [folder / name for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")]
    except ImportError:
        pass
    return [file for file in files if file.is_file()]


def reserved_sha256() -> frozenset[str]:
    """sha256 of every reserved photo: the known ones plus the installed copies."""
    return RESERVED_SHA256 | {hashlib.sha256(file.read_bytes()).hexdigest() for file in installed_reserved_files()}


def _thumbnail(image: PIL.Image.Image) -> np.ndarray:
    """(RESERVED_THUMBNAIL, RESERVED_THUMBNAIL, 3) float32 thumbnail, aspect ignored."""
    small = image.convert("RGB").resize((RESERVED_THUMBNAIL, RESERVED_THUMBNAIL), PIL.Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


def reserved_thumbnails() -> list[tuple[str, np.ndarray, float]]:
    """(file name, thumbnail, aspect ratio) of each installed reserved photo."""
    thumbnails = []
    for file in installed_reserved_files():
        with PIL.Image.open(file) as image:
            thumbnails.append((file.name, _thumbnail(image), image.width / image.height))
    return thumbnails


def reserved_reason(
    record: PhotoRecord,
    hashes: frozenset[str] | None = None,
    thumbnails: Sequence[tuple[str, np.ndarray, float]] | None = None,
) -> str | None:
    """Why `record` is an evaluation-only photo (file name, sha256, or a near-duplicate thumbnail), else None."""
    if record.file_name in RESERVED_FILE_NAMES:
        return f"its file name {record.file_name!r} is a reserved evaluation photo"
    if record.sha256 in (reserved_sha256() if hashes is None else hashes):
        return f"its sha256 {record.sha256} is a reserved evaluation photo"
    thumbnails = reserved_thumbnails() if thumbnails is None else thumbnails
    if thumbnails:
        with PIL.Image.open(io.BytesIO(record.data)) as image:
            own, aspect = _thumbnail(image), image.width / image.height
        for name, other, other_aspect in thumbnails:
            if abs(aspect - other_aspect) < 0.02 and np.abs(own - other).mean() < RESERVED_THUMBNAIL_TOLERANCE:
                return f"it looks like the reserved evaluation photo {name}"
    return None


def check_not_reserved(records: Iterable[PhotoRecord]) -> None:
    """Raise ReservedImageError if any record is one of the evaluation-only photos."""
    hashes, thumbnails = reserved_sha256(), reserved_thumbnails()
    for record in records:
        reason = reserved_reason(record, hashes, thumbnails)
        if reason is not None:
            raise ReservedImageError(
                f"{record.source} ({record.package} {record.path}) cannot enter the photo corpus: {reason}; "
                "scikit-learn's and matplotlib's sample photos are reserved for evaluation."
            )


# ----------------------------------------------------------------------------------------------------------------
# Debian packages
# ----------------------------------------------------------------------------------------------------------------


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Paragraphs of a DEP-5 (machine-readable) debian/copyright file: field -> value (continuation lines kept,
    joined with newlines)."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    field = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, field = {}, None
        elif line[0] in " \t" and field is not None:
            current[field] += "\n" + line.strip()
        elif ":" in line:
            field, value = line.split(":", 1)
            current[field] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def dep5_license(text: str, files_entry: str) -> tuple[str, str]:
    """(license short name, copyright holders joined with '; ') of the DEP-5 paragraph whose `Files:` field lists
    `files_entry` literally. Raises KeyError when no paragraph lists it (the copyright file changed)."""
    for paragraph in parse_dep5(text):
        if files_entry in paragraph.get("Files", "").split():
            license_name = paragraph.get("License", "").splitlines()[0].strip()
            holders = [line.strip() for line in paragraph.get("Copyright", "").splitlines() if line.strip()]
            return license_name, "; ".join(holders)
    raise KeyError(f"no `Files:` paragraph lists {files_entry!r}")


def read_eet_entry(data: bytes, name: str) -> bytes:
    """The raw bytes of entry `name` of an EET (Enlightenment `.edj`) container, version 2 layout: big-endian
    header (magic 0x1ee70f42, directory entries, dictionary entries), then per entry (offset, size, data size,
    name offset, name size, flags). Only uncompressed, unciphered entries are read."""
    magic, count, _ = struct.unpack(">III", data[:12])
    if magic != 0x1EE70F42:
        raise ValueError(f"not an EET v2 container (magic {magic:#x})")
    for index in range(count):
        offset, size, _, name_offset, name_size, flags = struct.unpack(">6I", data[12 + 24 * index : 36 + 24 * index])
        if data[name_offset : name_offset + name_size].split(b"\0")[0].decode() != name:
            continue
        if flags & 0x3:
            raise ValueError(f"EET entry {name!r} is compressed or ciphered (flags {flags:#x})")
        return data[offset : offset + size]
    raise KeyError(f"no EET entry {name!r}")


def deb_fields(deb: Path) -> tuple[str, str]:
    """(Package, Version) of a .deb file."""
    output = subprocess.run(
        ["dpkg-deb", "--show", "--showformat=${Package}\t${Version}", str(deb)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    package, version = output.strip().split("\t")
    return package, version


def cached_deb(cache: Path, package: str, version: str | None) -> Path | None:
    """A .deb of `package` in `cache` (the `version` one if given), or None."""
    for deb in sorted(cache.glob(f"{package}_*.deb")):
        found_package, found_version = deb_fields(deb)
        if found_package == package and (version is None or found_version == version):
            return deb
    return None


def download_deb(cache: Path, package: str, version: str | None) -> Path:
    """`apt-get download package=version` into `cache` (reusing a cached .deb); falls back to the archive's current
    version, with a warning, when that version is gone. Returns the .deb path."""
    deb = cached_deb(cache, package, version)
    if deb is not None:
        return deb
    if shutil.which("apt-get") is None:
        raise RuntimeError(
            f"apt-get is not available to download {package}; run this on Debian/Ubuntu or put the .deb into {cache}."
        )
    cache.mkdir(parents=True, exist_ok=True)
    for spec in ([f"{package}={version}"] if version else []) + [package]:
        result = subprocess.run(["apt-get", "download", spec], cwd=cache, capture_output=True, text=True)
        if result.returncode == 0:
            if spec == package and version:
                print(f"WARNING: {package} {version} (the manifest's) is gone from the archive; using the current one.")
            deb = cached_deb(cache, package, None)
            if deb is not None:
                return deb
    raise RuntimeError(
        f"`apt-get download {package}` failed: {result.stderr.strip()}\n"
        "Run `apt-get update` first (as root), or put the .deb into the cache folder."
    )


def read_deb_files(deb: Path, paths: Iterable[str]) -> dict[str, bytes]:
    """The bytes of the given files (paths inside the package, no leading './') read from the .deb's data archive."""
    wanted = set(paths)
    found: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as process:
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            for member in archive:
                path = member.name.removeprefix("./")
                if path in wanted:
                    if not member.isfile():
                        raise ValueError(f"{path} in {deb.name} is not a regular file")
                    found[path] = archive.extractfile(member).read()
        process.stdout.read()
    missing = wanted - set(found)
    if missing:
        raise FileNotFoundError(f"{deb.name} lacks {sorted(missing)}")
    return found


def _kde_metadata_note(metadata: bytes) -> str:
    plugin = json.loads(metadata).get("KPlugin", {})
    authors = ", ".join(author.get("Name", "") for author in plugin.get("Authors", []))
    return f"upstream metadata.json: License {plugin.get('License', '?')}; Authors {authors}"


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
            note = _kde_metadata_note(files[photo.metadata]) if photo.metadata else ""
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
# Manifest
# ----------------------------------------------------------------------------------------------------------------


def manifest_entry(record: PhotoRecord, test_sources: frozenset[str] = TEST_SOURCES) -> dict:
    """The manifest's description of one photo (everything but pixels)."""
    with PIL.Image.open(io.BytesIO(record.data)) as image:
        width, height = PIL.ImageOps.exif_transpose(image).size
    return {
        "source": record.source,
        "split": "test" if record.source in test_sources else "train",
        "package": record.package,
        "package_version": record.package_version,
        "path": record.path,
        "member": record.member,
        "sha256": record.sha256,
        "width": width,
        "height": height,
        "license": record.license,
        "copyright": record.copyright,
        "license_note": record.license_note,
    }


def make_manifest(
    records: Sequence[PhotoRecord], test_sources: frozenset[str] = TEST_SOURCES, short_side: int = SHORT_SIDE
) -> dict:
    """The full manifest: format, build command, package versions and one entry per photo (sorted by source)."""
    packages = {record.package: record.package_version for record in records}
    return {
        "format": MANIFEST_FORMAT,
        "description": "Natural photographs for the arcvq-hf photo corpus (`--dataset photos`).",
        "build_command": BUILD_COMMAND,
        "short_side": short_side,
        "packages": dict(sorted(packages.items())),
        "images": [manifest_entry(record, test_sources) for record in sorted(records, key=lambda r: r.source)],
    }


def compare_with_manifest(records: Sequence[PhotoRecord], manifest: dict) -> list[str]:
    """Every difference between the photos read and the manifest, as sentences (empty when they agree): a file whose
    sha256 changed (with both package versions), a photo missing or new, a changed license or copyright."""
    expected = {entry["source"]: entry for entry in manifest.get("images", [])}
    problems = []
    for record in records:
        entry = expected.pop(record.source, None)
        if entry is None:
            problems.append(f"{record.source}: not in the manifest (new photo from {record.package})")
            continue
        versions = f"{record.package} {entry['package_version']} -> {record.package_version}"
        if record.package_version != entry["package_version"]:
            versions = f"{record.package} version changed ({versions})"
        else:
            versions = f"{record.package} {record.package_version}"
        if record.sha256 != entry["sha256"]:
            problems.append(
                f"{record.source}: {record.path} changed: sha256 {record.sha256} != manifest {entry['sha256']} "
                f"[{versions}]"
            )
        for field in ("license", "copyright"):
            if getattr(record, field) != entry[field]:
                problems.append(
                    f"{record.source}: {field} changed: {getattr(record, field)!r} != manifest {entry[field]!r} "
                    f"[{versions}]"
                )
    problems += [f"{source}: in the manifest but not found" for source in sorted(expected)]
    return problems


def load_manifest(path: Path = MANIFEST_PATH) -> dict:
    """The committed manifest, or an empty one when it does not exist yet."""
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "packages": {}, "images": []}
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestMismatchError(f"{path} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
    return manifest


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
    total_photos = total_test = 0
    total_megapixels = 0.0
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
        total_photos, total_test, total_megapixels = (
            total_photos + len(part),
            total_test + test,
            total_megapixels + megapixels,
        )
    lines.append(f"{'total':32} {'':16} {total_photos:6d} {total_test:4d} {total_megapixels:10.1f}")
    return "\n".join(lines)


def prepare_output(output: Path) -> None:
    """Make `output` ready for save_to_disk: it must be absent, empty, or a previous corpus (then replaced)."""
    if output.exists():
        if (output / "dataset_dict.json").is_file():
            shutil.rmtree(output)
        elif any(output.iterdir()):
            raise FileExistsError(f"{output} exists and is not a photo corpus; choose another --output.")
    output.parent.mkdir(parents=True, exist_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="save_to_disk folder (default %(default)s).")
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
        manifest_path.write_text(json.dumps(found, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {manifest_path} ({len(records)} photos)")
    else:
        problems = compare_with_manifest(records, manifest)
        if problems:
            message = (
                f"{len(problems)} difference(s) from {manifest_path} (a package version changed a file?):\n  "
                + "\n  ".join(problems)
            )
            if not args.accept_changes:
                raise ManifestMismatchError(
                    message + "\nReview the new files, then rerun with --write-manifest, or build anyway with "
                    "--accept-changes (the output folder's manifest then records what was used)."
                )
            print("WARNING: building with changed files. " + message)
        else:
            print(f"all {len(records)} photos match {manifest_path} (sha256, versions, licenses)")

    corpus = build_dataset_dict(records, TEST_SOURCES, args.short_side)
    output = Path(args.output)
    prepare_output(output)
    corpus.save_to_disk(str(output))
    (output / MANIFEST_NAME).write_text(json.dumps(found, indent=1, ensure_ascii=False) + "\n")
    print(summary(records, TEST_SOURCES))
    print(f"saved {output}: " + ", ".join(f"{split} {len(part)} photos" for split, part in corpus.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
