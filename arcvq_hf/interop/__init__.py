"""Bridges to other code: the authors' and taming checkpoints (`convert_*`), the export to `diffusers.VQModel`
(`diffusers_export`) and the `image-tokenization` pipeline (`pipeline`)."""
