import os

# Nothing in the test suite may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def example():
    """examples/train_arcvq.py as a module (its `main` runs in-process)."""
    from example_scripts import load_example

    return load_example("train_arcvq")


@pytest.fixture(scope="module")
def digit_data(tmp_path_factory):
    """A save_to_disk DatasetDict of mnist-5k digits: 40 training, 11 test."""
    from tiny_training import save_digit_dataset

    path = tmp_path_factory.mktemp("digits") / "data"
    save_digit_dataset(path)
    return path
