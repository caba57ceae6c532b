"""`pipeline("image-tokenization")`: images in, image tokens and reconstructions out.

    from transformers import pipeline
    import arcvq_hf  # registers the task

    tokenizer = pipeline("image-tokenization", model="checkpoints/arcvq-vae-photos", trust_remote_code=False)
    result = tokenizer("photo.png")  # or a PIL image, or a list of either
    result["image_tokens"]    # LongTensor (h, w), h = H / f
    result["reconstruction"]  # PIL image of the decoded tokens (size of the processed input)

This file imports only transformers, torch and PIL, so it travels with saved checkpoints (remote code) like the
model files.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Pipeline
from transformers.image_utils import load_image

TASK = "image-tokenization"


class ImageTokenizationPipeline(Pipeline):
    """Tokenizes images with an ArcVQ model: processor -> `model.encode` -> `model.decode` -> processor.postprocess.

    Call arguments:
        images: a PIL image, a local path or URL, or a list of them.
        return_reconstruction (`bool`, True): also decode the tokens back to a PIL image.
        image_processor_kwargs (`dict`, None): per-call processor options, e.g. `{"max_side": 256}`.
        timeout (`float`, None): for images fetched from URLs.
    Returns:
        For one image a dict `{"image_tokens": LongTensor (h, w), "reconstruction": PIL.Image}`; for a list, a list
        of such dicts.
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self,
        return_reconstruction: bool | None = None,
        image_processor_kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            raise TypeError(f"Unknown arguments for the {TASK} pipeline: {sorted(kwargs)}.")
        preprocess_params: dict[str, Any] = {"image_processor_kwargs": image_processor_kwargs or {}}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        forward_params = {}
        if return_reconstruction is not None:
            forward_params["return_reconstruction"] = bool(return_reconstruction)
        return preprocess_params, forward_params, {}

    def preprocess(
        self, image: Any, image_processor_kwargs: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, torch.Tensor]:
        image = load_image(image, timeout=timeout) if isinstance(image, str) else image
        return self.image_processor(image, return_tensors="pt", **(image_processor_kwargs or {}))

    def _forward(self, model_inputs: dict[str, torch.Tensor], return_reconstruction: bool = True) -> dict[str, Any]:
        image_tokens = self.model.encode(model_inputs["pixel_values"]).image_tokens
        outputs = {"image_tokens": image_tokens}
        if return_reconstruction:
            outputs["reconstruction"] = self.model.decode(image_tokens)
        return outputs

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        result = {"image_tokens": model_outputs["image_tokens"][0].cpu()}
        if "reconstruction" in model_outputs:
            result["reconstruction"] = self.image_processor.postprocess(model_outputs["reconstruction"])[0]
        return result


__all__ = ["TASK", "ImageTokenizationPipeline"]
