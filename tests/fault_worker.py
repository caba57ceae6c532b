"""The training run of tests/test_fault_injection.py: a tiny model that saves a checkpoint every step."""

from __future__ import annotations

from tiny_training import digits, tiny_model, training_args

from arcvq_hf import ArcVQImageProcessor
from arcvq_hf.data.transforms import pixel_values_transform
from arcvq_hf.training.trainer import ArcVQTrainer

MAX_STEPS = 8


def pixels():
    return digits(16).with_transform(pixel_values_transform(ArcVQImageProcessor(num_channels=1)))


def trainer(output_dir: str, max_steps: int = MAX_STEPS) -> ArcVQTrainer:
    args = training_args(output_dir, max_steps=max_steps, save_strategy="steps", save_steps=1, logging_steps=100)
    return ArcVQTrainer(model=tiny_model(), args=args, train_dataset=pixels())
