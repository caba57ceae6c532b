"""Bridges to other code: the authors' and taming checkpoints (`convert_*`) and the export to `diffusers.VQModel`
(`diffusers_export`). The `image-tokenization` pipeline lives in `arcvq_hf.model.pipeline_arcvq`, so that it travels
with saved checkpoints as remote code."""
