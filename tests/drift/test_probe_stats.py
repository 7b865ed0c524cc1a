"""Probe-set determinism and hashing; activation extraction, summaries and the cache."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from audit.models import image_to_tensor
from audit.probe import build_probe_set, crop_recipe
from audit.records import NeuronTarget
from audit.stats import activation_cache, layer_activations, neuron_activations, set_cache_dir, summarize


def _folder(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (60 + 10 * i, 80, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    return tmp_path


def test_probe_set_layout_and_crop0(small_probe, sample_images):
    n_images = len(small_probe.names) // 4
    assert small_probe.images.shape == (n_images * 4, 3, 96, 96)
    assert small_probe.names[:4] == [f"astronaut#crop{k}" for k in range(4)]
    i = small_probe.names.index("chelsea#crop0")
    assert torch.equal(small_probe.images[i], image_to_tensor(sample_images["chelsea"], 96))
    assert small_probe.groups[i] == "chelsea"
    assert crop_recipe(6)[:4] == crop_recipe(4)          # prefix-stable recipe


def test_probe_hash_stable_and_sensitive(tmp_path):
    folder = _folder(tmp_path)
    p1 = build_probe_set(str(folder), size=32, crops_per_image=3)
    p2 = build_probe_set(str(folder), size=32, crops_per_image=3)
    assert p1.sha256 == p2.sha256 and torch.equal(p1.images, p2.images)
    assert build_probe_set(str(folder), size=40, crops_per_image=3).sha256 != p1.sha256
    assert build_probe_set(str(folder), size=32, crops_per_image=4).sha256 != p1.sha256
    img = np.asarray(Image.open(folder / "im1.png")).copy()
    img[0, 0, 0] ^= 1                                    # one bit of one pixel
    Image.fromarray(img).save(folder / "im1.png")
    assert build_probe_set(str(folder), size=32, crops_per_image=3).sha256 != p1.sha256
    (folder / "notes.txt").write_text("x")
    (folder / "broken.png").write_bytes(b"not a png")
    p3 = build_probe_set(str(folder), size=32, crops_per_image=3)
    assert any("broken.png" in k for k in p3.skipped) and len(p3.names) == 9


def test_neuron_activations_convention(lite0, small_probe):
    targets = [NeuronTarget("cat", "class", "classifier", 285), NeuronTarget("b5", "inner", "blocks.5", 17)]
    acts = neuron_activations(lite0, small_probe, targets)
    with torch.no_grad():
        x = small_probe.images[:6]
        logits = lite0(x)
        feats = {}
        h = lite0.blocks[5].register_forward_hook(lambda m, i, o: feats.setdefault("b5", o))
        lite0(x)
        h.remove()
    np.testing.assert_allclose(acts["cat"].max[:6], logits[:, 285].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(acts["cat"].max, acts["cat"].mean)
    np.testing.assert_array_equal(acts["cat"].top1[:6], (logits.argmax(1) == 285).numpy())
    np.testing.assert_allclose(acts["b5"].max[:6], feats["b5"][:, 17].amax((1, 2)).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(acts["b5"].mean[:6], feats["b5"][:, 17].mean((1, 2)).numpy(), rtol=1e-4, atol=1e-4)
    la = layer_activations(lite0, small_probe, "blocks.5")
    assert la.shape == (len(small_probe.names), 192)
    np.testing.assert_array_equal(la[:, 17], acts["b5"].max)
    s = summarize("cat", acts["cat"])
    assert s.n == len(small_probe.names) and len(s.hist_counts) == 32 and sum(s.hist_counts) == s.n
    assert s.frac_active == pytest.approx(acts["cat"].top1.mean())
    assert s.topk_values[0] == pytest.approx(acts["cat"].max.max())
    assert s.quantiles["q50"] == pytest.approx(np.median(acts["cat"].max))


def test_cache_hit_runs_no_forward(lite0, small_probe, tmp_path, helpers):
    model = copy.deepcopy(lite0)
    with torch.no_grad():
        model.classifier.bias[0] += 1e-3                 # weights never seen before: a cold cache
    targets = [NeuronTarget("cat", "class", "classifier", 285), NeuronTarget("b3", "inner", "blocks.3", 5)]
    counter = helpers.ForwardCounter(model)
    try:
        set_cache_dir(tmp_path)
        first = neuron_activations(model, small_probe, targets, batch_size=64)
        assert counter.calls == 1                        # one pass: every layer in the same forward
        second = neuron_activations(model, small_probe, targets)
        assert counter.calls == 1
        np.testing.assert_array_equal(first["b3"].max, second["b3"].max)
        activation_cache().clear()                       # memory gone: the .npz files answer
        third = neuron_activations(model, small_probe, targets)
        assert counter.calls == 1 and list(tmp_path.glob("*.npz"))
        np.testing.assert_array_equal(first["cat"].max, third["cat"].max)
        neuron_activations(model, small_probe, targets, batch_size=64, use_cache=False)
        assert counter.calls == 2
    finally:
        set_cache_dir(None)
        counter.remove()
