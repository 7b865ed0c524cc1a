"""The dashboard's read queries over the audit store (`DashboardQueries`, mixed into `AuditStore`).

Each query returns plain dicts (JSON-friendly: timestamps are ISO-8601 UTC strings; artifact paths are
relative to the artifact root). They need `self._read` (a session factory) from the store.
"""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from . import schema as S
from .timestamps import aware as _aware, iso as _iso

VERDICTS = ("PASS", "WARN", "FAIL")


class DashboardQueries:
    """Read queries of the dashboard and the webhook payloads (no writes)."""

    def list_models(self) -> list[dict]:
        """[dict(name, architecture, champion, n_versions, n_neurons)] (active neurons), by name."""
        with self._read() as s:
            nv = select(func.count(S.ModelVersion.id)).where(S.ModelVersion.model_id == S.Model.id).scalar_subquery()
            nn = select(func.count(S.Neuron.id)).where(S.Neuron.model_id == S.Model.id, S.Neuron.active.is_(True)).scalar_subquery()
            rows = s.execute(select(S.Model.name, S.Model.architecture, S.Model.champion, nv, nn).order_by(S.Model.name)).all()
        return [{"name": r[0], "architecture": r[1], "champion": r[2], "n_versions": int(r[3]), "n_neurons": int(r[4])}
                for r in rows]

    def list_versions(self, model: str) -> list[dict]:
        """[dict(version, source, weights_sha256, registered_at)] in registration order."""
        with self._read() as s:
            rows = s.execute(select(S.ModelVersion).join(S.Model, S.Model.id == S.ModelVersion.model_id)
                             .where(S.Model.name == model).order_by(S.ModelVersion.registered_at, S.ModelVersion.id)).scalars().all()
        return [{"version": v.version, "source": v.source, "weights_sha256": v.weights_sha256,
                 "registered_at": _iso(v.registered_at)} for v in rows]

    def recent_runs(self, limit: int = 20) -> list[dict]:
        """[dict(id, flow_run_id, started_at, finished_at, status, duration_s, error, mlflow_run_ids)], newest first."""
        with self._read() as s:
            runs = s.execute(select(S.AuditRun).order_by(S.AuditRun.started_at.desc(), S.AuditRun.id.desc())
                             .limit(limit)).scalars().all()
            ids = [r.id for r in runs]
            ml: dict[int, list[str]] = {}
            if ids:
                for arid, mrid in s.execute(select(S.MlflowRun.audit_run_id, S.MlflowRun.mlflow_run_id)
                                            .where(S.MlflowRun.audit_run_id.in_(ids), S.MlflowRun.status == "logged")
                                            .order_by(S.MlflowRun.id)).all():
                    ml.setdefault(arid, []).append(mrid)
        out = []
        for r in runs:
            st, fi = _aware(r.started_at), _aware(r.finished_at)
            out.append({"id": r.id, "flow_run_id": r.flow_run_id, "started_at": _iso(st), "finished_at": _iso(fi),
                        "status": r.status, "duration_s": (fi - st).total_seconds() if st and fi else None,
                        "error": r.error, "mlflow_run_ids": ml.get(r.id, [])})
        return out

    def _drift_rows(self, s: Session, model: str | None = None, baseline: str | None = None,
                    candidate: str | None = None, neuron_pk: int | None = None, active_only: bool = True) -> list[dict]:
        B, C = aliased(S.ModelVersion), aliased(S.ModelVersion)
        D = S.DriftResultRow
        q = (select(D, S.Neuron, S.Model.name, B.version, C.version, S.ProbeSet.sha256)
             .join(S.Neuron, S.Neuron.id == D.neuron_id).join(S.Model, S.Model.id == S.Neuron.model_id)
             .join(B, B.id == D.baseline_version_id).join(C, C.id == D.candidate_version_id)
             .join(S.ProbeSet, S.ProbeSet.id == D.probe_set_id))
        if model is not None:
            q = q.where(S.Model.name == model)
        if baseline is not None:
            q = q.where(B.version == str(baseline))
        if candidate is not None:
            q = q.where(C.version == str(candidate))
        if neuron_pk is not None:
            q = q.where(D.neuron_id == neuron_pk)
        if active_only:
            q = q.where(S.Neuron.active.is_(True))
        q = q.order_by(D.created_at, D.id)
        out = []
        for d, n, mname, bver, cver, psha in s.execute(q).all():
            out.append({"id": d.id, "model": mname, "neuron_pk": n.id, "neuron_id": n.neuron_id, "kind": n.kind,
                        "layer": n.layer, "index": n.index, "label": n.label, "critical": n.critical,
                        "baseline": bver, "candidate": cver, "verdict": d.verdict, "reason": d.reason,
                        "statistics": d.statistics or {}, "ci": d.ci or {}, "matched_index": d.matched_index,
                        "probe_set_sha256": psha, "audit_run_id": d.audit_run_id, "created_at": _iso(d.created_at)})
        return out

    @staticmethod
    def _latest_per(rows: list[dict], key: Callable[[dict], Any]) -> list[dict]:
        latest: dict[Any, dict] = {}
        for r in rows:   # rows are sorted oldest first
            latest[key(r)] = r
        return list(latest.values())

    @staticmethod
    def _public(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "neuron_pk"}

    def verdict_counts(self, model: str | None = None) -> dict:
        """dict(PASS, WARN, FAIL): the latest comparison of each active neuron (of one model or all)."""
        with self._read() as s:
            rows = self._latest_per(self._drift_rows(s, model), lambda r: r["neuron_pk"])
        counts = {v: 0 for v in VERDICTS}
        for r in rows:
            if r["verdict"] in counts:
                counts[r["verdict"]] += 1
        return counts

    def latest_verdicts(self, model: str) -> list[dict]:
        """The latest comparison of each active neuron with a result: dict(neuron_id, kind, layer, index, label,
        baseline, candidate, verdict, reason, statistics, matched_index, created_at, + id, ci, critical,
        probe_set_sha256, model), ordered by neuron id."""
        with self._read() as s:
            rows = self._latest_per(self._drift_rows(s, model), lambda r: r["neuron_pk"])
        return [self._public(r) for r in sorted(rows, key=lambda r: r["neuron_id"])]

    def comparisons(self, model: str) -> list[dict]:
        """[dict(baseline, candidate, counts{PASS,WARN,FAIL}, created_at)], newest first."""
        with self._read() as s:
            rows = self._latest_per(self._drift_rows(s, model),
                                    lambda r: (r["neuron_pk"], r["baseline"], r["candidate"]))
        pairs: dict[tuple[str, str], dict] = {}
        for r in rows:
            p = pairs.setdefault((r["baseline"], r["candidate"]), {"baseline": r["baseline"], "candidate": r["candidate"],
                                                                   "counts": {v: 0 for v in VERDICTS}, "created_at": None})
            if r["verdict"] in p["counts"]:
                p["counts"][r["verdict"]] += 1
            p["created_at"] = max(filter(None, [p["created_at"], r["created_at"]]), default=None)
        return sorted(pairs.values(), key=lambda p: p["created_at"] or "", reverse=True)

    def comparison(self, model: str, baseline: str, candidate: str) -> list[dict]:
        """The neurons' results of one comparison (same dicts as latest_verdicts), ordered by neuron id."""
        with self._read() as s:
            rows = self._latest_per(self._drift_rows(s, model, baseline, candidate), lambda r: r["neuron_pk"])
        return [self._public(r) for r in sorted(rows, key=lambda r: r["neuron_id"])]

    def _alerts(self, only_open: bool = True, alert_id: int | None = None) -> list[dict]:
        B, C = aliased(S.ModelVersion), aliased(S.ModelVersion)
        D = S.DriftResultRow
        q = (select(S.Alert, D, S.Neuron, S.Model.name, B.version, C.version)
             .join(D, D.id == S.Alert.drift_result_id).join(S.Neuron, S.Neuron.id == D.neuron_id)
             .join(S.Model, S.Model.id == S.Neuron.model_id)
             .join(B, B.id == D.baseline_version_id).join(C, C.id == D.candidate_version_id))
        if only_open:
            q = q.where(S.Alert.resolved_at.is_(None))
        if alert_id is not None:
            q = q.where(S.Alert.id == alert_id)
        with self._read() as s:
            rows = s.execute(q.order_by(S.Alert.created_at.desc(), S.Alert.id.desc())).all()
        return [{"id": a.id, "model": mname, "neuron_id": n.neuron_id, "baseline": b, "candidate": c, "reason": d.reason,
                 "created_at": _iso(a.created_at), "delivery_status": a.delivery_status, "channel": a.channel,
                 "verdict": d.verdict, "statistics": d.statistics or {}, "layer": n.layer, "index": n.index,
                 "kind": n.kind, "label": n.label, "matched_index": d.matched_index, "attempts": a.attempts,
                 "last_error": a.last_error, "sent_at": _iso(a.sent_at), "drift_result_id": d.id}
                for a, d, n, mname, b, c in rows]

    def open_alerts(self) -> list[dict]:
        """Unresolved alerts, newest first: dict(id, model, neuron_id, baseline, candidate, reason, created_at,
        delivery_status, + channel, verdict, statistics, attempts, last_error, sent_at, drift_result_id)."""
        return self._alerts(only_open=True)

    def neuron_history(self, model: str, neuron_id: str) -> dict | None:
        """dict(neuron=dict, versions=[dict(version, visualizations=[dict(method, seed, image_path, mask_path,
        mlflow_artifact_uri)], stats=dict|None, topk=[dict(index, name, value)], hist=dict(edges, counts))],
        drift=[dict(baseline, candidate, verdict, statistics, reason, created_at)]); None for an unknown neuron."""
        with self._read() as s:
            n = s.execute(select(S.Neuron).join(S.Model, S.Model.id == S.Neuron.model_id)
                          .where(S.Model.name == model, S.Neuron.neuron_id == neuron_id)).scalar_one_or_none()
            if n is None:
                return None
            versions = s.execute(select(S.ModelVersion).where(S.ModelVersion.model_id == n.model_id)
                                 .order_by(S.ModelVersion.registered_at, S.ModelVersion.id)).scalars().all()
            vizs: dict[int, list[dict]] = {}
            for v, link in s.execute(select(S.Visualization, S.VersionVisualization)
                                     .join(S.VersionVisualization, S.VersionVisualization.visualization_id == S.Visualization.id)
                                     .where(S.Visualization.neuron_id == n.id)
                                     .order_by(S.Visualization.method, S.Visualization.seed, S.Visualization.id)).all():
                vizs.setdefault(link.model_version_id, []).append(
                    {"id": v.id, "method": v.method, "seed": v.seed, "image_path": v.image_path, "mask_path": v.mask_path,
                     "mlflow_artifact_uri": v.mlflow_artifact_uri, "reused": link.reused, "content_key": v.content_key,
                     "seconds": v.seconds, "created_at": _iso(v.created_at)})
            stats: dict[int, tuple] = {}
            for st, ps in s.execute(select(S.ActivationStatsRow, S.ProbeSet)
                                    .join(S.ProbeSet, S.ProbeSet.id == S.ActivationStatsRow.probe_set_id)
                                    .where(S.ActivationStatsRow.neuron_id == n.id)
                                    .order_by(S.ActivationStatsRow.created_at, S.ActivationStatsRow.id)).all():
                stats[st.model_version_id] = (st, ps)   # latest probe set wins
            drift = self._drift_rows(s, neuron_pk=n.id, active_only=False)
        out_versions = []
        for mv in versions:
            entry: dict[str, Any] = {"version": mv.version, "source": mv.source, "weights_sha256": mv.weights_sha256,
                                     "visualizations": vizs.get(mv.id, []), "stats": None, "topk": [],
                                     "hist": {"edges": [], "counts": []}}
            if mv.id in stats:
                st, ps = stats[mv.id]
                d = dict(st.stats or {})
                d.update(probe_set_sha256=ps.sha256, values_path=st.values_path, created_at=_iso(st.created_at))
                entry["stats"] = d
                names = (ps.meta or {}).get("names") or []
                thumbs = (ps.meta or {}).get("thumbnails") or []
                entry["topk"] = [{"index": int(i), "name": names[int(i)] if 0 <= int(i) < len(names) else str(i), "value": val,
                                  "image_path": thumbs[int(i)] if 0 <= int(i) < len(thumbs) else None}
                                 for i, val in zip(d.get("topk_indices") or [], d.get("topk_values") or [])]
                entry["hist"] = {"edges": d.get("hist_edges") or [], "counts": d.get("hist_counts") or []}
            out_versions.append(entry)
        return {"neuron": {"model": model, "neuron_id": n.neuron_id, "kind": n.kind, "layer": n.layer, "index": n.index,
                           "label": n.label, "references": n.references, "critical": n.critical, "active": n.active},
                "versions": out_versions,
                "drift": [{"baseline": r["baseline"], "candidate": r["candidate"], "verdict": r["verdict"],
                           "statistics": r["statistics"], "reason": r["reason"], "created_at": r["created_at"],
                           "matched_index": r["matched_index"], "probe_set_sha256": r["probe_set_sha256"], "id": r["id"]}
                          for r in reversed(drift)]}

    def counts(self) -> dict[str, int]:
        """Row count per table (for checks and tests)."""
        with self._read() as s:
            return {t.name: int(s.execute(select(func.count()).select_from(t)).scalar_one())
                    for t in S.metadata.sorted_tables}
