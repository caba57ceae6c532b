"""`python -m arcvq_hf.evaluation.perceptual fetch [--from DIR] [--cache DIR] [--force] [--check-torchscript]`."""

import sys

from .fetching import main

sys.exit(main())
