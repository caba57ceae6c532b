"""Run by tests/test_training.py under `torchrun --nproc_per_node 2`: the example's `run_training`, then every rank
writes its own codebook and final evaluation metrics so the test can compare ranks with a single process."""

import json
import os

from safetensors.torch import save_file
from transformers import HfArgumentParser, TrainingArguments

from arcvq_hf.training import DataArguments, ModelArguments, run_training


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    trainer, metrics = run_training(model_args, data_args, training_args, command="distributed test")
    rank = training_args.process_index
    folder = os.path.join(training_args.output_dir, "ranks")
    os.makedirs(folder, exist_ok=True)
    save_file({"codebook": trainer.model.codebook.detach().contiguous()}, os.path.join(folder, f"codebook{rank}.st"))
    with open(os.path.join(folder, f"metrics{rank}.json"), "w") as handle:
        json.dump({**metrics, "world_size": training_args.world_size}, handle)


if __name__ == "__main__":
    main()
