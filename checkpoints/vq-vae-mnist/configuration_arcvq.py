"""Configuration of ArcVQ-VAE: backbone sizes and every knob of the SAMP quantizer (docs/method.md §1)."""

from __future__ import annotations

import os
from typing import Any

from transformers import PretrainedConfig

BACKBONES = ("vqvae", "vqgan")
DISTANCES = ("cosine", "euclidean")
CODEBOOK_INITS = ("uniform_normalized", "uniform_scaled")
RECONSTRUCTION_LOSSES = ("mse", "l1")
CODEBOOK_UPDATES = ("gradient", "ema")


# Local paths vs Hub ids: defined here because this file travels with checkpoints; arcvq_hf.utils.io_utils uses them.


def looks_like_local_path(name: str | os.PathLike) -> bool:
    """Whether `name` can only be meant as a local path: absolute, starting with `.` or `~`, holding a backslash or
    more than one `/`, not a valid Hub repo id, or inside a local folder that exists (`runs/model` when `runs/` is
    there). `org/name` with no such folder counts as a Hub id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = os.fspath(name)
    if os.path.isabs(text) or text.startswith((".", "~")) or "\\" in text or text.count("/") > 1:
        return True
    if "/" in text and os.path.isdir(text.split("/", 1)[0]):
        return True
    try:
        validate_repo_id(text)
    except HFValidationError:
        return True
    return False


def require_existing_folder(path: str | os.PathLike, what: str) -> str:
    """Return `path` if it is an existing folder or a plausible Hub repo id; otherwise raise a clear error.

    Args:
        path: what the user gave (a local folder or a Hub id such as `org/name`).
        what: how to name it in the message, e.g. `"--model_name_or_path"`.
    Raises:
        NotADirectoryError: `path` is an existing file.
        FileNotFoundError: `path` looks like a local path (see `looks_like_local_path`) and does not exist.
    """
    text = os.fspath(path)
    if os.path.isdir(text):
        return text
    if os.path.exists(text):
        raise NotADirectoryError(f"{what} {text!r} is a file; it must be a saved folder (or a Hub repo id).")
    if looks_like_local_path(text):
        raise FileNotFoundError(
            f"{what} {text!r}: no such local folder (looked in {os.path.abspath(os.path.expanduser(text))}). "
            "Give an existing folder written by save_pretrained, or a Hub repo id such as `org/name`."
        )
    return text


def _local_safetensors_files(folder: str | os.PathLike) -> list[str]:
    """The `.safetensors` files directly inside a local `folder`, sorted (none for a Hub id)."""
    if not os.path.isdir(folder):
        return []
    names = sorted(os.listdir(folder))
    paths = [os.path.join(folder, name) for name in names if name.endswith(".safetensors")]
    return [path for path in paths if os.path.isfile(path)]


def require_readable_safetensors(folder: str | os.PathLike) -> None:
    """Raise a clear OSError, naming the file, for a truncated, empty or corrupt `.safetensors` file in a local
    `folder` (only the header is read). Without it, loading fails deep inside transformers with safetensors' bare
    "Error while deserializing header" and no file name."""
    from safetensors import SafetensorError, safe_open

    for path in _local_safetensors_files(folder):
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError as err:
            raise OSError(
                f"{path} ({os.path.getsize(path)} bytes) is not a readable safetensors file: truncated, empty or "
                f"corrupt (safetensors said: {err}). Download or save it again."
            ) from err


def require_finite_weights(folder: str | os.PathLike) -> None:
    """Raise a clear ValueError, naming the file and the tensors, when a `.safetensors` file in a local `folder`
    holds NaN or infinite values. Without it such a model loads and gives one constant token everywhere."""
    import torch
    from safetensors import safe_open

    for path in _local_safetensors_files(folder):
        with safe_open(path, framework="pt") as weights:
            bad = [
                key
                for key in weights.keys()  # noqa: SIM118 (safe_open has no __iter__)
                if (tensor := weights.get_tensor(key)).is_floating_point() and not torch.isfinite(tensor).all()
            ]
        if bad:
            raise ValueError(
                f"{path} holds NaN or infinite values in {len(bad)} tensor(s): {bad[:8]}"
                f"{' ...' if len(bad) > 8 else ''}. Such a model gives one constant token everywhere; use a "
                "checkpoint saved before training diverged (lower the learning rate, or resume from an earlier "
                "checkpoint-N)."
            )


def _local_config_file(folder: str, kwargs: dict[str, Any]) -> str:
    from transformers.utils import CONFIG_NAME

    name = kwargs.get("_configuration_file", CONFIG_NAME)
    return os.path.join(folder, kwargs.get("subfolder") or "", name)


class ArcVQConfig(PretrainedConfig):
    r"""
    Configuration for [`ArcVQModel`]. Defaults are the paper's small VQ-VAE with the full SAMP prior.

    Backbone:
        num_channels (`int`, 3): image channels in and out.
        backbone (`str`, `"vqvae"`): `"vqvae"` (the paper's x4 conv/residual net) or `"vqgan"` (taming-style
            x2^(len(channel_multipliers)-1) net built from diffusers' Encoder/Decoder blocks).
        hidden_size / residual_hidden_size / num_residual_layers: the `"vqvae"` backbone's widths.
        base_channels / channel_multipliers / layers_per_block / norm_num_groups / latent_channels /
            attention_at_lowest_resolution: the `"vqgan"` backbone's shape.
    Quantizer:
        codebook_size (`int`, 512): K.  codebook_dim (`int`, 64): D.
        distance (`str`, `"cosine"`): code assignment, `"cosine"` (SAMP) or `"euclidean"` (plain VQ).
        codebook_init (`str`, `"uniform_normalized"`): `"uniform_normalized"` = U(-1, 1) rows scaled to norm 1;
            `"uniform_scaled"` = U(-1/K, 1/K) as in the textbook VQ-VAE.
        commitment_cost (`float`, 0.25): beta.  legacy_beta_placement (`bool`, False): put beta on the codebook term
            instead of the commitment term (taming's "legacy" behaviour).
        use_ball_bound (`bool`, True), ball_growth_rate (`float`, 3e-4): BBNR, radius R(t) = exp(alpha * t).
        use_arc_margin (`bool`, True), arc_scale (s, 5.0), arc_margin (m, 0.1), arc_top_k (3),
            arc_weight (gamma0, 1.5), arc_weight_decay (lambda, 5e-4): the additive angular-margin loss,
            weighted by gamma_t = gamma0 * exp(-lambda * t). gamma0 = 1.5 (the authors use 1; preset
            `arcvq-authors`) was set from the sweep in benchmarks/RESULTS.md, on the earlier bias-free backbone: on
            mnist-5k at 1500 steps 1 left 14 % of the codes dead, 2 kept 99 % alive but cost 0.65 dB of PSNR, 1.5
            kept 95.5-96.5 % alive at 22.73-22.84 dB (three seeds). On the current backbone (seed 0,
            benchmarks/authors-backbone) 1.5 gives 92.2 % / 22.64 dB and 1 gives 80.5 % / 22.77 dB; it has not been
            re-swept there. Raise it when codebook usage matters more than PSNR.
        quantizer_chunk_elements (`int`, 2**22): largest number of code-by-token similarities held at once, which
            bounds the extra memory of assignment and of the arc loss (forward and backward).
    Options beyond the paper (docs/method.md §1.10; each default is the paper's behaviour):
        arc_weight_floor (`float`, 0.0): gamma_t never falls below this, so the arc loss keeps acting after the
            decay (the paper's gamma_t is 0.01 by step 10000).
        ball_max_radius (`float` or None, None): R(t) = min(exp(alpha * t), this), so the ball keeps binding after
            exp(alpha * t) has outgrown the codes (the paper's R(t) is 20 at step 10000); None: no cap.
        arc_memory_size (`int`, 0): the arc loss also sees this many latents of earlier training batches (unit
            vectors, detached, newest kept), so with many codes its positives are not one batch's few tokens.
        unused_code_window (`int`, 0): when > 0, in training, every code that won no latent over the last this many
            steps is pulled toward the mean direction of its arc positives (its top_k latents by angle), with
            weight gamma_t; needs `codebook_update="gradient"`.
        codebook_update (`str`, `"gradient"`): `"gradient"` (the paper: the codebook term of the VQ loss trains the
            codes) or `"ema"`: each code becomes the exponential moving average of the raw latents assigned to it
            (by angle or distance, whatever `distance` says), and the VQ loss keeps only beta * commitment.
        ema_decay (`float`, 0.99): the decay of those averages and of the code-use counts below.
        dead_code_threshold (`float`, 0.0): when > 0, in training, a code whose moving-average use per step falls
            below this is restarted on a random latent of the batch (0: never).
        spherical_codes (`bool`, False): l2-normalise the latent and its code after the assignment, so the decoder
            receives unit vectors (the codes' norms, which the assignment by angle ignores, no longer reach it).
        kmeans_init (`bool`, False) / kmeans_iters (`int`, 10): the first training forward sets the codebook to
            the k-means means (`kmeans_iters` rounds) of its batch of latents; a saved model records that it
            happened and is never re-initialised.
    Reconstruction:
        reconstruction_loss (`str`, `"mse"`): `"mse"` (divided by `data_variance`) or `"l1"`.
        data_variance (`float`, 1.0): the VQ-VAE paper's normaliser of the MSE.
    """

    model_type = "arcvq"

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> tuple[dict, dict]:
        """`PretrainedConfig.get_config_dict`, with clear errors for a local folder that does not exist, has no
        config.json, or holds an unreadable or non-finite weights file (checked here because the config is read
        first), and for a config without `"model_type": "arcvq"`."""
        require_existing_folder(pretrained_model_name_or_path, "model location")
        folder = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(folder) and not os.path.isfile(_local_config_file(folder, kwargs)):
            # transformers would go on with the default config: another assignment rule (cosine instead of
            # euclidean) and other quantizer settings than the weights were trained with, without a word.
            raise FileNotFoundError(
                f"{_local_config_file(folder, kwargs)} does not exist: the folder {folder!r} has no config.json, and "
                "an ArcVQ model's settings (assignment rule, codebook, backbone) cannot be guessed from its weights. "
                "Copy the config.json the model was saved with into the folder (or save it again with "
                "save_pretrained)."
            )
        require_readable_safetensors(folder)
        require_finite_weights(folder)
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if "model_type" not in config_dict:
            raise ValueError(
                f'The config of {folder!r} has no "model_type" entry, so it cannot be told apart from another '
                f'model\'s config. If it is an ArcVQ model, add "model_type": "{cls.model_type}" to its config.json.'
            )
        return config_dict, kwargs

    def __init__(
        self,
        num_channels: int = 3,
        backbone: str = "vqvae",
        hidden_size: int = 128,
        residual_hidden_size: int = 32,
        num_residual_layers: int = 2,
        base_channels: int = 128,
        channel_multipliers: list[int] | None = None,
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        latent_channels: int = 256,
        attention_at_lowest_resolution: bool = True,
        codebook_size: int = 512,
        codebook_dim: int = 64,
        distance: str = "cosine",
        codebook_init: str = "uniform_normalized",
        commitment_cost: float = 0.25,
        legacy_beta_placement: bool = False,
        use_ball_bound: bool = True,
        ball_growth_rate: float = 3e-4,
        use_arc_margin: bool = True,
        arc_scale: float = 5.0,
        arc_margin: float = 0.1,
        arc_top_k: int = 3,
        arc_weight: float = 1.5,
        arc_weight_decay: float = 5e-4,
        quantizer_chunk_elements: int = 2**22,
        arc_weight_floor: float = 0.0,
        ball_max_radius: float | None = None,
        arc_memory_size: int = 0,
        unused_code_window: int = 0,
        codebook_update: str = "gradient",
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.0,
        spherical_codes: bool = False,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        reconstruction_loss: str = "mse",
        data_variance: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.num_channels = num_channels
        self.backbone = backbone
        self.hidden_size = hidden_size
        self.residual_hidden_size = residual_hidden_size
        self.num_residual_layers = num_residual_layers
        self.base_channels = base_channels
        self.channel_multipliers = list(channel_multipliers) if channel_multipliers is not None else [1, 2, 2, 4]
        self.layers_per_block = layers_per_block
        self.norm_num_groups = norm_num_groups
        self.latent_channels = latent_channels
        self.attention_at_lowest_resolution = attention_at_lowest_resolution
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.distance = distance
        self.codebook_init = codebook_init
        self.commitment_cost = commitment_cost
        self.legacy_beta_placement = legacy_beta_placement
        self.use_ball_bound = use_ball_bound
        self.ball_growth_rate = ball_growth_rate
        self.use_arc_margin = use_arc_margin
        self.arc_scale = arc_scale
        self.arc_margin = arc_margin
        self.arc_top_k = arc_top_k
        self.arc_weight = arc_weight
        self.arc_weight_decay = arc_weight_decay
        self.quantizer_chunk_elements = quantizer_chunk_elements
        self.arc_weight_floor = arc_weight_floor
        self.ball_max_radius = ball_max_radius
        self.arc_memory_size = arc_memory_size
        self.unused_code_window = unused_code_window
        self.codebook_update = codebook_update
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.spherical_codes = spherical_codes
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.reconstruction_loss = reconstruction_loss
        self.data_variance = data_variance
        self._validate()
        super().__init__(**kwargs)

    @property
    def downsampling_factor(self) -> int:
        """How many pixels one image token covers along each side."""
        if self.backbone == "vqvae":
            return 4
        return 2 ** (len(self.channel_multipliers) - 1)

    def _validate(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"ArcVQConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")

        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ArcVQConfig.{name} must be an integer >= 1, got {value!r}.")

        def boolean(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, bool):
                # bool("no") is True: a string here would silently switch the option on.
                raise ValueError(
                    f"ArcVQConfig.{name} must be true or false (a JSON boolean, not a string or number), got "
                    f"{value!r}; fix it in config.json."
                )

        def non_negative(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"ArcVQConfig.{name} must be a number >= 0, got {value!r}.")

        choice("backbone", BACKBONES)
        choice("distance", DISTANCES)
        choice("codebook_init", CODEBOOK_INITS)
        choice("reconstruction_loss", RECONSTRUCTION_LOSSES)
        choice("codebook_update", CODEBOOK_UPDATES)
        for name in (
            "num_channels",
            "hidden_size",
            "residual_hidden_size",
            "base_channels",
            "layers_per_block",
            "norm_num_groups",
            "latent_channels",
            "codebook_size",
            "codebook_dim",
            "arc_top_k",
            "quantizer_chunk_elements",
            "kmeans_iters",
        ):
            positive_int(name)
        for name in ("arc_memory_size", "unused_code_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ArcVQConfig.{name} must be an integer >= 0 (0: off), got {value!r}.")
        value = self.ball_max_radius
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            raise ValueError(f"ArcVQConfig.ball_max_radius must be a number > 0, or null for no cap; got {value!r}.")
        if self.unused_code_window and self.codebook_update != "gradient":
            raise ValueError(
                "ArcVQConfig.unused_code_window pulls unused codes by gradient, but codebook_update='ema' gives the "
                "codebook none; revive an EMA codebook's unused codes with dead_code_threshold, or set "
                "unused_code_window=0."
            )
        for name in (
            "num_residual_layers",
            "commitment_cost",
            "ball_growth_rate",
            "arc_scale",
            "arc_margin",
            "arc_weight",
            "arc_weight_decay",
            "arc_weight_floor",
            "dead_code_threshold",
        ):
            non_negative(name)
        if (
            isinstance(self.ema_decay, bool)
            or not isinstance(self.ema_decay, int | float)
            or not 0 <= self.ema_decay < 1
        ):
            raise ValueError(f"ArcVQConfig.ema_decay must be a number in [0, 1), got {self.ema_decay!r}.")
        for name in (
            "attention_at_lowest_resolution",
            "legacy_beta_placement",
            "use_ball_bound",
            "use_arc_margin",
            "spherical_codes",
            "kmeans_init",
        ):
            boolean(name)
        value = self.data_variance
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"ArcVQConfig.data_variance must be a number > 0, got {value!r}; fix it in config.json.")
        if not self.channel_multipliers or any(
            isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.channel_multipliers
        ):
            raise ValueError(
                f"ArcVQConfig.channel_multipliers must be a non-empty list of integers >= 1, "
                f"got {self.channel_multipliers!r}."
            )
        if self.backbone == "vqgan":
            for width in [self.base_channels * m for m in self.channel_multipliers]:
                if width % self.norm_num_groups:
                    raise ValueError(
                        f"vqgan backbone: every width base_channels * multiplier ({width}) must be divisible by "
                        f"norm_num_groups ({self.norm_num_groups})."
                    )

    # ----- presets -------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str, variant: str = "vqvae", **overrides: Any) -> ArcVQConfig:
        """One of `PRESETS` (`arcvq`, `arcvq-authors`, `arcvq-spherical-ema`, `arcvq-lowdim`, `vq-baseline`,
        `cosine-only`, `no-ball`, `no-arc`, and the field baseline `ema-kmeans-restart`) on the `vqvae` or `vqgan`
        variant; keyword overrides win."""
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; expected one of {sorted(PRESETS)}.")
        if variant not in BACKBONES:
            raise ValueError(f"Unknown variant {variant!r}; expected one of {BACKBONES}.")
        base = VQGAN_VARIANT if variant == "vqgan" else {}
        return cls(**{**base, **PRESETS[preset], **overrides})


# The quantizer switches that define each ablation; backbone knobs come from the variant.
PRESETS: dict[str, dict[str, Any]] = {
    "arcvq": {
        "distance": "cosine",
        "codebook_init": "uniform_normalized",
        "use_ball_bound": True,
        "use_arc_margin": True,
    },
    "no-ball": {
        "distance": "cosine",
        "codebook_init": "uniform_normalized",
        "use_ball_bound": False,
        "use_arc_margin": True,
    },
    "no-arc": {
        "distance": "cosine",
        "codebook_init": "uniform_normalized",
        "use_ball_bound": True,
        "use_arc_margin": False,
    },
    # The authors' release recipe: the full prior with their gamma0 = 1 (our default is 1.5, see the docstring).
    # With `data_variance` = var(train / 255) * 4 (what the training example computes from the training split),
    # the loss equals theirs term by term; on the vqgan variant it is their ImageNet config.
    "arcvq-authors": {
        "distance": "cosine",
        "codebook_init": "uniform_normalized",
        "use_ball_bound": True,
        "use_arc_margin": True,
        "arc_weight": 1.0,
    },
    "cosine-only": {
        "distance": "cosine",
        "codebook_init": "uniform_normalized",
        "use_ball_bound": False,
        "use_arc_margin": False,
    },
    "vq-baseline": {
        "distance": "euclidean",
        "codebook_init": "uniform_scaled",
        "use_ball_bound": False,
        "use_arc_margin": False,
    },
    # ArcVQ kept alive on photos (benchmarks/field_baselines, row arcvq-light-spherical-ema-kmeans): angle assignment
    # and the arc-margin loss at a small constant weight (gamma_t = 0.05: the paper's 1.5 decaying cost 6 dB of PSNR on
    # photos), unit codes, EMA codes with k-means init and restarts (the ball bounds nothing on unit codes).
    "arcvq-spherical-ema": {
        "distance": "cosine",
        "codebook_init": "uniform_normalized",
        "use_ball_bound": True,
        "use_arc_margin": True,
        "arc_weight": 0.05,
        "arc_weight_decay": 0.0,
        "spherical_codes": True,
        "codebook_update": "ema",
        "ema_decay": 0.99,
        "dead_code_threshold": 2.0,
        "kmeans_init": True,
        "kmeans_iters": 10,
    },
    # Not ArcVQ: the field's standard remedy for codebook collapse (docs/method.md §1.10), the quantizer a tokenizer
    # builder would pick instead, as a preset of the same layer: nearest code by Euclidean distance, codes that are
    # EMA averages (decay 0.99) of their latents, k-means init on the first batch (10 rounds), restart of codes used
    # less than twice per step (moving average), commitment weight 1. The settings of vector-quantize-pytorch's
    # `VectorQuantize(decay=0.99, kmeans_init=True, threshold_ema_dead_code=2)`; tokenizing needs none of it.
    "ema-kmeans-restart": {
        "distance": "euclidean",
        "codebook_init": "uniform_scaled",
        "use_ball_bound": False,
        "use_arc_margin": False,
        "codebook_update": "ema",
        "ema_decay": 0.99,
        "dead_code_threshold": 2.0,
        "kmeans_init": True,
        "kmeans_iters": 10,
        "commitment_cost": 1.0,
    },
}

# ArcVQ on the field's low-dimensional cosine codes (benchmarks/field_baselines, row
# arcvq-lowdim-spherical-ema-kmeans-g0.002): `arcvq-spherical-ema` on 8-dim unit codes (the 1x1 quant conv projects to
# codebook_dim = 8) with the arc-margin loss at a constant gamma_t = 0.002, the weight of lowest training loss among
# 0.05 / 0.01 / 0.002 (every weight tried cost PSNR against no arc loss; this one the least).
PRESETS["arcvq-lowdim"] = {**PRESETS["arcvq-spherical-ema"], "codebook_dim": 8, "arc_weight": 0.002}

# The authors' ImageNet VQGAN (their taming fork, configs/imagenet_vqgan.yaml): z_channels = embed_dim = 16 and
# taming's default legacy beta placement (commitment weight 1, codebook weight 0.25). One deliberate difference:
# their BBNR also runs in validation forwards that are given a step; ours, like docs/method.md §1.4, only in training.
VQGAN_VARIANT: dict[str, Any] = {
    "backbone": "vqgan",
    "codebook_size": 1024,
    "codebook_dim": 16,
    "base_channels": 128,
    "channel_multipliers": [1, 2, 2, 4],
    "latent_channels": 16,
    "legacy_beta_placement": True,
    "ball_growth_rate": 5e-5,
    "arc_scale": 10.0,
    "arc_weight": 1.0,
    "arc_weight_decay": 1e-4,
    "reconstruction_loss": "l1",
}

__all__ = [
    "ArcVQConfig",
    "PRESETS",
    "VQGAN_VARIANT",
    "looks_like_local_path",
    "require_existing_folder",
    "require_finite_weights",
    "require_readable_safetensors",
]
