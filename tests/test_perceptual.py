"""LPIPS and rFID (arcvq_hf.evaluation.perceptual): the published formula, the Fréchet distance, safe weight loading.

Tests that need the converted weights skip (with the command that installs them) when they are absent; CI runs
`python -m arcvq_hf.evaluation.perceptual fetch` first, so there they run.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arcvq_hf.evaluation import perceptual
from arcvq_hf.evaluation.perceptual import (
    FETCH_COMMAND,
    LPIPS,
    FrechetInceptionDistance,
    PerceptualWeightsMissingError,
    UnsafePickleError,
    frechet_distance,
    frechet_inception_distance,
    inception_features,
    load_numpy_pickle,
    lpips,
    read_torchscript_tensors,
    tf1_bilinear_resize,
    weights_available,
    weights_path,
)


def _needs(*names: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not weights_available(*names),
        reason=f"perceptual weights {names} not installed; run `{FETCH_COMMAND}` to fetch and convert them",
    )


def _photo(size: int = 256) -> np.ndarray:
    """skimage's astronaut, (size, size, 3) float in [0, 1]."""
    from skimage import data, transform

    return transform.resize(data.astronaut(), (size, size), anti_aliasing=True)


def _to_model_space(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] * 2 - 1


# ----------------------------------------------------------------------------------------------------------------
# Safe loading (no weights needed)


class _Exploit:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_numpy_unpickler_reads_arrays_and_refuses_arbitrary_globals():
    tree = {"Net": {"Conv_0": {"kernel": np.ones((3, 3, 2, 4), np.float32), "bias": np.zeros(4, np.float32)}}}
    loaded = load_numpy_pickle(pickle.dumps(tree))
    np.testing.assert_array_equal(loaded["Net"]["Conv_0"]["kernel"], tree["Net"]["Conv_0"]["kernel"])

    malicious = pickle.dumps({"kernel": _Exploit()})
    assert b"system" in malicious
    with pytest.raises(UnsafePickleError, match="system"):
        load_numpy_pickle(malicious)
    with pytest.raises(UnsafePickleError):
        load_numpy_pickle(pickle.dumps({"kernel": np.array([_Exploit()], dtype=object)}))


def test_torchscript_reader_refuses_arbitrary_globals():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps(_Exploit(), protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        read_torchscript_tensors(buffer.getvalue())


def test_missing_weights_error_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv(perceptual.CACHE_ENV, str(tmp_path))
    assert not weights_available()
    x = torch.zeros(1, 3, 64, 64)
    for call in (lambda: lpips(x, x), lambda: lpips(x, x, net="vgg"), lambda: inception_features(x)):
        with pytest.raises(
            PerceptualWeightsMissingError, match="python -m arcvq_hf.evaluation.perceptual fetch"
        ) as error:
            call()
        assert str(tmp_path) in str(error.value)


def test_package_and_metrics_work_without_scipy():
    # scipy is optional (the `metrics` extra, for reference checks); transformers imports it when present, so
    # block it outright in a fresh interpreter.
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['scipy'] = None\n"
        "import numpy as np, arcvq_hf, arcvq_hf.evaluation.perceptual as m\n"
        "print(m.frechet_distance(np.zeros(3), np.eye(3), np.ones(3), np.eye(3)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) == pytest.approx(3.0)


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance and the FID accumulator (no weights needed)


def _random_gaussian_stats(rng: np.random.Generator, n: int, d: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    samples = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + shift
    return samples.mean(0), np.cov(samples, rowvar=False)


def test_frechet_distance_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    for d, shift in ((8, 0.0), (64, 0.5), (128, -1.0)):
        mu1, sigma1 = _random_gaussian_stats(rng, 4 * d, d, 0.0)
        mu2, sigma2 = _random_gaussian_stats(rng, 4 * d, d, shift)
        covmean = np.real(scipy_linalg.sqrtm(sigma1 @ sigma2))
        reference = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean)
        ours = frechet_distance(mu1, sigma1, mu2, sigma2)
        assert ours == pytest.approx(reference, rel=1e-8, abs=1e-8)
        # torch inputs give the same value
        torch_args = [torch.from_numpy(v).float() for v in (mu1, sigma1, mu2, sigma2)]
        assert frechet_distance(*torch_args) == pytest.approx(reference, rel=1e-4)
    assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_a_singular_covariance_with_itself_is_zero():
    # Fewer samples than dimensions (the rFID-on-a-small-set case): the covariance is singular.
    rng = np.random.default_rng(1)
    features = rng.gamma(1.0, size=(20, 256))
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_fid_accumulator_is_split_invariant_and_matches_numpy_cov():
    rng = np.random.default_rng(2)
    real = torch.from_numpy(rng.normal(size=(60, 16)))
    fake = torch.from_numpy(rng.normal(size=(50, 16)) * 1.2 + 0.3)

    whole = FrechetInceptionDistance(feature_dim=16).update_features(real, fake)
    mu, sigma = whole.real.statistics()
    np.testing.assert_allclose(mu.numpy(), real.numpy().mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(real.numpy(), rowvar=False), atol=1e-12)

    # Two "ranks" with disjoint shards, merged through the raw sums, as all_reduce would.
    rank0 = FrechetInceptionDistance(feature_dim=16).update_features(real[:25], fake[:10])
    rank1 = FrechetInceptionDistance(feature_dim=16).update_features(real[25:40], fake[10:])
    rank1.update_features(real[40:])
    for mine, theirs in zip(rank0.state_tensors(), rank1.state_tensors(), strict=True):
        mine += theirs
    assert (rank0.num_real, rank0.num_fake) == (60, 50)
    assert rank0.compute() == pytest.approx(whole.compute(), rel=1e-10)
    assert whole.compute() > 0.1


def test_tf1_bilinear_resize_definition():
    row = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    down = tf1_bilinear_resize(row, 2)  # samples input coordinates 0 and 2
    torch.testing.assert_close(down[0, 0, 0], torch.tensor([0.0, 2.0]))
    up = tf1_bilinear_resize(torch.tensor([[[[0.0, 2.0], [0.0, 2.0]]]]), 4)  # 0, 0.5, 1, 1.5 -> clamp at border
    torch.testing.assert_close(up[0, 0, 0], torch.tensor([0.0, 1.0, 2.0, 2.0]))


# ----------------------------------------------------------------------------------------------------------------
# LPIPS (needs the weights)

# The backbones written out again, independently of the module: (out channels, kernel, stride, padding, pool
# before, tapped). AlexNet taps all 5 conv ReLUs; VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_ALEX_REFERENCE = [(11, 4, 2, None, True), (5, 1, 2, 3, True), (3, 1, 1, 3, True), (3, 1, 1, None, True)] + [
    (3, 1, 1, None, True)
]
_VGG_BLOCKS = [2, 2, 3, 3, 3]
_VGG_REFERENCE = [
    (3, 1, 1, 2 if (b > 0 and i == 0) else None, i == depth - 1)
    for b, depth in enumerate(_VGG_BLOCKS)
    for i in range(depth)
]


def _reference_lpips(
    weights: dict[str, torch.Tensor], layers: list, x0: torch.Tensor, x1: torch.Tensor
) -> torch.Tensor:
    """The published LPIPS v0.1 formula, written directly (float64)."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(x: torch.Tensor) -> list[torch.Tensor]:
        x = (x.double() - shift) / scale
        out = []
        for i, (_kernel, stride, padding, pool, tapped) in enumerate(layers):
            if pool is not None:
                x = F.max_pool2d(x, kernel_size=pool, stride=2)
            w, b = weights[f"conv{i}_weight"].double(), weights[f"conv{i}_bias"].double()
            x = torch.clamp(F.conv2d(x, w, b, stride=stride, padding=padding), min=0)
            if tapped:
                out.append(x)
        return out

    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for layer, (f0, f1) in enumerate(zip(taps(x0), taps(x1), strict=True)):
        n0 = f0 / (torch.linalg.vector_norm(f0, dim=1, keepdim=True) + 1e-10)
        n1 = f1 / (torch.linalg.vector_norm(f1, dim=1, keepdim=True) + 1e-10)
        head = weights[f"head{layer}_weight"].double().view(1, -1, 1, 1)
        assert (head >= 0).all()
        weighted = ((n0 - n1) ** 2 * head).sum(dim=1)  # 1x1 linear head, no bias
        total += weighted.mean(dim=(1, 2))  # spatial mean, then sum over layers
    return total


@pytest.mark.parametrize(("net", "layers", "size"), [("alex", _ALEX_REFERENCE, 64), ("vgg", _VGG_REFERENCE, 32)])
def test_lpips_equals_the_published_formula(net, layers, size):
    if not weights_available(net):
        pytest.skip(f"LPIPS-{net} weights not installed; run `{FETCH_COMMAND}`")
    from safetensors.torch import load_file

    weights = load_file(str(weights_path(net)))
    photo = _to_model_space(_photo(size))
    gen = torch.Generator().manual_seed(0)
    a = torch.cat([photo, torch.rand(2, 3, size, size, generator=gen) * 2 - 1])
    b = torch.cat([(photo + 0.3 * torch.randn(1, 3, size, size, generator=gen)).clamp(-1, 1), a[2:3], a[1:2]])
    ours = lpips(a, b, net=net)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), _reference_lpips(weights, layers, a, b), atol=1e-5, rtol=1e-5)


@_needs("alex")
def test_lpips_is_zero_for_identical_images_and_grey_matches_rgb():
    photo = _to_model_space(_photo(64))
    assert lpips(photo, photo).item() == 0.0
    grey = photo.mean(1, keepdim=True)
    noisy = (grey + 0.2 * torch.randn_like(grey)).clamp(-1, 1)
    torch.testing.assert_close(lpips(grey, noisy), lpips(grey.repeat(1, 3, 1, 1), noisy.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="resize"):
        lpips(torch.zeros(1, 3, 28, 28), torch.zeros(1, 3, 28, 28))
    assert lpips(torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28), resize=64).item() > 0


@_needs("alex")
def test_lpips_alex_is_monotone_in_blur_and_matches_the_reference_values():
    from skimage.filters import gaussian

    image = _photo(256)
    clean = _to_model_space(image)
    sigmas = [0.5, 1.0, 2.0, 4.0]
    blurred = torch.cat([_to_model_space(gaussian(image, sigma=s, channel_axis=-1)) for s in sigmas])
    distances = lpips(clean.expand(len(sigmas), -1, -1, -1), blurred)
    assert torch.all(distances[1:] > distances[:-1]), distances
    # Issue 12's values (LPIPS-alex, 256 px photo): 0.019 / 0.167 / 0.387 / 0.611.
    torch.testing.assert_close(distances, torch.tensor([0.019, 0.167, 0.387, 0.611]), atol=5e-3, rtol=0)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_is_monotone_in_noise(net):
    if not weights_available(net):
        pytest.skip(f"LPIPS-{net} weights not installed; run `{FETCH_COMMAND}`")
    clean = _to_model_space(_photo(64))
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    strengths = [0.02, 0.05, 0.1, 0.2, 0.4]
    noisy = torch.cat([(clean + s * noise).clamp(-1, 1) for s in strengths])
    distances = lpips(clean.expand(len(strengths), -1, -1, -1), noisy, net=net)
    assert torch.all(distances[1:] > distances[:-1]), distances


@_needs("vgg")
def test_lpips_module_is_a_frozen_differentiable_loss():
    loss_fn = LPIPS.from_pretrained("vgg")
    assert list(loss_fn.parameters()) == []
    assert not any(b.requires_grad for b in loss_fn.buffers())
    loss_fn.train()
    assert not loss_fn.training
    target = _to_model_space(_photo(32))
    recon = torch.zeros_like(target, requires_grad=True)
    loss_fn(recon, target).sum().backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# rFID (needs the Inception weights)


@_needs("inception")
def test_fid_of_a_set_against_itself_is_zero():
    photo = _to_model_space(_photo(256))[0]
    crops = torch.stack([photo[:, i : i + 64, j : j + 64] for i in (0, 96, 192) for j in (0, 128, 192)])
    features = inception_features(crops)
    assert features.shape == (9, 2048) and torch.isfinite(features).all() and features.min() >= 0

    fid = FrechetInceptionDistance().update_features(features, features)
    assert abs(fid.compute()) < 1e-6
    # the convenience function, on the other half of the crops shuffled: a different set gives a positive value
    assert frechet_inception_distance(crops[:5], crops[4:]) > 1.0
