"""DeepInversion baseline: the batch-norm statistics prior, the objective, seeding, the model left alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.deepinversion import batchnorm_layers, batchnorm_statistics_loss, render_deepinversion
from audit.records import NeuronTarget

CAT = NeuronTarget("cat", "class", "classifier", 285)
INNER = NeuronTarget("b4-c17", "inner", "blocks.4", 17)


def test_batchnorm_prior_is_zero_on_its_own_statistics_and_per_element():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)).eval()
    bn = net[1]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        y = net[0](x)
        bn.running_mean.copy_(y.mean((0, 2, 3)))
        bn.running_var.copy_(y.var((0, 2, 3), unbiased=False))
    with batchnorm_statistics_loss(net, first_multiplier=10.0) as terms, torch.no_grad():
        net(torch.cat([x, 2 * x + 1]))
    assert len(terms) == 2 and terms[0].shape == (2,)
    assert float(terms[0][0]) == pytest.approx(0.0, abs=1e-4)          # the image that set the statistics
    # the other element: 10 x (||mean - rm|| + ||var - rv||), computed by hand
    with torch.no_grad():
        y2 = net[0](2 * x + 1)
    expected = 10 * ((y2.mean((0, 2, 3)) - bn.running_mean).norm() + (y2.var((0, 2, 3), unbiased=False)
                                                                        - bn.running_var).norm())
    assert float(terms[0][1]) == pytest.approx(float(expected), rel=1e-4)
    assert batchnorm_layers(net) == [net[1], net[4]]
    with batchnorm_statistics_loss(net):
        pass
    assert not net[1]._forward_hooks                                    # hooks removed
    with pytest.raises(ValueError, match="batch-norm"):
        with batchnorm_statistics_loss(nn.Sequential(nn.Conv2d(3, 3, 1))):
            pass


def test_deepinversion_reaches_its_targets_and_is_seeded(lite0):
    lite0.train()
    flags = [p.requires_grad for p in lite0.parameters()]
    out = render_deepinversion(lite0, [CAT, INNER], size=64, steps=12, seed=0)
    assert lite0.training and [p.requires_grad for p in lite0.parameters()] == flags
    lite0.eval()
    for v in out:
        assert np.mean(v.loss_history[-3:]) < np.mean(v.loss_history[:3]), (v.neuron_id, v.loss_history)
        assert v.method == "deepinversion" and v.image.shape == (64, 64, 3) and v.image.dtype == np.uint8
        assert v.mask.shape == (64, 64) and v.mask.max() == pytest.approx(1.0)
    again = render_deepinversion(lite0, [CAT], size=64, steps=3, seed=4)[0]
    same = render_deepinversion(lite0, [CAT], size=64, steps=3, seed=4)[0]
    other = render_deepinversion(lite0, [CAT], size=64, steps=3, seed=5)[0]
    assert again.image.tobytes() == same.image.tobytes() and again.loss_history == same.loss_history
    assert again.image.tobytes() != other.image.tobytes()
    # batching changes nothing: the cat rendered alone equals the cat of a batch
    alone = render_deepinversion(lite0, [CAT], size=64, steps=3, seed=4, flip=False, jitter=0)[0]
    batch = render_deepinversion(lite0, [CAT, INNER], size=64, steps=3, seed=4, flip=False, jitter=0)[0]
    np.testing.assert_allclose(alone.loss_history, batch.loss_history, rtol=1e-4)
