"""Which checkpoints the demo may load, where each one comes from, and loading them once.

The demo offers the shipped checkpoints (`SHIPPED_CHECKPOINTS`, Hub ids listed as `models:` in README.md) and
whatever the operator names in `VQ_CHECKPOINT` / `ARCVQ_CHECKPOINT`. A shipped id loads from its local folder
(`checkpoints/<name>` beside app.py, then in the repository root) when that folder exists, else from the Hub.
Any other local folder or Hub id is refused, before the file system or the Hub is asked anything, unless the
operator sets `ARCVQ_SPACE_ALLOW_CUSTOM_CHECKPOINTS=1`: otherwise a visitor could probe the server's folders or
make it download arbitrary repositories.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import is_offline_mode

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.utils.io_utils import looks_like_local_path

logger = logging.getLogger("arcvq_space")

APP_DIR = Path(__file__).resolve().parent
# Checked in this order: a Space repository holds `checkpoints/` beside app.py, this repository one level up.
CHECKPOINT_DIRS = (APP_DIR / "checkpoints", APP_DIR.parent / "checkpoints")
ALLOW_CUSTOM_ENV_VAR = "ARCVQ_SPACE_ALLOW_CUSTOM_CHECKPOINTS"

VQ_LABEL = "VQ-VAE"
ARCVQ_LABEL = "ArcVQ-VAE"
CHECKPOINT_ENV_VARS = {VQ_LABEL: "VQ_CHECKPOINT", ARCVQ_LABEL: "ARCVQ_CHECKPOINT"}

# Loaded checkpoints kept in memory, least recently used dropped first; bounded because with custom checkpoints
# allowed any visitor can name new ones.
MAX_LOADED_CHECKPOINTS = 6


class CheckpointError(ValueError):
    """A checkpoint cannot be found or loaded; the message names it and how to fix it."""


class CheckpointRefusedError(CheckpointError):
    """A checkpoint that this server does not offer was asked for (custom checkpoints are off)."""


@dataclass(frozen=True)
class ShippedCheckpoint:
    """A checkpoint this project ships: its Hub id, and the training command that rebuilds its folder
    (`extra_arguments`: what the command adds to the dataset and preset, e.g. a codebook size)."""

    hub_id: str
    dataset: str
    preset: str
    extra_arguments: str = ""

    @property
    def folder_name(self) -> str:
        return self.hub_id.rsplit("/", 1)[-1]

    def local_folder(self) -> Path | None:
        """The first of CHECKPOINT_DIRS that holds this checkpoint (a config.json), or None."""
        for directory in CHECKPOINT_DIRS:
            if (directory / self.folder_name / "config.json").is_file():
                return directory / self.folder_name
        return None

    def train_command(self, output_dir: str | None = None) -> str:
        """The short form of the command in the checkpoint's card (which also gives its steps and batch size)."""
        extra = f"{self.extra_arguments} " if self.extra_arguments else ""
        return (
            f"python examples/train_arcvq.py --dataset {self.dataset} --preset {self.preset} {extra}"
            f"--output_dir {output_dir or 'checkpoints/' + self.folder_name}"
        )


# The default pair first: photo tokenizer v2, ArcVQ and the field's EMA remedy (EMA codebook, k-means init, dead-code
# restart) at the same K and budget; then the first photo pair (the textbook VQ-VAE stays as the third choice).
SHIPPED_CHECKPOINTS = (
    ShippedCheckpoint("arcvq-hf/field-vq-photos-v2", "photos", "ema-kmeans-restart", "--codebook_size 1024"),
    ShippedCheckpoint("arcvq-hf/arcvq-vae-photos-v2", "photos", "arcvq-lowdim", "--codebook_size 1024"),
    ShippedCheckpoint("arcvq-hf/vq-vae-photos", "photos", "vq-baseline"),
    ShippedCheckpoint("arcvq-hf/arcvq-vae-photos", "photos", "arcvq"),
    ShippedCheckpoint("arcvq-hf/vq-vae-mnist", "mnist-5k", "vq-baseline"),
    ShippedCheckpoint("arcvq-hf/arcvq-vae-mnist", "mnist-5k", "arcvq"),
)
DEFAULT_CHECKPOINTS = {VQ_LABEL: "arcvq-hf/field-vq-photos-v2", ARCVQ_LABEL: "arcvq-hf/arcvq-vae-photos-v2"}
_SHIPPED_BY_ID = {shipped.hub_id: shipped for shipped in SHIPPED_CHECKPOINTS}


def custom_checkpoints_allowed() -> bool:
    """Whether the operator allows any local folder or Hub id (`ARCVQ_SPACE_ALLOW_CUSTOM_CHECKPOINTS=1`)."""
    return os.environ.get(ALLOW_CUSTOM_ENV_VAR, "").strip().lower() in {"1", "true", "yes"}


@dataclass
class LoadedModel:
    """A checkpoint ready for inference: the model in eval mode and its saved image processor.

    `name` is what was asked for (a Hub id, or a folder when custom checkpoints are allowed), `location` where it
    was loaded from (the local folder, or the Hub id itself)."""

    name: str
    location: str
    model: ArcVQModel
    processor: ArcVQImageProcessor

    @property
    def num_channels(self) -> int:
        return self.model.config.num_channels

    @property
    def codebook_size(self) -> int:
        return self.model.config.codebook_size

    @property
    def downsampling_factor(self) -> int:
        return self.model.config.downsampling_factor


@dataclass(frozen=True, eq=False)
class CheckpointCatalog:
    """The checkpoints one server offers: the shipped ones, the operator's environment variables and, only when
    `allow_custom`, any local folder or Hub id."""

    allow_custom: bool
    operator_choices: dict[str, str]  # label -> VQ_CHECKPOINT / ARCVQ_CHECKPOINT value, when set

    @classmethod
    def from_environment(cls, allow_custom: bool | None = None) -> CheckpointCatalog:
        """The catalog the environment describes; `allow_custom` None reads ARCVQ_SPACE_ALLOW_CUSTOM_CHECKPOINTS."""
        operator_choices = {
            label: os.environ[variable].strip()
            for label, variable in CHECKPOINT_ENV_VARS.items()
            if os.environ.get(variable, "").strip()
        }
        allowed = custom_checkpoints_allowed() if allow_custom is None else allow_custom
        return cls(allow_custom=allowed, operator_choices=operator_choices)

    def default(self, label: str) -> str:
        """The checkpoint a request for `label` (VQ_LABEL or ARCVQ_LABEL) starts with."""
        return self.operator_choices.get(label, DEFAULT_CHECKPOINTS[label])

    def offered(self) -> list[str]:
        """Every checkpoint a visitor may pick: the shipped Hub ids, then the operator's choices."""
        shipped_ids = [shipped.hub_id for shipped in SHIPPED_CHECKPOINTS]
        return list(dict.fromkeys([*shipped_ids, *self.operator_choices.values()]))

    def location(self, name: str) -> str:
        """Where `name` loads from: a shipped id's local folder if present (else the id), any other name as is.

        Raises CheckpointRefusedError, without touching the file system, for a name this server does not offer.
        """
        name = name.strip()
        if not name:
            raise CheckpointError("No checkpoint given: pick one of the listed checkpoints.")
        shipped = _SHIPPED_BY_ID.get(name)
        if shipped is not None:
            folder = shipped.local_folder()
            return str(folder) if folder is not None else shipped.hub_id
        if self.allow_custom or name in self.operator_choices.values():
            return name
        shown = name if len(name) <= 80 else f"{name[:77]}..."
        raise CheckpointRefusedError(
            f"The checkpoint {shown!r} is not offered here: pick one of {', '.join(self.offered())}. Other local "
            f"folders and Hub ids are off on this server (its operator can allow them with {ALLOW_CUSTOM_ENV_VAR}=1)."
        )

    def load(self, name: str) -> LoadedModel:
        """The loaded checkpoint `name` (refused, missing and broken ones raise CheckpointError)."""
        name = name.strip()
        location = self.location(name)
        shipped = _SHIPPED_BY_ID.get(name)
        if shipped is not None and location == shipped.hub_id and is_offline_mode():
            raise CheckpointError(missing_message(shipped))
        try:
            loaded = load_checkpoint(location)
        except CheckpointError as error:
            if shipped is None:  # the message already names the folder or Hub id that was asked for
                raise
            raise CheckpointError(f"Checkpoint {name} cannot be loaded: {error}") from error
        return LoadedModel(name, loaded.location, loaded.model, loaded.processor)

    def missing(self) -> dict[str, str]:
        """Shipped checkpoints this server cannot load now (no local folder, and the Hub is offline): id -> why."""
        if not is_offline_mode():
            return {}
        return {
            shipped.hub_id: missing_message(shipped)
            for shipped in SHIPPED_CHECKPOINTS
            if shipped.local_folder() is None
        }


def missing_message(shipped: ShippedCheckpoint) -> str:
    """Why a shipped checkpoint cannot be loaded here, and the two ways to fix it."""
    looked_in = " or ".join(str(directory / shipped.folder_name) for directory in CHECKPOINT_DIRS)
    return (
        f"Checkpoint {shipped.hub_id} is missing: no folder {looked_in}, and the Hub is offline (HF_HUB_OFFLINE). "
        f"Train it ({shipped.train_command()}) or go online to download it."
    )


# One load at a time: sixteen first requests for a checkpoint must not load it sixteen times.
_load_lock = threading.Lock()


def load_checkpoint(location: str) -> LoadedModel:
    """Load (once, while it stays among the MAX_LOADED_CHECKPOINTS most recently used) an ArcVQ checkpoint from a
    local folder or a Hub id; safetensors weights only, the package's own classes (no remote code).

    Raises CheckpointError with a message that names `location` and what to do.
    """
    with _load_lock:
        return _load_checkpoint_cached(location.strip())


@functools.lru_cache(maxsize=MAX_LOADED_CHECKPOINTS)
def _load_checkpoint_cached(location: str) -> LoadedModel:
    if not location:
        raise CheckpointError("No checkpoint given: enter a local folder or a Hugging Face Hub id.")
    is_local = looks_like_local_path(location)
    if is_local and not (Path(location).expanduser() / "config.json").is_file():
        raise CheckpointError(
            f"Checkpoint folder not found: {Path(location).expanduser()} (no config.json there). Set "
            f"{' / '.join(CHECKPOINT_ENV_VARS.values())} to a save_pretrained folder or a Hub id."
        )
    try:
        config_dict, _ = ArcVQConfig.get_config_dict(location)
    except OSError as error:
        where = "local folder" if is_local else "Hugging Face Hub id (offline, or no such repository?)"
        raise CheckpointError(f"Cannot read the checkpoint {location!r} as a {where}: {error}") from error
    if config_dict.get("model_type") != ArcVQConfig.model_type:
        raise CheckpointError(
            f"{location!r} is a {config_dict.get('model_type')!r} checkpoint, not an ArcVQ one (model_type 'arcvq')."
        )
    try:
        model = ArcVQModel.from_pretrained(location, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"Cannot load the weights of {location!r}: {error}") from error
    try:
        processor = ArcVQImageProcessor.from_pretrained(location)
    except OSError:  # no preprocessor_config.json: the package's default normalisation for this model
        processor = ArcVQImageProcessor(num_channels=model.config.num_channels)
    if processor.num_channels != model.config.num_channels:
        raise CheckpointError(
            f"{location!r}: its preprocessor_config.json has num_channels={processor.num_channels} but the model "
            f"takes {model.config.num_channels}."
        )
    logger.info("loaded checkpoint %s", location)
    return LoadedModel(location, location, model, processor)


def load_default_models(catalog: CheckpointCatalog) -> tuple[dict[str, LoadedModel], dict[str, str]]:
    """Load the two default checkpoints: (label -> model for those that loaded, label -> message for those that
    did not). An operator's VQ_CHECKPOINT / ARCVQ_CHECKPOINT that does not load raises CheckpointError (with the
    training command), since a misconfigured deployment should stop at start-up; a missing shipped checkpoint only
    gets reported, so that the demo still starts while one is being retrained."""
    loaded, failures = {}, {}
    for label in (VQ_LABEL, ARCVQ_LABEL):
        name = catalog.default(label)
        try:
            loaded[label] = catalog.load(name)
        except CheckpointError as error:
            if label in catalog.operator_choices:
                shipped = _SHIPPED_BY_ID[DEFAULT_CHECKPOINTS[label]]
                raise CheckpointError(f"{error} Or train it: {shipped.train_command(name)}") from error
            failures[label] = str(error)
    return loaded, failures
