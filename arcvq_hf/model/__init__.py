"""The model: configuration, backbones, the SAMP quantizer, `ArcVQModel`, the image processor and the pipeline.

These files travel with every saved checkpoint as remote code, so they import only each other (single-dot relative
imports) and third-party libraries; import-linter (pyproject.toml) holds them to it.
"""
