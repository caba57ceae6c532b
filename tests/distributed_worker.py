"""Run by tests/test_train_arcvq.py under `torchrun --nproc_per_node 2`: the training example's `main`, then every
rank writes its own codebook and final evaluation metrics so the test can compare ranks with a single process."""

import json
import os
import sys

from example_scripts import load_example
from safetensors.torch import save_file


def main() -> None:
    trainer, metrics = load_example("train_arcvq").main(sys.argv[1:])
    rank = trainer.args.process_index
    folder = os.path.join(trainer.args.output_dir, "ranks")
    os.makedirs(folder, exist_ok=True)
    save_file({"codebook": trainer.model.codebook.detach().contiguous()}, os.path.join(folder, f"codebook{rank}.st"))
    with open(os.path.join(folder, f"metrics{rank}.json"), "w") as handle:
        json.dump({**metrics, "world_size": trainer.args.world_size}, handle)


if __name__ == "__main__":
    main()
