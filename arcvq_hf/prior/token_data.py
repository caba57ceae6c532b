"""Data for the image-token prior: images encoded once into cached token data sets, the collator that builds
training sequences, and pictures of sampled tokens (decoded images, grids). The vocabulary, the logits processor and
sampling are in `arcvq_hf.prior.language_model`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch

from arcvq_hf.utils.extras import missing_extra

try:
    from datasets import Dataset
except ImportError as err:
    raise missing_extra("datasets", "train") from err
from transformers import PreTrainedModel

from .language_model import ImageTokenVocabulary, raster_order

# ----------------------------------------------------------------------------------------------------------------
# Token data sets
# ----------------------------------------------------------------------------------------------------------------


def tokenizer_fingerprint(model: torch.nn.Module, image_processor: Any) -> str:
    """sha256 over the tokenizer's weights, its config and its image processor's settings; names a token cache."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    digest.update(json.dumps(image_processor.to_dict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


@torch.no_grad()
def encode_images(model: PreTrainedModel, image_processor: Any, images: list[Any]) -> torch.Tensor:
    """Images (PIL / arrays) -> raster code ids (B, h * w) int64, with the tokenizer in eval mode (in train mode the
    quantizer would move the codebook)."""
    if model.training:
        raise ValueError("call model.eval() before encoding: in train mode the quantizer projects the codebook.")
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    device = next(model.parameters()).device
    return raster_order(model.encode(pixel_values.to(device)).image_tokens).cpu()


def tokenize_image_dataset(
    dataset: Dataset,
    model: PreTrainedModel,
    image_processor: Any,
    cache_dir: str | os.PathLike | None = None,
    image_column: str = "image",
    batch_size: int = 256,
) -> Dataset:
    """Encode every image of `dataset` once: returns the data set with `image_column` replaced by `image_tokens`
    (a list of h * w raster code ids per row); the other columns (e.g. `label`) stay. Puts `model` in eval mode.

    With `cache_dir`, the result is an Arrow file named after the data set's fingerprint and the tokenizer's
    [`tokenizer_fingerprint`]; a later call with the same data and the same tokenizer loads it instead of encoding.
    """
    if image_column not in dataset.column_names:
        raise ValueError(f"dataset has no column {image_column!r}; columns: {dataset.column_names}.")
    model.eval()
    key = hashlib.sha256(
        f"{dataset._fingerprint}|{image_column}|{tokenizer_fingerprint(model, image_processor)}".encode()
    ).hexdigest()[:32]
    cache_file_name = None
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        cache_file_name = os.path.join(os.fspath(cache_dir), f"image-tokens-{key}.arrow")

    def encode_batch(batch: dict[str, list]) -> dict[str, list]:
        return {"image_tokens": encode_images(model, image_processor, batch[image_column]).tolist()}

    return dataset.map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        remove_columns=[image_column],
        cache_file_name=cache_file_name,
        load_from_cache_file=cache_file_name is not None,
        new_fingerprint=key,
        desc="Encoding images to tokens",
    )


class ImageTokenCollator:
    """Rows {`image_tokens`: list[int], `label`: int} -> {`input_ids` (B, prefix + L), `labels` (B, prefix + L)}.

    `labels` copies `input_ids` with the prefix (BOS, class) set to -100, so the language-model loss is the mean
    negative log-likelihood of the image tokens only.
    """

    def __init__(self, vocabulary: ImageTokenVocabulary, label_column: str = "label") -> None:
        self.vocabulary = vocabulary
        self.label_column = label_column

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        image_tokens = torch.tensor([row["image_tokens"] for row in rows], dtype=torch.long)
        labels = None
        if self.vocabulary.is_class_conditional:
            labels = torch.tensor([int(row[self.label_column]) for row in rows], dtype=torch.long)
        input_ids = self.vocabulary.build_sequences(image_tokens, labels)
        targets = input_ids.clone()
        targets[:, : self.vocabulary.prefix_length] = -100
        return {"input_ids": input_ids, "labels": targets}


# ----------------------------------------------------------------------------------------------------------------
# Samples to pictures
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def decode_image_tokens(tokenizer: PreTrainedModel, image_processor: Any, grids: torch.Tensor) -> list[PIL.Image.Image]:
    """Code grids (B, h, w) -> B PIL images, decoded by the ArcVQ tokenizer and post-processed."""
    device = next(tokenizer.parameters()).device
    return image_processor.postprocess(tokenizer.decode(grids.to(device)).cpu(), return_tensors="PIL")


def image_grid(rows: Sequence[Sequence[PIL.Image.Image]], padding: int = 2, scale: int = 1) -> PIL.Image.Image:
    """Paste rows of equally sized images into one picture (one row per list), `padding` black pixels between
    cells, every image enlarged `scale` times with nearest-neighbour resampling."""
    if not rows or not all(rows):
        raise ValueError("image_grid needs at least one non-empty row.")
    cells = [[image.convert("RGB") for image in row] for row in rows]
    sizes = {image.size for row in cells for image in row}
    if len(sizes) != 1:
        raise ValueError(f"all images must have the same size, got {sorted(sizes)}.")
    width, height = (side * scale for side in sizes.pop())
    columns = max(len(row) for row in cells)
    grid = PIL.Image.new("RGB", (columns * (width + padding) + padding, len(cells) * (height + padding) + padding))
    for row_index, row in enumerate(cells):
        for column_index, image in enumerate(row):
            if scale != 1:
                image = image.resize((width, height), PIL.Image.Resampling.NEAREST)
            grid.paste(image, (padding + column_index * (width + padding), padding + row_index * (height + padding)))
    return grid


__all__ = [
    "ImageTokenCollator",
    "decode_image_tokens",
    "encode_images",
    "image_grid",
    "tokenize_image_dataset",
    "tokenizer_fingerprint",
]
