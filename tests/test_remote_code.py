"""A saved folder loads with trust_remote_code=True in a fresh process where `arcvq_hf` cannot be imported."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file
from transformers import pipeline

from arcvq_hf import ArcVQConfig, ArcVQImageProcessor, ArcVQModel
from arcvq_hf.model.pipeline_arcvq import CUSTOM_PIPELINES

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"

# The start of every child: blocks every import of arcvq_hf and proves it.
BLOCK_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockArcVQ(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "arcvq_hf" or name.startswith("arcvq_hf."):
                raise ImportError("arcvq_hf is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockArcVQ())
    try:
        import arcvq_hf  # noqa: F401
        raise SystemExit("arcvq_hf was importable")
    except ImportError:
        pass
    """
)

# Runs in the child: blocks arcvq_hf, then loads through the Auto classes.
CHILD = BLOCK_PACKAGE + textwrap.dedent(
    """

    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoImageProcessor, AutoModel

    folder, out = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    image = ((np.arange(28 * 28).reshape(28, 28) * 7) % 256).astype(np.uint8)
    pixel_values = processor(image).pixel_values
    with torch.no_grad():
        output = model(pixel_values)
        tokens = model.encode(pixel_values).image_tokens
    save_file({"pixel_values": pixel_values, "reconstruction": output.reconstruction, "tokens": tokens}, out)
    print(json.dumps({"model": type(model).__module__, "processor": type(processor).__module__}))
    """
)


def test_saved_folder_loads_with_remote_code_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = ArcVQModel(ArcVQConfig(num_channels=1, hidden_size=32, residual_hidden_size=8, codebook_size=64)).eval()
    processor = ArcVQImageProcessor(num_channels=1)
    folder = tmp_path / "arcvq-remote"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_arcvq.ArcVQModel"
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    for name in (
        "backbones_arcvq.py",
        "configuration_arcvq.py",
        "modeling_arcvq.py",
        "quantization.py",
        "image_processing_arcvq.py",
        "pipeline_arcvq.py",
    ):
        assert (folder / name).exists()

    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result_file = tmp_path / "child.safetensors"
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(result_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    modules = json.loads(completed.stdout.strip().splitlines()[-1])
    assert modules["model"].startswith("transformers_modules.") and modules["processor"].startswith(
        "transformers_modules."
    )

    child = load_file(result_file)
    expected_pixels = processor(
        ((torch.arange(28 * 28).reshape(28, 28) * 7) % 256).to(torch.uint8).numpy()
    ).pixel_values
    assert torch.equal(child["pixel_values"], expected_pixels)
    with torch.no_grad():
        assert torch.equal(child["reconstruction"], model(expected_pixels).reconstruction)
        assert torch.equal(child["tokens"], model.encode(expected_pixels).image_tokens)


# Runs in the child: blocks arcvq_hf as above, then asks for the pipeline without and with trust_remote_code.
PIPELINE_CHILD = BLOCK_PACKAGE + textwrap.dedent(
    """

    from safetensors.torch import save_file
    from transformers import pipeline

    folder, image, out = sys.argv[1], sys.argv[2], sys.argv[3]
    try:  # a user who forgets trust_remote_code (stdin is closed, so transformers does not wait for a [y/N])
        pipeline("image-tokenization", model=folder)
        forgot = "no error"
    except Exception as err:
        forgot = f"{type(err).__name__}: {err}"
    tokenizer = pipeline("image-tokenization", model=folder, trust_remote_code=True)
    result = tokenizer(image)
    save_file({"tokens": result["image_tokens"].contiguous()}, out)
    print()  # transformers' [y/N] prompt above ends without a newline
    print(json.dumps({"pipeline": type(tokenizer).__module__, "model": type(tokenizer.model).__module__,
                      "forgot": forgot, "reconstruction": list(result["reconstruction"].size)}))
    """
)


def test_checkpoint_pipeline_runs_as_remote_code_without_the_package(tmp_path):
    # The folder's config.json names pipeline_arcvq.ImageTokenizationPipeline under custom_pipelines, so the task
    # travels with the checkpoint: no KeyError "Unknown task image-tokenization" without the package.
    folder = shutil.copytree(CHECKPOINTS / "vq-vae-photos", tmp_path / "vq-vae-photos")
    image = tmp_path / "photo.png"
    rows = np.arange(24 * 20 * 3).reshape(24, 20, 3)
    PIL.Image.fromarray(((rows * 37) % 256).astype(np.uint8)).save(image)

    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result_file = tmp_path / "child.safetensors"
    completed = subprocess.run(
        [sys.executable, "-c", PIPELINE_CHILD, str(folder), str(image), str(result_file)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["pipeline"].startswith("transformers_modules.")
    assert report["pipeline"].endswith(".pipeline_arcvq")
    assert report["model"].startswith("transformers_modules.")
    assert "trust_remote_code=True" in report["forgot"], report["forgot"]

    # The package's pipeline (registered task, trust_remote_code=False) on the same folder and image.
    expected = pipeline("image-tokenization", model=str(folder), trust_remote_code=False)(str(image))
    assert torch.equal(load_file(result_file)["tokens"], expected["image_tokens"])
    assert report["reconstruction"] == list(expected["reconstruction"].size)
