"""ArcVQ against the field: the codebook-collapse remedies tokenizer builders use, in the same backbone, data, step
and budget.

    pip install -e ".[baselines]"                   # vector-quantize-pytorch==1.32.0 beside the benchmark extras
    python -m arcvq_hf.evaluation.perceptual fetch  # LPIPS / rFID weights (once)
    python benchmarks/field_baselines/run.py                          # every row, K 512 (seeds 0 1) and 8192 (seed 0)
    python benchmarks/field_baselines/run.py --rows arcvq fsq --sizes 512 --seeds 0   # a part of the grid
    python benchmarks/field_baselines/run.py --report-only            # RESULTS.md and the plot from the files

Rows: the project's own `arcvq` (the default preset) and `vq-baseline` (the textbook VQ-VAE), and the field's layers
through vector-quantize-pytorch (`field_quantizers.FIELD_QUANTIZERS`: EMA + k-means init + dead-code restart, the
same with the rotation trick, low-dimensional cosine codes, SimVQ, FSQ). Each row swaps only the quantizer of the
project's vqvae backbone (hidden 128, two residual blocks, D = 64, x4 down-sampling), and every row trains through
the same step: `ArcVQTrainer` (the Trainer users run, its schedule callback driving the SAMP layer) with Adam 3e-4,
constant rate, no clipping, float32 and channels_last weights on CPU (this machine's CPU has no bf16 instructions:
bf16 autocast made the step 15x slower), batch 64 of 32 px random resized crops of
the photo corpus's training photos (`RandomCropDataset`, a new crop for every sample), loss = MSE / data variance +
the layer's own loss.

Evaluation, on photos nobody trained on: fixed multi-scale 32 px crops of the corpus's held-out photos
(`photo_eval_dataset` with a `--eval-grid` x `--eval-grid` grid per scale), enough that every K measured gets at
least 20 tokens per code (docs/method.md §3.1; the count is written beside the utilization). Utilization,
perplexity, dead codes, PSNR, SSIM over every crop; LPIPS and rFID over an evenly spaced subset of
`--perceptual-images` crops (images per side written beside the rFID). s/step is the Trainer's train_runtime / steps
on this shared 2-core machine, one torch thread per run.

Each run is a subprocess that writes `results/<row>-K<K>-seed<seed>.json`; runs whose file exists are skipped, so
the grid can be finished over several sittings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from field_quantizers import FIELD_QUANTIZERS, LIBRARY, LIBRARY_VERSION, build_field_quantizer  # noqa: E402

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel  # noqa: E402
from arcvq_hf.model.quantization import QuantizerLosses  # noqa: E402

RESULTS_DIR = HERE / "results"
# 8-dim unit codes with EMA, k-means init and restarts (the base of the low-dimensional rows below).
_LOWDIM_SPHERICAL_EMA_KMEANS: dict[str, Any] = {
    "codebook_dim": 8,
    "spherical_codes": True,
    "codebook_update": "ema",
    "dead_code_threshold": 2.0,
    "kmeans_init": True,
}


def _constant_arc_weight(gamma: float) -> dict[str, float]:
    """gamma_t = gamma at every step."""
    return {"arc_weight": gamma, "arc_weight_decay": 0.0}


# The project's rows: (preset, config overrides). `arcvq-ema-restart` is ArcVQ with the field's two remedies as the
# layer's own options (docs/method.md §1.10): EMA code updates under angle assignment and dead-code restarts with the
# field row's threshold.
OWN_ROWS = {
    "arcvq": ("arcvq", {}),
    "arcvq-ema-restart": ("arcvq", {"codebook_update": "ema", "dead_code_threshold": 2.0}),
    # The same without the ball bound: whether the ball (codes of norm <= R(t), 1.57 at step 1500) is what holds
    # the reconstructions back once every code is in use.
    "no-ball-ema-restart": ("no-ball", {"codebook_update": "ema", "dead_code_threshold": 2.0}),
    # ArcVQ whose decoder receives unit vectors (the latent and its code normalised after the assignment by angle),
    # with the same EMA updates and restarts.
    "arcvq-spherical-ema-restart": (
        "arcvq",
        {"spherical_codes": True, "codebook_update": "ema", "dead_code_threshold": 2.0},
    ),
    # The same without the arc-margin loss and the ball (preset cosine-only): what the SAMP terms themselves add.
    "cosine-spherical-ema-restart": (
        "cosine-only",
        {"spherical_codes": True, "codebook_update": "ema", "dead_code_threshold": 2.0},
    ),
    "vq-baseline": ("vq-baseline", {}),
    # The field's EMA + k-means + restart remedy as the project's own preset (no library): what ships as the baseline
    # tokenizer must train like the library's `ema-kmeans-restart` row.
    "ema-kmeans-restart-preset": ("ema-kmeans-restart", {}),
    # Whether the arc loss helps once the codebook is kept alive: the spherical EMA quantizer with k-means init, with
    # a small constant arc weight (gamma_t = 0.05 at every step) and without the arc loss (and without the ball,
    # which bounds nothing on unit codes).
    "arcvq-light-spherical-ema-kmeans": (
        "arcvq",
        {
            "spherical_codes": True,
            "codebook_update": "ema",
            "dead_code_threshold": 2.0,
            "kmeans_init": True,
            "arc_weight": 0.05,
            "arc_weight_decay": 0.0,
        },
    ),
    "cosine-spherical-ema-kmeans": (
        "cosine-only",
        {"spherical_codes": True, "codebook_update": "ema", "dead_code_threshold": 2.0, "kmeans_init": True},
    ),
    # The same two on 8-dim codes (the library's `cosine-lowdim` remedy, LlamaGen / ViT-VQGAN style): the backbone's
    # 1x1 quant conv projects to codebook_dim = 8 and the decoder's first conv reads 8 channels. Whether the arc loss
    # costs reconstruction there too, where the field's cosine codes work best, and at smaller weights (at 0.05 the
    # weighted arc loss, about 0.2, outweighs the reconstruction term, about 0.05-0.1).
    "arcvq-light-lowdim-spherical-ema-kmeans": (
        "arcvq",
        {**_LOWDIM_SPHERICAL_EMA_KMEANS, **_constant_arc_weight(0.05)},
    ),
    "arcvq-lowdim-spherical-ema-kmeans-g0.01": (
        "arcvq",
        {**_LOWDIM_SPHERICAL_EMA_KMEANS, **_constant_arc_weight(0.01)},
    ),
    "arcvq-lowdim-spherical-ema-kmeans-g0.002": (
        "arcvq",
        {**_LOWDIM_SPHERICAL_EMA_KMEANS, **_constant_arc_weight(0.002)},
    ),
    "cosine-lowdim-spherical-ema-kmeans": ("cosine-only", dict(_LOWDIM_SPHERICAL_EMA_KMEANS)),
    # Options that keep the paper's prior acting, each on the paper's configuration alone (no field remedy), so each
    # row says whether the prior itself, kept alive, keeps the codebook in use (docs/method.md §1.10). A ball that
    # keeps binding: R(t) capped at 1 (the paper's R(t) is 1.57 by step 1500 and 20 by step 10000; codes start at
    # norm 1, so the cap binds from the first step on).
    "arcvq-ball-cap": ("arcvq", {"ball_max_radius": 1.0}),
    # The arc loss over this batch's 4096 latents and the 12288 of the three batches before (detached).
    "arcvq-latent-memory": ("arcvq", {"arc_memory_size": 12288}),
    # Codes that won nothing over 100 steps (the window of the usage averages at decay 0.99) pulled toward the mean
    # direction of their arc positives, weighted by gamma_t.
    "arcvq-unused-pull": ("arcvq", {"unused_code_window": 100}),
    # The best ArcVQ with the library rows' commitment weight (1 instead of 0.25): whether that is what separates the
    # project's layer from the library's at K = 8192.
    "arcvq-lowdim-commitment1": (
        "arcvq",
        {**_LOWDIM_SPHERICAL_EMA_KMEANS, **_constant_arc_weight(0.002), "commitment_cost": 1.0},
    ),
    # The best ArcVQ (preset arcvq-lowdim) with a memory of the batch before: at K = 8192 a batch's 4096 tokens are
    # fewer than the codes, and with the memory the arc loss sees as many latents as there are codes.
    "arcvq-lowdim-latent-memory": (
        "arcvq",
        {**_LOWDIM_SPHERICAL_EMA_KMEANS, **_constant_arc_weight(0.002), "arc_memory_size": 4096},
    ),
}
ROWS = (*OWN_ROWS, *FIELD_QUANTIZERS)
DEFAULT_SIZES = (512, 8192)
# Tokens per code the utilization needs at the largest K (docs/method.md §3.1).
MIN_TOKENS_PER_CODE = 20


class FieldLayerInArcVQ(nn.Module):
    """A field adapter (`quantized, indices, loss = layer(x)`) behind the interface `ArcVQModel` calls on its
    quantizer: the loss is reported as the quantization loss, there is no arc loss and no schedule."""

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=True)

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D) the vectors the decoder receives per index."""
        return self.adapter.codebook_vectors()

    def codes_for(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook[indices]

    def set_step(self, step: int) -> None:
        self.step.fill_(step)

    @property
    def current_step(self) -> int:
        return int(self.step.item())

    def forward(
        self,
        latents: torch.Tensor,
        *,
        compute_vq_loss: bool = True,
        compute_arc_loss: bool | None = None,
        return_loss_breakdown: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        quantized, indices, loss = self.adapter(latents)
        zero = loss.new_zeros(())
        parts = QuantizerLosses(loss, zero, None, zero, torch.full((), math.inf))
        return (quantized, indices, loss, parts) if return_loss_breakdown else (quantized, indices, loss)


def build_model(row: str, codebook_size: int, data_variance: float) -> tuple[ArcVQModel, dict[str, Any]]:
    """The vqvae backbone with the row's quantizer, and the row's settings as plain data."""
    if row in OWN_ROWS:
        preset, overrides = OWN_ROWS[row]
        config = ArcVQConfig.from_preset(
            preset, num_channels=3, codebook_size=codebook_size, data_variance=data_variance, **overrides
        )
        keys = (
            "distance",
            "use_ball_bound",
            "use_arc_margin",
            "arc_weight",
            "arc_weight_decay",
            "ball_growth_rate",
            "codebook_update",
            "dead_code_threshold",
            "kmeans_init",
            "commitment_cost",
            "ball_max_radius",
            "arc_memory_size",
            "unused_code_window",
        )
        settings = {"preset": preset, **{key: getattr(config, key) for key in keys}, **overrides}
        return ArcVQModel(config), {"library": "arcvq_hf", **settings}
    adapter = build_field_quantizer(row, codebook_size, 64)
    # The backbone (and the codebook-geometry metrics) see a plain euclidean quantizer without ball or arc loss.
    config = ArcVQConfig.from_preset(
        "vq-baseline", num_channels=3, codebook_size=adapter.codebook_size, data_variance=data_variance
    )
    model = ArcVQModel(config)
    model.quantizer = FieldLayerInArcVQ(adapter)
    return model, {"library": f"{LIBRARY}=={LIBRARY_VERSION}", **FIELD_QUANTIZERS[row]}


def run_one(row: str, codebook_size: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one row and measure it; returns the result record."""
    from torch.utils.data import DataLoader
    from transformers import TrainingArguments

    from arcvq_hf.data.photo_corpus import RandomCropDataset, load_photo_corpus, photo_eval_dataset
    from arcvq_hf.data.transforms import collate_pixel_values, pixel_values_transform, pixel_variance
    from arcvq_hf.evaluation.loop import evaluate_reconstruction
    from arcvq_hf.training.trainer import ArcVQTrainer

    torch.set_num_threads(args.threads)
    corpus = load_photo_corpus(args.corpus)
    processor = ArcVQImageProcessor(num_channels=3)
    transform = pixel_values_transform(processor)
    samples = args.steps * args.batch_size
    train = RandomCropDataset(corpus["train"], 32, length=samples, transform=transform, seed=seed)
    variance = float(pixel_variance(torch.stack([train[i]["pixel_values"] for i in range(min(len(train), 2048))])))
    evaluation = photo_eval_dataset(corpus["test"], 32, grid=args.eval_grid).with_transform(transform)
    torch.manual_seed(seed)
    model, settings = build_model(row, codebook_size, variance)
    model = model.to(memory_format=torch.channels_last)
    training_args = TrainingArguments(
        output_dir=str(args.work_dir / f"{row}-K{codebook_size}-seed{seed}"),
        per_device_train_batch_size=args.batch_size,
        learning_rate=3e-4,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        max_steps=args.steps,
        use_cpu=True,
        seed=seed,
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = ArcVQTrainer(model=model, args=training_args, train_dataset=train, processing_class=processor)
    train_output = trainer.train()
    model.eval()

    def batches(dataset: Any) -> DataLoader:
        return DataLoader(dataset, batch_size=256, collate_fn=collate_pixel_values)

    metrics = evaluate_reconstruction(model, batches(evaluation), processor)
    num_tokens = len(evaluation) * 64
    record: dict[str, Any] = {
        "row": row,
        "codebook_size": model.config.codebook_size,
        "requested_codebook_size": codebook_size,
        "seed": seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "settings": settings,
        "eval_crops": len(evaluation),
        "eval_tokens": num_tokens,
        "tokens_per_code": num_tokens / model.config.codebook_size,
        "seconds_per_step": train_output.metrics["train_runtime"] / args.steps,
        "threads": args.threads,
        "train_reconstruction_loss": training_reconstruction_loss(trainer.state.log_history),
        **{key: value for key, value in metrics.items() if isinstance(value, int | float)},
    }
    if args.perceptual_images > 0:
        stride = max(1, len(evaluation) // args.perceptual_images)
        subset = evaluation.select(range(0, len(evaluation), stride)[: args.perceptual_images])
        reference = cached_reference_features(subset, processor, args, batches)
        perceptual = evaluate_reconstruction(
            model, batches(subset), processor, perceptual=True, rfid_reference_features=reference
        )
        record.update({key: perceptual[key] for key in ("lpips", "rfid", "rfid_num_images")})
    record["load_average"] = os.getloadavg()[0]
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return record


def training_reconstruction_loss(log_history: list[dict[str, Any]], last: int = 3) -> float:
    """Mean of the last `last` logged training reconstruction losses (MSE / data variance on crops of the training
    photos): the number that chooses between configurations, since the held-out photos only report them."""
    values = [float(entry["reconstruction_loss"]) for entry in log_history if "reconstruction_loss" in entry]
    if not values:
        raise ValueError("The training log holds no reconstruction_loss: was logging switched off?")
    return float(sum(values[-last:]) / len(values[-last:]))


def cached_reference_features(subset: Any, processor: Any, args: argparse.Namespace, batches: Any) -> torch.Tensor:
    """The rFID features of the real side of `subset`, computed once per eval grid and image count (safetensors)."""
    import safetensors.torch

    from arcvq_hf.evaluation.loop import reference_inception_features

    path = args.work_dir / f"rfid-reference-grid{args.eval_grid}-n{len(subset)}.safetensors"
    if path.is_file():
        return safetensors.torch.load_file(str(path))["features"]
    features = reference_inception_features(batches(subset), processor.to_unit_range)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    safetensors.torch.save_file({"features": features.contiguous()}, str(temporary))
    os.replace(temporary, path)
    return features


def result_path(row: str, codebook_size: int, seed: int) -> Path:
    return RESULTS_DIR / f"{row}-K{codebook_size}-seed{seed}.json"


def run_grid(args: argparse.Namespace) -> None:
    """Every (row, K, seed) asked for whose result file is missing, each in its own subprocess."""
    plan = []
    for codebook_size in args.sizes:
        seeds = args.seeds if codebook_size == min(args.sizes) else args.seeds_large
        for seed in seeds:
            for row in args.rows:
                if not result_path(row, codebook_size, seed).exists():
                    plan.append((row, codebook_size, seed))
    print(f"{len(plan)} runs to do: {plan}", flush=True)
    for row, codebook_size, seed in plan:
        command = [sys.executable, __file__, "--one", row, str(codebook_size), str(seed), *args.passthrough]
        started = time.time()
        completed = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        status = "done" if completed.returncode == 0 else f"FAILED ({completed.returncode})"
        print(f"{row} K={codebook_size} seed={seed}: {status} in {time.time() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds at the smallest K")
    parser.add_argument("--seeds-large", nargs="+", type=int, default=[0], help="seeds at the other K")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-grid", type=int, default=12, help="crop positions per axis and scale")
    parser.add_argument("--perceptual-images", type=int, default=256, help="crops for LPIPS and rFID (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--corpus", default=None, help="photo corpus folder (default: data/photo-corpus)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/arcvq-field-baselines"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--one", nargs=3, metavar=("ROW", "K", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.report_only:
        from report import write_report

        write_report(RESULTS_DIR, HERE / "RESULTS.md", HERE.parents[1] / "README.md")
        return
    if args.one:
        row, codebook_size, seed = args.one[0], int(args.one[1]), int(args.one[2])
        record = run_one(row, codebook_size, seed, args)
        if record["tokens_per_code"] < MIN_TOKENS_PER_CODE:
            print(f"warning: only {record['tokens_per_code']:.1f} tokens per code; raise --eval-grid", flush=True)
        from arcvq_hf.utils.io_utils import atomic_write_json

        RESULTS_DIR.mkdir(exist_ok=True)
        atomic_write_json(result_path(row, codebook_size, seed), record)
        print(json.dumps({k: record[k] for k in ("row", "codebook_size", "seed", "codebook_utilization", "psnr")}))
        return
    args.passthrough = [
        f"--steps={args.steps}",
        f"--batch-size={args.batch_size}",
        f"--eval-grid={args.eval_grid}",
        f"--perceptual-images={args.perceptual_images}",
        f"--threads={args.threads}",
        f"--work-dir={args.work_dir}",
        *([f"--corpus={args.corpus}"] if args.corpus else []),
    ]
    run_grid(args)


if __name__ == "__main__":
    main()
