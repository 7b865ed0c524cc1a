"""The statistics of audit/watch on synthetic data drawn from seeds: the design-based variance,
calibration on batches from the reference distribution, power on planted shifts, the joint test
on a shift spread thinly over many neurons, and the batch size a shift needs."""
from __future__ import annotations

import numpy as np
import pytest

from audit.records import NeuronTarget
from audit.watch import (ReferenceWindow, design_covariance, image_units, images_needed, judge_batch,
                         neuron_shift, probe_units)

P = 8
TARGETS = [NeuronTarget(f"n{j}", "inner" if j >= 2 else "class", f"blocks.{j // 3}" if j >= 2 else "classifier", j)
           for j in range(P)]


class CropWorld:
    """Values of P neurons on crops of G photographs: photo effect + crop-geometry effect (shared by
    every photograph at one geometry) + noise, like the probe set's recipe crops."""

    def __init__(self, seed: int, photos: int = 12, slots: int = 16):
        rng = np.random.default_rng(seed)
        self.photo = rng.normal(0, 1.0, (photos, P))
        self.loading = rng.normal(0, 0.6, P)
        self.slots = slots
        self.rng = rng

    def values(self, photos: np.ndarray, geometry: np.ndarray) -> np.ndarray:
        return self.photo[photos] + np.outer(geometry, self.loading) + self.rng.normal(0, 0.5, (len(photos), P))

    def reference(self) -> ReferenceWindow:
        g = self.photo.shape[0]
        geometry = self.rng.normal(size=self.slots)
        photos = np.repeat(np.arange(g), self.slots)
        geo = np.tile(geometry, g)
        names = [f"p{p}#crop{s}" for p in range(g) for s in range(self.slots)]
        return ReferenceWindow(self.values(photos, geo), probe_units(names), names, "probe")

    def batch(self, n: int) -> np.ndarray:
        return self.values(self.rng.integers(0, self.photo.shape[0], n), self.rng.normal(size=n))


def test_design_covariance_reduces_to_the_iid_formula_and_counts_units():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    np.testing.assert_allclose(design_covariance(x, image_units(50)), np.cov(x, rowvar=False) / 50, rtol=1e-10)
    units = np.repeat(np.arange(5), 10)
    means = np.stack([x[units == u].mean(0) for u in range(5)])
    np.testing.assert_allclose(np.diag(design_covariance(x, units)), means.var(0, ddof=1) / 5, rtol=1e-10)
    assert probe_units(["chelsea#crop3", "coffee#crop3", "coffee#crop0"]).tolist() == ["crop3", "crop3", "crop0"]


@pytest.mark.parametrize("seed", [1, 2])
def test_batches_from_the_reference_distribution_rarely_alarm(seed):
    world = CropWorld(seed)
    ref = world.reference()
    fails = joint_fails = 0
    p_shift = []
    n_batches = 60
    for _ in range(n_batches):
        v = judge_batch(world.batch(64), ref, TARGETS, [f"i{k}" for k in range(64)])
        fails += sum(n.verdict == "FAIL" for n in v.neurons)
        joint_fails += v.joint["verdict"] == "FAIL"
        p_shift += [n.statistics["p_shift"] for n in v.neurons]
    assert fails / (n_batches * P) <= 0.01 and joint_fails <= 1
    # calibrated, not merely silent: about 5% of the neurons' mean tests fall below 0.05
    assert 0.01 <= np.mean(np.array(p_shift) < 0.05) <= 0.10


def test_a_planted_shift_fails_with_its_direction_interval_and_evidence():
    world = CropWorld(3)
    ref = world.reference()
    batch = world.batch(64)
    batch[:, 4] -= 1.2 * ref.values[:, 4].std()
    v = judge_batch(batch, ref, TARGETS, [f"img{k}" for k in range(64)])
    n4 = next(n for n in v.neurons if n.neuron_id == "n4")
    assert n4.verdict == "FAIL" and v.verdict == "FAIL"
    st = n4.statistics
    assert st["shift_ci"][0] < st["shift"] < st["shift_ci"][1] < -0.5
    assert "fires lower" in n4.reason and n4.evidence["direction"] == "dropped"
    low = np.argsort(batch[:, 4])[:6]
    assert [im["index"] for im in n4.evidence["images"]] == low.tolist()
    assert sum(n4.evidence["hist"]["batch"]) == 64 and sum(n4.evidence["hist"]["reference"]) == len(ref.values)
    assert any("n4" in g["neurons"] and g["direction"] == "dropped" for g in v.groups)
    assert sum(n.verdict == "FAIL" for n in v.neurons) <= 2


def test_a_shift_spread_thinly_over_all_neurons_is_caught_by_the_joint_test():
    world = CropWorld(4)
    ref = world.reference()
    sd = ref.values.std(0)
    caught = per_neuron_fails = 0
    for _ in range(10):
        batch = world.batch(256) + 0.3 * sd             # each neuron within its own noise
        v = judge_batch(batch, ref, TARGETS, [f"i{k}" for k in range(256)])
        caught += v.joint["verdict"] == "FAIL"
        per_neuron_fails += sum(n.verdict == "FAIL" for n in v.neurons)
    assert caught >= 8 and per_neuron_fails == 0


def test_a_new_subset_firing_is_caught_by_the_upper_tail():
    world = CropWorld(5)
    ref = world.reference()
    batch = world.batch(128)
    hot = np.random.default_rng(5).random(128) < 0.3      # 30% of images now fire strongly
    batch[hot, 0] = np.quantile(ref.values[:, 0], 0.97)
    s = neuron_shift(batch[:, 0], ref.values[:, 0], ref.units)
    assert s.p_above < 1e-4 and s.above > 0.3 and s.above_ci[0] > 0.2


def test_batch_size_needed_grows_as_the_shift_shrinks_and_the_reference_limits_it():
    assert images_needed(1.0, 0.0, 0.5, 0.01) < images_needed(1.0, 0.0, 0.25, 0.01)
    assert images_needed(1.0, 0.0, 0.5, 0.01) == pytest.approx(((2.576 + 0.842) / 0.5) ** 2, rel=0.01)
    assert images_needed(1.0, 0.05, 0.5, 0.01) == float("inf")            # reference too uncertain for 0.5 SD
    world = CropWorld(6)
    v = judge_batch(world.batch(64), world.reference(), TARGETS, [f"i{k}" for k in range(64)])
    assert "64 images" in v.power["statement"] and v.power["detectable_shift_median"] > 0


def test_a_rare_cluster_the_reference_happens_to_lack_does_not_alarm():
    """New photographs from the reference's own source: 100 photographs of which 6 are a cluster the
    neuron fires far above the rest on (photographs of its class), split at random into a reference
    and a batch of 50. Under "same distribution" the batch's variance is as good an estimate as the
    reference's; with the reference's alone, p < 0.001 came out in 22 of 2000 splits (11x its rate),
    with the pooled variance in 1 (and p < 0.05 in 96, 4.8%)."""
    rng = np.random.default_rng(7)
    population = np.concatenate([rng.normal(0, 1, 94), rng.normal(6, 1, 6)])
    tiny, splits = 0, 2000
    for _ in range(splits):
        order = rng.permutation(100)
        s = neuron_shift(population[order[50:]], population[order[:50]], image_units(50))
        tiny += s.p_shift < 1e-3
    assert tiny / splits <= 0.005


def test_watch_statistics_do_not_import_the_compare_or_scipy_stats():
    """A cached `watch` call is mostly imports (docs/benchmarks-watch.md): its statistics need scipy.special
    only, not scipy.stats (about 0.5 s to import) or the version compare (audit.drift)."""
    import subprocess
    import sys

    code = ("import sys, audit.watch; "
            "print(sorted(m for m in ('scipy.stats', 'audit.drift') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
