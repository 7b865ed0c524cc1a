"""Fourier (Lucid) and MACO baselines: parametrizations, optimization, seeding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.baselines import (fourier_rgb, fourier_scale, maco_rgb, maco_spatial, neuron_objectives,
                             reference_magnitude, render_fourier, render_maco)
from audit.models import normalize
from audit.records import NeuronTarget

CAT = NeuronTarget("cat", "class", "classifier", 285)
INNER = NeuronTarget("b4-c17", "inner", "blocks.4", 17)

# Lucid's color_correlation_svd_sqrt, written out here independently of the module.
LUCID = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def test_fourier_image_is_in_range_and_recorrelated_with_lucids_matrix():
    size = 32
    g = torch.Generator().manual_seed(0)
    spec = torch.randn(2, 3, size, size // 2 + 1, 2, generator=g) * 0.5
    rgb = fourier_rgb(spec, size).double()
    assert rgb.shape == (2, 3, size, size)
    assert float(rgb.min()) > 0 and float(rgb.max()) < 1
    # direct computation: numpy irfft2 (ortho) of the 1/f-scaled spectrum, /4, then M @ t per pixel
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    scale = 1.0 / np.maximum(np.sqrt(fx ** 2 + fy ** 2), 1.0 / size)
    np.testing.assert_allclose(fourier_scale(size, size).numpy(), scale, rtol=1e-6)
    z = (spec[..., 0] + 1j * spec[..., 1]).numpy() * scale
    t = np.fft.irfft2(z, s=(size, size), norm="ortho") / 4.0
    m = LUCID / np.linalg.norm(LUCID, axis=0).max()
    expected = np.einsum("ij,bjhw->bihw", m, t)
    logit = torch.logit(rgb).numpy()
    np.testing.assert_allclose(logit, expected, atol=2e-4)
    # the colour channels of the output are correlated as M M^T says (t white -> rgb cov = M M^T)
    white = torch.randn(1, 3, 64, 64, generator=g).double()
    from audit.baselines import recorrelate_colors
    out = recorrelate_colors(white.float()).double().flatten(2)[0]
    np.testing.assert_allclose(np.cov(out.numpy()), m @ m.T, atol=0.03)


def test_maco_magnitude_stays_exactly_fixed_during_optimization(lite0, class_refs):
    size = 48
    mag = reference_magnitude(class_refs, size)
    assert mag.shape == (3, size, size)
    fi = (-torch.arange(size)) % size
    torch.testing.assert_close(mag, mag[:, fi][:, :, fi])           # |X(-k)| = |X(k)|
    half = mag[..., : size // 2 + 1]
    phase = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    before = phase.detach().clone()

    def spectrum_magnitude() -> torch.Tensor:
        with torch.no_grad():
            return torch.fft.rfft2(maco_spatial(mag, phase).double()).abs().float()

    torch.testing.assert_close(spectrum_magnitude(), half.expand(2, -1, -1, -1), rtol=1e-4, atol=1e-4 * float(half.max()))
    opt = torch.optim.Adam([phase], lr=0.25)
    for _ in range(3):
        opt.zero_grad()
        loss = -neuron_objectives(lite0, normalize(maco_rgb(mag, phase)), [CAT, CAT]).sum()
        loss.backward()
        opt.step()
    assert (phase.detach() - before).abs().max() > 0.1                 # the phase moved ...
    torch.testing.assert_close(spectrum_magnitude(), half.expand(2, -1, -1, -1), rtol=1e-4, atol=1e-4 * float(half.max()))


def test_both_losses_fall_on_lite0_at_64px(lite0, class_refs):
    fourier = render_fourier(lite0, [CAT, INNER], size=64, steps=12, seed=0)
    maco = render_maco(lite0, [CAT, INNER], class_refs, size=64, steps=8, seed=0, crops_per_step=2)
    for v in fourier + maco:
        h = v.loss_history
        assert np.mean(h[-3:]) < np.mean(h[:3]) - 0.5, (v.method, v.neuron_id, h)
        assert v.image.shape == (64, 64, 3) and v.image.dtype == np.uint8
    assert [v.method for v in fourier] == ["fourier", "fourier"] and fourier[0].mask is None
    assert [v.method for v in maco] == ["maco", "maco"]
    assert maco[0].mask.shape == (64, 64) and maco[0].mask.dtype == np.float32
    assert 0 <= maco[0].mask.min() and maco[0].mask.max() == pytest.approx(1.0)


def test_seeding_gives_identical_bytes(lite0, class_refs):
    a = render_fourier(lite0, [CAT], size=48, steps=3, seed=5)[0]
    b = render_fourier(lite0, [CAT], size=48, steps=3, seed=5)[0]
    c = render_fourier(lite0, [CAT], size=48, steps=3, seed=6)[0]
    assert a.image.tobytes() == b.image.tobytes() and a.loss_history == b.loss_history
    assert a.image.tobytes() != c.image.tobytes()
    m1 = render_maco(lite0, [CAT], class_refs, size=48, steps=3, seed=5, crops_per_step=2)[0]
    m2 = render_maco(lite0, [CAT], class_refs, size=48, steps=3, seed=5, crops_per_step=2)[0]
    m3 = render_maco(lite0, [CAT], class_refs, size=48, steps=3, seed=6, crops_per_step=2)[0]
    assert m1.image.tobytes() == m2.image.tobytes() and m1.mask.tobytes() == m2.mask.tobytes()
    assert m1.image.tobytes() != m3.image.tobytes()


def test_inner_objective_is_channel_mean_and_forward_stops_early(lite0):
    from audit.taps import capture

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = neuron_objectives(lite0, x, [INNER, NeuronTarget("b2", "inner", "blocks.2", 3)])
        with capture(lite0, ["blocks.4", "blocks.2"]) as acts:
            logits = lite0(x)
        cls = neuron_objectives(lite0, x, [CAT, INNER])
    torch.testing.assert_close(got, torch.stack([acts["blocks.4"][0, 17].mean(), acts["blocks.2"][1, 3].mean()]))
    torch.testing.assert_close(cls, torch.stack([logits[0, 285], acts["blocks.4"][1, 17].mean()]))


def test_maco_takes_one_reference_set_per_target(lite0, class_refs):
    out = render_maco(lite0, [CAT, INNER], [class_refs[:4], class_refs[4:]], size=32, steps=1, seed=0, crops_per_step=1)
    assert [v.neuron_id for v in out] == ["cat", "b4-c17"] and out[0].settings["n_references"] == [4, 4]
    with pytest.raises(ValueError, match="2 reference sets for 1 targets"):
        render_maco(lite0, [CAT], [class_refs, class_refs], size=32, steps=1)
