"""arcvq_hf.evaluation against independent computations (skimage, numpy, scipy, hand counts)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tiny_training import needs_perceptual_weights

from arcvq_hf import ArcVQConfig, ArcVQModel
from arcvq_hf.evaluation.codebook_metrics import (
    CodebookUsage,
    angular_dispersion,
    code_norm_stats,
    codebook_utilization,
    dead_codes,
    perplexity,
)
from arcvq_hf.evaluation.image_metrics import l1_error, psnr, ssim
from arcvq_hf.evaluation.loop import (
    ReconstructionMetrics,
    evaluate_reconstruction,
    reference_inception_features,
)
from arcvq_hf.evaluation.perceptual import inception_features, lpips


def _image_pairs(batch: int, channels: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth images plus noise, so SSIM lands in its informative middle range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    base = np.stack(
        [0.5 + 0.4 * np.sin(6 * xx * (i + 1) + 3 * yy + c) for i in range(batch) for c in range(channels)]
    ).reshape(batch, channels, height, width)
    target = np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1)
    pred = np.clip(target + 0.1 * rng.standard_normal(base.shape), 0, 1)
    return pred, target


def _skimage_ssim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.array(
        [
            structural_similarity(
                p.transpose(1, 2, 0),
                t.transpose(1, 2, 0),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1,
                channel_axis=-1,
            )
            for p, t in zip(pred, target, strict=True)
        ]
    )


@pytest.mark.parametrize(("channels", "height", "width"), [(3, 32, 32), (1, 28, 28), (3, 17, 40)])
def test_ssim_matches_skimage(channels: int, height: int, width: int) -> None:
    pred, target = _image_pairs(4, channels, height, width, seed=channels + height)
    ours = ssim(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    reference = _skimage_ssim(pred, target)
    assert 0.1 < reference.min() and reference.max() < 0.99
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_ssim_in_float32_matches_skimage() -> None:
    pred, target = _image_pairs(2, 3, 32, 32, seed=5)
    ours = ssim(torch.from_numpy(pred).float(), torch.from_numpy(target).float()).numpy()
    np.testing.assert_allclose(ours, _skimage_ssim(pred.astype(np.float32), target.astype(np.float32)), atol=1e-5)


def test_ssim_of_identical_images_is_one() -> None:
    image = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ssim(image, image), torch.ones(2, dtype=torch.float64))


def test_psnr_and_l1_match_independent_formulas() -> None:
    pred, target = _image_pairs(3, 3, 20, 24, seed=1)
    ours = psnr(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    reference = [peak_signal_noise_ratio(t, p, data_range=1) for p, t in zip(pred, target, strict=True)]
    np.testing.assert_allclose(ours, reference, rtol=1e-12)
    np.testing.assert_allclose(
        l1_error(torch.from_numpy(pred), torch.from_numpy(target)).numpy(),
        np.abs(pred - target).reshape(3, -1).mean(axis=1),
        rtol=1e-12,
    )
    assert math.isinf(psnr(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)).item())


def test_image_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 15))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        l1_error(torch.rand(3, 16, 16), torch.rand(3, 16, 16))


def test_codebook_counts_by_hand() -> None:
    usage = CodebookUsage(5)
    usage.update(torch.tensor([[0, 0], [1, 3]]))
    assert usage.counts.tolist() == [2, 1, 0, 1, 0]
    assert usage.utilization == pytest.approx(3 / 5)
    assert usage.dead_codes == 2
    # p = (1/2, 1/4, 1/4): entropy 1.5 bits, perplexity 2^1.5.
    assert usage.perplexity == pytest.approx(2**1.5, rel=1e-12)
    assert codebook_utilization(usage.counts) == usage.utilization
    assert dead_codes(usage.counts) == 2


def test_perplexity_matches_scipy_entropy() -> None:
    counts = torch.from_numpy(np.random.default_rng(0).integers(0, 50, size=300))
    assert perplexity(counts) == pytest.approx(math.exp(entropy(counts.numpy())), rel=1e-10)
    assert perplexity(torch.full((64,), 7)) == pytest.approx(64.0)


def test_codebook_usage_errors() -> None:
    usage = CodebookUsage(4)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        usage.update(torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="integer"):
        usage.update(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="all counts are zero"):
        perplexity(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="K=3"):
        usage.merge(CodebookUsage(3))


def test_angular_dispersion_matches_numpy() -> None:
    codebook = torch.randn(40, 8, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 40)[:, None]
    units = codebook.double().numpy() / np.linalg.norm(codebook.double().numpy(), axis=1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip(units @ units.T, -1, 1)))
    np.fill_diagonal(angles, np.inf)
    expected = angles.min(axis=1).mean()
    assert angular_dispersion(codebook) == pytest.approx(expected, abs=1e-9)
    # Chunking does not change the result.
    assert angular_dispersion(codebook, max_elements=50) == pytest.approx(expected, abs=1e-9)
    assert angular_dispersion(torch.eye(6) * 3) == pytest.approx(90.0)


def test_code_norm_stats_match_numpy() -> None:
    codebook = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    codebook[:7] *= 2.0 / codebook[:7].norm(dim=1, keepdim=True)  # 7 codes exactly on a radius-2 ball
    codebook[7:] *= 1.5 / codebook[7:].norm(dim=1, keepdim=True).clamp_min(1.5)
    norms = np.linalg.norm(codebook.double().numpy(), axis=1)
    stats = code_norm_stats(codebook, ball_radius=2.0)
    assert stats["code_norm_mean"] == pytest.approx(norms.mean())
    assert stats["code_norm_std"] == pytest.approx(norms.std())
    assert stats["code_norm_min"] == pytest.approx(norms.min())
    assert stats["code_norm_max"] == pytest.approx(norms.max())
    assert stats["code_norm_fraction_on_bound"] == pytest.approx(7 / 30)
    assert "code_norm_fraction_on_bound" not in code_norm_stats(codebook)


def test_accumulated_parts_equal_one_pass() -> None:
    pred, target = _image_pairs(9, 3, 16, 16, seed=3)
    pred_t, target_t = torch.from_numpy(pred), torch.from_numpy(target)
    tokens = torch.randint(0, 32, (9, 4, 4), generator=torch.Generator().manual_seed(2))
    losses = torch.rand(9).tolist()
    whole = ReconstructionMetrics(32).update(pred_t, target_t, tokens, {"loss": sum(losses) / 9})
    parts = [ReconstructionMetrics(32) for _ in range(3)]
    for part, rows in zip(parts, ([0, 1, 2, 3], [4, 5], [6, 7, 8]), strict=True):
        part.update(pred_t[rows], target_t[rows], tokens[rows], {"loss": sum(losses[r] for r in rows) / len(rows)})
    merged = parts[0]
    merged += parts[1]
    merged += parts[2]
    a, b = whole.compute(), merged.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    assert a["num_images"] == 9
    assert a["psnr"] == pytest.approx(
        np.mean([peak_signal_noise_ratio(t, p, data_range=1) for p, t in zip(pred, target, strict=True)])
    )
    assert a["ssim"] == pytest.approx(_skimage_ssim(pred, target).mean(), abs=1e-6)
    assert a["codebook_utilization"] == pytest.approx(np.unique(tokens.numpy()).size / 32)


def test_evaluate_reconstruction_is_batch_size_independent_and_matches_independent_metrics() -> None:
    torch.manual_seed(0)
    config = ArcVQConfig(num_channels=3, hidden_size=16, residual_hidden_size=8, codebook_size=32, codebook_dim=8)
    model = ArcVQModel(config)
    pixels = torch.rand(11, 3, 16, 16) * 2 - 1
    one_pass = evaluate_reconstruction(model, [pixels])
    batched = evaluate_reconstruction(model, [{"pixel_values": chunk} for chunk in pixels.split(4)])
    for key, value in one_pass.items():
        # float32 convolutions differ in the last bits between batch sizes.
        assert batched[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    with torch.no_grad():
        output = model(pixels, return_loss=False)
    rec = ((output.reconstruction * 0.5 + 0.5).clamp(0, 1)).double().numpy()
    ref = ((pixels * 0.5 + 0.5).clamp(0, 1)).double().numpy()
    assert one_pass["psnr"] == pytest.approx(
        np.mean([peak_signal_noise_ratio(t, r, data_range=1) for r, t in zip(rec, ref, strict=True)]), rel=1e-5
    )
    assert one_pass["ssim"] == pytest.approx(_skimage_ssim(rec, ref).mean(), abs=1e-5)
    tokens = output.image_tokens.numpy().ravel()
    assert one_pass["used_codes"] == np.unique(tokens).size
    assert one_pass["perplexity"] == pytest.approx(math.exp(entropy(np.bincount(tokens, minlength=32))), rel=1e-9)
    assert one_pass["num_images"] == 11
    assert one_pass["angular_dispersion"] == pytest.approx(angular_dispersion(model.codebook))
    assert "code_norm_fraction_on_bound" in one_pass


def _all_reduce_shards(shards: list[ReconstructionMetrics]) -> None:
    """`all_reduce_` on every shard with a sum over the shards, standing in for accelerator.reduce across ranks."""
    packed = []
    for shard in shards:
        shard.all_reduce_(lambda t: packed.append(t.clone()) or t)
    total = torch.stack(packed).sum(dim=0)
    for shard in shards:
        shard.all_reduce_(lambda t: total.clone())


@needs_perceptual_weights()
def test_perceptual_sums_of_shards_equal_one_pass_and_the_direct_metrics() -> None:
    pred, target = (torch.from_numpy(x).float() for x in _image_pairs(4, 3, 32, 32, seed=4))
    tokens = torch.randint(0, 32, (4, 8, 8), generator=torch.Generator().manual_seed(5))
    whole = ReconstructionMetrics(32, with_lpips=True, with_rfid=True).update(pred, target, tokens)
    # Three ranks, one with an empty shard: the packed layout must not depend on what a rank saw.
    shards = [ReconstructionMetrics(32, with_lpips=True, with_rfid=True) for _ in range(3)]
    for shard, rows in zip(shards, ([0, 2], [1, 3], []), strict=True):
        if rows:
            shard.update(pred[rows], target[rows], tokens[rows])
    _all_reduce_shards(shards)
    for shard in shards[1:]:  # every rank ends with the same sums
        assert shard.lpips_sum == shards[0].lpips_sum and shard.num_images == 4
        for mine, theirs in zip(shard.fid.state_tensors(), shards[0].fid.state_tensors(), strict=True):
            assert torch.equal(mine, theirs)
    # ... and they are the one pass's (Inception features differ in the last float32 bits between batch
    # compositions, hence the tolerance).
    for mine, theirs in zip(shards[0].fid.state_tensors(), whole.fid.state_tensors(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    a, b = whole.compute(), shards[2].compute()  # the rank that saw no image reports the whole set
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    # Independent: the metric functions on the [0, 1] images mapped to [-1, 1] (rFID through its feature sums,
    # which is cheaper than a second Fréchet distance of 2048-d Gaussians).
    assert a["rfid_num_images"] == 4 and a["lpips_resize"] == 64  # 32 px crops: upsampled for AlexNet
    real, fake = target * 2 - 1, pred * 2 - 1
    assert a["lpips"] == pytest.approx(float(lpips(fake, real, resize=64).mean()), rel=1e-5)
    real_sum, _, _, fake_sum, _, _ = whole.fid.state_tensors()
    torch.testing.assert_close(real_sum, inception_features(real).double().sum(dim=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fake_sum, inception_features(fake).double().sum(dim=0), rtol=1e-5, atol=1e-5)
    assert np.isfinite(a["rfid"]) and a["rfid"] > 0


@needs_perceptual_weights("inception")
def test_rfid_with_reference_features_equals_the_full_computation_and_refuses_another_set() -> None:
    pred, target = (torch.from_numpy(x).float() for x in _image_pairs(4, 3, 32, 32, seed=7))
    tokens = torch.randint(0, 32, (4, 8, 8), generator=torch.Generator().manual_seed(8))
    full = ReconstructionMetrics(32, with_rfid=True).update(pred, target, tokens).compute()
    # The loop's targets in model space, as a benchmark would hold its test split.
    reference = reference_inception_features([target[:3] * 2 - 1, {"pixel_values": target[3:] * 2 - 1}])
    torch.testing.assert_close(reference, inception_features(target * 2 - 1), rtol=1e-5, atol=1e-5)
    # Two ranks, each with the whole set's reference: the reference is not summed over them.
    shards = [ReconstructionMetrics(32, with_rfid=True, rfid_reference_features=reference) for _ in range(2)]
    shards[0].update(pred[:1], target[:1], tokens[:1])
    shards[1].update(pred[1:], target[1:], tokens[1:])
    _all_reduce_shards(shards)
    with_reference = shards[1].compute()
    assert with_reference["rfid"] == pytest.approx(full["rfid"], rel=1e-4)
    assert with_reference["rfid_num_images"] == 4
    partial = ReconstructionMetrics(32, with_rfid=True, rfid_reference_features=reference).update(pred[:3], target[:3])
    with pytest.raises(ValueError, match="reference features hold 4 images but 3 were evaluated"):
        partial.compute()
    with pytest.raises(ValueError, match="with_rfid is False"):
        ReconstructionMetrics(32, rfid_reference_features=reference)


@needs_perceptual_weights("alex")
def test_lpips_keeps_native_resolution_from_64_px_and_refuses_a_mix() -> None:
    pred, target = (torch.from_numpy(x).float() for x in _image_pairs(2, 1, 64, 64, seed=6))
    metrics = ReconstructionMetrics(8, with_lpips=True).update(pred, target).compute()
    assert metrics["lpips_resize"] == 0 and "rfid" not in metrics
    assert metrics["lpips"] == pytest.approx(float(lpips(pred * 2 - 1, target * 2 - 1).mean()), rel=1e-6)
    mixed = ReconstructionMetrics(8, with_lpips=True).update(pred, target)
    with pytest.raises(ValueError, match="different resolutions"):
        mixed.update(pred[..., :32, :32], target[..., :32, :32])
