"""Populate a real `storage.repository.AuditStore` (SQLite + artifact files, real PNGs)
with the same story as `dash_fake_store.py`: lite0-demo v1 → v2, `espresso` FAILs with an
open alert, `b5-c17` WARNs (with transparency masks), `egyptian-cat` PASSes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dash_fake_store import _mask, _pattern


def storage_available() -> bool:
    try:
        import storage.repository  # noqa: F401
    except Exception:
        return False
    return True


def populate_real_store(tmp: Path):
    """(store, artifacts_root) of a fresh SQLite store under `tmp`."""
    from audit.config import AuditConfig
    from audit.records import ActivationStats, DriftResult, Visualization
    from storage.repository import AuditStore

    tmp = Path(tmp)
    art = tmp / "artifacts"
    store = AuditStore(f"sqlite:///{tmp / 'audit.db'}", art)
    store.upgrade()
    cfg = AuditConfig.model_validate({"models": [{
        "name": "lite0-demo", "architecture": "efficientnet_lite0", "champion": "1",
        "versions": [{"version": "1", "source": "builtin:efficientnet_lite0"},
                     {"version": "2", "source": "file:./checkpoints/v2.safetensors"}],
        "neurons": [
            {"id": "egyptian-cat", "kind": "class", "layer": "classifier", "index": 285, "label": "Egyptian cat",
             "references": "builtin:samples/chelsea"},
            {"id": "espresso", "kind": "class", "layer": "classifier", "index": 967, "label": "espresso",
             "references": "top-k"},
            {"id": "b5-c17", "kind": "inner", "layer": "blocks.5", "index": 17}]}]})
    store.sync_registry(cfg)
    for v in ("1", "2"):
        store.upsert_model_version("lite0-demo", v, cfg.models[0].versions[int(v) - 1].source, f"{int(v) * 7:064x}")
    names = [f"{n}-{k}" for n in ("chelsea", "coffee", "rocket", "astronaut", "camera") for k in range(8)]
    probe = "ab" * 32
    store.upsert_probe_set(probe, "builtin:samples", len(names), {"names": names})
    run = store.start_run("5b1f0c2e-0000-4000-8000-00000000beef", "cfg", "0.1.0")
    rng = np.random.default_rng(0)
    for vi, v in enumerate(("1", "2")):
        for ni, (nid, mask) in enumerate((("egyptian-cat", False), ("espresso", False), ("b5-c17", True))):
            shift = 0.4 * vi if nid == "espresso" else 0.03 * vi
            vals = rng.gamma(2.0, 1.0, len(names)) + (1.5 * vi if nid == "espresso" else 0.0)
            counts, edges = np.histogram(vals, bins=20)
            order = np.argsort(-vals)[:5]
            stats = ActivationStats(
                neuron_id=nid, n=len(names), mean=float(vals.mean()), std=float(vals.std()),
                quantiles={"0.5": float(np.median(vals)), "0.9": float(np.quantile(vals, 0.9))},
                frac_active=float((vals > 1).mean()), hist_edges=edges.tolist(), hist_counts=counts.tolist(),
                topk_indices=order.tolist(), topk_values=vals[order].tolist())
            vizs = [(f"{nid}-v{v}-vital", Visualization(nid, "vital", 0, _pattern(10 + ni, drift=shift),
                                                        (_mask(ni).astype(np.float32) / 255.0) if mask else None,
                                                        [1.0, 0.5], {"steps": 2}, 1.0))]
            if nid != "b5-c17":
                vizs.append((f"{nid}-v{v}-fourier", Visualization(nid, "fourier", 0, _pattern(20 + ni, freq=9, drift=shift))))
            store.save_neuron_results("lite0-demo", v, nid, run_id=run, probe_sha256=probe, stats=stats,
                                      visualizations=vizs)
    ok = {"spearman": 0.99, "topk_jaccard": 0.9, "topk_p_value": 1e-9, "wasserstein_norm": 0.03,
          "cross_activation": 0.98, "visual_distance": 0.4}
    results = [
        DriftResult("egyptian-cat", "classifier", 285, "class", "PASS", ok, None, "ranking and distribution unchanged"),
        DriftResult("espresso", "classifier", 967, "class", "FAIL",
                    {"spearman": 0.41, "topk_jaccard": 0.05, "topk_p_value": 0.62, "wasserstein_norm": 2.7,
                     "cross_activation": 0.35, "visual_distance": None}, None,
                    "now fires on cat photographs (top-k Jaccard 0.05, Spearman 0.41)"),
        DriftResult("b5-c17", "blocks.5", 17, "inner", "WARN", {**ok, "spearman": 0.91}, 17,
                    "Spearman 0.91 below warn 0.95"),
    ]
    for r in results:
        rid = store.save_drift("lite0-demo", "1", "2", probe, r, run_id=run)
        if r.verdict == "FAIL":
            store.create_alert_if_new(rid, "webhook")
    store.mark_mlflow(run, "lite0-demo", "2", mlflow_run_id="c" * 32)
    store.finish_run(run, "completed")
    return store, art
