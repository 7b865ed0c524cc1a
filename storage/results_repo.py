"""The results aggregate of the audit store (`ResultRepository`, mixed into `AuditStore`).

What an audit produced for a model version: activation statistics of each neuron on a probe set (+ the
raw per-image values as an npz artifact; read back only under the content key of what produced them,
`audit.contentkeys.statistics_content_key`), VITAL visualizations (PNG image + mask, keyed by content so
that an unchanged neuron reuses them across versions), drift results of a candidate against a baseline
(a non-FAIL verdict resolves the open alerts of the comparison), and the compare reports (JSON files).
Also the reads that gather a version's results: the artifacts they rely on and what its MLflow run
shows. Writes are idempotent upserts; they need the store's plumbing (`self._write`, `self._read`,
`self._upsert`, the id lookups, `self.artifacts`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased

from audit.records import ActivationStats, DriftResult, Visualization

from . import schema as S
from .artifacts import jsonable
from .errors import NotFoundError
from .timestamps import iso as _iso, now_utc as _now


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(jsonable(obj), sort_keys=True).encode()).hexdigest()


def _safe_name(s: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(s)).strip("._") or "_"


def _stats_from_json(d: dict) -> ActivationStats:
    names = [f.name for f in dataclasses.fields(ActivationStats)]
    return ActivationStats(**{k: d.get(k) for k in names})


class ResultRepository:
    """Statistics, visualizations, drift results and compare reports of model versions."""

    # ------------------------------------------------------------------ probe-set statistics
    def _save_stats(self, s: Session, model: str, version: str, neuron_id: str, probe_sha256: str,
                    stats: ActivationStats, values_path: str | None, run_id: int | None,
                    content_key: str | None) -> int:
        return self._upsert(s, S.ActivationStatsRow.__table__,
                            {"neuron_id": self._neuron_pk(s, model, neuron_id),
                             "model_version_id": self._version_id(s, model, version),
                             "probe_set_id": self._probe_id(s, probe_sha256),
                             "stats": jsonable(dataclasses.asdict(stats)), "values_path": values_path,
                             "content_key": content_key, "audit_run_id": run_id, "created_at": _now()},
                            ["neuron_id", "model_version_id", "probe_set_id"],
                            ["stats", "values_path", "content_key", "audit_run_id", "created_at"])

    def save_stats(self, model: str, version: str, neuron_id: str, probe_sha256: str, stats: ActivationStats,
                   values: Mapping[str, np.ndarray] | None = None, run_id: int | None = None, *,
                   content_key: str) -> int:
        """Upsert one neuron's statistics on a probe set (+ the raw per-image values as npz), under the content key
        of what produced them (`audit.contentkeys.statistics_content_key`); they replace the version's row for the
        neuron and probe set, whatever its key. Returns the row id."""
        values_path = self.artifacts.put_arrays(values) if values else None
        return self._write(lambda s: self._save_stats(s, model, version, neuron_id, probe_sha256, stats, values_path,
                                                      run_id, content_key))

    def load_stats(self, model: str, version: str, neuron_id: str, probe_sha256: str, content_key: str
                   ) -> tuple[ActivationStats, dict[str, np.ndarray]] | None:
        """A neuron's stored statistics and per-image values, only when they were produced by what `content_key`
        names (`audit.contentkeys.statistics_content_key`): a row made by other weights behind the same version
        label, another neuron definition, model_args or statistics version is stale and reads as None. The values
        are {} when their file is missing or corrupt."""
        with self._read() as s:
            row = s.execute(
                select(S.ActivationStatsRow)
                .join(S.Neuron, S.Neuron.id == S.ActivationStatsRow.neuron_id)
                .join(S.Model, S.Model.id == S.Neuron.model_id)
                .join(S.ModelVersion, S.ModelVersion.id == S.ActivationStatsRow.model_version_id)
                .join(S.ProbeSet, S.ProbeSet.id == S.ActivationStatsRow.probe_set_id)
                .where(S.Model.name == model, S.ModelVersion.version == str(version), S.Neuron.neuron_id == neuron_id,
                       S.ProbeSet.sha256 == probe_sha256)).scalar_one_or_none()
        if row is None or row.content_key != content_key:
            return None
        values = {}
        if row.values_path and self.artifacts.verify(row.values_path) is None:   # missing or corrupt: {}
            values = self.artifacts.get_arrays(row.values_path)
        return _stats_from_json(row.stats), values

    # ------------------------------------------------------------------ visualizations
    def find_visualization(self, model: str, neuron_id: str, content_key: str) -> dict | None:
        """The visualization with this content key, rendered for any version of the model (for reuse)."""
        with self._read() as s:
            row = s.execute(
                select(S.Visualization, S.ModelVersion.version)
                .join(S.Neuron, S.Neuron.id == S.Visualization.neuron_id)
                .join(S.Model, S.Model.id == S.Neuron.model_id)
                .join(S.ModelVersion, S.ModelVersion.id == S.Visualization.model_version_id)
                .where(S.Model.name == model, S.Neuron.neuron_id == neuron_id, S.Visualization.content_key == content_key)
            ).first()
        if row is None:
            return None
        v, version = row
        return {"id": v.id, "model": model, "neuron_id": neuron_id, "version": version, "method": v.method, "seed": v.seed,
                "settings": v.settings, "settings_sha256": v.settings_sha256, "content_key": v.content_key,
                "image_path": v.image_path, "mask_path": v.mask_path, "mlflow_artifact_uri": v.mlflow_artifact_uri,
                "loss_history": v.loss_history, "seconds": v.seconds, "audit_run_id": v.audit_run_id,
                "created_at": _iso(v.created_at)}

    def load_visualization(self, viz_id: int) -> Visualization:
        """The stored visualization as a record (image and mask read back from the artifact store)."""
        with self._read() as s:
            row = s.execute(select(S.Visualization, S.Neuron.neuron_id).join(S.Neuron, S.Neuron.id == S.Visualization.neuron_id)
                            .where(S.Visualization.id == viz_id)).first()
        if row is None:
            raise NotFoundError(f"visualization {viz_id} does not exist")
        v, nid = row
        return Visualization(neuron_id=nid, method=v.method, seed=v.seed, image=self.artifacts.get_image(v.image_path),
                             mask=self.artifacts.get_mask(v.mask_path) if v.mask_path else None,
                             loss_history=list(v.loss_history or []), settings=dict(v.settings or {}), seconds=v.seconds)

    def _write_viz_files(self, viz: Visualization) -> tuple[str, str | None]:
        image_path = self.artifacts.put_image(viz.image)
        mask_path = self.artifacts.put_mask(viz.mask) if viz.mask is not None else None
        return image_path, mask_path

    def _save_visualization(self, s: Session, model: str, version: str, neuron_id: str, content_key: str,
                            viz: Visualization, run_id: int | None, paths: tuple[str, str | None]) -> int:
        npk, vid = self._neuron_pk(s, model, neuron_id), self._version_id(s, model, version)
        settings = jsonable(dict(viz.settings or {}))
        viz_id = self._upsert(s, S.Visualization.__table__,
                              {"neuron_id": npk, "model_version_id": vid, "method": viz.method, "seed": int(viz.seed),
                               "settings_sha256": _sha(settings), "settings": settings, "content_key": content_key,
                               "image_path": paths[0], "mask_path": paths[1], "mlflow_artifact_uri": None,
                               "loss_history": jsonable(list(viz.loss_history or [])), "seconds": float(viz.seconds or 0.0),
                               "audit_run_id": run_id, "created_at": _now()},
                              ["neuron_id", "content_key"])
        self._link(s, vid, viz_id, reused=False)
        return viz_id

    def _link(self, s: Session, version_id: int, viz_id: int, reused: bool) -> int:
        return self._upsert(s, S.VersionVisualization.__table__,
                            {"model_version_id": version_id, "visualization_id": viz_id, "reused": reused},
                            ["model_version_id", "visualization_id"])

    def save_visualization(self, model: str, version: str, neuron_id: str, content_key: str, viz: Visualization,
                           run_id: int | None = None) -> int:
        """Store a rendered visualization (PNG image + L-mode PNG mask) for a version; the first row with the same
        (neuron, content_key) wins. Returns the visualization id."""
        paths = self._write_viz_files(viz)
        return self._write(lambda s: self._save_visualization(s, model, version, neuron_id, content_key, viz, run_id, paths))

    def link_visualization(self, model: str, version: str, neuron_id: str, existing_id: int) -> int:
        """Record that `version` reuses visualization `existing_id` (same content key). Returns existing_id."""
        def tx(s: Session) -> int:
            npk, vid = self._neuron_pk(s, model, neuron_id), self._version_id(s, model, version)
            owner = s.execute(select(S.Visualization.neuron_id).where(S.Visualization.id == existing_id)).scalar_one_or_none()
            if owner is None:
                raise NotFoundError(f"visualization {existing_id} does not exist")
            if owner != npk:
                raise ValueError(f"visualization {existing_id} belongs to another neuron than {model}/{neuron_id}")
            self._link(s, vid, existing_id, reused=True)
            return existing_id
        return self._write(tx)

    def repair_visualization(self, viz_id: int, viz: Visualization) -> dict:
        """Rewrite the files of a stored visualization whose image or mask is missing or corrupt (a fresh
        render of the same content key) and point its row at them. Returns the new paths."""
        image_path, mask_path = self._write_viz_files(viz)

        def tx(s: Session) -> None:
            if not s.execute(update(S.Visualization).where(S.Visualization.id == viz_id)
                             .values(image_path=image_path, mask_path=mask_path)).rowcount:
                raise NotFoundError(f"visualization {viz_id} does not exist")
        self._write(tx)
        return {"image_path": image_path, "mask_path": mask_path}

    def set_visualization_uri(self, viz_id: int, uri: str) -> None:
        self._write(lambda s: s.execute(update(S.Visualization).where(S.Visualization.id == viz_id)
                                        .values(mlflow_artifact_uri=uri)))

    def save_neuron_results(self, model: str, version: str, neuron_id: str, *, run_id: int | None = None,
                            probe_sha256: str | None = None, stats: ActivationStats | None = None,
                            values: Mapping[str, np.ndarray] | None = None, stats_content_key: str | None = None,
                            visualizations: list[tuple[str, Visualization]] = (),
                            reused_visualization_ids: list[int] = ()) -> dict:
        """One neuron's results for one version in ONE transaction: statistics (+ values; `stats_content_key`: what
        produced them, see `save_stats`; None: unknown, never read back by `load_stats`), new visualizations
        as (content_key, Visualization) pairs, and links to reused visualizations. All or nothing.
        Returns {"stats_id": int|None, "visualization_ids": [...]}."""
        values_path = self.artifacts.put_arrays(values) if values else None
        paths = [self._write_viz_files(v) for _, v in visualizations]

        def tx(s: Session) -> dict:
            out = {"stats_id": None, "visualization_ids": []}
            if stats is not None:
                if probe_sha256 is None:
                    raise ValueError("save_neuron_results: stats need probe_sha256")
                out["stats_id"] = self._save_stats(s, model, version, neuron_id, probe_sha256, stats, values_path, run_id,
                                                   stats_content_key)
            for (key, viz), p in zip(visualizations, paths):
                out["visualization_ids"].append(self._save_visualization(s, model, version, neuron_id, key, viz, run_id, p))
            if reused_visualization_ids:
                vid = self._version_id(s, model, version)
                for rid in reused_visualization_ids:
                    self._link(s, vid, int(rid), reused=True)
                    out["visualization_ids"].append(int(rid))
            return out
        return self._write(tx)

    # ------------------------------------------------------------------ drift results and compare reports
    def save_drift(self, model: str, baseline: str, candidate: str, probe_sha256: str, result: DriftResult,
                   run_id: int | None = None) -> int:
        """Upsert a neuron's comparison of candidate vs baseline; a non-FAIL verdict resolves its open alerts."""
        def tx(s: Session) -> int:
            rid = self._upsert(s, S.DriftResultRow.__table__,
                               {"neuron_id": self._neuron_pk(s, model, result.neuron_id),
                                "baseline_version_id": self._version_id(s, model, baseline),
                                "candidate_version_id": self._version_id(s, model, candidate),
                                "probe_set_id": self._probe_id(s, probe_sha256),
                                "statistics": jsonable(dict(result.statistics or {})), "ci": jsonable(dict(result.ci or {})),
                                "verdict": str(result.verdict), "reason": result.reason or "",
                                "matched_index": None if result.matched_index is None else int(result.matched_index),
                                "audit_run_id": run_id, "created_at": _now()},
                               ["neuron_id", "baseline_version_id", "candidate_version_id", "probe_set_id"],
                               ["statistics", "ci", "verdict", "reason", "matched_index", "audit_run_id", "created_at"])
            if result.verdict != "FAIL":
                s.execute(update(S.Alert).where(S.Alert.drift_result_id == rid, S.Alert.resolved_at.is_(None))
                          .values(resolved_at=_now()))
            return rid
        return self._write(tx)

    def save_report(self, model: str, baseline: str, candidate: str, report: dict) -> Path:
        """Write the compare report as JSON under reports/<model>/<baseline>-vs-<candidate>.json (latest wins);
        returns its absolute path."""
        rel = f"reports/{_safe_name(model)}/{_safe_name(baseline)}-vs-{_safe_name(candidate)}.json"
        data = json.dumps(jsonable(report), indent=2, sort_keys=False, allow_nan=False).encode()
        return self.artifacts.write_named(rel, data)   # = report_file(model, baseline, candidate)

    def load_report(self, model: str, baseline: str, candidate: str) -> dict | None:
        """The latest compare report of candidate vs baseline written by `save_report` (None if absent or unreadable)."""
        rel = f"reports/{_safe_name(model)}/{_safe_name(baseline)}-vs-{_safe_name(candidate)}.json"
        try:
            return json.loads(self.artifacts.path(rel).read_text())
        except (OSError, ValueError):
            return None

    def report_file(self, model: str, baseline: str, candidate: str) -> Path:
        """Where `save_report` writes the compare report of (baseline, candidate)."""
        return self.artifacts.path(f"reports/{_safe_name(model)}/{_safe_name(baseline)}-vs-{_safe_name(candidate)}.json")

    # ------------------------------------------------------------------ a version's results, gathered
    def version_artifacts(self, model: str, version: str) -> list[str]:
        """Relative paths of every artifact the stored results of a version rely on: activation values,
        visualization images and masks, probe thumbnails."""
        with self._read() as s:
            vid = self._version_id(s, model, version)
            paths = [p for (p,) in s.execute(select(S.ActivationStatsRow.values_path)
                                             .where(S.ActivationStatsRow.model_version_id == vid)).all() if p]
            for img, mask in s.execute(select(S.Visualization.image_path, S.Visualization.mask_path)
                                       .join(S.VersionVisualization,
                                             S.VersionVisualization.visualization_id == S.Visualization.id)
                                       .where(S.VersionVisualization.model_version_id == vid)).all():
                paths += [p for p in (img, mask) if p]
            for (meta,) in s.execute(select(S.ProbeSet.meta).join(S.ActivationStatsRow,
                                                                  S.ActivationStatsRow.probe_set_id == S.ProbeSet.id)
                                     .where(S.ActivationStatsRow.model_version_id == vid).distinct()).all():
                paths += [p for p in ((meta or {}).get("thumbnails") or []) if p]
        return sorted(set(paths))

    def mlflow_version_content(self, model: str, version: str) -> dict:
        """Everything the MLflow run of (model, version) shows, read from the store: dict(model_version_id, source,
        weights_sha256, registered_at, stats{neuron: stats dict} (newest probe set), drift[dict(neuron_id, baseline,
        baseline_registered_at, verdict, reason, statistics, matched_index)] (newest per neuron and baseline),
        visualizations[dict(id, neuron_id, method, seed, image, mask (absolute paths), image_rel, mask_rel,
        final_loss, seconds)], reports{baseline: absolute path of its stored compare report})."""
        with self._read() as s:
            vid = self._version_id(s, model, version)
            mv = s.get(S.ModelVersion, vid)
            stats: dict[str, dict] = {}
            for row, nid in s.execute(select(S.ActivationStatsRow, S.Neuron.neuron_id)
                                      .join(S.Neuron, S.Neuron.id == S.ActivationStatsRow.neuron_id)
                                      .where(S.ActivationStatsRow.model_version_id == vid)
                                      .order_by(S.ActivationStatsRow.created_at, S.ActivationStatsRow.id)).all():
                stats[nid] = dict(row.stats or {})          # the newest probe set wins
            B = aliased(S.ModelVersion)
            drift: dict[tuple[str, str], dict] = {}
            for d, nid, base, base_at in s.execute(
                    select(S.DriftResultRow, S.Neuron.neuron_id, B.version, B.registered_at)
                    .join(S.Neuron, S.Neuron.id == S.DriftResultRow.neuron_id)
                    .join(B, B.id == S.DriftResultRow.baseline_version_id)
                    .where(S.DriftResultRow.candidate_version_id == vid)
                    .order_by(S.DriftResultRow.created_at, S.DriftResultRow.id)).all():
                drift[(nid, base)] = {"neuron_id": nid, "baseline": base, "baseline_registered_at": _iso(base_at),
                                      "verdict": d.verdict, "reason": d.reason, "statistics": dict(d.statistics or {}),
                                      "matched_index": d.matched_index}
            vizs = []
            for v, nid in s.execute(select(S.Visualization, S.Neuron.neuron_id)
                                    .join(S.VersionVisualization, S.VersionVisualization.visualization_id == S.Visualization.id)
                                    .join(S.Neuron, S.Neuron.id == S.Visualization.neuron_id)
                                    .where(S.VersionVisualization.model_version_id == vid)
                                    .order_by(S.Neuron.neuron_id, S.Visualization.method, S.Visualization.seed,
                                              S.Visualization.id)).all():
                vizs.append({"id": v.id, "neuron_id": nid, "method": v.method, "seed": v.seed,
                             "image": str(self.artifacts.path(v.image_path)), "image_rel": v.image_path,
                             "mask": str(self.artifacts.path(v.mask_path)) if v.mask_path else None,
                             "mask_rel": v.mask_path,
                             "final_loss": v.loss_history[-1] if v.loss_history else None, "seconds": v.seconds})
        reports = {}
        for base in sorted({b for _, b in drift}):
            path = self.report_file(model, base, version)
            if path.is_file():
                reports[base] = str(path)
        return {"model_version_id": vid, "source": mv.source, "weights_sha256": mv.weights_sha256,
                "registered_at": _iso(mv.registered_at), "stats": stats, "drift": list(drift.values()),
                "visualizations": vizs, "reports": reports}
