"""Records and worker functions shared by the storage tests (importable by spawned processes)."""
from __future__ import annotations

import os
import zlib

import numpy as np

from audit.config import parse_config
from audit.records import ActivationStats, DriftResult, Visualization

NEURONS = ["cat", "espresso", "b5-c17", "b3-c2"]
PROBE_SHA = "d" * 64
STATS_KEY = "5" * 64          # the content key the statistics are stored under (audit.contentkeys.statistics_content_key)


def make_config(neurons=NEURONS):
    return parse_config({"models": [{
        "name": "m", "architecture": "efficientnet_lite0", "champion": "1",
        "versions": [{"version": "1", "source": "builtin:efficientnet_lite0"}, {"version": "2", "source": "file:v2.safetensors"}],
        "neurons": [{"id": n, "kind": "class" if i < 2 else "inner", "layer": "classifier" if i < 2 else "blocks.5",
                     "index": 285 + i, "label": n.upper()} for i, n in enumerate(neurons)]}]})


def make_stats(neuron_id: str, shift: float = 0.0, n: int = 24) -> tuple[ActivationStats, dict]:
    rng = np.random.default_rng(zlib.crc32(neuron_id.encode()))
    vals = (rng.normal(size=n) + shift).astype(np.float32)
    counts, edges = np.histogram(vals, bins=8)
    top = np.argsort(-vals)[:5]
    st = ActivationStats(neuron_id=neuron_id, n=n, mean=float(vals.mean()), std=float(vals.std()),
                         quantiles={"0.1": float(np.quantile(vals, 0.1)), "0.5": float(np.median(vals)),
                                    "0.9": float(np.quantile(vals, 0.9))},
                         frac_active=float((vals > 0).mean()), hist_edges=edges.tolist(), hist_counts=counts.tolist(),
                         topk_indices=top.tolist(), topk_values=vals[top].tolist())
    return st, {"max": vals, "mean": vals / 2}


def make_viz(neuron_id: str, seed: int = 0, value: int = 100) -> Visualization:
    img = np.full((16, 16, 3), value, np.uint8)
    img[seed % 16, :, 0] = 255
    mask = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    return Visualization(neuron_id=neuron_id, method="vital", seed=seed, image=img, mask=mask,
                         loss_history=[3.0, 2.0, 1.5], settings={"steps": 3, "lr": 0.05}, seconds=0.25)


def make_drift(neuron_id: str, verdict: str = "PASS") -> DriftResult:
    return DriftResult(neuron_id=neuron_id, layer="classifier", index=285, kind="class", verdict=verdict,
                       statistics={"spearman": 0.97 if verdict == "PASS" else 0.2, "topk_jaccard": 0.8,
                                   "wasserstein_norm": float("nan")},
                       matched_index=None, reason=f"{neuron_id}: {verdict.lower()}", ci={"spearman": [0.9, 0.99]})


def seed_probe(store) -> None:
    store.upsert_probe_set(PROBE_SHA, "builtin:samples", 24, {"names": [f"img{i}" for i in range(24)]})


def audit_version(store, version: str, run_id: int, neurons=NEURONS) -> None:
    """What the flow writes for one version: per neuron one transaction with stats and a visualization."""
    for n in neurons:
        st, vals = make_stats(n, shift=0.0 if version == "1" else 0.5)
        store.save_neuron_results("m", version, n, run_id=run_id, probe_sha256=PROBE_SHA, stats=st, values=vals,
                                  stats_content_key=STATS_KEY, visualizations=[(f"key-{n}", make_viz(n))])


# ---------------------------------------------------------------- spawned workers
def concurrent_worker(url: str, root: str, worker: int, barrier, repeats: int = 3) -> None:
    """Two of these run at once: the same registry/probe set/drift results, and each its own version."""
    from storage.repository import AuditStore

    store = AuditStore(url, root)
    barrier.wait(timeout=60)
    for _ in range(repeats):
        store.sync_registry(make_config())
        store.upsert_model_version("m", "1", "builtin:efficientnet_lite0", "a" * 64)
        store.upsert_model_version("m", "2", "file:v2.safetensors", "b" * 64)
        seed_probe(store)
        run = store.start_run(f"flow-{worker}", "c" * 64, "0.1.0")
        audit_version(store, str(worker + 1), run)          # different results: version 1 vs version 2
        audit_version(store, "1", run, neurons=NEURONS[:2])  # the same results written by both
        for n in NEURONS:
            did = store.save_drift("m", "1", "2", PROBE_SHA, make_drift(n, "FAIL" if n == "cat" else "PASS"), run)
            if n == "cat":
                store.create_alert_if_new(did, "webhook")
        store.finish_run(run, "completed")
    store.close()


def crash_worker(url: str, root: str) -> None:
    """Audits two neurons, then dies (os._exit) in the middle of the third neuron's transaction."""
    from storage.repository import AuditStore

    store = AuditStore(url, root)
    run = store.start_run("crashing-flow", "c" * 64, "0.1.0")
    audit_version(store, "1", run, neurons=NEURONS[:2])
    st, vals = make_stats(NEURONS[2])

    def tx(s):
        store._save_stats(s, "m", "1", NEURONS[2], PROBE_SHA, st, None, run, STATS_KEY)
        s.flush()
        os._exit(17)   # killed mid-transaction: nothing of this neuron may remain

    store._write(tx)
