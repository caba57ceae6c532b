"""Trainer glue for streamed training data (`arcvq_hf.data.streaming.StreamingCrops`).

`with_streaming(ArcVQTrainer)` (or `ArcVQGANTrainer`) is the same Trainer with two hooks overridden:
- `get_train_dataloader` returns the stream's own DataLoader instead of `accelerator.prepare`'s. For an
  `IterableDataset`, accelerate would either read everything on rank 0 and dispatch slices (`dispatch_batches`, its
  default) or shard the stream a second time: the stream is already split by rank with `split_dataset_by_node`.
  Trainer still moves each batch to the device (`_prepare_inputs`), and DDP's gradient averaging does not depend on
  the DataLoader.
- `get_resumed_dataloader` (Trainer's hook for streaming loaders) is the stated skip-ahead: a fresh stream that
  drops this rank's first `num_batches` micro-batches without decoding them, instead of accelerate's
  `skip_first_batches`, which would decode and crop every skipped image.
"""

from __future__ import annotations

import functools
from typing import Any

from torch.utils.data import DataLoader

from arcvq_hf.data.streaming import StreamingCrops

from .trainer import ArcVQTrainer


class StreamingTrainerMixin:
    """Mix in before an `ArcVQTrainer` class; `train_dataset` must be a `StreamingCrops`."""

    train_dataset: Any
    data_collator: Any
    args: Any

    def _stream(self) -> StreamingCrops:
        if not isinstance(self.train_dataset, StreamingCrops):
            raise TypeError(
                f"A streaming trainer needs a StreamingCrops train_dataset, got {type(self.train_dataset).__name__}."
            )
        return self.train_dataset

    def get_train_dataloader(self) -> DataLoader:
        return self._stream().dataloader(
            self.data_collator,
            pin_memory=self.args.dataloader_pin_memory,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )

    def get_resumed_dataloader(self, dataloader: DataLoader, num_batches: int) -> DataLoader:
        return (
            self._stream()
            .resumed(num_batches)
            .dataloader(
                self.data_collator,
                pin_memory=self.args.dataloader_pin_memory,
                prefetch_factor=self.args.dataloader_prefetch_factor,
            )
        )


@functools.cache
def with_streaming(trainer_class: type[ArcVQTrainer]) -> type[ArcVQTrainer]:
    """`trainer_class` with `StreamingTrainerMixin`'s DataLoader hooks (one class per base, cached)."""
    return type(f"Streaming{trainer_class.__name__}", (StreamingTrainerMixin, trainer_class), {})


__all__ = ["StreamingTrainerMixin", "with_streaming"]
