"""What the photo corpus is made of: the allow-list of photographs (Debian wallpaper packages and scikit-image), the
held-out test photos, the evaluation-only photos that may never enter, and the stored size. Data only; the builder
is examples/build_photo_corpus.py, its helpers are in photo_corpus_tools.py.

The allow-list is explicit: every candidate file of the packages was looked at, and only photographs are listed.
Left out on purpose: vector art, renders, gradients and abstract art (gnome-backgrounds, ukui-wallpapers,
sway-backgrounds, xfdesktop4-data, lxde-common, desktop-base, propaganda-debian, most of plasma-workspace-wallpapers),
mate-backgrounds' Elephants (a painting) and its blurred Ubuntu-Mate-* backgrounds, lomiri's umang / Fossa /
Painting-Colors (vector art), Infinite-Sea (a composite), analogpattern (a processed texture), enlightenment's Dunes,
Sunset-Hills, Flat-Fan (vector art), Flat-Stone-Pattern and Paper-Flower (flat textures).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

SHORT_SIDE = 512  # the stored shorter side of every photo, in pixels (never upscaled)


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
# ship them; photo_corpus_tools also hashes the installed copies and catches re-encodings by a thumbnail check.
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
