"""A real `storage.repository.AuditStore` (SQLite file + artifact files with real PNGs), written through the
repository API, for the dashboard tests.

Model `lite0-demo` (v1 champion, v2): `espresso` FAILs (planted change, open alert), `b5-c17` WARNs (with
transparency masks, function matched to its own channel), `egyptian-cat` and `b3-c4` PASS; the class neurons
have VITAL and Fourier images, the inner ones VITAL with masks. Model `lite1-prod` has three versions and three
comparisons of `b4-c9` (1→2 PASS, 2→3 WARN, 1→3 FAIL) and the image file of v3 is deleted (a placeholder, not a
broken image). Two audit runs: one failed with an error, one completed with MLflow runs for lite0-demo v1 and v2.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from audit.config import AuditConfig
from audit.records import ActivationStats, DriftResult, Visualization

FLOW_RUN = "7f3c2a10-1111-4e6b-9c55-0a1b2c3d4e5f"
MLFLOW_RUNS = {"1": "a" * 32, "2": "b" * 32}
MLFLOW_EXPERIMENT = "7"
PROBE_NAMES = [f"{n}-{k}" for n in ("chelsea", "coffee", "rocket", "astronaut", "camera") for k in range(8)]
OK = {"spearman": 0.99, "topk_jaccard": 0.9, "topk_p_value": 1e-9, "wasserstein_norm": 0.03,
      "cross_activation": 0.98, "visual_distance": 0.4}


def pattern(seed: int, size: int = 64, freq: float = 6.0, drift: float = 0.0) -> np.ndarray:
    """A colour pattern (uint8 [size, size, 3]) that differs with the seed and drifts with `drift`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size, 3))
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        out[..., c] = np.sin(2 * math.pi * (freq * (a * x + b * y) + p + drift)) + 0.5 * np.cos(
            2 * math.pi * (freq * 1.7 * (b * x - a * y) + drift))
    out = (out - out.min()) / (np.ptp(out) + 1e-9)
    return (out * 255).astype(np.uint8)


def blob_mask(seed: int, size: int = 14) -> np.ndarray:
    """A soft round transparency mask (float32 [size, size] in [0, 1])."""
    rng = np.random.default_rng(seed + 1000)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    y, x = np.mgrid[0:size, 0:size]
    m = np.exp(-(((y - cy) ** 2) + ((x - cx) ** 2)) / (2 * (size / 4.5) ** 2))
    return (m / m.max()).astype(np.float32)


def _stats(nid: str, rng: np.random.Generator, shift: float) -> ActivationStats:
    vals = rng.gamma(2.0, 1.0, len(PROBE_NAMES)) + shift
    counts, edges = np.histogram(vals, bins=20)
    order = np.argsort(-vals)[:5]
    return ActivationStats(neuron_id=nid, n=len(vals), mean=float(vals.mean()), std=float(vals.std()),
                           quantiles={"0.5": float(np.median(vals)), "0.9": float(np.quantile(vals, 0.9))},
                           frac_active=float((vals > 1).mean()), hist_edges=edges.tolist(), hist_counts=counts.tolist(),
                           topk_indices=order.tolist(), topk_values=vals[order].tolist())


CONFIG = {"models": [
    {"name": "lite0-demo", "architecture": "efficientnet_lite0", "champion": "1",
     "versions": [{"version": "1", "source": "builtin:efficientnet_lite0"},
                  {"version": "2", "source": "file:./checkpoints/v2.safetensors"}],
     "neurons": [
         {"id": "egyptian-cat", "kind": "class", "layer": "classifier", "index": 285, "label": "Egyptian cat",
          "references": "builtin:samples/chelsea"},
         {"id": "espresso", "kind": "class", "layer": "classifier", "index": 967, "label": "espresso",
          "references": "top-k"},
         {"id": "b5-c17", "kind": "inner", "layer": "blocks.5", "index": 17},
         {"id": "b3-c4", "kind": "inner", "layer": "blocks.3", "index": 4}]},
    {"name": "lite1-prod", "architecture": "efficientnet_lite1", "champion": "1",
     "versions": [{"version": "1", "source": "models:/lite1/1"}, {"version": "2", "source": "models:/lite1/2"},
                  {"version": "3", "source": "models:/lite1@candidate"}],
     "neurons": [{"id": "b4-c9", "kind": "inner", "layer": "blocks.4", "index": 9}]},
]}


def populate_real_store(tmp: Path):
    """(store, artifacts_root) of a fresh SQLite store under `tmp`, holding the story of the module docstring."""
    from storage.repository import AuditStore

    tmp = Path(tmp)
    art = tmp / "artifacts"
    store = AuditStore(f"sqlite:///{tmp / 'audit.db'}", art, upgrade=True)
    cfg = AuditConfig.model_validate(CONFIG)
    store.sync_registry(cfg)
    thumbs = [store.artifacts.put_image(pattern(500 + i, size=48, freq=3)) for i in range(len(PROBE_NAMES))]
    probe = "ab" * 32
    store.upsert_probe_set(probe, "builtin:samples", len(PROBE_NAMES), {"names": PROBE_NAMES, "thumbnails": thumbs})

    failed = store.start_run(None, "cfg", "0.1.0")
    store.finish_run(failed, "failed", "CheckpointMismatchError: missing key classifier.weight")
    run = store.start_run(FLOW_RUN, "cfg", "0.1.0")
    rng = np.random.default_rng(0)
    for m in cfg.models:
        for vi, v in enumerate(m.versions):
            store.upsert_model_version(m.name, v.version, v.source, f"{(vi + 1) * 7:064x}")
            for ni, n in enumerate(m.neurons):
                moved = n.id in ("espresso", "b4-c9")
                shift = (0.4 if moved else 0.03) * vi
                vizs = [(f"{m.name}/{n.id}/v{v.version}/vital",
                         Visualization(n.id, "vital", 0, pattern(10 + ni, drift=shift),
                                       blob_mask(ni) if n.kind == "inner" else None, [1.0, 0.5], {"steps": 2}, 1.0))]
                if n.kind == "class":
                    vizs.append((f"{m.name}/{n.id}/v{v.version}/fourier",
                                 Visualization(n.id, "fourier", 0, pattern(20 + ni, freq=9, drift=shift))))
                store.save_neuron_results(m.name, v.version, n.id, run_id=run, probe_sha256=probe,
                                          stats=_stats(n.id, rng, 1.5 * vi if moved else 0.0), visualizations=vizs)
    drift = [
        ("lite0-demo", "1", "2", DriftResult("egyptian-cat", "classifier", 285, "class", "PASS", OK, None,
                                             "ranking and distribution unchanged")),
        ("lite0-demo", "1", "2", DriftResult("espresso", "classifier", 967, "class", "FAIL",
                                             {"spearman": 0.41, "topk_jaccard": 0.05, "topk_p_value": 0.62,
                                              "wasserstein_norm": 2.7, "cross_activation": 0.35,
                                              "visual_distance": None}, None,
                                             "now fires on cat photographs (top-k Jaccard 0.05, Spearman 0.41)")),
        ("lite0-demo", "1", "2", DriftResult("b5-c17", "blocks.5", 17, "inner", "WARN",
                                             {**OK, "spearman": 0.91, "topk_jaccard": 0.5, "wasserstein_norm": 0.4},
                                             17, "Spearman 0.91 below warn 0.95")),
        ("lite0-demo", "1", "2", DriftResult("b3-c4", "blocks.3", 4, "inner", "PASS", OK, None, "unchanged")),
        ("lite1-prod", "1", "2", DriftResult("b4-c9", "blocks.4", 9, "inner", "PASS",
                                             {**OK, "spearman": 0.97, "wasserstein_norm": 0.2}, None, "ok")),
        ("lite1-prod", "2", "3", DriftResult("b4-c9", "blocks.4", 9, "inner", "WARN",
                                             {**OK, "spearman": 0.9, "wasserstein_norm": 0.5, "topk_p_value": 1e-12},
                                             None, "Wasserstein 0.50 above warn 0.35")),
        ("lite1-prod", "1", "3", DriftResult("b4-c9", "blocks.4", 9, "inner", "FAIL",
                                             {**OK, "spearman": 0.7, "wasserstein_norm": 1.3}, None,
                                             "vs champion: Spearman 0.70 below fail 0.80")),
    ]
    for model, b, c, r in drift:
        rid = store.save_drift(model, b, c, probe, r, run_id=run)
        if r.verdict == "FAIL" and model == "lite0-demo":
            store.create_alert_if_new(rid, "webhook")
    for v, rid in MLFLOW_RUNS.items():
        store.mark_mlflow(run, "lite0-demo", v, mlflow_run_id=rid, experiment_id=MLFLOW_EXPERIMENT)
    store.finish_run(run, "completed")
    # the image file of lite1-prod v3 is gone: its pages show a placeholder
    gone = store.neuron_history("lite1-prod", "b4-c9")["versions"][2]["visualizations"][0]["image_path"]
    store.artifact_path(gone).unlink()
    return store, art
