"""MLflow mirror and registry benchmark: what re-audits cost in MLflow, and how fast registered models load.

Part 1 (mirror). A synthetic store built through the repository API: one model, `--neurons` neurons, `--versions`
versions, each with activation statistics, `--seeds` VITAL-sized visualizations (+ masks) per neuron, drift
results against its predecessor and the champion, and the stored compare reports. For each version:
  first sync        the run is created and everything is logged
  unchanged x K     `--repeats` more syncs of an unchanged store, each in a fresh process (as a nightly run is);
                    reports seconds, whether MLflow was imported at all, new runs and artifact bytes (target 0)
  one neuron moved  one drift verdict changes: what gets logged
Part 2 (registry). EfficientNet-Lite0 logged with `mlflow.pytorch.log_model` (pt2 default, `pip_requirements`
given), then `models:/NAME/1` resolved to a state dict without unpickling (compared with torch.export.load).

Seconds depend on machine load; counts and bytes do not.

    timeout 1800 .venv/bin/python benchmarks/mlflow_bench.py [--neurons 30] [--versions 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

UNCHANGED_SYNC = r"""
import json, sys, time
t0 = time.perf_counter()
from storage.repository import AuditStore
from storage.tracking import MlflowTracker
store = AuditStore(sys.argv[1], sys.argv[2])
r = MlflowTracker(sys.argv[3]).sync_version(store, "fleet-model", sys.argv[4], int(sys.argv[5]))
print(json.dumps({"seconds": time.perf_counter() - t0, "logged": len(r.logged), "mlflow_imported": "mlflow" in sys.modules}))
"""


def _config(n_neurons: int, n_versions: int):
    from audit.config import parse_config

    neurons = [{"id": f"n{i:02d}", "kind": "class" if i % 3 == 0 else "inner",
                "layer": "classifier" if i % 3 == 0 else "blocks.5", "index": i} for i in range(n_neurons)]
    return parse_config({"models": [{"name": "fleet-model", "architecture": "efficientnet_lite0", "champion": "1",
                                     "versions": [{"version": str(v), "source": f"file:v{v}.safetensors"}
                                                  for v in range(1, n_versions + 1)],
                                     "neurons": neurons}]})


def build_store(root: Path, n_neurons: int, n_versions: int, n_seeds: int):
    """A store with every version audited and compared (predecessor and champion)."""
    import numpy as np

    from audit.records import ActivationStats, DriftResult, Visualization
    from storage.repository import AuditStore

    cfg = _config(n_neurons, n_versions)
    store = AuditStore(f"sqlite:///{root}/audit.db", root / "artifacts", upgrade=True)
    store.sync_registry(cfg)
    store.upsert_probe_set("p" * 64, "builtin:samples", 288, {"names": [f"img{i}" for i in range(288)]})
    run = store.start_run("bench", "c" * 64, "bench")
    rng = np.random.default_rng(0)
    ids = [n.id for n in cfg.models[0].neurons]
    for v in range(1, n_versions + 1):
        store.upsert_model_version("fleet-model", str(v), f"file:v{v}.safetensors", f"{v:064d}")
        for nid in ids:
            vals = rng.normal(size=288).astype(np.float32)
            counts, edges = np.histogram(vals, bins=20)
            stats = ActivationStats(neuron_id=nid, n=288, mean=float(vals.mean()), std=float(vals.std()),
                                    quantiles={str(q): float(np.quantile(vals, q)) for q in (0.1, 0.5, 0.9)},
                                    frac_active=float((vals > 0).mean()), hist_edges=edges.tolist(),
                                    hist_counts=counts.tolist(), topk_indices=list(range(10)),
                                    topk_values=sorted(vals.tolist())[-10:])
            vizs = [(f"{nid}-{v}-{s}", Visualization(
                neuron_id=nid, method="vital", seed=s, image=rng.integers(0, 255, (160, 160, 3), dtype=np.uint8),
                mask=rng.random((160, 160), dtype=np.float32), loss_history=[1.0, 0.5], settings={}, seconds=20.0))
                for s in range(n_seeds)]
            store.save_neuron_results("fleet-model", str(v), nid, run_id=run, probe_sha256="p" * 64, stats=stats,
                                      values={"max": vals, "mean": vals}, visualizations=vizs)
        for base in sorted({str(v - 1), "1"} - {str(v)}, key=int) if v > 1 else []:
            neurons = []
            for nid in ids:
                r = DriftResult(neuron_id=nid, layer="classifier", index=0, kind="class", verdict="PASS",
                                statistics={"spearman": 0.99, "topk_jaccard": 0.9, "wasserstein_norm": 0.05},
                                matched_index=None, reason="unchanged", ci={})
                store.save_drift("fleet-model", base, str(v), "p" * 64, r, run)
                neurons.append({"id": nid, "verdict": "PASS", "statistics": r.statistics, "reason": r.reason})
            store.save_report("fleet-model", base, str(v), {
                "model": "fleet-model", "baseline": base, "candidate": str(v), "probe_set_sha256": "p" * 64,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"), "neurons": neurons,
                "summary": {"PASS": len(ids), "WARN": 0, "FAIL": 0}})
    store.finish_run(run, "completed")
    return store, run


def artifact_bytes(mlflow_dir: Path) -> int:
    return sum(p.stat().st_size for p in (mlflow_dir / "mlartifacts").rglob("*") if p.is_file())


def run_count(tracker) -> int:
    exp = tracker.experiment_id("fleet-model")
    return len(tracker.client.search_runs([exp], max_results=5000))


def mirror_part(args, tmp: Path) -> list[dict]:
    from audit.records import DriftResult
    from storage.tracking import MlflowTracker

    store, run = build_store(tmp / "store", args.neurons, args.versions, args.seeds)
    mlflow_dir = tmp / "mlflow"
    uri = f"sqlite:///{mlflow_dir}/mlflow.db"
    tracker = MlflowTracker(uri)
    rows = []
    for v in range(1, args.versions + 1):
        t0 = time.perf_counter()
        first = tracker.sync_version(store, "fleet-model", str(v), run, config={"neurons": args.neurons})
        first_s = time.perf_counter() - t0
        runs, size = run_count(tracker), artifact_bytes(mlflow_dir)
        rows.append({"version": v, "step": "first sync", "seconds": first_s, "items logged": len(first.logged),
                     "runs": runs, "artifact MB": size / 1e6, "mlflow imported": True})
        for i in range(args.repeats):
            audit_run = store.start_run(f"bench-rerun-{v}-{i}", "c" * 64, "bench")
            out = subprocess.run([sys.executable, "-c", UNCHANGED_SYNC, store.url, str(store.artifacts.root), uri,
                                  str(v), str(audit_run)], capture_output=True, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"version": v, "step": f"unchanged #{i + 1}", "seconds": res["seconds"],
                         "items logged": res["logged"], "runs": run_count(tracker),
                         "artifact MB": artifact_bytes(mlflow_dir) / 1e6, "mlflow imported": res["mlflow_imported"]})
    v = args.versions
    if v > 1:
        audit_run = store.start_run("bench-change", "c" * 64, "bench")
        store.save_drift("fleet-model", str(v - 1), str(v), "p" * 64, DriftResult(
            neuron_id="n00", layer="classifier", index=0, kind="class", verdict="FAIL",
            statistics={"spearman": 0.1, "topk_jaccard": 0.1, "wasserstein_norm": 2.0}, matched_index=None,
            reason="moved", ci={}), audit_run)
        before = artifact_bytes(mlflow_dir)
        t0 = time.perf_counter()
        res = MlflowTracker(uri).sync_version(store, "fleet-model", str(v), audit_run)
        rows.append({"version": v, "step": "one verdict changed", "seconds": time.perf_counter() - t0,
                     "items logged": len(res.logged), "runs": run_count(tracker),
                     "artifact MB": (artifact_bytes(mlflow_dir) - before) / 1e6, "mlflow imported": True})
    return rows


def registry_part(tmp: Path) -> dict:
    import mlflow
    import numpy as np
    import torch

    from sources import load_model
    from sources.mlflow_registry import resolve_registry_source

    uri = f"sqlite:///{tmp}/registry/mlflow.db"
    model = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient(uri)
        exp = client.create_experiment("training", artifact_location=(tmp / "registry" / "art").as_uri())
        t0 = time.perf_counter()
        with mlflow.start_run(experiment_id=exp):
            mlflow.pytorch.log_model(model, name="model", registered_model_name="lite0-reg",
                                     input_example=np.zeros((1, 3, 224, 224), np.float32),
                                     pip_requirements=["torch", "timm"])
        log_s = time.perf_counter() - t0
    finally:
        mlflow.set_tracking_uri(before)
    t0 = time.perf_counter()
    state, info = resolve_registry_source("models:/lite0-reg/1", uri)
    resolve_s = time.perf_counter() - t0
    own = model.state_dict()
    exact = set(state) == set(own) and all(torch.equal(state[k], own[k]) for k in own)
    pt2 = next((tmp / "registry" / "art").rglob("model.pt2"))
    t0 = time.perf_counter()
    torch.export.load(pt2).state_dict
    export_load_s = time.perf_counter() - t0
    return {"log_model s": log_s, "resolve models:/ s": resolve_s, "torch.export.load s": export_load_s,
            "format": info["format"], "tensors": len(state), "weights identical": exact,
            "pt2 MB": pt2.stat().st_size / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--neurons", type=int, default=30)
    ap.add_argument("--versions", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-registry", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="neuron-audit-mlflow-bench-") as d:
        tmp = Path(d)
        rows = mirror_part(args, tmp)
        print(f"\nMLflow mirror: {args.neurons} neurons x {args.seeds} seeds, {args.versions} versions "
              f"(images 160 px + masks)")
        print(f"| version | step | seconds | items logged | MLflow runs | artifact MB | MLflow imported |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['version']} | {r['step']} | {r['seconds']:.2f} | {r['items logged']} | {r['runs']} | "
                  f"{r['artifact MB']:.2f} | {'yes' if r['mlflow imported'] else 'no'} |")
        if not args.skip_registry:
            reg = registry_part(tmp)
            print("\nRegistry (EfficientNet-Lite0, mlflow.pytorch.log_model, pt2):")
            for k, v in reg.items():
                print(f"  {k}: {v:.2f}" if isinstance(v, float) else f"  {k}: {v}")


if __name__ == "__main__":
    main()
