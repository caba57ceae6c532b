"""Run by tests/test_streaming.py under `torchrun --nproc_per_node 2`: the training example's `main` with
`--streaming`, recording, on every rank, the source (shard#key) of every training image in the order the optimizer
consumed them, and the final codebook."""

import json
import os
import sys

from example_scripts import load_example
from safetensors.torch import save_file

import arcvq_hf.training.trainer as trainer_module

consumed: list[list[str]] = []
_collate = trainer_module.collate_pixel_values
_compute_loss = trainer_module.ArcVQTrainer.compute_loss


def collate_with_sources(examples):
    """The Trainer's collator, keeping each crop's source (it runs in the DataLoader workers)."""
    return {**_collate(examples), "source": [example.get("source", "") for example in examples]}


def compute_loss_recording(self, model, inputs, *args, **kwargs):
    if model.training:
        consumed.append(list(inputs["source"]))
    return _compute_loss(self, model, inputs, *args, **kwargs)


def main() -> None:
    # ArcVQTrainer takes its default collator from its module at construction time.
    trainer_module.collate_pixel_values = collate_with_sources
    trainer_module.ArcVQTrainer.compute_loss = compute_loss_recording
    trainer, _ = load_example("train_arcvq").main(sys.argv[1:])
    rank = trainer.args.process_index
    folder = os.path.join(trainer.args.output_dir, "ranks")
    os.makedirs(folder, exist_ok=True)
    save_file({"codebook": trainer.model.codebook.detach().contiguous()}, os.path.join(folder, f"codebook{rank}.st"))
    with open(os.path.join(folder, f"consumed{rank}.json"), "w") as handle:
        json.dump({"batches": consumed, "world_size": trainer.args.world_size}, handle)


if __name__ == "__main__":
    main()
