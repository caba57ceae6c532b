"""Everything that judges a tokenizer, defined once (docs/method.md §3) for the Trainer, the benchmarks and the Space:
pixel metrics (`image_metrics`), code use and codebook geometry (`codebook_metrics`), LPIPS and rFID
(`perceptual`), the one evaluation loop (`loop`) and the evaluate command (`command`, run as
`python -m arcvq_hf.evaluation FOLDER`)."""
