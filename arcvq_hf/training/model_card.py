"""Model cards from measured metrics.

A saved model folder holds what its card needs: `config.json` and the weights (what the model is, its schedule
step), `eval_results.json` (the metrics Trainer's `save_metrics` wrote) and `training_run.json` (`TrainingRun`:
the command, the data set and the splits; written by `examples/train_arcvq.py`). `write_model_card(folder)`
regenerates `README.md` from them at any time; from the command line, for a folder that has no
`training_run.json` yet (the command is then read from the folder's old card when it has one):

    python -m arcvq_hf.training.model_card checkpoints/arcvq-vae-mnist --dataset mnist-5k --train_split train \\
        --eval_split test

Publishing the folder (after its card is written) is `arcvq_hf.training.publish.upload_model_folder`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arcvq_hf.utils.io_utils import atomic_write_json, atomic_write_text

from .model_card_text import BIBTEX, PAPER_URL, describe_dataset, describe_model, perceptual_note

RUN_FILE = "training_run.json"
# The task of the model-index results: the custom pipeline task the package registers (`image-tokenization`).
MODEL_INDEX_TASK = "image-tokenization"
TAGS = ["arcvq", "vq-vae", "image-tokenizer", "vector-quantization", "custom_code"]

METRIC_ROWS = (
    ("codebook_utilization", "codebook utilization (fraction of K used on the eval split)"),
    ("perplexity", "code perplexity (exp entropy, max K)"),
    ("dead_codes", "dead codes"),
    ("psnr", "PSNR (dB, per image, [0, 1])"),
    ("ssim", "SSIM (11x11 Gaussian, sigma 1.5)"),
    ("l1", "L1 error ([0, 1])"),
    ("lpips", "LPIPS (v0.1, AlexNet, per image)"),
    ("rfid", "rFID (Inception V3; eval images vs their reconstructions)"),
    ("rfid_num_images", "images per rFID (each side)"),
    ("angular_dispersion", "angular dispersion (deg, mean nearest-code angle)"),
    ("code_norm_mean", "mean code norm"),
    ("code_norm_fraction_on_bound", "fraction of codes on the ball bound"),
    ("reconstruction_loss", "reconstruction loss"),
    ("num_images", "evaluation images"),
)
MODEL_INDEX_METRICS = ("codebook_utilization", "perplexity", "psnr", "ssim", "lpips", "rfid")
# Where ArcVQModel's weights keep the optimizer step that drives its schedules.
STEP_KEY = "quantizer.step"


@dataclass
class TrainingRun:
    """How a model folder was trained, as its card reports it (saved as `training_run.json`).

    Attributes:
        command: the exact command line.
        dataset: the `--dataset` value (built-in name, Hub id or local folder).
        train_split: the split trained on.
        eval_split: the split the card's metrics were measured on (or how it was held out of the training split).
        summary: further settings worth reporting (batch size, learning rate, wall time, ...).
        license / base_model / repo_id: front matter; repo_id also goes into the usage snippet.
    """

    command: str
    dataset: str
    train_split: str = "train"
    eval_split: str = "test"
    summary: dict[str, Any] = field(default_factory=dict)
    license: str = "apache-2.0"
    base_model: str | None = None
    repo_id: str | None = None

    def save(self, folder: str | os.PathLike) -> Path:
        return atomic_write_json(Path(folder) / RUN_FILE, asdict(self))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TrainingRun:
        path = Path(folder) / RUN_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: say how the model was trained (python -m arcvq_hf.training.model_card {folder} "
                "--dataset ... --command ...), or pass a TrainingRun."
            )
        return cls(**json.loads(path.read_text()))


# ----------------------------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------------------------


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _other_sections(previous_card: str, generated: Sequence[str]) -> str:
    """The `## ` sections of an earlier card that this module does not generate (hand-written notes)."""
    sections = re.split(r"\n(?=## )", previous_card)
    kept = [s.strip() for s in sections[1:] if s.split("\n", 1)[0][3:].strip() not in generated]
    return "\n\n".join(kept)


def _metric_name(metric: str, values: dict[str, Any]) -> str:
    """The model-index name of `metric`: LPIPS says its input size, rFID its number of images (values computed
    otherwise do not compare)."""
    if metric == "lpips":
        size = values.get("lpips_resize")
        return f"LPIPS-alex ({f'upsampled to {size} px' if size else 'native resolution'})"
    if metric == "rfid" and "rfid_num_images" in values:
        return f"rFID ({values['rfid_num_images']} images)"
    return metric


def model_card_text(name: str, config: Any, training_step: int, metrics: dict[str, Any], run: TrainingRun) -> str:
    """The README.md of a model folder (front matter + Markdown), from measured `metrics` (with or without the
    `eval_` prefix)."""
    from huggingface_hub import EvalResult, ModelCardData

    values = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    dataset_ids, dataset_text = describe_dataset(run.dataset)
    eval_results = [
        EvalResult(
            task_type=MODEL_INDEX_TASK,
            task_name="image tokenization (reconstruction)",
            dataset_type=dataset_ids[0] if dataset_ids else run.dataset,
            dataset_name=run.dataset,
            dataset_split=run.eval_split,
            metric_type=metric,
            metric_name=_metric_name(metric, values),
            metric_value=float(values[metric]),
        )
        for metric in MODEL_INDEX_METRICS
        if metric in values
    ]
    card_data = ModelCardData(
        library_name="transformers",
        license=run.license,
        tags=TAGS,
        datasets=dataset_ids or None,
        base_model=run.base_model,
        model_name=name,
        eval_results=eval_results or None,
    )
    rows = "\n".join(f"| {label} | {_format(values[key])} |" for key, label in METRIC_ROWS if key in values)
    factor = config.downsampling_factor
    summary = "\n".join(f"- {key}: `{value}`" for key, value in run.summary.items())
    model_id = run.repo_id or f"./{name}"
    return f"""---
{card_data.to_yaml()}
---

# {name}

{describe_model(config)}

- backbone `{config.backbone}`, {config.num_channels}-channel images, {factor}x{factor} pixels per token
- codebook K={config.codebook_size} x D={config.codebook_dim}, assignment `{config.distance}`
- ball bound {"on" if config.use_ball_bound else "off"}, arc-margin loss {"on" if config.use_arc_margin else "off"}
- data: {dataset_text}
- trained on split `{run.train_split}` for {training_step} optimizer steps (the schedule step saved with the weights);
  the metrics below are measured on split `{run.eval_split}`

## Evaluation

On the whole `{run.eval_split}` split of `{run.dataset}`:

| metric | value |
|---|---|
{rows}

PSNR / SSIM / L1 are per-image means on outputs clamped to [0, 1] (data range 1); SSIM uses an 11x11 Gaussian
window with sigma 1.5 and population covariance (skimage's `structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)`). Codebook utilization and perplexity count every token of
the evaluation split. All definitions: `docs/method.md` §3 in the arcvq-hf repository (code: `arcvq_hf/evaluation/`).
{perceptual_note(values)}
## Usage

The model code travels with the weights, so `trust_remote_code=True` loads it without installing arcvq-hf:

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{model_id}", trust_remote_code=True)
image = Image.open("image.png")
pixel_values = processor(image, return_tensors="pt")["pixel_values"]  # (1, {config.num_channels}, H, W)
with torch.no_grad():
    tokens = model.encode(pixel_values).image_tokens  # (1, H/{factor}, W/{factor}), ids in [0, {config.codebook_size})
    reconstruction = model.decode(tokens)  # (1, {config.num_channels}, H, W) in [-1, 1]
images = processor.postprocess(reconstruction)  # list of PIL images

# or in one line, tokens and reconstruction together (the pipeline travels with the weights too)
from transformers import pipeline

tokenizer = pipeline("image-tokenization", model="{model_id}", trust_remote_code=True)
result = tokenizer("image.png")  # {{"image_tokens": (h, w) ids, "reconstruction": PIL image}}
```

## Training

```bash
{run.command}
```

{summary}

## Citation

```bibtex
{BIBTEX}
```
"""


GENERATED_SECTIONS = ("Evaluation", "Usage", "Training", "Citation", "Evaluation (whole evaluation split)")


def write_model_card(
    folder: str | os.PathLike,
    run: TrainingRun | None = None,
    model: Any | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write `folder/README.md` (atomically) and return its path.

    Args:
        folder: a saved model folder.
        run: how it was trained; default: the folder's `training_run.json`.
        model: the `ArcVQModel` (for its config and schedule step); default: read from `folder`'s config.json and
            weights (without building the model).
        metrics: the measured metrics; default: the folder's `eval_results.json`.
    Sections of an existing README.md that this module does not generate (hand-written notes) are kept.
    """
    folder = Path(folder)
    run = run or TrainingRun.load(folder)
    if metrics is None:
        results = folder / "eval_results.json"
        if not results.is_file():
            raise FileNotFoundError(f"{results} is missing: evaluate the model (Trainer.save_metrics) first.")
        metrics = json.loads(results.read_text())
    if model is not None:
        config, training_step = model.config, model.schedule_step
    else:
        config, training_step = _saved_config_and_step(folder)
    text = model_card_text(folder.resolve().name, config, training_step, metrics, run)
    readme = folder / "README.md"
    if readme.is_file():
        notes = _other_sections(readme.read_text(encoding="utf-8"), GENERATED_SECTIONS)
        text = text + ("\n" + notes + "\n" if notes else "")
    return atomic_write_text(readme, text)


def _saved_config_and_step(folder: Path) -> tuple[Any, int]:
    """(ArcVQConfig, the schedule step saved with the weights) of a saved folder, read without building the model."""
    from safetensors import safe_open

    from arcvq_hf.model.configuration_arcvq import ArcVQConfig

    for weights in sorted(folder.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as handle:
            if STEP_KEY in handle.keys():
                return ArcVQConfig.from_pretrained(folder), int(handle.get_tensor(STEP_KEY))
    raise FileNotFoundError(f"{folder} holds no safetensors weights with `{STEP_KEY}` (an ArcVQModel's schedule step).")


def recorded_training(folder: str | os.PathLike) -> tuple[str | None, dict[str, str]]:
    """(command, summary) from the `## Training` section of the folder's current README.md: the command of its
    bash block and its `- key: `value`` lines; (None, {}) without one."""
    readme = Path(folder) / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    match = re.search(r"\n## Training\s+```bash\n(.*?)\n```(.*?)(?=\n## |\Z)", text, flags=re.S)
    if not match:
        return None, {}
    summary = dict(re.findall(r"^- (.+?): `(.*)`$", match.group(2), flags=re.M))
    return match.group(1).strip(), summary


# ----------------------------------------------------------------------------------------------------------------
# Command line: re-card an existing folder
# ----------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Write (or rewrite) the model card of a saved ArcVQ folder.")
    parser.add_argument("folder", help="a folder written by save_pretrained, with eval_results.json")
    parser.add_argument("--dataset", help="the --dataset it was trained on (default: from training_run.json)")
    parser.add_argument("--train_split", help="default: from training_run.json, else train")
    parser.add_argument("--eval_split", help="split of eval_results.json (default: from training_run.json, else test)")
    parser.add_argument("--command", help="the training command (default: training_run.json, else the old card's)")
    parser.add_argument("--license", help="default: from training_run.json, else apache-2.0")
    parser.add_argument("--base_model", help="Hub id it was fine-tuned from")
    parser.add_argument("--repo_id", help="Hub id for the usage snippet")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    given = {
        key: value
        for key in ("dataset", "train_split", "eval_split", "command", "license", "base_model", "repo_id")
        if (value := getattr(args, key)) is not None
    }
    if (folder / RUN_FILE).is_file():
        run = TrainingRun(**{**asdict(TrainingRun.load(folder)), **given})
    else:
        command, summary = recorded_training(folder)
        given = {"command": command, "summary": summary, **given}
        missing = [key for key in ("dataset", "command") if not given.get(key)]
        if missing:
            parser.error(f"{folder} has no {RUN_FILE}; pass {' and '.join('--' + key for key in missing)}.")
        run = TrainingRun(**given)
    run.save(folder)
    path = write_model_card(folder, run)
    print(f"wrote {path}")
    return path


__all__ = [
    "BIBTEX",
    "MODEL_INDEX_TASK",
    "PAPER_URL",
    "RUN_FILE",
    "TrainingRun",
    "describe_dataset",
    "describe_model",
    "model_card_text",
    "perceptual_note",
    "recorded_training",
    "write_model_card",
]


if __name__ == "__main__":
    main()
