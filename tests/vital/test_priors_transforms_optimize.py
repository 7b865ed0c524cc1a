from __future__ import annotations

import torch

from audit.optimize import History, LossPlateau, lr_at, optimize
from audit.priors import l2_prior, total_variation_l1, total_variation_l2
from audit.transforms import Compose, Jitter, RandomFlip


def test_priors_per_element():
    x = torch.zeros(2, 3, 8, 8)
    x[1, :, :, 4:] = 1.0
    for f in (total_variation_l1, total_variation_l2, l2_prior):
        v = f(x)
        assert v.shape == (2,) and v[0] == 0 and v[1] > 0
    assert torch.allclose(total_variation_l2(x[1:]), total_variation_l2(x)[1:])


def test_transforms_seeded_and_shape_preserving():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    outs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(5)
        t = Compose([Jitter(2, generator=g), RandomFlip(generator=g)])
        outs.append(torch.stack([t(x) for _ in range(4)]))
    assert torch.equal(outs[0], outs[1])
    assert outs[0].shape == (4, 2, 3, 6, 6)
    assert torch.equal(outs[0].sum((-1, -2)), x.sum((-1, -2)).expand(4, 2, 3))   # roll/flip permute pixels


def test_optimize_schedule_and_plateau():
    assert abs(lr_at(0, 100, 1.0, 10) - 0.1) < 1e-9 and abs(lr_at(9, 100, 1.0, 10) - 1.0) < 1e-9
    assert lr_at(99, 100, 1.0, 10) < 0.01
    p = torch.tensor([3.0, -2.0], requires_grad=True)
    hist = optimize(p, lambda step: p.square(), steps=200, lr=0.1, warmup=5,
                    stop_criteria=[LossPlateau(window=10, rel_tol=1e-2, min_steps=20)])
    assert len(hist.losses[0]) == 2 and hist.losses[-1][0] < hist.losses[0][0]
    # The plateau criterion stopped the loop, at the first step where it holds.
    assert hist.stopped_by == "LossPlateau" and 20 <= hist.steps_run < 200
    assert len(hist.losses) == len(hist.lrs) == hist.steps_run
    plateau = LossPlateau(window=10, rel_tol=1e-2, min_steps=20)
    assert plateau(History(losses=hist.losses, steps_run=hist.steps_run))
    assert not plateau(History(losses=hist.losses[:-1], steps_run=hist.steps_run - 1))
    assert hist.lrs == [lr_at(s, 200, 0.1, 5) for s in range(hist.steps_run)]
    # Without a stop criterion the loop runs exactly `steps` steps and names MaxSteps.
    q = torch.tensor([3.0, -2.0], requires_grad=True)
    full = optimize(q, lambda step: q.square(), steps=30, lr=0.1, warmup=5)
    assert full.stopped_by == "MaxSteps" and full.steps_run == 30 and len(full.losses) == 30
