"""Assignment by angle and the arc loss from one walk over the cosines (`assign_codes_and_arc_margin_loss`, what the
layer runs in training) against the two separate steps and against dense computations written here."""

import copy

import pytest
import torch
import torch.nn.functional as F
from arc_loss_reference import dense_arc_margin_loss

from arcvq_hf.model.quantization import (
    SphericalAngularMarginQuantizer,
    _codes_per_block,
    _update_nearest_codes_,
    arc_margin_loss,
    assign_codes,
    assign_codes_and_arc_margin_loss,
)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """One CPU thread walks cache-sized blocks of codes, several threads the largest blocks allowed: test both."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _float64_nearest(latents, codebook):
    """Brute-force argmax of the cosines in float64, and the gap between the best and second-best cosine."""
    cosines = F.normalize(latents.double(), dim=1) @ F.normalize(codebook.double(), dim=1).T
    top = cosines.topk(2, dim=1)
    return top.indices[:, 0], top.values[:, 0] - top.values[:, 1], cosines


def _assert_is_the_nearest_code(indices, latents, codebook):
    """Where float64 separates the best code from the runner-up by more than float32 rounding, the index is that
    code; elsewhere it is a code whose cosine is within rounding of the best."""
    expected, gap, cosines = _float64_nearest(latents, codebook)
    clear = gap > 1e-5
    assert clear.float().mean() > 0.9  # the check below is not vacuous
    assert torch.equal(indices[clear], expected[clear])
    chosen = cosines.gather(1, indices[:, None]).squeeze(1)
    assert (cosines.max(dim=1).values - chosen).max() < 1e-5


@pytest.mark.parametrize(
    ("num_codes", "num_latents", "dim", "max_elements"),
    [
        (8192, 2048, 64, 2**22),  # blocks of 512 codes on one thread (16 blocks), 2048 on several (4 blocks)
        (8192, 1500, 64, 40_000),  # max_elements caps the block at 26 codes: 316 blocks
        (512, 4096, 64, 2**22),  # the photo step's shape at K=512: 2 blocks on one thread
        (300, 700, 8, 7 * 700),  # 7 codes per block, a ragged last block
        (5, 40, 3, 2**22),  # one block
    ],
)
def test_fused_indices_equal_assign_codes_and_the_nearest_code(threads, num_codes, num_latents, dim, max_elements):
    generator = torch.Generator().manual_seed(num_codes + num_latents)
    latents = torch.randn(num_latents, dim, generator=generator) * 3
    codebook = torch.randn(num_codes, dim, generator=generator) * torch.rand(num_codes, 1, generator=generator) * 4
    blocks = -(-num_codes // _codes_per_block(num_latents, max_elements, torch.device("cpu")))
    assert blocks >= (4 if num_codes == 8192 else 43 if num_codes == 300 else 1)
    indices, loss = assign_codes_and_arc_margin_loss(latents, codebook, 5.0, 0.1, 3, max_elements)
    assert indices.dtype == torch.long and indices.shape == (num_latents,)
    assert torch.equal(indices, assign_codes(latents, codebook, "cosine", max_elements))
    _assert_is_the_nearest_code(indices, latents, codebook)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("max_elements", [3 * 50, 64 * 50, 2**22])
def test_ties_go_to_the_lowest_code_index_within_and_across_blocks(threads, max_elements):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(50, 6, generator=generator)
    codes = torch.randn(100, 6, generator=generator)
    # Every code twice: identical rows give bit-identical cosines, and the first copy must win, whether the copies
    # lie in one block or (3 codes per block at max_elements 150) in different ones.
    doubled = torch.cat([codes, codes])
    reference = assign_codes(latents, doubled, "cosine", max_elements)
    fused, _ = assign_codes_and_arc_margin_loss(latents, doubled, max_elements=max_elements)
    assert torch.equal(fused, reference)
    assert torch.equal(reference, assign_codes(latents, codes, "cosine", max_elements))
    # A latent's own direction at indices 60 and 150, exactly tied and better than any other code: 60 wins.
    doubled[150] = doubled[60] = latents[10]
    fused, _ = assign_codes_and_arc_margin_loss(latents, doubled, max_elements=max_elements)
    assert fused[10].item() == 60 and assign_codes(latents, doubled, "cosine", max_elements)[10].item() == 60


@pytest.mark.parametrize("improved_columns_only", [True, False])
def test_running_maximum_update_equals_one_argmax(improved_columns_only):
    generator = torch.Generator().manual_seed(3)
    # Coarse values: many exact ties, within and across blocks.
    cosines = torch.randint(0, 6, (97, 300), generator=generator).float() / 5
    best = torch.full((300,), -float("inf"))
    indices = torch.zeros(300, dtype=torch.long)
    for start in range(0, 97, 10):
        _update_nearest_codes_(cosines[start : start + 10].clone(), start, best, indices, improved_columns_only)
    values, expected = cosines.max(dim=0)  # the first maximal row
    assert torch.equal(expected, cosines.argmax(dim=0))
    assert torch.equal(indices, expected) and torch.equal(best, values)


@pytest.mark.parametrize(
    ("num_codes", "num_latents", "dim", "max_elements"),
    [(8192, 1024, 16, 2**22), (700, 3000, 16, 50_000), (96, 3000, 16, 2**22), (40, 2, 8, 2**22)],
)
def test_fused_loss_and_gradient_equal_arc_margin_loss_and_the_dense_formula(
    threads, num_codes, num_latents, dim, max_elements
):
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(num_latents, dim, generator=generator) * 2
    codebook = torch.randn(num_codes, dim, generator=generator)
    fused_in, separate_in, dense_in = (latents.clone().requires_grad_() for _ in range(3))
    _, fused = assign_codes_and_arc_margin_loss(fused_in, codebook, 5.0, 0.1, 3, max_elements)
    separate = arc_margin_loss(separate_in, codebook, 5.0, 0.1, 3, max_elements)
    dense = dense_arc_margin_loss(dense_in, codebook, 5.0, 0.1, 3)
    fused.backward()
    separate.backward()
    dense.backward()
    # The same blocks and the same arithmetic: bit-identical to the separate step.
    assert torch.equal(fused, separate) and torch.equal(fused_in.grad, separate_in.grad)
    torch.testing.assert_close(fused, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_in.grad, dense_in.grad, atol=1e-7, rtol=1e-4)


def test_fused_gradient_scales_with_the_upstream_gradient_and_is_absent_without_grad():
    generator = torch.Generator().manual_seed(2)
    latents, codebook = torch.randn(600, 8, generator=generator), torch.randn(50, 8, generator=generator)
    once = latents.clone().requires_grad_()
    indices, loss = assign_codes_and_arc_margin_loss(once, codebook)
    assert not indices.requires_grad
    loss.backward()
    thrice = latents.clone().requires_grad_()
    (3.0 * assign_codes_and_arc_margin_loss(thrice, codebook)[1]).backward()
    torch.testing.assert_close(thrice.grad, 3.0 * once.grad)
    with torch.no_grad():
        plain_indices, plain = assign_codes_and_arc_margin_loss(latents.clone().requires_grad_(), codebook)
    assert not plain.requires_grad
    assert torch.equal(plain, loss.detach()) and torch.equal(plain_indices, indices)
    with pytest.raises(ValueError, match="empty"):
        assign_codes_and_arc_margin_loss(torch.randn(0, 8), codebook)


def test_assignment_scores_in_float32_under_bf16_autocast():
    """Two codes 1e-4 apart in cosine: bf16 products cannot tell them apart; `assign_codes` and the fused walk
    both turn autocast off, so they pick the truly nearest code under autocast too."""
    latents = F.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    noise = torch.randn(64, 16, generator=torch.Generator().manual_seed(6))
    tangent = F.normalize(noise - (noise * latents).sum(1, keepdim=True) * latents, dim=1)
    near = latents + 0.010 * tangent  # cosine ~ 1 - 5e-5
    nearer = latents + 0.009 * tangent  # cosine ~ 1 - 4e-5, after `near` in the codebook
    codebook = torch.cat([near, nearer, torch.randn(32, 16)])
    expected = torch.arange(64, 128)
    assert torch.equal(assign_codes(latents, codebook, "cosine"), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(assign_codes(latents, codebook, "cosine"), expected)
        fused, loss = assign_codes_and_arc_margin_loss(latents, codebook)
    assert torch.equal(fused, expected) and loss.dtype == torch.float32


def _layer(distance="cosine", **options):
    torch.manual_seed(0)
    layer = SphericalAngularMarginQuantizer(
        codebook_size=300, codebook_dim=8, distance=distance, chunk_elements=20 * 128, **options
    ).train()
    layer.set_step(2000)  # the ball bound at R = exp(0.6) moves the codes that lie outside it
    with torch.no_grad():
        layer.embedding.weight.mul_(torch.rand(300, 1) * 4)
    return layer


@pytest.mark.parametrize("options", [{}, {"spherical_codes": True}, {"codebook_update": "ema"}])
def test_the_layer_in_training_gives_what_the_separate_steps_give(threads, options):
    layer = _layer(**options)
    # The separate steps see the codebook the layer's forward sees: projected into the ball, before any EMA update.
    reference_layer = copy.deepcopy(layer)
    reference_layer.apply_ball_bound()
    projected = reference_layer.embedding.weight.detach()
    assert (projected != layer.embedding.weight.detach()).any()
    latents = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    latents.requires_grad_()
    _, indices, _, parts = layer(latents, return_loss_breakdown=True)
    (grad,) = torch.autograd.grad(parts.arc_loss, latents)
    reference_in = latents.detach().clone().requires_grad_()
    flat = reference_in.permute(0, 2, 3, 1).reshape(-1, 8)
    expected_indices = assign_codes(flat, projected, "cosine", 20 * 128)
    expected_arc = arc_margin_loss(flat, projected, 5.0, 0.1, 3, 20 * 128)
    (expected_grad,) = torch.autograd.grad(expected_arc, reference_in)
    assert torch.equal(indices.reshape(-1), expected_indices)
    torch.testing.assert_close(parts.arc_loss, expected_arc, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, expected_grad, atol=1e-8, rtol=1e-5)


def test_the_layer_with_euclidean_assignment_still_computes_the_arc_loss():
    layer = _layer("euclidean")
    latents = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(4))
    _, indices, _, parts = layer(latents, return_loss_breakdown=True)
    flat = latents.permute(0, 2, 3, 1).reshape(-1, 8)
    codebook = layer.embedding.weight.detach()
    assert torch.equal(indices.reshape(-1), assign_codes(flat, codebook, "euclidean"))
    assert parts.arc_loss is not None
    torch.testing.assert_close(parts.arc_loss, arc_margin_loss(flat, codebook, 5.0, 0.1, 3, 20 * 128))
    layer.eval()
    _, eval_indices, _, eval_parts = layer(latents, return_loss_breakdown=True)
    assert eval_parts.arc_loss is None and torch.equal(eval_indices, indices)
