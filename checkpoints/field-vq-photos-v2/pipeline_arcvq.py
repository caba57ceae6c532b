"""`pipeline("image-tokenization")`: images in, image tokens and reconstructions out.

    from transformers import pipeline
    import arcvq_hf  # registers the task

    tokenizer = pipeline("image-tokenization", model="checkpoints/arcvq-vae-photos", trust_remote_code=False)
    result = tokenizer("photo.png")  # or a URL, a PIL image, or a list of them
    result["image_tokens"]    # LongTensor (h, w), h = H / f
    result["reconstruction"]  # PIL image of the decoded tokens (size of the processed input)

Without the package, a saved folder serves the same task as remote code: this file travels with the model files,
and `config.json` names it under `custom_pipelines` (`ArcVQPreTrainedModel.save_pretrained` writes both), so
`pipeline("image-tokenization", model=folder, trust_remote_code=True)` runs this class from the folder.

Paths and URLs are opened here (`open_image`), not with transformers' `load_image`: that one converts every image
to 8-bit RGB, which saturates 16-bit PNGs and drops the alpha compositing the processor does, and decodes a huge
image in full before the processor's `max_pixels` check could refuse it from the header. Every failure names the
input and what to do: a missing file, an unreadable file, a URL that answers 404, refuses the connection or does
not answer within `timeout` (default `DEFAULT_TIMEOUT` seconds, so a dead server never hangs the caller).

This file travels with checkpoints (remote code), so it imports only the standard library, transformers, torch and
PIL.
"""

from __future__ import annotations

import base64
import io
import os
import urllib.error
import urllib.request
from typing import Any

import PIL.Image
import PIL.ImageOps
import torch
from transformers import Pipeline

TASK = "image-tokenization"
# The `custom_pipelines` entry of a saved config.json, in the format transformers' `Pipeline.save_pretrained` writes
# ("module.Class" inside the folder, Auto-class names): `pipeline(TASK, model=folder, trust_remote_code=True)` builds
# `ImageTokenizationPipeline` from this file and the model with `AutoModel`, without the package installed.
CUSTOM_PIPELINES: dict[str, dict[str, Any]] = {
    TASK: {"impl": "pipeline_arcvq.ImageTokenizationPipeline", "pt": ["AutoModel"], "type": "image"}
}
# Seconds to wait for a URL's server (connection and each read) before giving up.
DEFAULT_TIMEOUT = 30.0
_EXIF_ORIENTATION = 0x0112


def _open_bytes(data: bytes, source: str) -> PIL.Image.Image:
    try:
        return PIL.Image.open(io.BytesIO(data))
    except PIL.UnidentifiedImageError as err:
        raise ValueError(
            f"{source} ({len(data)} bytes) is not an image file PIL can read; pass a PNG, JPEG or other image file."
        ) from err


def fetch_image_bytes(url: str, timeout: float | None = None) -> bytes:
    """The body of an http(s) `url`, waiting at most `timeout` seconds (default `DEFAULT_TIMEOUT`) for the server.

    Raises:
        ValueError: the server answered with an HTTP error (e.g. 404).
        TimeoutError: no answer within `timeout`.
        ConnectionError: the connection failed (refused, unknown host, ...).
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    request = urllib.request.Request(url, headers={"User-Agent": "arcvq-hf"})
    advice = "check the address, or download the image and pass its path"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        raise ValueError(
            f"Could not fetch the image {url}: the server answered HTTP {err.code} {err.reason}; {advice}."
        ) from err
    except TimeoutError as err:
        raise TimeoutError(
            f"Fetching the image {url} got no answer within {timeout} s; {advice}, or pass a longer timeout=..."
        ) from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise TimeoutError(
                f"Fetching the image {url} got no answer within {timeout} s; {advice}, or pass a longer timeout=..."
            ) from err
        raise ConnectionError(f"Could not connect to fetch the image {url} ({err.reason}); {advice}.") from err


def open_image(image: Any, timeout: float | None = None) -> Any:
    """A path, `http(s)://` URL or `data:image/...;base64,` string -> PIL image, opened lazily (the header is read,
    the pixels are decoded later by the processor, after its size checks). EXIF orientation is applied. Anything
    else (a PIL image, a numpy array, a tensor) is returned as it is, for the processor to check.

    Raises:
        FileNotFoundError / IsADirectoryError: a path with no file.
        ValueError: a file or download that is not an image, or an HTTP error; TimeoutError, ConnectionError: see
        `fetch_image_bytes`.
    """
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if not isinstance(image, str):
        return image
    if image.startswith(("http://", "https://")):
        opened = _open_bytes(fetch_image_bytes(image, timeout), f"The download from {image}")
    elif image.startswith("data:image/"):
        try:
            data = base64.b64decode(image.split(",", 1)[1], validate=True)
        except (IndexError, ValueError) as err:
            raise ValueError(f"{image[:40]!r}... is not a valid base64 data URL ({err}).") from err
        opened = _open_bytes(data, "The data URL")
    else:
        if os.path.isdir(image):
            raise IsADirectoryError(f"{image!r} is a folder; pass the path of one image file (or a list of them).")
        if not os.path.isfile(image):
            raise FileNotFoundError(
                f"No image file at {image!r} (looked in {os.path.abspath(image)}); pass the path of an existing "
                "image file, an http(s):// URL, or a PIL image."
            )
        try:
            opened = PIL.Image.open(image)
        except PIL.UnidentifiedImageError as err:
            raise ValueError(
                f"{image} ({os.path.getsize(image)} bytes) is not an image file PIL can read; pass a PNG, JPEG or "
                "other image file."
            ) from err
    # exif_transpose decodes the image, and so does getexif on a PNG without EXIF before its pixel data: look only
    # where the orientation is in the header, and transpose only when there is a rotation to apply.
    in_header = opened.format != "PNG" or "exif" in opened.info
    if in_header and opened.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        opened = PIL.ImageOps.exif_transpose(opened)
    return opened


def _describe(image: Any) -> str:
    return image if isinstance(image, str) and len(image) < 300 else f"the {type(image).__name__} input"


class ImageTokenizationPipeline(Pipeline):
    """Tokenizes images with an ArcVQ model: processor -> `model.encode` -> `model.decode` -> processor.postprocess.

    Call arguments:
        images: a PIL image, a local path or URL, or a list of them.
        return_reconstruction (`bool`, True): also decode the tokens back to a PIL image.
        image_processor_kwargs (`dict`, None): per-call processor options, e.g. `{"max_side": 256}`.
        timeout (`float`, `DEFAULT_TIMEOUT` = 30): seconds to wait for the server of an image URL.
    Returns:
        For one image a dict `{"image_tokens": LongTensor (h, w), "reconstruction": PIL.Image}`; for a list, a list
        of such dicts.
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False
    # Left unset, transformers also looks for a video processor, and that lookup asks on stdin whether to run the
    # folder's custom code ("[y/N]") although this package's classes are registered.
    _load_video_processor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # NaN or infinite weights load without complaint and give one constant token for every image.
        bad = [name for name, tensor in self.model.state_dict().items() if tensor.is_floating_point()
               and not torch.isfinite(tensor).all()]  # fmt: skip
        if bad:
            raise ValueError(
                f"The model {getattr(self.model, 'name_or_path', '') or type(self.model).__name__} holds NaN or "
                f"infinite values in {bad[:8]}; it would give one constant token everywhere. Use a checkpoint saved "
                "before training diverged."
            )

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        """Tokenize one image or a list of images (see the class docstring)."""
        if images is None:
            raise TypeError("No images given (None): pass a path, URL, PIL image, or a non-empty list of them.")
        if isinstance(images, list | tuple) and not images:
            raise ValueError("No images given (an empty list): pass a path, URL, PIL image, or a non-empty list.")
        return super().__call__(images, **kwargs)

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
        opened = open_image(image, timeout=timeout)
        try:
            return self.image_processor(opened, return_tensors="pt", **(image_processor_kwargs or {}))
        except (ValueError, TypeError) as err:
            if not isinstance(image, str | os.PathLike):
                raise
            # The processor sees a decoded image, not where it came from: name the input.
            raise type(err)(f"{_describe(os.fspath(image))}: {err}") from err

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


__all__ = [
    "CUSTOM_PIPELINES",
    "DEFAULT_TIMEOUT",
    "TASK",
    "ImageTokenizationPipeline",
    "fetch_image_bytes",
    "open_image",
]
