"""The field's evaluation protocol in `python -m arcvq_hf.evaluation`: shorter side resized, centre crop, the whole
split, LPIPS and rFID with their image count, on one process or several (torchrun, gloo) with the same numbers."""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_training import tiny_model

from arcvq_hf import ArcVQImageProcessor
from arcvq_hf.evaluation.command import main
from arcvq_hf.evaluation.image_metrics import psnr, ssim
from arcvq_hf.evaluation.loop import perceptual_weights_available
from arcvq_hf.evaluation.perceptual import frechet, inception_features, lpips


def cheap_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """A stand-in for the Fréchet distance with the same inputs, without its 2048 x 2048 matrix square root (about
    45 s on this test machine): |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 sum(sigma1 * sigma2) / |sigma2|. It still
    checks that the command gathered the means and covariances of exactly the protocol's images."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(x, dtype=torch.float64) for x in (mu1, mu2, sigma1, sigma2))
    cross = (sigma1 * sigma2).sum() / sigma2.norm().clamp_min(1e-12)
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (height, width) of the validation images: landscape, portrait, odd sizes (few: rFID costs ~1 s per image here).
SIZES = [(30, 40), (61, 37), (33, 47)]
SHORTER, CROP = 24, 16
PERCEPTUAL = perceptual_weights_available()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    rng = np.random.default_rng(4)
    images = []
    (root / "data" / "validation").mkdir(parents=True)
    for index, (height, width) in enumerate(SIZES):
        # Smooth gradients plus noise, so that the crop position matters.
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        image = PIL.Image.fromarray(pixels)
        image.save(root / "data" / "validation" / f"{index}.png")
        images.append(image)
    folder = root / "model"
    tiny_model(num_channels=3).save_pretrained(folder)
    ArcVQImageProcessor(num_channels=3).save_pretrained(folder)
    return root, folder, images


def direct_metrics(folder, images) -> dict[str, float]:
    """The protocol computed by hand: PIL bicubic resize of the shorter side, centre crop, the model, the metrics."""
    from arcvq_hf import ArcVQModel

    crops = []
    for image in images:
        scale = SHORTER / min(image.size)
        resized = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.Resampling.BICUBIC)
        left, top = (resized.width - CROP) // 2, (resized.height - CROP) // 2
        crops.append(resized.crop((left, top, left + CROP, top + CROP)))
    processor = ArcVQImageProcessor.from_pretrained(folder)
    pixels = processor(crops, return_tensors="pt").pixel_values
    model = ArcVQModel.from_pretrained(folder).eval()
    with torch.no_grad():
        reconstruction = model(pixels).reconstruction
    fake, real = processor.to_unit_range(reconstruction).float(), processor.to_unit_range(pixels).float()
    metrics = {"psnr": psnr(fake, real).mean().item(), "ssim": ssim(fake, real).mean().item()}
    if PERCEPTUAL:
        metrics["lpips"] = lpips(fake * 2 - 1, real * 2 - 1, net="alex", resize=64).mean().item()
        fid = frechet.FrechetInceptionDistance()
        fid.update_features(inception_features(real * 2 - 1), inception_features(fake * 2 - 1))
        metrics["rfid"] = fid.compute()
    return metrics


def _arguments(folder, data, output, perceptual: bool = False) -> list[str]:
    arguments = [str(folder), "--dataset", str(data), "--eval_split", "validation", "--batch_size", "2"]
    arguments += ["--resize_shorter", str(SHORTER), "--center_crop", str(CROP), "--device", "cpu"]
    return arguments + ["--output", str(output)] + (["--perceptual"] if perceptual else [])


@pytest.fixture(scope="module")
def expected(setup):
    _, folder, images = setup
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(frechet, "frechet_distance", cheap_frechet_distance)
        return direct_metrics(folder, images)


def _check(written: dict, expected: dict) -> None:
    assert written["eval_num_images"] == len(SIZES)
    for name, value in expected.items():
        if f"eval_{name}" in written or name not in ("lpips", "rfid"):
            assert written[f"eval_{name}"] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_protocol_matches_a_direct_computation(setup, expected, capsys, monkeypatch) -> None:
    root, folder, _ = setup
    monkeypatch.setattr(frechet, "frechet_distance", cheap_frechet_distance)
    main(_arguments(folder, root / "data", root / "one.json", perceptual=PERCEPTUAL))
    written = json.loads((root / "one.json").read_text())
    _check(written, expected)
    if PERCEPTUAL:
        assert "eval_rfid" in written and written["eval_rfid_num_images"] == len(SIZES)
        assert written["eval_lpips_resize"] == 64  # 16 px crops: upsampled for AlexNet
    if PERCEPTUAL:
        assert f"({len(SIZES)} images)" in capsys.readouterr().out  # the count printed beside the rFID
    with pytest.raises(SystemExit):
        main([*_arguments(folder, root / "data", root / "x.json"), "--resolution", "16"])  # one form, not both


def test_two_ranks_give_the_numbers_of_one_pass(setup, expected) -> None:
    root, folder, _ = setup
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "arcvq_hf.evaluation", *_arguments(folder, root / "data", root / "two.json"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    # Rank 0 saw images 0 and 2, rank 1 image 1: the sums are added up. (Without --perceptual: each process would
    # spend ~45 s on the Fréchet distance's matrix square root here; the Inception moments are summed by the same
    # all_reduce_ as these sums, checked against one pass in tests/test_metrics.py.)
    written = json.loads((root / "two.json").read_text())
    assert "eval_rfid" not in written
    _check(written, expected)
