"""Train or fine-tune an ArcVQ image tokenizer with transformers.Trainer.

Examples (all offline):

    # the paper's small VQ-VAE with the full SAMP prior on the built-in MNIST subset
    python examples/train_arcvq.py --dataset mnist-5k --preset arcvq --output_dir runs/arcvq-mnist \
        --per_device_train_batch_size 256 --learning_rate 3e-4 --max_steps 1500 --logging_steps 50

    # the textbook VQ-VAE baseline on the built-in photo crops
    python examples/train_arcvq.py --dataset photos --preset vq-baseline --output_dir runs/vq-photos --max_steps 1500

    # fine-tune a saved model on a local image folder (the ball radius continues from the saved step)
    python examples/train_arcvq.py --model_name_or_path runs/arcvq-mnist --dataset path/to/images \
        --image_size 32 --output_dir runs/finetuned --max_steps 500

    # two processes on CPU (gloo): torchrun, or accelerate's torchrun-based launcher
    torchrun --nproc_per_node 2 examples/train_arcvq.py --dataset mnist-5k --output_dir runs/ddp --max_steps 100
    accelerate launch --multi_gpu --num_processes 2 examples/train_arcvq.py --use_cpu --dataset mnist-5k \
        --output_dir runs/acc --max_steps 100
    (`accelerate launch --cpu` starts a single process unless MPI is set up.)

Options: `--dataset` (mnist-5k | photos | save_to_disk folder | image folder | hub id), `--variant vqvae|vqgan`,
`--preset arcvq|vq-baseline|cosine-only|no-ball|no-arc`, `--model_name_or_path`, every TrainingArguments flag;
`python examples/train_arcvq.py --help` lists them all. The output folder gets config.json, model.safetensors,
preprocessor_config.json, the model code files (for trust_remote_code) and a README.md model card.
"""

import shlex
import sys

from transformers import HfArgumentParser, TrainingArguments

from arcvq_hf.training import DataArguments, ModelArguments, run_training


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    # The paper's VQ-VAE optimizer: Adam, constant rate 3e-4, no gradient clipping (override on the command line).
    parser.set_defaults(learning_rate=3e-4, lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=50)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    command = shlex.join(["python", *sys.argv])
    if training_args.world_size > 1:
        command += f"  # run on {training_args.world_size} processes (torchrun / accelerate launch)"
    run_training(model_args, data_args, training_args, command=command)


if __name__ == "__main__":
    main()
