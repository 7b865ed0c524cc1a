"""Quality metrics: Fréchet distance against direct computations, top-k on real photos."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from audit.models import preprocess
from audit.quality import (class_probability, frechet_distance, penultimate_features, self_top1, shrunk_covariance,
                           transfer_topk)


def _direct_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2))))


def test_frechet_matches_direct_scipy_and_known_gaussian_answer():
    rng = np.random.default_rng(0)
    d, n = 6, 4000
    a = rng.normal(size=(n, d))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    b = shift + 2.0 * rng.normal(size=(n, d))                  # N(shift, 4 I)
    plain = frechet_distance(a, b, shrinkage=None)
    assert plain == pytest.approx(_direct_fd(a, b), rel=1e-9)
    # known answer: ||shift||^2 + tr(I + 4I - 2*2I) = ||shift||^2 + d
    assert plain == pytest.approx(float(shift @ shift) + d, rel=0.05)
    # Ledoit-Wolf shrinkage barely moves it when samples are plentiful
    assert frechet_distance(a, b) == pytest.approx(plain, rel=0.02)


def test_frechet_identical_and_shifted_small_samples():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 40))                                # fewer samples than dimensions
    delta = rng.normal(size=40)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + delta) == pytest.approx(float(delta @ delta), rel=1e-6)
    assert frechet_distance(a[:1], a[:1] + delta) == pytest.approx(float(delta @ delta), rel=1e-6)
    s = shrunk_covariance(a)
    assert np.all(np.linalg.eigvalsh(s) > 0)                    # shrinkage makes it positive definite
    assert np.trace(s) == pytest.approx(np.trace(np.cov(a, rowvar=False, bias=True)))


def test_self_top1_and_transfer_on_real_photos(lite0, photo_arrays, sample_images):
    imgs = [photo_arrays["chelsea"], photo_arrays["coffee"]]
    assert self_top1(lite0, imgs, [285, 967], 224) == 1.0
    assert self_top1(lite0, imgs, [967, 285], 224) == 0.0
    tk = transfer_topk(lite0, imgs, [285, 967], 224)
    assert tk == {"top1": 1.0, "top5": 1.0}
    x = preprocess([sample_images["chelsea"], sample_images["coffee"]], 224)
    assert self_top1(lite0, x, [285, 967], 224) == 1.0
    with torch.no_grad():
        probs = lite0(preprocess([sample_images["chelsea"], sample_images["coffee"]], 224)).softmax(1)
    assert class_probability(lite0, imgs, [285, 967], 224) == pytest.approx(float(probs[0, 285] + probs[1, 967]) / 2,
                                                                             rel=1e-5)
    assert class_probability(lite0, imgs, 285, 224) == pytest.approx(float(probs[:, 285].mean()), rel=1e-5)
    f = penultimate_features(lite0, imgs, 96)
    assert f.shape == (2, 1280) and np.isfinite(f).all()
    with torch.no_grad():
        direct = lite0.forward_head(lite0.forward_features(preprocess([sample_images["chelsea"]], 96)), pre_logits=True)
    np.testing.assert_allclose(f[0], direct[0].double().numpy(), rtol=1e-5, atol=1e-5)


def test_evaluate_class_visualizations_on_photos(lite0, photo_arrays, sample_images):
    from audit.config import ModelConfig
    from audit.quality import evaluate_class_visualizations
    from audit.references import class_references

    cfg = ModelConfig(name="m", architecture="efficientnet_lite0",
                      versions=[{"version": "1", "source": "builtin:efficientnet_lite0"}],
                      neurons=[{"id": "cat", "kind": "class", "layer": "classifier", "index": 285,
                                "references": "builtin:samples/chelsea"},
                               # a coffee photograph scored against the cat references
                               {"id": "coffee-vs-cat-refs", "kind": "class", "layer": "classifier", "index": 967,
                                "references": "builtin:samples/chelsea"},
                               {"id": "espresso", "kind": "class", "layer": "classifier", "index": 967},
                               {"id": "b5", "kind": "inner", "layer": "blocks.5", "index": 1}])
    stored = {"cat": [photo_arrays["chelsea"]], "coffee-vs-cat-refs": [photo_arrays["coffee"]]}
    out = evaluate_class_visualizations(lambda nid: stored.get(nid, []), lite0, cfg, base_dir=None, n_references=6)
    row = out["neurons"]["cat"]
    assert row["self_top1"] == 1.0
    assert row["lite1_top5"] == 1.0 and row["lite2_top5"] == 1.0
    # The documented recipe: Lite0 penultimate features at 224 px, 6 seed-0 crops of the references.
    refs = class_references([sample_images["chelsea"]], size=224, n=6, seed=0)
    direct = frechet_distance(penultimate_features(lite0, [photo_arrays["chelsea"]], 224),
                              penultimate_features(lite0, refs, 224))
    assert row["frechet"] == pytest.approx(direct, rel=1e-6)
    # The cat photo is nearer its own references than a coffee photo is.
    assert out["neurons"]["coffee-vs-cat-refs"]["frechet"] > 2 * row["frechet"]
    assert out["skipped"] == {"espresso": "no stored visualizations"}
    assert out["mean"]["self_top1"] == 1.0 and out["transfer_models"] == ["efficientnet_lite1", "efficientnet_lite2"]
