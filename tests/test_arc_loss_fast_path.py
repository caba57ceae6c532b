"""The arc loss's fast paths (grouped top-k, gradient accumulated in the forward pass) against plain torch."""

import pytest
import torch
from arc_loss_reference import dense_arc_margin_loss

from arcvq_hf.model.quantization import _top_k_per_row, arc_margin_loss


@pytest.mark.parametrize(
    ("rows", "columns", "top_k"),
    [(7, 8192, 3), (5, 12545, 3), (3, 3000, 5), (4, 700, 3), (2, 70_000, 1)],  # 700: falls back to torch.topk
)
def test_grouped_top_k_equals_torch_topk(rows, columns, top_k):
    scores = torch.randn(rows, columns, generator=torch.Generator().manual_seed(columns))
    values, indices = _top_k_per_row(scores, top_k)
    expected_values, expected_indices = scores.topk(top_k, dim=1)
    assert torch.equal(values, expected_values)
    assert torch.equal(indices, expected_indices)


def test_grouped_top_k_finds_winners_packed_in_one_group_and_in_the_ragged_tail():
    scores = torch.randn(3, 4000)
    scores[0, 64:67] = torch.tensor([9.0, 8.0, 7.0])  # all three in one group of 64
    scores[1, 3990:3993] = torch.tensor([9.0, 8.0, 7.0])  # in the tail past the last full group (3968)
    scores[2, [0, 1999, 3999]] = torch.tensor([7.0, 9.0, 8.0])
    _, indices = _top_k_per_row(scores, 3)
    assert indices.tolist() == [[64, 65, 66], [3990, 3991, 3992], [1999, 3999, 0]]


@pytest.mark.parametrize("max_elements", [50_000, 2**22])
def test_chunked_arc_loss_on_the_grouped_path_equals_dense(max_elements):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(3000, 16, generator=generator) * 2
    codebook = torch.randn(96, 16, generator=generator)
    latents_a, latents_b = latents.clone().requires_grad_(), latents.clone().requires_grad_()
    chunked = arc_margin_loss(latents_a, codebook, 5.0, 0.1, 3, max_elements)
    dense = dense_arc_margin_loss(latents_b, codebook, 5.0, 0.1, 3)
    chunked.backward()
    dense.backward()
    torch.testing.assert_close(chunked, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(latents_a.grad, latents_b.grad, atol=1e-7, rtol=1e-4)


def test_arc_loss_without_gradient_has_the_same_value():
    latents, codebook = torch.randn(1000, 8), torch.randn(40, 8)
    with_gradient = arc_margin_loss(latents.clone().requires_grad_(), codebook)
    with torch.no_grad():
        under_no_grad = arc_margin_loss(latents.clone().requires_grad_(), codebook)
    plain = arc_margin_loss(latents, codebook)
    assert not under_no_grad.requires_grad and not plain.requires_grad
    torch.testing.assert_close(under_no_grad, with_gradient.detach())
    torch.testing.assert_close(plain, with_gradient.detach())


def test_arc_loss_gradient_scales_with_the_upstream_gradient():
    latents, codebook = torch.randn(900, 8), torch.randn(30, 8)
    once = latents.clone().requires_grad_()
    arc_margin_loss(once, codebook).backward()
    thrice = latents.clone().requires_grad_()
    (3.0 * arc_margin_loss(thrice, codebook)).backward()
    torch.testing.assert_close(thrice.grad, 3.0 * once.grad)
