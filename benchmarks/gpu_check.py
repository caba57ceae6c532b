"""GPU check of the full-size VQGAN recipe: does it train in bf16 on a CUDA GPU, how fast, in how much memory, and
does the GPU give the CPU's tokens?

On a machine with a CUDA GPU (nothing downloads; `--data` is optional):

    python benchmarks/gpu_check.py --output benchmarks/gpu-check/h100.json              # synthetic images
    python benchmarks/gpu_check.py --data path/to/images --output benchmarks/gpu-check/h100.json

It builds `ArcVQConfig.from_preset("arcvq-authors", variant="vqgan")`, the authors' ImageNet VQGAN
(docs/method.md §1.7: x8, K=1024, D=16, ch 128, ch_mult [1, 2, 2, 4], attention at the lowest resolution), and
trains it at 256 px under bf16 autocast for `--steps` optimizer steps with taming's recipe: the model's loss, the
LPIPS-VGG perceptual loss when its weights are installed (`python -m arcvq_hf.evaluation.perceptual fetch`;
recorded either way), and the PatchGAN hinge loss with the adaptive weight, on from the first step so that every
timed step is a full step. Adam betas (0.5, 0.9) at 4.5e-6 x batch size, as the authors'. Recorded (JSON, printed
and written to `--output`):
- `images_per_second` and `step_ms` over the steps after `--warmup`, uninstrumented;
- `peak_memory_gib`: `torch.cuda.max_memory_allocated` over those steps (and the reserved peak);
- `arc_loss_share`: the arc-margin loss's forward time (with the assignment by angle that the layer takes from the same
  cosines; its backward only rescales a gradient built in the forward,
  docs/method.md §1.5) over the step time, from `--arc_steps` further steps in which the arc loss is timed with
  CUDA synchronisation around it (so those steps are a little slower than the uninstrumented ones);
- `token_agreement`: the trained model's tokens of `--agreement_images` held-out images on the GPU (float32, and
  under bf16 autocast) against the same weights on the CPU (float32): the fraction of equal code ids.

`--dry-run` runs the same code on the CPU at reduced size (base width 16, ch_mult [1, 2], one layer per block,
K 64, 32 px, batch 2, 2 timed steps + 1 timed for the arc loss, float32, no LPIPS-VGG) in seconds: what CI runs
(tests/test_gpu_check.py); its figures mean nothing. `--dtype bf16` / `--perceptual on` run those paths on the CPU
too, about 10x slower (bf16 convolutions are slow on most CPUs).

Status: this script has NOT been run on a GPU yet; no GPU was available where it was written.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

import arcvq_hf.model.quantization as quantization
from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.data.photo_corpus import random_resized_crop
from arcvq_hf.data.streaming import DEFAULT_CROP_SCALE, resize_shorter_center_crop
from arcvq_hf.evaluation.perceptual import PerceptualWeightsMissingError
from arcvq_hf.training.gan import (
    PatchDiscriminator,
    adaptive_gan_weight,
    decoder_last_layer,
    hinge_discriminator_loss,
    load_perceptual_loss,
)

FULL = {"resolution": 256, "batch_size": 8, "steps": 30, "warmup": 5, "arc_steps": 10, "agreement_images": 16}
DRY = {"resolution": 32, "batch_size": 2, "steps": 2, "warmup": 0, "arc_steps": 1, "agreement_images": 2}
DRY_SIZES = {
    "base_channels": 16,
    "channel_multipliers": [1, 2],
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "codebook_size": 64,
}
# The authors' learning rate per image of the batch (taming's base_learning_rate 4.5e-6, scaled by the batch).
BASE_LEARNING_RATE = 4.5e-6
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def image_batches(
    data: str | None, resolution: int, batch_size: int, seed: int, processor: ArcVQImageProcessor
) -> Iterator[torch.Tensor]:
    """Endless (B, 3, R, R) batches in [-1, 1]: random resized crops of the images in `data` (a folder, searched
    recursively), or smooth random synthetic images (sums of a few random sinusoids, so that they compress)."""
    rng = np.random.default_rng(seed)
    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if data else []
    if data and not files:
        raise FileNotFoundError(f"--data {data}: no {'/'.join(sorted(IMAGE_SUFFIXES))} images in it.")
    grid = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / resolution
    while True:
        images = []
        for _ in range(batch_size):
            if files:
                with PIL.Image.open(files[int(rng.integers(len(files)))]) as image:
                    images.append(random_resized_crop(image.convert("RGB"), resolution, rng, scale=DEFAULT_CROP_SCALE))
            else:
                channels = []
                for _ in range(3):
                    fx, fy, phase = rng.uniform(1, 8), rng.uniform(1, 8), rng.uniform(0, 2 * np.pi)
                    channels.append(0.5 + 0.4 * np.sin(2 * np.pi * (fx * grid[1] + fy * grid[0]) + phase))
                pixels = np.stack(channels, axis=-1) + rng.normal(0, 0.03, (resolution, resolution, 3))
                images.append(PIL.Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)))
        yield processor(images, return_tensors="pt").pixel_values


def held_out_images(data: str | None, resolution: int, count: int, processor: ArcVQImageProcessor) -> torch.Tensor:
    """(count, 3, R, R) evaluation images: the protocol's centre crops of the last `count` files of `data`, or
    synthetic images from another seed."""
    if data:
        files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[-count:]
        images = []
        for path in files:
            with PIL.Image.open(path) as image:
                images.append(resize_shorter_center_crop(image.convert("RGB"), resolution))
        return processor(images, return_tensors="pt").pixel_values
    return next(image_batches(None, resolution, count, seed=12345, processor=processor))


class ArcLossTimer:
    """Times the arc loss (wall clock, device-synchronised) while `active`: every call of
    `quantization.arc_margin_loss` and of `quantization.assign_codes_and_arc_margin_loss` (the layer's training path
    when it assigns by angle, which also takes the assignment's argmax from the same cosines)."""

    TIMED = ("arc_margin_loss", "assign_codes_and_arc_margin_loss")

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self.calls, self.active = device, 0.0, 0, False
        self.originals = {name: getattr(quantization, name) for name in self.TIMED}

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return function(*args, **kwargs)
            self._synchronize()
            start = time.perf_counter()
            result = function(*args, **kwargs)
            self._synchronize()
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return result

        return call

    @contextlib.contextmanager
    def installed(self) -> Iterator[ArcLossTimer]:
        # The quantizer calls the module-level functions by name, so replacing them there reaches every call.
        for name, function in self.originals.items():
            setattr(quantization, name, self._timed(function))
        try:
            yield self
        finally:
            for name, function in self.originals.items():
                setattr(quantization, name, function)


def run_check(
    device: str,
    dry_run: bool,
    data: str | None = None,
    resolution: int | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    arc_steps: int | None = None,
    agreement_images: int | None = None,
    perceptual: str = "auto",
    seed: int = 0,
    dtype: str = "bf16",
) -> dict[str, Any]:
    """Train, time and compare as the module docstring says; returns the record."""
    settings = dict(DRY if dry_run else FULL)
    given = {"resolution": resolution, "batch_size": batch_size, "steps": steps, "warmup": warmup}
    given.update({"arc_steps": arc_steps, "agreement_images": agreement_images})
    settings.update({name: value for name, value in given.items() if value is not None})
    torch.manual_seed(seed)
    target = torch.device(device)
    config = ArcVQConfig.from_preset("arcvq-authors", variant="vqgan", num_channels=3, **(DRY_SIZES if dry_run else {}))
    model = ArcVQModel(config).to(target).train()
    processor = ArcVQImageProcessor(num_channels=3, size_divisor=config.downsampling_factor)
    discriminator = PatchDiscriminator(num_channels=3).to(target).train()
    learning_rate = BASE_LEARNING_RATE * settings["batch_size"]
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.5, 0.9))
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=learning_rate, betas=(0.5, 0.9))
    perceptual_loss, perceptual_note = None, "off (--perceptual off)"
    if perceptual != "off":
        try:
            perceptual_loss, perceptual_note = load_perceptual_loss(target), "LPIPS-VGG, weight 1.0"
        except PerceptualWeightsMissingError:
            if perceptual == "on":
                raise
            perceptual_note = "off: LPIPS-VGG weights not installed (python -m arcvq_hf.evaluation.perceptual fetch)"
    batches = image_batches(data, settings["resolution"], settings["batch_size"], seed, processor)
    # bf16 autocast (code assignment and the arc loss stay float32 inside the model); "fp32": no autocast.
    autocast = torch.autocast(device_type=target.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def synchronize() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    step_number = 0

    def train_step() -> dict[str, float]:
        nonlocal step_number
        pixels = next(batches).to(target, non_blocking=True)
        model.set_training_step(step_number)
        with autocast:
            output = model(pixels)
            loss, pixel_loss = output.loss, output.reconstruction_loss
            if perceptual_loss is not None:
                distance = perceptual_loss(output.reconstruction, pixels).mean()
                loss, pixel_loss = loss + distance, pixel_loss + distance
            discriminator.requires_grad_(False)
            gan_loss = -discriminator(output.reconstruction).mean()
            discriminator.requires_grad_(True)
        weight = adaptive_gan_weight(pixel_loss.float(), gan_loss.float(), decoder_last_layer(model))
        loss = loss + 0.8 * weight * gan_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with autocast:
            disc_loss = hinge_discriminator_loss(discriminator(pixels), discriminator(output.reconstruction.detach()))
        disc_optimizer.zero_grad(set_to_none=True)
        disc_loss.backward()
        disc_optimizer.step()
        step_number += 1
        return {"loss": float(loss.detach()), "arc_loss": float(output.arc_loss.detach())}

    for _ in range(settings["warmup"]):
        train_step()
    synchronize()
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    start = time.perf_counter()
    losses = [train_step() for _ in range(settings["steps"])]
    synchronize()
    seconds = time.perf_counter() - start
    record: dict[str, Any] = {
        "dry_run": dry_run,
        "device": torch.cuda.get_device_name(target) if target.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "recipe": "arcvq-authors vqgan, Adam (0.5, 0.9), PatchGAN hinge + adaptive weight from step 0",
        "dtype": "bf16 autocast" if dtype == "bf16" else "float32",
        "perceptual_loss": perceptual_note,
        "data": data or "synthetic (random sinusoids + noise)",
        "config": {name: getattr(config, name) for name in ("base_channels", "channel_multipliers", "codebook_size")},
        "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        **settings,
        "learning_rate": learning_rate,
        "images_per_second": settings["steps"] * settings["batch_size"] / seconds,
        "step_ms": 1000 * seconds / settings["steps"],
        "first_and_last_loss": [losses[0]["loss"], losses[-1]["loss"]],
        "losses_finite": all(np.isfinite(step["loss"]) for step in losses),
    }
    if target.type == "cuda":
        record["peak_memory_gib"] = torch.cuda.max_memory_allocated(target) / 2**30
        record["peak_reserved_gib"] = torch.cuda.max_memory_reserved(target) / 2**30
    else:
        record["peak_memory_gib"] = None  # no allocator statistics on the CPU

    timer = ArcLossTimer(target)
    with timer.installed():
        timer.active = True
        synchronize()
        start = time.perf_counter()
        for _ in range(settings["arc_steps"]):
            train_step()
        synchronize()
        instrumented = time.perf_counter() - start
    record["arc_loss_share"] = timer.seconds / instrumented
    record["arc_loss_ms_per_step"] = 1000 * timer.seconds / settings["arc_steps"]
    record["arc_loss_calls"] = timer.calls

    # The same weights on the CPU in float32: do the accelerator's tokens agree?
    model.eval()
    images = held_out_images(data, settings["resolution"], settings["agreement_images"], processor)
    with torch.no_grad():
        tokens = model.encode(images.to(target)).image_tokens.cpu()
        with autocast:
            tokens_bf16 = model.encode(images.to(target)).image_tokens.cpu()
        cpu_model = copy.deepcopy(model).to("cpu").float()
        tokens_cpu = cpu_model.encode(images).image_tokens
    record["token_agreement"] = float((tokens == tokens_cpu).float().mean())
    record["token_agreement_bf16_autocast"] = float((tokens_bf16 == tokens_cpu).float().mean())
    record["agreement_tokens"] = int(tokens_cpu.numel())
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="reduced size on the CPU, in seconds (CI)")
    parser.add_argument("--device", help="default: cuda (cpu for --dry-run)")
    parser.add_argument("--data", help="a folder of images (default: synthetic images)")
    for name in ("resolution", "batch_size", "steps", "warmup", "arc_steps", "agreement_images"):
        parser.add_argument(f"--{name}", type=int, help=f"default {FULL[name]} ({DRY[name]} with --dry-run)")
    parser.add_argument(
        "--perceptual",
        choices=("auto", "on", "off"),
        help="the LPIPS-VGG loss: auto (default; on when its weights are installed), on, off (default for --dry-run)",
    )
    parser.add_argument("--dtype", choices=("bf16", "fp32"), help="default bf16 (fp32 for --dry-run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the record here (JSON)")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("No CUDA GPU here (torch.cuda.is_available() is False): run on a GPU machine, or pass --dry-run.")
    record = run_check(
        device,
        args.dry_run,
        data=args.data,
        resolution=args.resolution,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        arc_steps=args.arc_steps,
        agreement_images=args.agreement_images,
        perceptual=args.perceptual or ("off" if args.dry_run else "auto"),
        seed=args.seed,
        dtype=args.dtype or ("fp32" if args.dry_run else "bf16"),
    )
    text = json.dumps(record, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    return record


if __name__ == "__main__":
    main()
