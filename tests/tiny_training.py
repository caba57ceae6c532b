"""Small shared pieces of the training tests: a tiny VQ-VAE, a few MNIST digits as a data set, fast arguments, and
the skip marker of tests that need the perceptual weights."""

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, DatasetDict, Image
from transformers import TrainingArguments

from arcvq_hf import ArcVQConfig, ArcVQModel
from arcvq_hf.data.builtin import mnist_arrays
from arcvq_hf.evaluation.loop import perceptual_weights_available
from arcvq_hf.model.image_processing_arcvq import to_unit_range

# The documented command (the error for missing weights must name exactly this).
FETCH_COMMAND = "python -m arcvq_hf.evaluation.perceptual fetch"
# Where arcvq_hf.evaluation.perceptual looks for the weights; an empty folder there simulates a machine without them.
CACHE_ENV = "ARCVQ_PERCEPTUAL_CACHE"

TINY = {
    "hidden_size": 16,
    "residual_hidden_size": 8,
    "num_residual_layers": 1,
    "codebook_size": 32,
    "codebook_dim": 8,
    "ball_growth_rate": 0.05,
    "arc_weight_decay": 0.05,
}


def digits(count: int, offset: int = 0) -> Dataset:
    """`count` mnist-5k training digits from `offset` as a data set with `image` (PIL, grey) and `label`."""
    pixels = mnist_arrays()[0][offset : offset + count]
    images = [
        PIL.Image.fromarray(np.round(to_unit_range(x[None])[0, 0] * 255).astype(np.uint8), mode="L") for x in pixels
    ]
    return Dataset.from_dict({"image": images, "label": list(range(count))}).cast_column("image", Image())


def save_digit_dataset(path) -> None:
    """A save_to_disk DatasetDict: 40 training digits, 11 test digits."""
    DatasetDict(train=digits(40), test=digits(11, offset=200)).save_to_disk(str(path))


def tiny_model(seed: int = 0, **overrides) -> ArcVQModel:
    torch.manual_seed(seed)
    return ArcVQModel(ArcVQConfig(**{"num_channels": 1, **TINY, **overrides}))


def training_args(output_dir, **overrides) -> TrainingArguments:
    settings = {
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 5,
        "learning_rate": 1e-2,
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
    }
    settings.update(overrides)
    return TrainingArguments(output_dir=str(output_dir), **settings)


def needs_perceptual_weights(*networks: str) -> pytest.MarkDecorator:
    """Skip unless the named perceptual networks (default: LPIPS-alex and Inception) are installed."""
    return pytest.mark.skipif(
        not perceptual_weights_available(*networks),
        reason=f"perceptual weights {networks or ('alex', 'inception')} not installed; run `{FETCH_COMMAND}`",
    )
