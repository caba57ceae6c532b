"""arcvq-hf: ArcVQ-VAE (VQ-VAE with a spherical angular-margin codebook prior) for transformers and diffusers.

Importing the package registers `ArcVQConfig`, `ArcVQModel` and `ArcVQImageProcessor` with the Auto classes and the
`image-tokenization` pipeline task.
"""

from typing import Any

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from arcvq_hf.model.configuration_arcvq import PRESETS, ArcVQConfig
from arcvq_hf.model.image_processing_arcvq import ArcVQImageProcessor
from arcvq_hf.model.modeling_arcvq import (
    ArcVQEncoderOutput,
    ArcVQModel,
    ArcVQModelOutput,
    ArcVQPreTrainedModel,
)
from arcvq_hf.model.pipeline_arcvq import TASK as IMAGE_TOKENIZATION_TASK
from arcvq_hf.model.pipeline_arcvq import ImageTokenizationPipeline
from arcvq_hf.model.quantization import SphericalAngularMarginQuantizer

AutoConfig.register(ArcVQConfig.model_type, ArcVQConfig, exist_ok=True)
AutoModel.register(ArcVQConfig, ArcVQModel, exist_ok=True)
AutoImageProcessor.register(ArcVQConfig, slow_image_processor_class=ArcVQImageProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    IMAGE_TOKENIZATION_TASK, pipeline_class=ImageTokenizationPipeline, pt_model=AutoModel, type="image"
)

# Saved folders carry the model files and an auto_map, so they load with trust_remote_code=True without this
# package installed; ArcVQModel.save_pretrained adds pipeline_arcvq.py and config.json's `custom_pipelines`.
ArcVQConfig.register_for_auto_class()
ArcVQModel.register_for_auto_class("AutoModel")
ArcVQImageProcessor.register_for_auto_class()


class _PipelinesThePackageDoesNotServe:
    """`ArcVQConfig.custom_pipelines` read by this package: the saved entries minus the tasks it registers itself.

    A saved config.json names `pipeline_arcvq.ImageTokenizationPipeline` under `custom_pipelines` for environments
    without this package. transformers' `pipeline()` puts such an entry before its registry and then demands
    `trust_remote_code=True`, although the class registered above is the same code; with this view the registered
    task goes to the registry, and `pipeline(..., trust_remote_code=False)` keeps working. The entries themselves stay
    in the instance `__dict__`, which is what `to_dict` and so `save_pretrained` write. Only the package's class
    gets this view: the remote-code copy of the config (`trust_remote_code=True`) reads the entries unfiltered.
    """

    def __get__(self, config: ArcVQConfig | None, owner: type | None = None) -> Any:
        if config is None:
            return self
        try:
            saved = vars(config)["custom_pipelines"]
        except KeyError:
            raise AttributeError(f"{type(config).__name__} has no custom_pipelines") from None
        return {
            task: entry
            for task, entry in saved.items()
            if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is not ImageTokenizationPipeline
        }

    def __set__(self, config: ArcVQConfig, value: dict[str, Any]) -> None:
        vars(config)["custom_pipelines"] = value


ArcVQConfig.custom_pipelines = _PipelinesThePackageDoesNotServe()

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
