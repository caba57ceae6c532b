"""Helpers of the photo corpus builder (examples/build_photo_corpus.py): the record of one source photo, the
rejection of evaluation-only photos, reading Debian packages (download, extraction, DEP-5 copyright files, KDE
wallpaper metadata, Enlightenment's .edj containers) and the manifest that every build is checked against.

Needs `apt-get` / `dpkg-deb` only for the package functions; everything else is plain Python, numpy and PIL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
from photo_corpus_sources import RESERVED_FILE_NAMES, RESERVED_SHA256, SHORT_SIDE

from arcvq_hf.data.photo_corpus import PHOTO_CORPUS_BUILD_COMMAND
from arcvq_hf.utils.io_utils import atomic_write_text

PIL.Image.MAX_IMAGE_PIXELS = None  # the largest listed photo is 5312x2988; all are trusted package files

MANIFEST_PATH = Path(__file__).resolve().parent / "photo_corpus_manifest.json"
MANIFEST_FORMAT = 1


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

RESERVED_THUMBNAIL = 16
RESERVED_THUMBNAIL_TOLERANCE = 6.0  # mean absolute difference (0..255) below which a photo counts as the same


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
# Debian packages: download, extraction, copyright and metadata, .edj containers
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


def kde_metadata_note(metadata: bytes) -> str:
    """`license_note` of a KDE wallpaper: the license and authors its `metadata.json` states."""
    plugin = json.loads(metadata).get("KPlugin", {})
    authors = ", ".join(author.get("Name", "") for author in plugin.get("Authors", []))
    return f"upstream metadata.json: License {plugin.get('License', '?')}; Authors {authors}"


# ----------------------------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------------------------


def manifest_entry(record: PhotoRecord, test_sources: frozenset[str]) -> dict:
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


def make_manifest(records: Sequence[PhotoRecord], test_sources: frozenset[str], short_side: int = SHORT_SIDE) -> dict:
    """The full manifest: format, build command, package versions and one entry per photo (sorted by source)."""
    packages = {record.package: record.package_version for record in records}
    return {
        "format": MANIFEST_FORMAT,
        "description": "Natural photographs for the arcvq-hf photo corpus (`--dataset photos`).",
        "build_command": PHOTO_CORPUS_BUILD_COMMAND,
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
        versions = f"{record.package} {record.package_version}"
        if record.package_version != entry["package_version"]:
            change = f"{record.package} {entry['package_version']} -> {record.package_version}"
            versions = f"{record.package} version changed ({change})"
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


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Write `manifest` as the committed file is written (JSON, indent 1, UTF-8 kept), atomically."""
    atomic_write_text(path, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def check_manifest(records: Sequence[PhotoRecord], manifest: dict, path: Path, accept_changes: bool = False) -> None:
    """Stop the build (ManifestMismatchError listing every difference) when the photos read differ from `manifest`
    (read from `path`); with `accept_changes`, warn and go on."""
    problems = compare_with_manifest(records, manifest)
    if not problems:
        print(f"all {len(records)} photos match {path} (sha256, versions, licenses)")
        return
    listing = "\n  ".join(problems)
    message = f"{len(problems)} difference(s) from {path} (a package version changed a file?):\n  {listing}"
    if not accept_changes:
        raise ManifestMismatchError(
            message + "\nReview the new files, then rerun with --write-manifest, or build anyway with "
            "--accept-changes (the output folder's manifest then records what was used)."
        )
    print("WARNING: building with changed files. " + message)
