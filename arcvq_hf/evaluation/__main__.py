"""`python -m arcvq_hf.evaluation FOLDER ...`: re-evaluate a saved model folder (see `command`)."""

from .command import main

if __name__ == "__main__":
    main()
