"""Field baselines: the codebook-collapse remedies of vector-quantize-pytorch as drop-in quantizers."""
