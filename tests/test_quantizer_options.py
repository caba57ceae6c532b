"""Options of the SAMP layer beyond the paper (docs/method.md §1.10): the arc-weight floor, EMA code updates under
angle assignment and dead-code restarts. Each is off by default and then changes nothing."""

import math

import pytest
import torch
import torch.nn.functional as F

from arcvq_hf import ArcVQConfig, ArcVQModel
from arcvq_hf.model.quantization import (
    SphericalAngularMarginQuantizer,
    arc_weight_at,
    ema_update_codebook_,
    restart_dead_codes_,
)


def test_arc_weight_floor_holds_the_weight_and_zero_floor_is_the_paper_schedule():
    assert arc_weight_at(10**6, 1.5, 5e-4, floor=0.1) == 0.1
    assert arc_weight_at(0, 1.5, 5e-4, floor=0.1) == 1.5
    assert arc_weight_at(3000, 1.5, 5e-4) == arc_weight_at(3000, 1.5, 5e-4, floor=0.0) == 1.5 * math.exp(-1.5)
    tensor = arc_weight_at(torch.tensor(10**6), 1.5, 5e-4, floor=0.1)
    assert tensor.item() == pytest.approx(0.1)
    layer = SphericalAngularMarginQuantizer(codebook_size=8, codebook_dim=4, arc_weight_floor=0.05)
    layer.set_step(20000)
    assert layer.current_arc_weight == 0.05 and layer.schedule_tensors()[1].item() == pytest.approx(0.05)


def test_ema_update_matches_a_float64_computation():
    torch.manual_seed(0)
    codebook, latents = torch.randn(6, 3), torch.randn(20, 3)
    indices = torch.randint(0, 6, (20,))
    usage, sums = torch.rand(6) + 0.5, torch.randn(6, 3)
    expected_usage, expected_sums = usage.double().clone(), sums.double().clone()
    for j in range(6):
        members = latents.double()[indices == j]
        expected_usage[j] = 0.9 * expected_usage[j] + 0.1 * len(members)
        expected_sums[j] = 0.9 * expected_sums[j] + 0.1 * members.sum(0)
    total = expected_usage.sum()
    smoothed = (expected_usage + 1e-5) / (total + 6e-5) * total
    ema_update_codebook_(codebook, usage, sums, latents, indices, decay=0.9)
    torch.testing.assert_close(usage.double(), expected_usage)
    torch.testing.assert_close(sums.double(), expected_sums)
    torch.testing.assert_close(codebook.double(), expected_sums / smoothed[:, None])


def test_ema_layer_moves_codes_only_in_training_and_the_vq_loss_keeps_only_the_commitment():
    torch.manual_seed(1)
    layer = SphericalAngularMarginQuantizer(
        codebook_size=8, codebook_dim=4, codebook_update="ema", ema_decay=0.5, use_ball_bound=False
    )
    assert not layer.codebook.requires_grad
    torch.testing.assert_close(layer.code_sum, layer.codebook)  # every code starts as its own one member
    latents = torch.randn(2, 4, 3, 3)
    before = layer.codebook.clone()
    _, _, _, parts = layer.eval()(latents, return_loss_breakdown=True)
    assert torch.equal(layer.codebook, before)
    assert torch.equal(parts.vq_loss, 0.25 * parts.commitment_loss)
    quantized, indices, _ = layer.train()(latents)
    torch.testing.assert_close(quantized, before[indices].permute(0, 3, 1, 2))  # looked up before the update
    flat = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    used = indices.unique()
    for j in used.tolist():  # a used code moves halfway (decay 0.5) toward the mean of its latents, up to smoothing
        members = flat[indices.reshape(-1) == j]
        expected = (0.5 * before[j] + 0.5 * members.sum(0)) / (0.5 + 0.5 * len(members))
        torch.testing.assert_close(layer.codebook[j], expected, rtol=1e-3, atol=1e-4)


def test_dead_codes_restart_on_batch_latents_and_live_codes_stay():
    torch.manual_seed(2)
    codebook, latents = torch.randn(5, 3), torch.randn(12, 3)
    usage = torch.tensor([3.0, 0.1, 2.5, 0.0, 1.9])
    before = codebook.clone()
    dead = restart_dead_codes_(codebook, usage, latents, threshold=2.0)
    assert dead.tolist() == [False, True, False, True, True]
    assert torch.equal(codebook[~dead], before[~dead])
    for row in codebook[dead]:
        assert (latents == row).all(dim=1).any()
    assert usage[dead].tolist() == [2.0, 2.0, 2.0]


def test_dead_code_restart_revives_a_collapsed_codebook():
    torch.manual_seed(3)
    latents = F.normalize(torch.randn(256, 4) + torch.tensor([4.0, 0.0, 0.0, 0.0]), dim=1) * 3  # a cone around e1
    used = {}
    for threshold in (0.0, 1.0):
        layer = SphericalAngularMarginQuantizer(
            codebook_size=16, codebook_dim=4, use_arc_margin=False, use_ball_bound=False, dead_code_threshold=threshold
        )
        with torch.no_grad():  # one code along e1 wins every latent; the other 15 point away from all of them
            layer.embedding.weight.copy_(torch.tensor([-1.0, 0.0, 0.0, 0.0]) + 1e-3 * torch.randn(16, 4))
            layer.embedding.weight[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        layer.train()
        for _ in range(3):
            layer(latents)
        used[threshold] = layer.eval()(latents)[1].unique().numel()
    assert used[0.0] == 1 and used[1.0] >= 10, used


def test_options_travel_with_checkpoints_and_default_checkpoints_have_no_new_tensors(tmp_path):
    small = {"num_channels": 1, "hidden_size": 16, "residual_hidden_size": 8, "codebook_size": 16, "codebook_dim": 4}
    plain = ArcVQModel(ArcVQConfig(**small))
    assert not any("code_usage" in key or "code_sum" in key for key in plain.state_dict())
    torch.manual_seed(4)
    model = ArcVQModel(ArcVQConfig(**small, codebook_update="ema", dead_code_threshold=0.5, arc_weight_floor=0.01))
    torch.testing.assert_close(model.quantizer.code_sum, model.codebook)
    model.train()
    model(torch.rand(4, 1, 8, 8) * 2 - 1).loss.backward()
    model.save_pretrained(tmp_path)
    loaded = ArcVQModel.from_pretrained(tmp_path)
    assert loaded.config.codebook_update == "ema" and loaded.quantizer.dead_code_threshold == 0.5
    for name in ("code_usage", "code_sum"):
        assert torch.equal(getattr(loaded.quantizer, name), getattr(model.quantizer, name))
    assert torch.equal(loaded.codebook, model.codebook)


def test_bad_option_values_are_refused():
    with pytest.raises(ValueError, match="codebook_update"):
        ArcVQConfig(codebook_update="kmeans")
    with pytest.raises(ValueError, match="ema_decay"):
        ArcVQConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        ArcVQConfig(dead_code_threshold=-1)
    with pytest.raises(ValueError, match="codebook_update"):
        SphericalAngularMarginQuantizer(codebook_update="adam")


def test_codes_moved_by_the_options_stay_inside_the_ball_for_evaluation():
    torch.manual_seed(5)
    layer = SphericalAngularMarginQuantizer(codebook_size=8, codebook_dim=4, codebook_update="ema", ema_decay=0.0)
    latents = torch.randn(2, 4, 3, 3) * 10  # far outside the ball of radius R(0) = 1
    layer.train()(latents)
    assert layer.codebook.norm(dim=1).max() <= 1.0 + 1e-5
    training_tokens = layer(latents)[1]
    assert torch.equal(layer.eval()(latents)[1], training_tokens)


def test_spherical_codes_give_the_decoder_unit_vectors_and_tokens_decode_the_same():
    torch.manual_seed(6)
    layer = SphericalAngularMarginQuantizer(codebook_size=16, codebook_dim=4, spherical_codes=True).eval()
    with torch.no_grad():
        layer.embedding.weight.mul_(torch.rand(16, 1) * 5 + 0.1)  # codes of many norms
    latents = torch.randn(2, 4, 3, 3, requires_grad=True)
    quantized, indices, _ = layer(latents)
    torch.testing.assert_close(quantized.norm(dim=1), torch.ones(2, 3, 3))
    torch.testing.assert_close(layer.codes_for(indices).permute(0, 3, 1, 2), quantized)
    plain = SphericalAngularMarginQuantizer(codebook_size=16, codebook_dim=4).eval()
    plain.load_state_dict(layer.state_dict())
    assert torch.equal(plain(latents)[1], indices)  # the same assignment, only what is decoded changes
    quantized.sum().backward()
    assert torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0
