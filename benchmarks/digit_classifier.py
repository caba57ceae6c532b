"""A small CNN digit classifier that scores generated MNIST samples (benchmarks/prior_quality.py).

Trained on the 4000 mnist-5k training digits only (reference split, docs/method.md §4), with random shifts of up to
2 pixels; its weights ship beside this file as digit_classifier.safetensors (about 0.4 MB).

    python benchmarks/digit_classifier.py            # trains, saves the weights, prints the test accuracy
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from arcvq_hf.data.builtin import mnist_arrays
from arcvq_hf.utils.io_utils import atomic_write

DEFAULT_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digit_classifier.safetensors")


class DigitClassifier(nn.Module):
    """(B, 1, 28, 28) pixels in [-1, 1] -> (B, 10) logits. Two conv blocks and a small MLP (~0.1 M parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))


def load_digit_classifier(path: str = DEFAULT_WEIGHTS) -> DigitClassifier:
    """The trained classifier, in eval mode."""
    classifier = DigitClassifier()
    classifier.load_state_dict(load_file(path))
    return classifier.eval()


@torch.no_grad()
def predict_digits(classifier: DigitClassifier, pixel_values: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(B, 1, 28, 28) pixels in [-1, 1] -> (B,) predicted digits."""
    classifier.eval()
    predictions = [
        classifier(pixel_values[start : start + batch_size].float()).argmax(dim=1)
        for start in range(0, pixel_values.shape[0], batch_size)
    ]
    return torch.cat(predictions)


def random_shift(pixel_values: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in x and y, filling with the background value -1."""
    padded = F.pad(pixel_values, (max_shift,) * 4, value=-1.0)
    size = pixel_values.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (pixel_values.shape[0], 2), generator=generator)
    return torch.stack(
        [image[:, dy : dy + size, dx : dx + size] for image, (dy, dx) in zip(padded, offsets.tolist(), strict=True)]
    )


def train_digit_classifier(
    epochs: int = 20, batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0
) -> tuple[DigitClassifier, float]:
    """Train on the mnist-5k train split; returns (classifier, accuracy on the 1000 test digits)."""
    train, test, train_labels, test_labels = mnist_arrays()
    train, test = torch.from_numpy(np.asarray(train)).float(), torch.from_numpy(np.asarray(test)).float()
    train_labels = torch.from_numpy(np.asarray(train_labels)).long()
    test_labels = torch.from_numpy(np.asarray(test_labels)).long()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    classifier = DigitClassifier()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(epochs):
        classifier.train()
        order = torch.randperm(train.shape[0], generator=generator)
        total = 0.0
        for start in range(0, train.shape[0], batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(random_shift(train[index], 2, generator)), train_labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * index.numel()
        scheduler.step()
        accuracy = float((predict_digits(classifier, test) == test_labels).float().mean())
        print(f"epoch {epoch + 1}: train loss {total / train.shape[0]:.4f}, test accuracy {accuracy:.4f}")
    return classifier.eval(), accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=DEFAULT_WEIGHTS)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    args = parser.parse_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    classifier, accuracy = train_digit_classifier(epochs=args.epochs, seed=args.seed)
    weights = {name: tensor.contiguous() for name, tensor in classifier.state_dict().items()}
    atomic_write(args.output, lambda temporary: save_file(weights, temporary))
    print(f"test accuracy {accuracy:.4f} (1000 mnist-5k test digits); weights saved to {args.output}")


if __name__ == "__main__":
    main()
