"""The SAMP quantizer against independent computations (docs/method.md §1)."""

import math

import pytest
import torch
import torch.nn.functional as F
from arc_loss_reference import dense_arc_margin_loss

from arcvq_hf.model.configuration_arcvq import ArcVQConfig
from arcvq_hf.model.quantization import (
    SphericalAngularMarginQuantizer,
    arc_margin_loss,
    arc_weight_at,
    assign_codes,
    ball_radius_at,
    init_codebook_,
    project_onto_ball_,
    vq_loss,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("max_elements", [1, 37, 10_000, 2**22])
def test_cosine_assignment_matches_bruteforce_argmax_at_any_chunking(max_elements):
    latents, codebook = torch.randn(300, 8), torch.randn(40, 8) * torch.rand(40, 1) * 5
    expected = (F.normalize(latents, dim=1) @ F.normalize(codebook, dim=1).T).argmax(dim=1)
    assert torch.equal(assign_codes(latents, codebook, "cosine", max_elements), expected)


def test_cosine_assignment_ignores_code_norms_but_euclidean_does_not():
    latents = torch.tensor([[1.0, 0.0]])
    codebook = torch.tensor([[10.0, 0.5], [0.3, 0.3]])  # far but aligned vs near but at 45 degrees
    assert assign_codes(latents, codebook, "cosine").item() == 0
    assert assign_codes(latents, codebook, "euclidean").item() == 1


@pytest.mark.parametrize("max_elements", [5, 2**22])
def test_euclidean_assignment_matches_cdist(max_elements):
    latents, codebook = torch.randn(200, 6), torch.randn(50, 6)
    expected = torch.cdist(latents.double(), codebook.double()).argmin(dim=1)
    assert torch.equal(assign_codes(latents, codebook, "euclidean", max_elements), expected)


def test_assignment_is_float32_under_bfloat16_autocast():
    quantizer = SphericalAngularMarginQuantizer(codebook_size=64, codebook_dim=16)
    quantizer.reset_codebook()
    latents = torch.randn(2, 16, 5, 5)
    reference = quantizer(latents, compute_vq_loss=False, compute_arc_loss=False)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = quantizer(latents, compute_vq_loss=False, compute_arc_loss=False)[1]
    assert torch.equal(reference, under_autocast)


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="distance"):
        assign_codes(torch.randn(3, 2), torch.randn(4, 2), "manhattan")


def test_codebook_inits():
    codebook = torch.empty(512, 64)
    init_codebook_(codebook, "uniform_normalized")
    torch.testing.assert_close(codebook.norm(dim=1), torch.ones(512))
    init_codebook_(codebook, "uniform_scaled")
    assert codebook.abs().max() <= 1 / 512 and codebook.std() > 0
    with pytest.raises(ValueError, match="init"):
        init_codebook_(codebook, "gaussian")


def test_vq_loss_terms_and_their_gradients():
    latents = torch.randn(10, 4, requires_grad=True)
    codes = torch.randn(10, 4, requires_grad=True)
    total, commitment = vq_loss(latents, codes, commitment_cost=0.25)
    squared = ((latents - codes) ** 2).mean()
    torch.testing.assert_close(total, 1.25 * squared)
    torch.testing.assert_close(commitment, squared)
    total.backward()
    difference = (latents - codes).detach() * 2 / latents.numel()
    # Codebook term moves the codes (weight 1); commitment moves the encoder (weight beta).
    torch.testing.assert_close(codes.grad, -difference)
    torch.testing.assert_close(latents.grad, 0.25 * difference)


def test_legacy_beta_placement_swaps_the_weights():
    latents = torch.randn(10, 4, requires_grad=True)
    codes = torch.randn(10, 4, requires_grad=True)
    total, _ = vq_loss(latents, codes, commitment_cost=0.25, legacy=True)
    total.backward()
    difference = (latents - codes).detach() * 2 / latents.numel()
    torch.testing.assert_close(codes.grad, -0.25 * difference)
    torch.testing.assert_close(latents.grad, difference)


def test_schedules():
    assert ball_radius_at(0, 3e-4) == 1.0
    assert ball_radius_at(1000, 3e-4) == pytest.approx(math.exp(0.3))
    assert math.isfinite(ball_radius_at(10**9, 3e-4))
    assert arc_weight_at(0, 1.0, 5e-4) == 1.0
    assert arc_weight_at(2000, 2.0, 5e-4) == pytest.approx(2.0 * math.exp(-1.0))
    assert arc_weight_at(10**9, 1.0, 5e-4) >= 0.0


@pytest.mark.parametrize("step", [0, 1, 1234, 10**6, 10**9])
def test_tensor_schedules_equal_the_float_ones(step):
    tensor_step = torch.tensor(step)
    radius, weight = ball_radius_at(tensor_step, 3e-4), arc_weight_at(tensor_step, 1.5, 5e-4)
    assert radius.dtype == weight.dtype == torch.float32
    assert radius.item() == pytest.approx(ball_radius_at(step, 3e-4), rel=1e-6)
    assert weight.item() == pytest.approx(arc_weight_at(step, 1.5, 5e-4), rel=1e-6, abs=1e-30)


def test_ball_projection_moves_only_codes_outside():
    codebook = torch.randn(100, 8)
    codebook[:50] *= 10  # well outside radius 2
    codebook[50:] = F.normalize(codebook[50:], dim=1) * 0.5
    before = codebook.clone()
    moved = project_onto_ball_(codebook, 2.0)
    assert moved[:50].all() and not moved[50:].any()
    torch.testing.assert_close(codebook[:50].norm(dim=1), torch.full((50,), 2.0))
    torch.testing.assert_close(F.normalize(codebook[:50], dim=1), F.normalize(before[:50], dim=1))
    assert torch.equal(codebook[50:], before[50:])
    with_tensor_radius = before.clone()
    assert torch.equal(project_onto_ball_(with_tensor_radius, torch.tensor(2.0)), moved)
    assert torch.equal(with_tensor_radius, codebook)


def test_quantizer_applies_ball_bound_in_training_only_and_follows_the_step():
    quantizer = SphericalAngularMarginQuantizer.from_config(
        ArcVQConfig(codebook_size=16, codebook_dim=4, ball_growth_rate=1e-3)
    )
    with torch.no_grad():
        quantizer.embedding.weight.copy_(F.normalize(torch.randn(16, 4), dim=1) * 5)
    latents = torch.randn(1, 4, 3, 3)
    quantizer.eval()
    quantizer(latents, compute_vq_loss=False, compute_arc_loss=False)
    torch.testing.assert_close(quantizer.embedding.weight.norm(dim=1), torch.full((16,), 5.0))
    quantizer.train()
    quantizer.step.fill_(1000)  # R = e^1
    quantizer(latents, compute_vq_loss=False, compute_arc_loss=False)
    torch.testing.assert_close(quantizer.embedding.weight.norm(dim=1), torch.full((16,), math.e))


def test_quantizer_without_ball_bound_leaves_codes_alone():
    quantizer = SphericalAngularMarginQuantizer.from_config(
        ArcVQConfig(codebook_size=16, codebook_dim=4, use_ball_bound=False)
    )
    with torch.no_grad():
        quantizer.embedding.weight.mul_(0).add_(7.0)
    quantizer.train()
    quantizer(torch.randn(1, 4, 2, 2), compute_vq_loss=False, compute_arc_loss=False)
    assert torch.all(quantizer.embedding.weight == 7.0)


def test_straight_through_forward_is_the_code_and_backward_is_identity():
    quantizer = SphericalAngularMarginQuantizer.from_config(
        ArcVQConfig(codebook_size=32, codebook_dim=4, use_arc_margin=False)
    )
    quantizer.reset_codebook()
    latents = torch.randn(2, 4, 3, 3, requires_grad=True)
    quantized, indices, _ = quantizer(latents, compute_vq_loss=False, compute_arc_loss=False)
    expected = quantizer.embedding.weight[indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(quantized, expected)
    weights = torch.randn_like(latents)
    (quantized * weights).sum().backward()
    torch.testing.assert_close(latents.grad, weights)


def _acos_arc_loss(latents, codebook, scale, margin, top_k):
    """docs/method.md §1.5 written literally with acos, in float64: an independent reference away from |cos| = 1."""
    cosines = F.normalize(codebook.double(), dim=1) @ F.normalize(latents.double(), dim=1).T
    positives = cosines.topk(top_k, dim=1).indices
    logits = scale * cosines.clone()
    margin_logits = scale * torch.cos(torch.acos(cosines.gather(1, positives)) + margin)
    logits = logits.scatter(1, positives, margin_logits)
    ratio = torch.exp(logits.gather(1, positives)).sum(1) / torch.exp(logits).sum(1)
    return -torch.log(ratio).mean()


def test_dense_reference_matches_the_literal_formula():
    latents, codebook = torch.randn(64, 8), torch.randn(20, 8)
    expected = _acos_arc_loss(latents, codebook, 5.0, 0.1, 3)
    torch.testing.assert_close(
        dense_arc_margin_loss(latents, codebook, 5.0, 0.1, 3).double(), expected, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    ("num_latents", "num_codes", "dim", "max_elements", "scale", "top_k"),
    [
        (500, 300, 16, 7_000, 5.0, 3),  # many chunks
        (500, 300, 16, 1, 5.0, 3),  # one code per chunk
        (128, 64, 8, 2**22, 10.0, 3),  # one chunk
        (2, 16, 4, 5, 5.0, 3),  # fewer latents than top_k
        (256, 32, 8, 1000, 64.0, 5),  # large scale: exp() would overflow without logsumexp
    ],
)
def test_chunked_arc_loss_equals_dense_value_and_gradient(num_latents, num_codes, dim, max_elements, scale, top_k):
    latents = torch.randn(num_latents, dim) * 3
    codebook = torch.randn(num_codes, dim)
    latents_a = latents.clone().requires_grad_()
    latents_b = latents.clone().requires_grad_()
    chunked = arc_margin_loss(latents_a, codebook, scale, 0.1, top_k, max_elements)
    dense = dense_arc_margin_loss(latents_b, codebook, scale, 0.1, top_k)
    chunked.backward()
    dense.backward()
    assert torch.isfinite(chunked)
    torch.testing.assert_close(chunked, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(latents_a.grad, latents_b.grad, atol=1e-5, rtol=1e-5)


def test_arc_loss_gradient_is_finite_when_latents_sit_exactly_on_codes():
    codebook = torch.randn(16, 8)
    latents = codebook.repeat(4, 1).clone().requires_grad_()  # cos = 1 exactly: acos would give inf gradient
    loss = arc_margin_loss(latents, codebook)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(latents.grad).all()


def test_arc_loss_detaches_the_codebook():
    codebook = torch.randn(16, 8, requires_grad=True)
    latents = torch.randn(40, 8, requires_grad=True)
    arc_margin_loss(latents, codebook).backward()
    assert codebook.grad is None and latents.grad is not None


def test_arc_loss_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        arc_margin_loss(torch.randn(0, 8), torch.randn(16, 8))


def test_arc_loss_pulls_latents_toward_their_codes():
    """A gradient step on the arc loss alone must lower it: the margin makes positives more aligned."""
    codebook = torch.randn(32, 8)
    latents = torch.randn(256, 8, requires_grad=True)
    optimizer = torch.optim.SGD([latents], lr=5.0)
    losses = []
    for _ in range(20):
        loss = arc_margin_loss(latents, codebook)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_codebook_gets_gradient_only_from_the_codebook_term():
    """The decoder's loss must reach the encoder through the straight-through estimator, never the codebook."""
    quantizer = SphericalAngularMarginQuantizer.from_config(
        ArcVQConfig(codebook_size=32, codebook_dim=4, use_arc_margin=False)
    )
    quantizer.reset_codebook()
    latents = torch.randn(2, 4, 3, 3, requires_grad=True)
    quantized, _, _ = quantizer(latents, compute_vq_loss=False, compute_arc_loss=False)
    quantized.pow(2).sum().backward()
    assert quantizer.embedding.weight.grad is None or not quantizer.embedding.weight.grad.any()
    assert latents.grad.abs().sum() > 0


def test_arc_loss_runs_in_float32_under_bf16_autocast():
    """Under `torch.autocast(bfloat16)` (bf16 training on CPU or GPU) the arc loss and its gradient are the float32
    ones: the cosines near 1 that pick the positives must not be rounded to bf16."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(300, 8, generator=generator, requires_grad=True)
    codebook = torch.randn(40, 8, generator=generator)
    reference = arc_margin_loss(latents, codebook, 5.0, 0.1, 3, max_elements=1000)
    (reference_grad,) = torch.autograd.grad(reference, latents)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = arc_margin_loss(latents, codebook, 5.0, 0.1, 3, max_elements=1000)
    (autocast_grad,) = torch.autograd.grad(under_autocast, latents)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(under_autocast, reference) and torch.equal(autocast_grad, reference_grad)
