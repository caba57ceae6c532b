"""The shipped checkpoints load (in-package and as remote code) and reconstruct their own eval images."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel

import arcvq_hf  # noqa: F401  (registers the Auto classes)
from arcvq_hf.data.builtin import load_builtin_dataset
from arcvq_hf.evaluation.image_metrics import psnr

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
EVAL_IMAGES = 200
# Mean PSNR (dB) on the first EVAL_IMAGES test images, 0.3 dB under what this measures on the shipped weights
# (21.00 / 18.60 dB for the mnist pair; 26.34 / 26.41 dB for the photo pair; 27.90 / 28.61 dB for photo tokenizer v2,
# ArcVQ / the field's EMA baseline). The photo pairs were trained on the photo corpus, which CI does not build;
# skimage-photos' test crops (native-resolution 32 px crops of chelsea and coffee, all 192) come from two of the
# corpus's held-out photos. The corpus metrics are in each model card.
PSNR_FLOORS = {
    "arcvq-vae-mnist": ("mnist-5k", 1, 20.7),
    "vq-vae-mnist": ("mnist-5k", 1, 18.3),
    "arcvq-vae-photos": ("skimage-photos", 3, 26.0),
    "vq-vae-photos": ("skimage-photos", 3, 26.1),
    "arcvq-vae-photos-v2": ("skimage-photos", 3, 27.6),
    "field-vq-photos-v2": ("skimage-photos", 3, 28.3),
}


def _eval_images(dataset: str) -> list:
    return list(load_builtin_dataset(dataset)["test"]["image"][:EVAL_IMAGES])


def _reconstruct(model, processor, images) -> tuple[torch.Tensor, torch.Tensor]:
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reconstruction = model(pixel_values, return_loss=False).reconstruction
    return pixel_values, reconstruction


@pytest.mark.parametrize("name", sorted(PSNR_FLOORS))
def test_checkpoint_remote_code_is_the_package_source(name):
    # `trust_remote_code=True` runs the .py files inside the folder, so they are copies of the package; a change to
    # the package that is not copied here would ship stale remote code.
    package = Path(arcvq_hf.__file__).parent / "model"
    copies = sorted((CHECKPOINTS / name).glob("*.py"))
    assert [copy.name for copy in copies] == [
        "backbones_arcvq.py",
        "configuration_arcvq.py",
        "image_processing_arcvq.py",
        "modeling_arcvq.py",
        "pipeline_arcvq.py",
        "quantization.py",
    ]
    for copy in copies:
        assert copy.read_bytes() == (package / copy.name).read_bytes(), (
            f"checkpoints/{name}/{copy.name} is stale: run python tools/sync_checkpoint_code.py"
        )


@pytest.mark.parametrize("name", sorted(PSNR_FLOORS))
def test_checkpoint_loads_with_auto_classes_and_reconstructs_above_its_floor(name):
    dataset, channels, floor = PSNR_FLOORS[name]
    folder = CHECKPOINTS / name
    for file in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (folder / file).is_file(), f"{name} lacks {file}"
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt")), "weights must be safetensors only"
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(model, arcvq_hf.ArcVQModel)
    assert model.config.num_channels == channels and processor.num_channels == channels
    images = _eval_images(dataset)
    pixel_values, reconstruction = _reconstruct(model, processor, images)
    assert pixel_values.shape[0] == len(images) >= 190  # skimage-photos has 192 test crops
    measured = psnr(processor.to_unit_range(reconstruction), processor.to_unit_range(pixel_values)).mean().item()
    assert measured >= floor, f"{name}: PSNR {measured:.2f} dB under the floor {floor} dB"


_REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, importlib.util, json, sys

    # Neither the package nor diffusers: a vqvae checkpoint's remote code needs only torch and transformers.
    BLOCKED = ("arcvq_hf", "diffusers")

    class _NoPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, _NoPackage())
    for blocked in BLOCKED:
        try:
            importlib.util.find_spec(blocked)
            raise SystemExit(f"{blocked} is still importable")
        except ModuleNotFoundError:
            pass

    import numpy as np
    import torch
    from transformers import AutoImageProcessor, AutoModel

    jobs = json.loads(sys.argv[1])
    for folder, inputs, output in jobs:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        pixel_values = torch.from_numpy(np.load(inputs))
        with torch.no_grad():
            reconstruction = model(pixel_values, return_loss=False).reconstruction
        np.save(output, reconstruction.numpy())
        assert not {"arcvq_hf", "diffusers"} & set(sys.modules)
        assert type(model).__module__.startswith("transformers_modules")
        assert type(processor).__module__.startswith("transformers_modules")
    """
)


def test_checkpoints_load_as_remote_code_without_the_package(tmp_path):
    jobs, expected = [], {}
    for name, (dataset, _, _) in sorted(PSNR_FLOORS.items()):
        copy = tmp_path / name
        shutil.copytree(CHECKPOINTS / name, copy)
        model = AutoModel.from_pretrained(copy).eval()
        processor = AutoImageProcessor.from_pretrained(copy)
        pixel_values, reconstruction = _reconstruct(model, processor, _eval_images(dataset)[:8])
        np.save(tmp_path / f"{name}-inputs.npy", pixel_values.numpy())
        expected[name] = reconstruction.numpy()
        jobs.append([str(copy), str(tmp_path / f"{name}-inputs.npy"), str(tmp_path / f"{name}-output.npy")])
    environment = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-I", "-c", _REMOTE_CODE_SCRIPT, json.dumps(jobs)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name, reference in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}-output.npy"), reference, atol=1e-5, rtol=1e-5)
