"""arcvq-hf: ArcVQ-VAE (VQ-VAE with a spherical angular-margin codebook prior) for transformers and diffusers.

Importing the package registers `ArcVQConfig`, `ArcVQModel` and `ArcVQImageProcessor` with the Auto classes and the
`image-tokenization` pipeline task.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from arcvq_hf.interop.pipeline import TASK as IMAGE_TOKENIZATION_TASK
from arcvq_hf.interop.pipeline import ImageTokenizationPipeline
from arcvq_hf.model.configuration_arcvq import PRESETS, ArcVQConfig
from arcvq_hf.model.image_processing_arcvq import ArcVQImageProcessor
from arcvq_hf.model.modeling_arcvq import (
    ArcVQEncoderOutput,
    ArcVQModel,
    ArcVQModelOutput,
    ArcVQPreTrainedModel,
)
from arcvq_hf.model.quantization import SphericalAngularMarginQuantizer

AutoConfig.register(ArcVQConfig.model_type, ArcVQConfig, exist_ok=True)
AutoModel.register(ArcVQConfig, ArcVQModel, exist_ok=True)
AutoImageProcessor.register(ArcVQConfig, slow_image_processor_class=ArcVQImageProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    IMAGE_TOKENIZATION_TASK, pipeline_class=ImageTokenizationPipeline, pt_model=AutoModel, type="image"
)

# Saved folders carry the model files and an auto_map, so they load with trust_remote_code=True without this
# package installed.
ArcVQConfig.register_for_auto_class()
ArcVQModel.register_for_auto_class("AutoModel")
ArcVQImageProcessor.register_for_auto_class()

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ArcVQConfig",
    "ArcVQEncoderOutput",
    "ArcVQImageProcessor",
    "ArcVQModel",
    "ArcVQModelOutput",
    "ArcVQPreTrainedModel",
    "ImageTokenizationPipeline",
    "SphericalAngularMarginQuantizer",
]
