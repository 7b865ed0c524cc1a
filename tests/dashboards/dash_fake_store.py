"""A small in-memory test double of `storage.repository.AuditStore`'s read API,
with real PNG files under an artifact root: enough for the view layer's tests.

Model `lite0-demo` (v1 champion, v2): `espresso` FAILs (planted change, open
alert), `b5-c17` WARNs, `egyptian-cat` and `b3-c4` PASS. Model `lite1-prod`
has three versions and three comparisons, for the history plots.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
from pathlib import Path

import numpy as np
from PIL import Image

T0 = dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.timezone.utc)


def _pattern(seed: int, size: int = 224, freq: float = 6.0, drift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.zeros((size, size, 3))
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        out[..., c] = np.sin(2 * math.pi * (freq * (a * x + b * y) + p + drift)) + 0.5 * np.cos(
            2 * math.pi * (freq * 1.7 * (b * x - a * y) + drift))
    out = (out - out.min()) / (np.ptp(out) + 1e-9)
    return (out * 255).astype(np.uint8)


def _mask(seed: int, size: int = 14) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    y, x = np.mgrid[0:size, 0:size]
    m = np.exp(-(((y - cy) ** 2) + ((x - cx) ** 2)) / (2 * (size / 4.5) ** 2))
    return (m / m.max() * 255).astype(np.uint8)


def _save(root: Path, rel: str, arr: np.ndarray) -> str:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(p)
    return rel


def _stats(seed: int, shift: float = 0.0, scale: float = 1.0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    vals = rng.gamma(2.0, 1.0, 400) * scale + shift
    counts, edges = np.histogram(vals, bins=24)
    q = {str(k): float(np.quantile(vals, k)) for k in (0.05, 0.25, 0.5, 0.75, 0.95)}
    return ({"n": 400, "mean": float(vals.mean()), "std": float(vals.std()), "quantiles": q,
             "frac_active": float((vals > 1).mean())},
            {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]})


class FakeStore:
    database_url = "postgresql+psycopg://audit:s3cr3t-pw@db.internal:5432/audit"

    def __init__(self, artifacts_root: Path, empty: bool = False):
        self.root = Path(artifacts_root)
        self.models: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.neurons: dict[str, dict[str, dict]] = {}
        self.per_version: dict[tuple[str, str, str], dict] = {}
        self.drift: dict[str, list[dict]] = {}
        self.alerts: list[dict] = []
        self.runs: list[dict] = []
        if not empty:
            self._populate()

    # ----------------------------------------------------------------- fixture data
    def _add_model(self, name, arch, champion, versions, neurons):
        self.models[name] = {"name": name, "architecture": arch, "champion": champion}
        self.versions[name] = [{"version": v, "source": src, "weights_sha256": hashlib.sha256(f"{name}/{v}".encode()).hexdigest(),
                                "registered_at": T0 + dt.timedelta(days=i)} for i, (v, src) in enumerate(versions)]
        self.neurons[name] = {n["neuron_id"]: n for n in neurons}
        self.drift[name] = []

    def _add_version_data(self, model, version, neuron_id, seed, *, shift=0.0, methods=("vital",), mask=False,
                          topk_names=None, missing_image=False):
        vis = []
        for m_i, method in enumerate(methods):
            img = _save(self.root, f"{model}/v{version}/{neuron_id}/{method}-s0.png",
                        _pattern(seed + 17 * m_i, freq=4 + 3 * m_i, drift=shift))
            mk = _save(self.root, f"{model}/v{version}/{neuron_id}/{method}-s0-mask.png", _mask(seed)) if mask else None
            if missing_image:
                img = f"{model}/v{version}/{neuron_id}/gone.png"
            vis.append({"method": method, "seed": 0, "image_path": img, "mask_path": mk,
                        "mlflow_artifact_uri": f"mlflow-artifacts:/1/run{version}/artifacts/{neuron_id}/{method}.png"})
        stats, hist = _stats(seed, shift=shift)
        topk = []
        for k, nm in enumerate(topk_names or []):
            rel = _save(self.root, f"probe/{nm}.png", _pattern(int(hashlib.sha1(nm.encode()).hexdigest()[:6], 16) % 1000, size=64, freq=3))
            topk.append({"index": k * 3, "name": nm, "value": 9.0 - k * 0.7, "image_path": rel})
        self.per_version[(model, version, neuron_id)] = {"version": version, "visualizations": vis, "stats": stats,
                                                         "topk": topk, "hist": hist}

    def _add_drift(self, model, neuron_id, baseline, candidate, verdict, stats, reason, day, matched=None):
        self.drift[model].append({"neuron_id": neuron_id, "baseline": baseline, "candidate": candidate,
                                  "verdict": verdict, "statistics": stats, "reason": reason, "matched_index": matched,
                                  "created_at": T0 + dt.timedelta(days=day)})

    def _populate(self):
        m = "lite0-demo"
        self._add_model(m, "efficientnet_lite0", "1",
                        [("1", "builtin:efficientnet_lite0"), ("2", "file:./checkpoints/v2.safetensors")],
                        [{"neuron_id": "egyptian-cat", "kind": "class", "layer": "classifier", "index": 285,
                          "label": "Egyptian cat"},
                         {"neuron_id": "espresso", "kind": "class", "layer": "classifier", "index": 967,
                          "label": "espresso"},
                         {"neuron_id": "b5-c17", "kind": "inner", "layer": "blocks.5", "index": 17, "label": None},
                         {"neuron_id": "b3-c4", "kind": "inner", "layer": "blocks.3", "index": 4, "label": None}])
        probes = ["chelsea-0", "chelsea-1", "coffee-0", "rocket-2", "astronaut-1"]
        for v, shift in (("1", 0.0), ("2", 0.35)):
            self._add_version_data(m, v, "egyptian-cat", 1, shift=0.02 if v == "2" else 0.0,
                                   methods=("vital", "fourier"), topk_names=probes[:4])
            self._add_version_data(m, v, "espresso", 2, shift=shift, methods=("vital", "fourier"),
                                   topk_names=(["coffee-0", "coffee-1", "cup-2", "rocket-2"] if v == "1"
                                               else ["chelsea-0", "chelsea-1", "coffee-0", "chelsea-2"]))
            self._add_version_data(m, v, "b5-c17", 3, shift=0.1 if v == "2" else 0.0, mask=True,
                                   topk_names=probes[1:5])
            self._add_version_data(m, v, "b3-c4", 4, mask=True, topk_names=probes[:3])
        ok = {"spearman": 0.99, "topk_jaccard": 0.9, "topk_p_value": 1e-9, "wasserstein_norm": 0.03,
              "cross_activation": 0.98, "visual_distance": 0.4}
        self._add_drift(m, "egyptian-cat", "1", "2", "PASS", ok, "ranking and distribution unchanged", 1)
        self._add_drift(m, "espresso", "1", "2", "FAIL",
                        {"spearman": 0.41, "topk_jaccard": 0.05, "topk_p_value": 0.62, "wasserstein_norm": 2.7,
                         "cross_activation": 0.35, "visual_distance": None},
                        "top-k probe images changed: now fires on cat photographs (Jaccard 0.05, Spearman 0.41)", 1)
        self._add_drift(m, "b5-c17", "1", "2", "WARN",
                        {**ok, "spearman": 0.91, "topk_jaccard": 0.5, "wasserstein_norm": 0.4},
                        "Spearman 0.91 below warn 0.95", 1, matched=17)
        self._add_drift(m, "b3-c4", "1", "2", "PASS", ok, "unchanged", 1)
        self.alerts.append({"id": 1, "model": m, "neuron_id": "espresso", "baseline": "1", "candidate": "2",
                            "reason": "espresso: FAIL (Jaccard 0.05)", "created_at": T0 + dt.timedelta(days=1),
                            "delivery_status": "delivered"})

        m2 = "lite1-prod"
        self._add_model(m2, "efficientnet_lite1", "1",
                        [("1", "models:/lite1/1"), ("2", "models:/lite1/2"), ("3", "models:/lite1@candidate")],
                        [{"neuron_id": "b4-c9", "kind": "inner", "layer": "blocks.4", "index": 9, "label": None}])
        for i, v in enumerate(("1", "2", "3")):
            self._add_version_data(m2, v, "b4-c9", 7, shift=0.15 * i, mask=True, missing_image=(v == "3"))
        self._add_drift(m2, "b4-c9", "1", "2", "PASS", {**ok, "spearman": 0.97, "wasserstein_norm": 0.2}, "ok", 2)
        self._add_drift(m2, "b4-c9", "2", "3", "WARN", {**ok, "spearman": 0.9, "wasserstein_norm": 0.5},
                        "Wasserstein 0.50 above warn 0.35", 3)
        self._add_drift(m2, "b4-c9", "1", "3", "FAIL", {**ok, "spearman": 0.7, "wasserstein_norm": 1.3},
                        "vs champion: Spearman 0.70 below fail 0.80", 3)

        self.runs = [
            {"id": 2, "flow_run_id": "7f3c2a10-1111-4e6b-9c55-0a1b2c3d4e5f", "started_at": T0 + dt.timedelta(days=3),
             "finished_at": T0 + dt.timedelta(days=3, minutes=4, seconds=12), "status": "completed",
             "duration_s": 252.4, "error": None, "mlflow_run_ids": {"1": "a" * 32, "2": "b" * 32}},
            {"id": 1, "flow_run_id": None, "started_at": T0 + dt.timedelta(days=2),
             "finished_at": T0 + dt.timedelta(days=2, seconds=9), "status": "failed", "duration_s": 9.1,
             "error": "CheckpointMismatchError: missing key classifier.weight", "mlflow_run_ids": []},
        ]

    # ----------------------------------------------------------------- the read API
    def list_models(self):
        return [{**m, "n_versions": len(self.versions[n]), "n_neurons": len(self.neurons[n])}
                for n, m in self.models.items()]

    def list_versions(self, model):
        return [dict(v) for v in self.versions.get(model, [])]

    def recent_runs(self, limit=20):
        return [dict(r) for r in self.runs[:limit]]

    def _latest(self, model):
        latest = {}
        for d in self.drift.get(model, []):
            cur = latest.get(d["neuron_id"])
            if cur is None or d["created_at"] >= cur["created_at"]:
                latest[d["neuron_id"]] = d
        return latest

    def _row(self, model, d):
        n = self.neurons[model][d["neuron_id"]]
        return {**n, "baseline": d["baseline"], "candidate": d["candidate"], "verdict": d["verdict"],
                "reason": d["reason"], "statistics": dict(d["statistics"]), "matched_index": d["matched_index"],
                "created_at": d["created_at"]}

    def verdict_counts(self, model=None):
        out = {"PASS": 0, "WARN": 0, "FAIL": 0}
        for m in ([model] if model else list(self.models)):
            for d in self._latest(m).values():
                out[d["verdict"]] += 1
        return out

    def latest_verdicts(self, model):
        return [self._row(model, d) for d in self._latest(model).values()]

    def comparisons(self, model):
        seen = {}
        for d in self.drift.get(model, []):
            key = (d["baseline"], d["candidate"])
            c = seen.setdefault(key, {"baseline": key[0], "candidate": key[1],
                                      "counts": {"PASS": 0, "WARN": 0, "FAIL": 0}, "created_at": d["created_at"]})
            c["counts"][d["verdict"]] += 1
        return list(seen.values())

    def comparison(self, model, baseline, candidate):
        return [self._row(model, d) for d in self.drift.get(model, [])
                if d["baseline"] == baseline and d["candidate"] == candidate]

    def open_alerts(self):
        return [dict(a) for a in self.alerts]

    def neuron_history(self, model, neuron_id):
        if model not in self.neurons or neuron_id not in self.neurons[model]:
            raise KeyError(neuron_id)
        versions = [self.per_version[(model, v["version"], neuron_id)] for v in self.versions[model]
                    if (model, v["version"], neuron_id) in self.per_version]
        drift = [{k: d[k] for k in ("baseline", "candidate", "verdict", "statistics", "reason", "created_at")}
                 for d in self.drift[model] if d["neuron_id"] == neuron_id]
        return {"neuron": dict(self.neurons[model][neuron_id]), "versions": versions, "drift": drift}
