"""Image tokens as a language: an autoregressive transformer prior over ArcVQ codes.

An image is encoded by an [`ArcVQModel`] into a (h, w) grid of code ids; read in raster order (row by row, left to
right) it becomes a sequence of h * w tokens. [`ImageTokenVocabulary`] places those codes, a BOS token and one token
per class into a language model's vocabulary, so a sequence for class c reads

    [BOS, <class c>, image token 0, ..., image token h*w - 1]

and a GPT-2 trained on such sequences samples new images given a class. [`ImageTokenLogitsProcessor`] restricts
`generate()` to the token kind each position allows, so every sample decodes. Token data sets (encoding images
once, the collator) and pictures of sampled tokens are in `arcvq_hf.prior.token_data`.

Layout of the vocabulary (ids below `offset` belong to the language model's own tokens and are never produced):

    [offset, offset + K)             image tokens (code id k -> offset + k)
    offset + K                       BOS
    offset + K + 1 ... + C           class tokens (class c -> offset + K + 1 + c)
    offset + K + C + 1               PAD
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GPT2Config, LogitsProcessor, PreTrainedModel

# The GPT2Config attribute that carries the token layout and the tokenizer of a saved prior.
PRIOR_CONFIG_KEY = "image_prior"


# ----------------------------------------------------------------------------------------------------------------
# Raster order
# ----------------------------------------------------------------------------------------------------------------


def raster_order(image_tokens: torch.Tensor) -> torch.Tensor:
    """(B, h, w) code ids -> (B, h * w), row by row, left to right (the order `ArcVQModel.decode` reads back)."""
    if image_tokens.ndim != 3:
        raise ValueError(f"image_tokens must have shape (batch, h, w), got {tuple(image_tokens.shape)}.")
    return image_tokens.reshape(image_tokens.shape[0], -1)


def from_raster_order(sequence: torch.Tensor, latent_shape: Sequence[int]) -> torch.Tensor:
    """(B, h * w) code ids -> (B, h, w); the inverse of [`raster_order`]."""
    height, width = (int(side) for side in latent_shape)
    if sequence.ndim != 2 or sequence.shape[1] != height * width:
        raise ValueError(
            f"a raster sequence for latent shape ({height}, {width}) must have shape (batch, {height * width}), "
            f"got {tuple(sequence.shape)}."
        )
    return sequence.reshape(sequence.shape[0], height, width)


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTokenVocabulary:
    """Bijection between ArcVQ code ids and a language model's token ids, plus BOS, class and PAD tokens.

    Args:
        codebook_size: K, the number of image tokens (the tokenizer's `config.codebook_size`).
        num_classes: C, one conditioning token per class; 0 for an unconditional prior.
        offset: id of image token 0; the ids below it are left to the language model's own vocabulary.
    """

    codebook_size: int
    num_classes: int = 0
    offset: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("codebook_size", 1), ("num_classes", 0), ("offset", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"ImageTokenVocabulary.{name} must be an integer >= {minimum}, got {value!r}.")

    # ----- layout ----------------------------------------------------------------------------------------------
    @property
    def image_token_range(self) -> range:
        """The language-model ids of the image tokens."""
        return range(self.offset, self.offset + self.codebook_size)

    @property
    def bos_token_id(self) -> int:
        return self.offset + self.codebook_size

    @property
    def class_token_range(self) -> range:
        """The language-model ids of the class tokens, class 0 first."""
        return range(self.bos_token_id + 1, self.bos_token_id + 1 + self.num_classes)

    @property
    def pad_token_id(self) -> int:
        return self.bos_token_id + 1 + self.num_classes

    @property
    def vocab_size(self) -> int:
        """Smallest language-model vocabulary that holds every id of this layout."""
        return self.pad_token_id + 1

    @property
    def is_class_conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def prefix_length(self) -> int:
        """Tokens before the first image token: BOS, then the class token for a conditional prior."""
        return 2 if self.is_class_conditional else 1

    # ----- image tokens <-> ids --------------------------------------------------------------------------------
    def image_tokens_to_ids(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Code ids (any shape; (B, h, w) grids should go through [`raster_order`] first) -> language-model ids."""
        _check_integer_tensor(image_tokens, "image_tokens")
        _check_in_range(image_tokens, range(self.codebook_size), "image tokens (code ids)")
        return image_tokens.long() + self.offset

    def ids_to_image_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Language-model ids (any shape) -> code ids in [0, K). Raises ValueError for any id that is not an
        image token (BOS, class, PAD or a base-vocabulary id)."""
        _check_integer_tensor(ids, "ids")
        _check_in_range(ids, self.image_token_range, "image-token ids")
        return ids.long() - self.offset

    # ----- class tokens ----------------------------------------------------------------------------------------
    def class_token_ids(self, labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Class labels (B,) in [0, C) -> class token ids (B,)."""
        if not self.is_class_conditional:
            raise ValueError("this vocabulary has no class tokens (num_classes=0).")
        labels = torch.as_tensor(labels)
        _check_integer_tensor(labels, "labels")
        _check_in_range(labels, range(self.num_classes), "class labels")
        return labels.long() + self.class_token_range.start

    def class_token_ids_to_labels(self, ids: torch.Tensor) -> torch.Tensor:
        """Class token ids (B,) -> class labels (B,); the inverse of [`class_token_ids`]."""
        _check_integer_tensor(ids, "ids")
        _check_in_range(ids, self.class_token_range, "class-token ids")
        return ids.long() - self.class_token_range.start

    # ----- whole sequences -------------------------------------------------------------------------------------
    def prompt_ids(
        self, labels: torch.Tensor | Sequence[int] | None = None, batch_size: int | None = None
    ) -> torch.Tensor:
        """(B, prefix_length) prompts: [BOS, class] for a conditional prior (pass `labels`), [BOS] otherwise (pass
        `batch_size`)."""
        if self.is_class_conditional:
            if labels is None:
                raise ValueError("a class-conditional vocabulary needs `labels` for its prompts.")
            class_ids = self.class_token_ids(labels)
            bos = torch.full_like(class_ids, self.bos_token_id)
            return torch.stack([bos, class_ids], dim=1)
        if labels is not None:
            raise ValueError("this vocabulary has no class tokens (num_classes=0); pass batch_size, not labels.")
        if batch_size is None or batch_size < 1:
            raise ValueError(f"an unconditional prompt needs batch_size >= 1, got {batch_size!r}.")
        return torch.full((batch_size, 1), self.bos_token_id, dtype=torch.long)

    def build_sequences(
        self, image_tokens: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None
    ) -> torch.Tensor:
        """Raster code ids (B, L) (or grids (B, h, w)) and labels (B,) -> input ids (B, prefix_length + L)."""
        if image_tokens.ndim == 3:
            image_tokens = raster_order(image_tokens)
        if image_tokens.ndim != 2:
            raise ValueError(
                f"image_tokens must have shape (batch, L) or (batch, h, w), got {tuple(image_tokens.shape)}."
            )
        if self.is_class_conditional:
            prompts = self.prompt_ids(labels=labels)
            if prompts.shape[0] != image_tokens.shape[0]:
                raise ValueError(f"{prompts.shape[0]} labels for {image_tokens.shape[0]} images.")
        else:
            prompts = self.prompt_ids(labels=labels, batch_size=image_tokens.shape[0])
        return torch.cat([prompts.to(image_tokens.device), self.image_tokens_to_ids(image_tokens)], dim=1)

    def split_sequences(self, ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Input ids (B, prefix_length + L) -> (labels (B,) or None, raster code ids (B, L)).

        Checks that every position holds the token kind it should (BOS, class, image)."""
        if ids.ndim != 2 or ids.shape[1] <= self.prefix_length:
            raise ValueError(
                f"sequences must have shape (batch, {self.prefix_length} + L) with L >= 1, got {tuple(ids.shape)}."
            )
        _check_in_range(ids[:, 0], range(self.bos_token_id, self.bos_token_id + 1), "BOS positions")
        labels = self.class_token_ids_to_labels(ids[:, 1]) if self.is_class_conditional else None
        return labels, self.ids_to_image_tokens(ids[:, self.prefix_length :])

    def allowed_token_ids(self, position: int, sequence_length: int) -> range:
        """Ids allowed at `position` of a sequence with `sequence_length` image tokens: BOS at 0, class tokens at 1
        (conditional), image tokens up to the end of the image, PAD after it."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}.")
        if position == 0:
            return range(self.bos_token_id, self.bos_token_id + 1)
        if position < self.prefix_length:
            return self.class_token_range
        if position < self.prefix_length + sequence_length:
            return self.image_token_range
        return range(self.pad_token_id, self.pad_token_id + 1)

    # ----- persistence -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ImageTokenVocabulary:
        return cls(**{key: values[key] for key in ("codebook_size", "num_classes", "offset")})


def _check_integer_tensor(values: torch.Tensor, name: str) -> None:
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(values).__name__}.")
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {values.dtype}.")


def _check_in_range(values: torch.Tensor, allowed: range, what: str) -> None:
    if values.numel() == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < allowed.start or high >= allowed.stop:
        bad = values[(values < allowed.start) | (values >= allowed.stop)]
        raise ValueError(
            f"{what} must lie in [{allowed.start}, {allowed.stop - 1}], got {bad.numel()} value(s) outside it "
            f"(e.g. {int(bad.flatten()[0])}); overall range [{low}, {high}]."
        )


# ----------------------------------------------------------------------------------------------------------------
# Constrained generation
# ----------------------------------------------------------------------------------------------------------------


class ImageTokenLogitsProcessor(LogitsProcessor):
    """Masks the logits so that each generated position can only take the token kind it allows.

    The position of the next token is the length of `input_ids`, so prompts must be the unpadded prefix
    ([`ImageTokenVocabulary.prompt_ids`]). With a [BOS, class] prompt, positions prefix_length ...
    prefix_length + L - 1 admit only image tokens and any later position only PAD, so
    `generate(..., max_new_tokens=L)` always returns a decodable image. `generate()` applies custom processors
    before temperature / top-k / top-p, so sampling never picks a masked token.

    Args:
        vocabulary: the token layout.
        sequence_length: L = h * w image tokens per image.
    """

    def __init__(self, vocabulary: ImageTokenVocabulary, sequence_length: int) -> None:
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length}.")
        self.vocabulary = vocabulary
        self.sequence_length = sequence_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids (B, t), scores (B, V) for position t -> scores with every disallowed id at -inf."""
        if scores.shape[-1] < self.vocabulary.vocab_size:
            raise ValueError(
                f"the model's vocabulary ({scores.shape[-1]}) is smaller than the image-token layout needs "
                f"({self.vocabulary.vocab_size})."
            )
        allowed = self.vocabulary.allowed_token_ids(input_ids.shape[1], self.sequence_length)
        masked = torch.full_like(scores, float("-inf"))
        masked[:, allowed.start : allowed.stop] = scores[:, allowed.start : allowed.stop]
        return masked


# ----------------------------------------------------------------------------------------------------------------
# The prior: config, likelihood, sampling
# ----------------------------------------------------------------------------------------------------------------


def prior_config(
    vocabulary: ImageTokenVocabulary,
    latent_shape: Sequence[int],
    tokenizer_name_or_path: str | None = None,
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    **overrides: Any,
) -> GPT2Config:
    """A GPT2Config small enough to train on a CPU in minutes, sized to the token layout: `vocab_size` is exactly
    the layout's, `n_positions` = prefix_length + h * w. The layout, the latent shape and the tokenizer path are
    stored under `config.image_prior`, so a saved prior knows how to decode its samples."""
    height, width = (int(side) for side in latent_shape)
    settings: dict[str, Any] = {
        "vocab_size": vocabulary.vocab_size,
        "n_positions": vocabulary.prefix_length + height * width,
        "n_layer": n_layer,
        "n_embd": n_embd,
        "n_head": n_head,
        "bos_token_id": vocabulary.bos_token_id,
        "eos_token_id": None,
        "pad_token_id": vocabulary.pad_token_id,
        PRIOR_CONFIG_KEY: {
            **vocabulary.to_dict(),
            "latent_shape": [height, width],
            "tokenizer_name_or_path": tokenizer_name_or_path,
        },
    }
    settings.update(overrides)
    return GPT2Config(**settings)


def prior_settings(config: GPT2Config) -> tuple[ImageTokenVocabulary, tuple[int, int], str | None]:
    """(vocabulary, latent shape (h, w), tokenizer path) stored in a prior's config by [`prior_config`]."""
    stored = getattr(config, PRIOR_CONFIG_KEY, None)
    if not stored:
        raise ValueError(f"this config has no `{PRIOR_CONFIG_KEY}` entry; build it with arcvq_hf.prior.prior_config.")
    height, width = stored["latent_shape"]
    return ImageTokenVocabulary.from_dict(stored), (int(height), int(width)), stored.get("tokenizer_name_or_path")


@torch.no_grad()
def image_token_nll(
    prior: PreTrainedModel, vocabulary: ImageTokenVocabulary, input_ids: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Negative log-likelihood in nats of every image token, (B, L), under the prior restricted to image tokens
    (the distribution [`ImageTokenLogitsProcessor`] samples from at temperature 1)."""
    prior.eval()
    device = next(prior.parameters()).device
    image = vocabulary.image_token_range
    prefix = vocabulary.prefix_length
    chunks = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        logits = prior(input_ids=ids).logits[:, prefix - 1 : -1, image.start : image.stop].float()
        targets = ids[:, prefix:] - image.start
        chunks.append(-F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu())
    return torch.cat(chunks)


def bits_per_token(nll_nats: torch.Tensor) -> float:
    """Mean of per-token NLLs in nats, converted to bits."""
    return float(nll_nats.double().mean() / math.log(2.0))


@torch.no_grad()
def sample_image_tokens(
    prior: PreTrainedModel,
    labels: torch.Tensor | Sequence[int] | None = None,
    num_samples: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Sample images from a prior built with [`prior_config`]: returns (labels (B,) or None, code grids (B, h, w)).

    Conditional priors take `labels` (one sample per entry); unconditional ones take `num_samples`."""
    vocabulary, latent_shape, _ = prior_settings(prior.config)
    length = latent_shape[0] * latent_shape[1]
    prompts = vocabulary.prompt_ids(labels=labels, batch_size=num_samples)
    if seed is not None:
        torch.manual_seed(seed)
    prior.eval()
    sequences = prior.generate(
        input_ids=prompts.to(next(prior.parameters()).device),
        attention_mask=torch.ones_like(prompts, device=next(prior.parameters()).device),
        logits_processor=[ImageTokenLogitsProcessor(vocabulary, length)],
        do_sample=True,
        temperature=temperature,
        top_k=top_k if top_k is not None else 0,
        top_p=top_p if top_p is not None else 1.0,
        max_new_tokens=length,
        pad_token_id=vocabulary.pad_token_id,
    ).cpu()
    sampled_labels, raster = vocabulary.split_sequences(sequences)
    return sampled_labels, from_raster_order(raster, latent_shape)


__all__ = [
    "PRIOR_CONFIG_KEY",
    "ImageTokenLogitsProcessor",
    "ImageTokenVocabulary",
    "bits_per_token",
    "from_raster_order",
    "image_token_nll",
    "prior_config",
    "prior_settings",
    "raster_order",
    "sample_image_tokens",
]
