"""A synthetic fleet of audited models, written through the store's own repository API.

`build_fleet(store, models=20, versions=30, neurons=30)` fills an `AuditStore` as that many nightly
audits would have: every model has `versions` versions registered one night after the other; each
night audits every model's new version (one audit run, one MLflow run id per version), stores each
neuron's activation statistics and its visualization (a new image when the neuron changed, a link to
the previous image otherwise, as the content-keyed reuse does), compares the new version with its
predecessor and with the champion (v1), and raises an alert for each FAIL. Exactly `open_alerts`
comparisons FAIL (drawn with `seed`), so the alert count does not depend on chance.

Only the public write methods of `AuditStore` are used (sync_registry, upsert_model_version,
upsert_probe_set, start_run, save_neuron_results, save_drift, create_alert_if_new, mark_mlflow,
finish_run), so the rows look exactly like those of real audits. Images come from a small pool of
generated patterns (the artifact store is content-addressed: the pool is written once).

Used by benchmarks/fleet_bench.py (20 x 30 x 30, 983 open alerts) and by the dashboard's
query-count tests (a few versions, a few neurons).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from audit.config import AuditConfig
from audit.records import ActivationStats, DriftResult, Visualization

GENERATOR_VERSION = 1   # bump when what build_fleet writes changes (benchmarks/fleet_bench.py caches fleets by it)
LAYERS = ("blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "classifier")
REASONS = {
    "PASS": "function preserved: Spearman {sp:.2f}; top-20 overlap {ov}/20",
    "WARN": "Spearman {sp:.2f} below warn 0.95; top-20 overlap {ov}/20",
    "FAIL": "function changed: Spearman {sp:.2f} below fail 0.80; top-20 overlap {ov}/20",
}


@dataclass
class FleetSize:
    """What `build_fleet` wrote."""
    models: int
    versions: int
    neurons: int
    comparisons: int
    drift_rows: int
    fails: int
    alerts: int
    visualizations_rendered: int
    visualizations_reused: int


def pattern(seed: int, size: int = 96) -> np.ndarray:
    """A smooth colour pattern (uint8 [size, size, 3]) that looks different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size, 3))
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        f = rng.uniform(2, 8)
        out[..., c] = np.sin(2 * math.pi * (f * (a * x + b * y) + p))
    out = (out - out.min()) / (np.ptp(out) + 1e-9)
    return (out * 255).astype(np.uint8)


def fleet_config(models: int, versions: int, neurons: int, prefix: str = "model") -> AuditConfig:
    """The AuditConfig of the fleet: models `model-00`..., versions "1".."N" (v1 champion), neurons of
    both kinds spread over a few layers."""
    spec = []
    for m in range(models):
        ns = []
        for k in range(neurons):
            layer = LAYERS[k % len(LAYERS)]
            kind = "class" if layer == "classifier" else "inner"
            ns.append({"id": f"n{k:03d}-{layer.replace('.', '')}", "kind": kind, "layer": layer,
                       "index": (37 * k + m) % 1000 if kind == "class" else (11 * k + m) % 80,
                       "label": f"class {k}" if kind == "class" else None,
                       "references": "top-k" if kind == "class" else None})
        spec.append({"name": f"{prefix}-{m:02d}", "architecture": "efficientnet_lite0", "champion": "1",
                     "versions": [{"version": str(v), "source": f"models:/{prefix}-{m:02d}/{v}"}
                                  for v in range(1, versions + 1)],
                     "neurons": ns})
    return AuditConfig.model_validate({"models": spec})


def _stats(rng: np.random.Generator, neuron_id: str, n_probe: int, shift: float) -> ActivationStats:
    vals = rng.gamma(2.0, 1.0, n_probe) + shift
    counts, edges = np.histogram(vals, bins=24)
    order = np.argsort(-vals)[:8]
    return ActivationStats(neuron_id=neuron_id, n=n_probe, mean=float(vals.mean()), std=float(vals.std()),
                           quantiles={str(q): float(np.quantile(vals, q)) for q in (0.05, 0.5, 0.95)},
                           frac_active=float((vals > 1).mean()), hist_edges=edges.tolist(),
                           hist_counts=counts.tolist(), topk_indices=order.tolist(), topk_values=vals[order].tolist())


def _drift(rng: np.random.Generator, neuron, verdict: str) -> DriftResult:
    sp = {"PASS": rng.uniform(0.96, 1.0), "WARN": rng.uniform(0.81, 0.94), "FAIL": rng.uniform(0.2, 0.79)}[verdict]
    ov = int(round(20 * min(1.0, sp + rng.uniform(-0.1, 0.0))))
    stats = {"spearman": float(sp), "topk_jaccard": ov / (40 - ov), "topk_p_value": float(10 ** -rng.uniform(1, 12)),
             "wasserstein_norm": float((1 - sp) * rng.uniform(1, 4)), "cross_activation": float(rng.uniform(0.3, 1.0)),
             "visual_distance": float(rng.uniform(0, 3))}
    return DriftResult(neuron.id, neuron.layer, neuron.index, neuron.kind, verdict, stats, None,
                       REASONS[verdict].format(sp=sp, ov=ov))


def build_fleet(store, models: int = 20, versions: int = 30, neurons: int = 30, *, open_alerts: int = 983,
                warn_rate: float = 0.05, change_rate: float = 0.15, probe_images: int = 288, seed: int = 0,
                prefix: str = "model", progress=None) -> FleetSize:
    """Fill `store` (an upgraded, empty `AuditStore`) with the synthetic fleet; returns what was written.

    `open_alerts` comparisons FAIL (each with an open webhook alert), `warn_rate` of the others WARN;
    `change_rate`: the chance that a neuron's visualization changes from one version to the next."""
    rng = np.random.default_rng(seed)
    cfg = fleet_config(models, versions, neurons, prefix)
    store.sync_registry(cfg)
    pool = [pattern(seed * 1000 + i) for i in range(48)]
    thumbs = [store.artifacts.put_image(pattern(seed * 1000 + 500 + i, size=48)) for i in range(32)]
    probe = f"{seed:08x}" * 8
    store.upsert_probe_set(probe, "builtin:samples", probe_images,
                           {"names": [f"photo{i // 24}#crop{i % 24}" for i in range(probe_images)],
                            "thumbnails": [thumbs[i % len(thumbs)] for i in range(probe_images)]})
    # Every comparison (model, candidate, baseline, neuron), then exactly `open_alerts` of them FAIL.
    slots = [(m, v, b, k) for m in range(models) for v in range(2, versions + 1)
             for b in sorted({v - 1, 1}) for k in range(neurons)]
    fail = set(rng.choice(len(slots), size=min(open_alerts, len(slots)), replace=False).tolist())
    slot_index = {s: i for i, s in enumerate(slots)}
    last_viz: dict[tuple[int, int], int] = {}
    rendered = reused = fails = alerts = 0
    for v in range(1, versions + 1):
        run = store.start_run(f"fleet-{seed}-night-{v:03d}", "f" * 64, "0.0.0")
        for m, mcfg in enumerate(cfg.models):
            store.upsert_model_version(mcfg.name, str(v), mcfg.versions[v - 1].source, f"{seed:04x}{m:04x}{v:056x}")
            for k, n in enumerate(mcfg.neurons):
                changed = v == 1 or rng.random() < change_rate
                stats = _stats(rng, n.id, probe_images, shift=0.1 * v if changed else 0.0)
                if changed:
                    viz = Visualization(n.id, "vital", 0, pool[int(rng.integers(len(pool)))], None, [1.0, 0.5],
                                        {"steps": 2}, 1.0)
                    ids = store.save_neuron_results(mcfg.name, str(v), n.id, run_id=run, probe_sha256=probe,
                                                    stats=stats, visualizations=[(f"{mcfg.name}/{n.id}/v{v}", viz)])
                    last_viz[(m, k)] = ids["visualization_ids"][0]
                    rendered += 1
                else:
                    store.save_neuron_results(mcfg.name, str(v), n.id, run_id=run, probe_sha256=probe, stats=stats,
                                              reused_visualization_ids=[last_viz[(m, k)]])
                    reused += 1
            if v >= 2:
                for b in sorted({v - 1, 1}):
                    for k, n in enumerate(mcfg.neurons):
                        is_fail = slot_index[(m, v, b, k)] in fail
                        verdict = "FAIL" if is_fail else ("WARN" if rng.random() < warn_rate else "PASS")
                        rid = store.save_drift(mcfg.name, str(b), str(v), probe, _drift(rng, n, verdict), run_id=run)
                        if is_fail:
                            fails += 1
                            alerts += store.create_alert_if_new(rid, "webhook") is not None
            store.mark_mlflow(run, mcfg.name, str(v), mlflow_run_id=f"{seed:02x}{m:02x}{v:04x}".ljust(32, "0"))
        store.finish_run(run, "completed")
        if progress:
            progress(v, versions)
    n_comparisons = models * sum(len({v - 1, 1}) for v in range(2, versions + 1))
    return FleetSize(models, versions, neurons, n_comparisons, len(slots), fails, alerts, rendered, reused)

