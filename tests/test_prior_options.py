"""Options that keep the prior acting after its schedules fade (docs/method.md §1.10): a cap on the ball radius, a
memory of recent latents for the arc loss, and a pull of unused codes toward their arc positives. Each is off by
default and then changes nothing; each is checked against an independent computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from arcvq_hf import ArcVQConfig, ArcVQModel
from arcvq_hf.model.quantization import (
    SphericalAngularMarginQuantizer,
    arc_margin_loss,
    arc_positive_directions,
    assign_codes,
    ball_radius_at,
)


def test_ball_cap_holds_the_radius_and_no_cap_is_the_paper_schedule():
    assert ball_radius_at(10**6, 3e-4, max_radius=2.0) == 2.0
    assert ball_radius_at(1000, 3e-4, max_radius=2.0) == pytest.approx(math.exp(0.3))
    assert ball_radius_at(1000, 3e-4, max_radius=None) == ball_radius_at(1000, 3e-4) == math.exp(0.3)
    assert ball_radius_at(torch.tensor(10**6), 3e-4, max_radius=2.0).item() == pytest.approx(2.0)
    layer = SphericalAngularMarginQuantizer(codebook_size=8, codebook_dim=4, ball_max_radius=1.5)
    with torch.no_grad():
        layer.embedding.weight.mul_(100.0)
    layer.set_step(10**5)  # exp(alpha t) = 1e13: without the cap no code would be touched
    layer.train()(torch.randn(32, 4))
    norms = layer.codebook.norm(dim=1)
    assert layer.current_ball_radius == 1.5
    torch.testing.assert_close(norms, torch.full_like(norms, 1.5))


def test_latent_memory_arc_loss_is_the_arc_loss_over_batch_and_remembered_latents():
    torch.manual_seed(0)
    layer = SphericalAngularMarginQuantizer(codebook_size=16, codebook_dim=4, arc_memory_size=10).train()
    first, second = torch.randn(6, 4), torch.randn(7, 4, requires_grad=True)
    layer(first)
    torch.testing.assert_close(layer.latent_memory[:6], F.normalize(first, dim=1))
    assert int(layer.latent_memory_filled) == 6
    _, indices, _, parts = layer(second, return_loss_breakdown=True)
    # Independent: the plain arc loss over the batch and the (detached) first batch.
    reference_latents = torch.cat([second, F.normalize(first, dim=1)])
    expected = arc_margin_loss(reference_latents, layer.codebook)
    torch.testing.assert_close(parts.arc_loss, expected)
    (grad,) = torch.autograd.grad(parts.arc_loss, second)
    (expected_grad,) = torch.autograd.grad(expected, second)
    torch.testing.assert_close(grad, expected_grad)
    # The assignment is still this batch's own, and the memory now holds the newest 10 latents, newest first.
    torch.testing.assert_close(indices, assign_codes(second, layer.codebook))
    assert int(layer.latent_memory_filled) == 10
    torch.testing.assert_close(layer.latent_memory, F.normalize(torch.cat([second, first[:3]]), dim=1).detach())


def test_latent_memory_is_saved_so_a_resumed_layer_sees_the_same_arc_loss():
    torch.manual_seed(1)
    config = dict(codebook_size=8, codebook_dim=4, arc_memory_size=5)
    layer = SphericalAngularMarginQuantizer(**config).train()
    layer(torch.randn(4, 4))
    resumed = SphericalAngularMarginQuantizer(**config).train()
    resumed.load_state_dict(layer.state_dict())
    batch = torch.randn(3, 4)
    torch.testing.assert_close(
        resumed(batch, return_loss_breakdown=True)[3].arc_loss, layer(batch, return_loss_breakdown=True)[3].arc_loss
    )
    assert "latent_memory" not in SphericalAngularMarginQuantizer(codebook_size=8, codebook_dim=4).state_dict()


def test_unused_codes_are_pulled_toward_their_arc_positives_and_used_codes_are_not():
    torch.manual_seed(2)
    layer = SphericalAngularMarginQuantizer(
        codebook_size=6, codebook_dim=3, unused_code_window=2, use_ball_bound=False, arc_weight_decay=0.0
    ).train()
    with torch.no_grad():
        layer.embedding.weight.copy_(torch.eye(3).repeat(2, 1) * torch.tensor([[1.0]] * 3 + [[-1.0]] * 3))
    # Latents near +x, +y, +z only: codes 3, 4, 5 (the negative axes) never win.
    latents = torch.eye(3).repeat(4, 1) + 0.05 * torch.randn(12, 3)
    for _ in range(2):
        _, _, _, parts = layer(latents, return_loss_breakdown=True)
        assert parts.unused_code_pull is not None and parts.unused_code_pull.item() == 0.0  # window not yet passed
    assert layer.steps_since_used.tolist() == [0, 0, 0, 2, 2, 2]
    _, _, loss, parts = layer(latents, return_loss_breakdown=True)
    # Independent: each unused code's 3 closest latents by angle, their mean unit direction, 1 - cos to it.
    codes = layer.codebook.detach()[3:]
    unit = F.normalize(latents, dim=1)
    targets = F.normalize(unit[(F.normalize(codes, dim=1) @ unit.T).topk(3, dim=1).indices].mean(1), dim=1)
    torch.testing.assert_close(targets, arc_positive_directions(codes, latents, top_k=3))
    expected = (1 - F.cosine_similarity(codes, targets, dim=1)).mean()
    torch.testing.assert_close(parts.unused_code_pull, expected)
    layer.embedding.weight.grad = None
    (layer.current_arc_weight * parts.unused_code_pull).backward()
    grad = layer.embedding.weight.grad
    assert grad[:3].abs().max() == 0 and (grad[3:].norm(dim=1) > 0).all()
    # A gradient step moves every unused code toward its target.
    before = F.cosine_similarity(codes, targets, dim=1)
    after = F.cosine_similarity(codes - 0.1 * grad[3:], targets, dim=1)
    assert (after > before).all()


def test_prior_options_are_config_fields_with_clear_errors():
    model = ArcVQModel(
        ArcVQConfig(
            hidden_size=8,
            residual_hidden_size=4,
            num_residual_layers=1,
            codebook_size=8,
            codebook_dim=4,
            ball_max_radius=2.0,
            arc_memory_size=16,
            unused_code_window=3,
        )
    )
    quantizer = model.quantizer
    assert (quantizer.ball_max_radius, quantizer.arc_memory_size, quantizer.unused_code_window) == (2.0, 16, 3)
    assert int(quantizer.latent_memory_filled) == 0 and quantizer.steps_since_used.sum() == 0
    with pytest.raises(ValueError, match="dead_code_threshold"):
        ArcVQConfig(codebook_update="ema", unused_code_window=5)
    with pytest.raises(ValueError, match="ball_max_radius must be a number > 0"):
        ArcVQConfig(ball_max_radius=0)
    with pytest.raises(ValueError, match="arc_memory_size must be an integer >= 0"):
        ArcVQConfig(arc_memory_size=-1)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        SphericalAngularMarginQuantizer(codebook_update="ema", unused_code_window=5)
