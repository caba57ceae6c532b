"""Perceptual metrics, offline: LPIPS v0.1 (AlexNet / VGG16) and rFID (Inception V3 pool features).

Importing the package loads no weights and needs no scipy.
One concept per module:

- `lpips_metric`: the LPIPS networks, `LPIPS`, `load_lpips`, `lpips`.
- `inception`: the FID Inception V3 network, `InceptionFeatureExtractor`, `load_inception`, `inception_features`.
- `frechet`: `frechet_distance`, the `FrechetInceptionDistance` accumulator, `frechet_inception_distance`.
- `weights`: pinned sources and sha256s, the cache folder (`~/.cache/arcvq_hf/perceptual` or
  `$ARCVQ_PERCEPTUAL_CACHE`), safetensors reading / writing, `PerceptualWeightsMissingError`.
- `unpickling`: the restricted unpicklers that read the foreign weight files without running pickled code.
- `fetching`: `fetch` and `main`, the `python -m arcvq_hf.evaluation.perceptual fetch` command (`__main__`)
  that installs the weights once; nothing downloads at run time.
"""

from .fetching import fetch, main
from .frechet import FrechetInceptionDistance, frechet_distance, frechet_inception_distance, trace_sqrt_product
from .inception import (
    FEATURE_DIM,
    INCEPTION_SIZE,
    InceptionFeatureExtractor,
    InceptionV3FID,
    convert_inception_archive,
    inception_features,
    load_inception,
    tf1_bilinear_resize,
)
from .lpips_metric import (
    BACKBONES,
    LPIPS,
    LPIPS_EPS,
    LPIPS_MIN_SIZE,
    LPIPS_SCALE,
    LPIPS_SHIFT,
    convert_lpips_checkpoint,
    load_lpips,
    lpips,
)
from .unpickling import UnsafePickleError, load_numpy_pickle, read_torchscript_tensors
from .weights import (
    CACHE_ENV,
    DEFAULT_CACHE,
    FETCH_COMMAND,
    FORMAT_VERSION,
    SOURCES,
    WEIGHT_FILES,
    PerceptualWeightsMissingError,
    missing_weights_message,
    perceptual_cache_dir,
    weights_available,
    weights_path,
)

__all__ = [
    "BACKBONES",
    "CACHE_ENV",
    "DEFAULT_CACHE",
    "FEATURE_DIM",
    "FETCH_COMMAND",
    "FORMAT_VERSION",
    "INCEPTION_SIZE",
    "LPIPS",
    "LPIPS_EPS",
    "LPIPS_MIN_SIZE",
    "LPIPS_SCALE",
    "LPIPS_SHIFT",
    "SOURCES",
    "WEIGHT_FILES",
    "FrechetInceptionDistance",
    "InceptionFeatureExtractor",
    "InceptionV3FID",
    "PerceptualWeightsMissingError",
    "UnsafePickleError",
    "convert_inception_archive",
    "convert_lpips_checkpoint",
    "fetch",
    "frechet_distance",
    "frechet_inception_distance",
    "inception_features",
    "load_inception",
    "load_lpips",
    "load_numpy_pickle",
    "lpips",
    "main",
    "missing_weights_message",
    "perceptual_cache_dir",
    "read_torchscript_tensors",
    "tf1_bilinear_resize",
    "trace_sqrt_product",
    "weights_available",
    "weights_path",
]
