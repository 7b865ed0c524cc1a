from __future__ import annotations

import pytest
import torch

from audit.sortmatch import (argsort_rows, resample_sorted, sort_matching_loss, sort_matching_loss_gather,
                             sorted_reference)


def authors_form(syn_b: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """VITAL's sort_matching for one synthetic image [C, N] and references [R, C, N] (argsort/gather).

    Ties (exact zeros after ReLU) may be broken in any order, each a valid subgradient; the
    authors' unstable sort picks one at random, ours the stable one, so the comparison uses it.
    """
    c = syn_b.shape[0]
    _, index_content = torch.sort(syn_b.view(c, -1), stable=True)
    inverse_index = index_content.argsort(-1)
    value_style = torch.sort(refs.view(refs.shape[0], c, -1)).values.mean(0)
    return ((syn_b.view(c, -1) - value_style.gather(-1, inverse_index)) ** 2).mean()


@pytest.mark.parametrize("relu", [False, True])
def test_loss_and_gradient_equal_authors_form(relu):
    g = torch.Generator().manual_seed(0)
    syn = torch.randn(3, 5, 37, generator=g)
    refs = [torch.randn(4, 5, 37, generator=g) * (i + 1) for i in range(3)]
    if relu:   # many exact ties, as after ReLU
        syn = syn.clamp(min=0)
        refs = [r.clamp(min=0) for r in refs]
    syn_a = syn.clone().requires_grad_(True)
    syn_b = syn.clone().requires_grad_(True)
    ref_sorted = torch.stack([sorted_reference(r) for r in refs])
    ours = sort_matching_loss(syn_a, ref_sorted)
    theirs = torch.stack([authors_form(syn_b[i], refs[i]) for i in range(3)])
    torch.testing.assert_close(ours, theirs)
    gy = torch.tensor([1.0, 2.0, -0.5])
    (ours * gy).sum().backward()
    (theirs * gy).sum().backward()
    torch.testing.assert_close(syn_a.grad, syn_b.grad)


def test_gradcheck_double():
    g = torch.Generator().manual_seed(1)
    syn = torch.randn(2, 3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.sort(torch.randn(2, 3, 11, generator=g, dtype=torch.float64), -1).values
    w = torch.rand(2, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: sort_matching_loss(s, ref, w), (syn,))
    torch.testing.assert_close(sort_matching_loss(syn, ref, w), sort_matching_loss_gather(syn, ref, w))


def test_channel_weight_and_broadcast_reference():
    syn = torch.randn(2, 4, 10)
    ref = torch.sort(torch.randn(1, 4, 10), -1).values
    w = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 2.0]])
    per = (torch.sort(syn, -1).values - ref).square().mean(-1)
    expect = (per * w).mean(-1)
    torch.testing.assert_close(sort_matching_loss(syn, ref, w), expect)


def test_argsort_rows_matches_stable_sort():
    x = torch.randn(7, 1000)
    x[:, ::3] = 0.0
    x[:, 1::7] = -0.0
    torch.testing.assert_close(argsort_rows(x), torch.sort(x, dim=-1, stable=True).indices, rtol=0, atol=0)


def test_resample_identity_and_quantiles():
    r = torch.sort(torch.randn(2, 3, 50), -1).values
    assert torch.equal(resample_sorted(r, 50), r)
    lin = torch.linspace(0, 1, 101).view(1, 1, -1)
    out = resample_sorted(lin, 10)
    expect = ((torch.arange(10) + 0.5) * 10.1 - 0.5) / 100          # plotting positions of 10 in 101 samples
    torch.testing.assert_close(out.flatten(), expect, atol=1e-6, rtol=0)


def test_different_lengths_and_subsampling_are_consistent():
    g = torch.Generator().manual_seed(3)
    values = torch.rand(1, 2, 4000, generator=g)
    ref = sorted_reference(torch.rand(3, 2, 1000, generator=g))          # same distribution, other length
    full = sort_matching_loss(values, ref.unsqueeze(0))
    sub = sort_matching_loss(values, ref.unsqueeze(0), n_samples=512, generator=g)
    assert full.item() < 1e-3 and sub.item() < 2e-3
    shifted = sort_matching_loss(values + 1, ref.unsqueeze(0), n_samples=512, generator=g)
    assert 0.9 < shifted.item() < 1.1
