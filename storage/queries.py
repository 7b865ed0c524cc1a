"""The dashboard's read queries over the audit store (`DashboardQueries`, mixed into `AuditStore`).

Each query returns plain dicts (JSON-friendly: timestamps are ISO-8601 UTC strings; artifact paths are
relative to the artifact root). They need `self._read` (a session factory) from the store.

Fleet size: a page sends a fixed number of these queries however long the history is. "The latest
comparison of each neuron", verdict counts and the thumbnail of each neuron are picked in SQL with
window functions (`ROW_NUMBER() OVER (PARTITION BY ...)`, SQLite >= 3.25 and PostgreSQL), and the
compare page reads the images and top probes of all its neurons in one query each. "Latest" means the
newest `created_at`, ties broken by the higher row id (rows written in the same second).
"""
from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from . import schema as S
from .timestamps import aware as _aware, iso as _iso

VERDICTS = ("PASS", "WARN", "FAIL")


def _zero_counts() -> dict[str, int]:
    return {v: 0 for v in VERDICTS}


def _newest_first(*cols) -> tuple:
    """ORDER BY of "latest": newest created_at first, then the higher id."""
    return tuple(c.desc() for c in cols)


def topk_rows(stats: dict, probe_meta: dict | None, limit: int | None = None) -> list[dict]:
    """The top-activating probe images of a stats dict: [dict(index, name, value, image_path)], named and
    illustrated from the probe set's meta (`names`, `thumbnails`)."""
    meta = probe_meta or {}
    names, thumbs = meta.get("names") or [], meta.get("thumbnails") or []
    out = []
    for i, val in zip(stats.get("topk_indices") or [], stats.get("topk_values") or []):
        i = int(i)
        out.append({"index": i, "name": names[i] if 0 <= i < len(names) else str(i), "value": val,
                    "image_path": thumbs[i] if 0 <= i < len(thumbs) else None})
        if limit is not None and len(out) >= limit:
            break
    return out


class DashboardQueries:
    """Read queries of the dashboard and the webhook payloads (no writes)."""

    # ------------------------------------------------------------------ models, versions, neurons
    def list_models(self) -> list[dict]:
        """[dict(name, architecture, champion, n_versions, n_neurons)] (active neurons), by name."""
        with self._read() as s:
            return self._models(s)

    def model_info(self, model: str) -> dict | None:
        """One model's `list_models` entry, or None when the store does not know it."""
        with self._read() as s:
            found = self._models(s, model)
        return found[0] if found else None

    @staticmethod
    def _models(s: Session, name: str | None = None) -> list[dict]:
        nv = select(func.count(S.ModelVersion.id)).where(S.ModelVersion.model_id == S.Model.id).scalar_subquery()
        nn = select(func.count(S.Neuron.id)).where(S.Neuron.model_id == S.Model.id, S.Neuron.active.is_(True)).scalar_subquery()
        q = select(S.Model.name, S.Model.architecture, S.Model.champion, nv, nn).order_by(S.Model.name)
        if name is not None:
            q = q.where(S.Model.name == name)
        return [{"name": r[0], "architecture": r[1], "champion": r[2], "n_versions": int(r[3]), "n_neurons": int(r[4])}
                for r in s.execute(q).all()]

    def list_versions(self, model: str) -> list[dict]:
        """[dict(version, source, weights_sha256, registered_at)] in registration order."""
        with self._read() as s:
            rows = s.execute(select(S.ModelVersion).join(S.Model, S.Model.id == S.ModelVersion.model_id)
                             .where(S.Model.name == model).order_by(S.ModelVersion.registered_at, S.ModelVersion.id)).scalars().all()
        return [self._version_dict(v) for v in rows]

    @staticmethod
    def _version_dict(v) -> dict:
        return {"version": v.version, "source": v.source, "weights_sha256": v.weights_sha256,
                "registered_at": _iso(v.registered_at)}

    def recent_versions(self, per_model: int = 6) -> dict[str, list[dict]]:
        """{model: its newest `per_model` versions (list_versions dicts), in registration order}: one query."""
        MV = S.ModelVersion
        rn = func.row_number().over(partition_by=MV.model_id, order_by=_newest_first(MV.registered_at, MV.id))
        sub = select(MV.id.label("id"), rn.label("rn")).subquery()
        q = (select(S.Model.name, MV).join(MV, MV.model_id == S.Model.id).join(sub, sub.c.id == MV.id)
             .where(sub.c.rn <= per_model).order_by(S.Model.name, MV.registered_at, MV.id))
        out: dict[str, list[dict]] = {}
        with self._read() as s:
            for name, v in s.execute(q).all():
                out.setdefault(name, []).append(self._version_dict(v))
        return out

    def list_neurons(self, model: str, active_only: bool = True) -> list[dict]:
        """The neuron registry of a model: [dict(neuron_id, kind, layer, index, label, critical, active)], by id."""
        q = (select(S.Neuron).join(S.Model, S.Model.id == S.Neuron.model_id).where(S.Model.name == model)
             .order_by(S.Neuron.neuron_id))
        if active_only:
            q = q.where(S.Neuron.active.is_(True))
        with self._read() as s:
            return [self._neuron_dict(n) for n in s.execute(q).scalars().all()]

    @staticmethod
    def _neuron_dict(n) -> dict:
        return {"neuron_id": n.neuron_id, "kind": n.kind, "layer": n.layer, "index": n.index, "label": n.label,
                "critical": n.critical, "active": n.active}

    # ------------------------------------------------------------------ runs
    def recent_runs(self, limit: int = 20) -> list[dict]:
        """[dict(id, flow_run_id, started_at, finished_at, status, duration_s, error, mlflow_run_ids,
        mlflow_runs=[dict(model, version, run_id, experiment_id)])], newest first."""
        with self._read() as s:
            runs = s.execute(select(S.AuditRun).order_by(S.AuditRun.started_at.desc(), S.AuditRun.id.desc())
                             .limit(limit)).scalars().all()
            ids = [r.id for r in runs]
            ml: dict[int, list[dict]] = {}
            if ids:
                for arid, mrid, exp, name, version in s.execute(
                        select(S.MlflowRun.audit_run_id, S.MlflowRun.mlflow_run_id, S.MlflowRun.mlflow_experiment_id,
                               S.Model.name, S.ModelVersion.version)
                        .join(S.ModelVersion, S.ModelVersion.id == S.MlflowRun.model_version_id)
                        .join(S.Model, S.Model.id == S.ModelVersion.model_id)
                        .where(S.MlflowRun.audit_run_id.in_(ids), S.MlflowRun.status == "logged")
                        .order_by(S.MlflowRun.id)).all():
                    ml.setdefault(arid, []).append({"model": name, "version": version, "run_id": mrid,
                                                    "experiment_id": exp})
        out = []
        for r in runs:
            st, fi = _aware(r.started_at), _aware(r.finished_at)
            out.append({"id": r.id, "flow_run_id": r.flow_run_id, "started_at": _iso(st), "finished_at": _iso(fi),
                        "status": r.status, "duration_s": (fi - st).total_seconds() if st and fi else None,
                        "error": r.error, "mlflow_run_ids": [m["run_id"] for m in ml.get(r.id, [])],
                        "mlflow_runs": ml.get(r.id, [])})
        return out

    def mlflow_runs_by_version(self, model: str) -> dict[str, dict]:
        """{version: dict(run_id, experiment_id) of the MLflow run most recently logged for it} of one model:
        one query."""
        R, MV = S.MlflowRun, S.ModelVersion
        rn = func.row_number().over(partition_by=R.model_version_id, order_by=_newest_first(R.updated_at, R.id))
        sub = (select(R.id.label("id"), rn.label("rn")).join(MV, MV.id == R.model_version_id)
               .join(S.Model, S.Model.id == MV.model_id)
               .where(S.Model.name == model, R.status == "logged", R.mlflow_run_id.is_not(None)).subquery())
        q = (select(MV.version, R.mlflow_run_id, R.mlflow_experiment_id).join(MV, MV.id == R.model_version_id)
             .join(sub, sub.c.id == R.id).where(sub.c.rn == 1))
        with self._read() as s:
            return {v: {"run_id": rid, "experiment_id": exp} for v, rid, exp in s.execute(q).all()}

    # ------------------------------------------------------------------ drift results
    @staticmethod
    def _latest_drift_id(neuron_id_col, baseline_id=None, candidate_id=None):
        """Correlated scalar subquery: the id of the newest drift row of the neuron `neuron_id_col` (of the given
        baseline and candidate version ids when given). One index seek per neuron (drift_results' index on
        (neuron_id, created_at, id)), so its cost follows the number of neurons, not the history."""
        D2 = aliased(S.DriftResultRow)
        conds = [D2.neuron_id == neuron_id_col]
        if baseline_id is not None:
            conds.append(D2.baseline_version_id == baseline_id)
        if candidate_id is not None:
            conds.append(D2.candidate_version_id == candidate_id)
        return select(D2.id).where(*conds).order_by(*_newest_first(D2.created_at, D2.id)).limit(1).scalar_subquery()

    @staticmethod
    def _drift_dict(d, n, mname, bver, cver, psha, flow_run_id) -> dict:
        return {"id": d.id, "model": mname, "neuron_pk": n.id, "neuron_id": n.neuron_id, "kind": n.kind,
                "layer": n.layer, "index": n.index, "label": n.label, "critical": n.critical,
                "baseline": bver, "candidate": cver, "verdict": d.verdict, "reason": d.reason,
                "statistics": d.statistics or {}, "ci": d.ci or {}, "matched_index": d.matched_index,
                "probe_set_sha256": psha, "audit_run_id": d.audit_run_id, "flow_run_id": flow_run_id,
                "created_at": _iso(d.created_at)}

    def _drift_rows(self, s: Session, model: str | None = None, baseline: str | None = None,
                    candidate: str | None = None, neuron_pk: int | None = None, active_only: bool = True) -> list[dict]:
        """Every drift result that matches, as dicts, oldest first (a neuron's whole history: its page)."""
        B, C = aliased(S.ModelVersion), aliased(S.ModelVersion)
        D = S.DriftResultRow
        q = (select(D, S.Neuron, S.Model.name, B.version, C.version, S.ProbeSet.sha256, S.AuditRun.flow_run_id)
             .join(S.Neuron, S.Neuron.id == D.neuron_id).join(S.Model, S.Model.id == S.Neuron.model_id)
             .join(B, B.id == D.baseline_version_id).join(C, C.id == D.candidate_version_id)
             .join(S.ProbeSet, S.ProbeSet.id == D.probe_set_id)
             .outerjoin(S.AuditRun, S.AuditRun.id == D.audit_run_id))
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
        return [self._drift_dict(*row) for row in s.execute(q.order_by(D.created_at, D.id)).all()]

    def _latest_rows(self, s: Session, model: str, baseline: str | None = None, candidate: str | None = None) -> list[dict]:
        """The newest drift result of each active neuron of `model` (of one version pair when given), by neuron id."""
        B, C = aliased(S.ModelVersion), aliased(S.ModelVersion)
        D, N = S.DriftResultRow, S.Neuron
        q = select(D, N, S.Model.name, B.version, C.version, S.ProbeSet.sha256, S.AuditRun.flow_run_id).select_from(N)
        q = q.join(S.Model, S.Model.id == N.model_id)
        if baseline is not None and candidate is not None:
            PB, PC = aliased(S.ModelVersion), aliased(S.ModelVersion)
            q = (q.join(PB, (PB.model_id == S.Model.id) & (PB.version == str(baseline)))
                 .join(PC, (PC.model_id == S.Model.id) & (PC.version == str(candidate)))
                 .join(D, D.id == self._latest_drift_id(N.id, PB.id, PC.id)))
        else:
            q = q.join(D, D.id == self._latest_drift_id(N.id))
        q = (q.join(B, B.id == D.baseline_version_id).join(C, C.id == D.candidate_version_id)
             .join(S.ProbeSet, S.ProbeSet.id == D.probe_set_id).outerjoin(S.AuditRun, S.AuditRun.id == D.audit_run_id)
             .where(S.Model.name == model, N.active.is_(True)).order_by(N.neuron_id))
        return [self._drift_dict(*row) for row in s.execute(q).all()]

    @staticmethod
    def _public(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "neuron_pk"}

    def verdict_counts(self, model: str | None = None) -> dict:
        """dict(PASS, WARN, FAIL): the latest comparison of each active neuron (of one model or all)."""
        total = _zero_counts()
        for counts in self.verdict_counts_by_model(model).values():
            for k in VERDICTS:
                total[k] += counts[k]
        return total

    def verdict_counts_by_model(self, model: str | None = None) -> dict[str, dict]:
        """{model: dict(PASS, WARN, FAIL)} over the latest comparison of each active neuron, counted in SQL
        (models without any comparison are absent)."""
        D, N = S.DriftResultRow, S.Neuron
        q = (select(S.Model.name, D.verdict, func.count()).select_from(N).join(S.Model, S.Model.id == N.model_id)
             .join(D, D.id == self._latest_drift_id(N.id)).where(N.active.is_(True))
             .group_by(S.Model.name, D.verdict))
        if model is not None:
            q = q.where(S.Model.name == model)
        out: dict[str, dict] = {}
        with self._read() as s:
            for name, verdict, n in s.execute(q).all():
                counts = out.setdefault(name, _zero_counts())
                if verdict in counts:
                    counts[verdict] += int(n)
        return out

    def latest_verdicts(self, model: str) -> list[dict]:
        """The latest comparison of each active neuron with a result: dict(neuron_id, kind, layer, index, label,
        baseline, candidate, verdict, reason, statistics, matched_index, created_at, + id, ci, critical,
        probe_set_sha256, model, audit_run_id, flow_run_id), ordered by neuron id."""
        with self._read() as s:
            return [self._public(r) for r in self._latest_rows(s, model)]

    def neuron_verdicts(self, model: str) -> list[dict]:
        """Every active neuron of the model with its latest comparison (the `latest_verdicts` dict), or with
        verdict/baseline/candidate None and empty statistics when it has none yet; ordered by neuron id."""
        latest = {r["neuron_id"]: r for r in self.latest_verdicts(model)}
        out = []
        for n in self.list_neurons(model):
            out.append(latest.get(n["neuron_id"]) or {**n, "model": model, "verdict": None, "baseline": None,
                                                      "candidate": None, "statistics": {}, "reason": None,
                                                      "matched_index": None, "created_at": None})
        return out

    def comparisons(self, model: str) -> list[dict]:
        """[dict(baseline, candidate, counts{PASS,WARN,FAIL}, created_at)], newest first; counted in SQL over the
        latest row of each neuron in each pair (a model's pairs grow with its history: one row per pair)."""
        D = S.DriftResultRow
        B, C = aliased(S.ModelVersion), aliased(S.ModelVersion)
        rn = func.row_number().over(partition_by=(D.neuron_id, D.baseline_version_id, D.candidate_version_id),
                                    order_by=_newest_first(D.created_at, D.id))
        sub = (select(B.version.label("b"), C.version.label("c"), D.verdict.label("verdict"),
                      D.created_at.label("created_at"), D.id.label("id"), rn.label("rn"))
               .join(S.Neuron, S.Neuron.id == D.neuron_id).join(S.Model, S.Model.id == S.Neuron.model_id)
               .join(B, B.id == D.baseline_version_id).join(C, C.id == D.candidate_version_id)
               .where(S.Model.name == model, S.Neuron.active.is_(True)).subquery())
        q = (select(sub.c.b, sub.c.c, sub.c.verdict, func.count(), func.max(sub.c.created_at), func.max(sub.c.id))
             .where(sub.c.rn == 1).group_by(sub.c.b, sub.c.c, sub.c.verdict))
        pairs: dict[tuple[str, str], dict] = {}
        newest: dict[tuple[str, str], tuple] = {}
        with self._read() as s:
            for b, c, verdict, n, created, last_id in s.execute(q).all():
                p = pairs.setdefault((b, c), {"baseline": b, "candidate": c, "counts": _zero_counts(), "created_at": None})
                if verdict in p["counts"]:
                    p["counts"][verdict] += int(n)
                order = (_iso(created) or "", int(last_id))
                if order > newest.get((b, c), ("", -1)):
                    newest[(b, c)], p["created_at"] = order, _iso(created)
        return [pairs[k] for k in sorted(pairs, key=lambda k: newest[k], reverse=True)]

    def latest_comparisons(self) -> dict[str, dict]:
        """{model: dict(baseline, candidate, created_at)} of each model's most recent comparison (the newest of
        its active neurons' latest rows): one query, one row per model."""
        B, C = aliased(S.ModelVersion), aliased(S.ModelVersion)
        D, N = S.DriftResultRow, S.Neuron
        rn = func.row_number().over(partition_by=N.model_id, order_by=_newest_first(D.created_at, D.id))
        sub = (select(S.Model.name.label("model"), B.version.label("b"), C.version.label("c"),
                      D.created_at.label("created_at"), rn.label("rn")).select_from(N)
               .join(S.Model, S.Model.id == N.model_id).join(D, D.id == self._latest_drift_id(N.id))
               .join(B, B.id == D.baseline_version_id).join(C, C.id == D.candidate_version_id)
               .where(N.active.is_(True)).subquery())
        q = select(sub.c.model, sub.c.b, sub.c.c, sub.c.created_at).where(sub.c.rn == 1).order_by(sub.c.model)
        with self._read() as s:
            return {m: {"baseline": b, "candidate": c, "created_at": _iso(t)} for m, b, c, t in s.execute(q).all()}

    def comparison(self, model: str, baseline: str, candidate: str) -> list[dict]:
        """The neurons' results of one comparison (same dicts as latest_verdicts), ordered by neuron id."""
        with self._read() as s:
            return [self._public(r) for r in self._latest_rows(s, model, baseline, candidate)]

    # ------------------------------------------------------------------ images and top probes, many neurons at once
    def latest_thumbnails(self, model: str) -> dict[str, dict]:
        """{neuron_id: dict(version, method, seed, image_path, mask_path)}: per active neuron, the first
        visualization (by method, seed) of the candidate version of its latest comparison, or else of its newest
        version that has one. One query; per neuron, one look at its own visualizations."""
        V, VV, MV, N = S.Visualization, S.VersionVisualization, S.ModelVersion, S.Neuron
        Va, VVa, Vb, VVb, MVb, D2 = aliased(V), aliased(VV), aliased(V), aliased(VV), aliased(MV), aliased(S.DriftResultRow)
        candidate = (select(D2.candidate_version_id).where(D2.neuron_id == N.id)
                     .order_by(*_newest_first(D2.created_at, D2.id)).limit(1).correlate(N).scalar_subquery())
        of_candidate = (select(VVa.id).join(Va, Va.id == VVa.visualization_id)
                        .where(Va.neuron_id == N.id, VVa.model_version_id == candidate)
                        .order_by(Va.method, Va.seed, Va.id).limit(1).correlate(N).scalar_subquery())
        of_newest = (select(VVb.id).join(Vb, Vb.id == VVb.visualization_id).join(MVb, MVb.id == VVb.model_version_id)
                     .where(Vb.neuron_id == N.id)
                     .order_by(MVb.registered_at.desc(), MVb.id.desc(), Vb.method, Vb.seed, Vb.id)
                     .limit(1).correlate(N).scalar_subquery())
        pick = func.coalesce(of_candidate, of_newest)
        q = (select(N.neuron_id, MV.version, V.method, V.seed, V.image_path, V.mask_path).select_from(N)
             .join(S.Model, S.Model.id == N.model_id)
             .join(VV, VV.id == pick).join(V, V.id == VV.visualization_id).join(MV, MV.id == VV.model_version_id)
             .where(S.Model.name == model, N.active.is_(True)))
        with self._read() as s:
            return {r.neuron_id: {"version": r.version, "method": r.method, "seed": r.seed, "image_path": r.image_path,
                                  "mask_path": r.mask_path} for r in s.execute(q).all()}

    def version_visualizations(self, model: str, versions: Iterable[str]) -> dict[tuple[str, str], list[dict]]:
        """{(neuron_id, version): [dict(id, method, seed, image_path, mask_path, mlflow_artifact_uri, reused)]}
        for every neuron of the model and the given versions, each list by (method, seed): one query."""
        V, VV, MV, N = S.Visualization, S.VersionVisualization, S.ModelVersion, S.Neuron
        q = (select(N.neuron_id, MV.version, V, VV.reused).select_from(V)
             .join(VV, VV.visualization_id == V.id).join(MV, MV.id == VV.model_version_id)
             .join(N, N.id == V.neuron_id).join(S.Model, S.Model.id == N.model_id)
             .where(S.Model.name == model, MV.version.in_([str(v) for v in versions]))
             .order_by(N.neuron_id, MV.version, V.method, V.seed, V.id))
        out: dict[tuple[str, str], list[dict]] = {}
        with self._read() as s:
            for nid, version, v, reused in s.execute(q).all():
                out.setdefault((nid, version), []).append(
                    {"id": v.id, "method": v.method, "seed": v.seed, "image_path": v.image_path,
                     "mask_path": v.mask_path, "mlflow_artifact_uri": v.mlflow_artifact_uri, "reused": reused})
        return out

    def top_probes(self, model: str, versions: Iterable[str], limit: int | None = None) -> dict[tuple[str, str], list[dict]]:
        """{(neuron_id, version): the top-activating probe images (`topk_rows`)} for every neuron of the model and
        the given versions, from their latest statistics: two queries (statistics, then their probe sets)."""
        A, MV, N = S.ActivationStatsRow, S.ModelVersion, S.Neuron
        q = (select(N.neuron_id, MV.version, A.stats, A.probe_set_id).select_from(A)
             .join(MV, MV.id == A.model_version_id).join(N, N.id == A.neuron_id)
             .join(S.Model, S.Model.id == N.model_id)
             .where(S.Model.name == model, MV.version.in_([str(v) for v in versions]))
             .order_by(A.created_at, A.id))
        with self._read() as s:
            latest = {(nid, version): (stats or {}, ps) for nid, version, stats, ps in s.execute(q).all()}
            ids = sorted({ps for _, ps in latest.values()})
            metas = dict(s.execute(select(S.ProbeSet.id, S.ProbeSet.meta).where(S.ProbeSet.id.in_(ids))).all()) if ids else {}
        return {key: topk_rows(stats, metas.get(ps), limit) for key, (stats, ps) in latest.items()}

    # ------------------------------------------------------------------ alerts
    @staticmethod
    def _alert_filters(q, B, C, only_open: bool, alert_id: int | None, model: str | None, neuron_id: str | None):
        """`q` joined from alerts to their drift result, neuron, model and versions (B, C), filtered."""
        D = S.DriftResultRow
        q = (q.join(D, D.id == S.Alert.drift_result_id).join(S.Neuron, S.Neuron.id == D.neuron_id)
             .join(S.Model, S.Model.id == S.Neuron.model_id)
             .join(B, B.id == D.baseline_version_id).join(C, C.id == D.candidate_version_id))
        if only_open:
            q = q.where(S.Alert.resolved_at.is_(None))
        if alert_id is not None:
            q = q.where(S.Alert.id == alert_id)
        if model is not None:
            q = q.where(S.Model.name == model)
        if neuron_id is not None:
            q = q.where(S.Neuron.neuron_id == neuron_id)
        return q

    def _alerts(self, only_open: bool = True, alert_id: int | None = None, *, model: str | None = None,
                neuron_id: str | None = None, limit: int | None = None, offset: int = 0) -> list[dict]:
        B, C = aliased(S.ModelVersion), aliased(S.ModelVersion)
        D = S.DriftResultRow
        q = self._alert_filters(select(S.Alert, D, S.Neuron, S.Model.name, B.version, C.version).select_from(S.Alert),
                                B, C, only_open, alert_id, model, neuron_id)
        q = q.order_by(S.Alert.created_at.desc(), S.Alert.id.desc())
        if limit is not None:
            q = q.limit(limit).offset(offset)
        with self._read() as s:
            rows = s.execute(q).all()
        return [{"id": a.id, "model": mname, "neuron_id": n.neuron_id, "baseline": b, "candidate": c, "reason": d.reason,
                 "created_at": _iso(a.created_at), "delivery_status": a.delivery_status, "channel": a.channel,
                 "verdict": d.verdict, "statistics": d.statistics or {}, "layer": n.layer, "index": n.index,
                 "kind": n.kind, "label": n.label, "matched_index": d.matched_index, "attempts": a.attempts,
                 "last_error": a.last_error, "sent_at": _iso(a.sent_at), "drift_result_id": d.id}
                for a, d, n, mname, b, c in rows]

    def open_alerts(self, model: str | None = None, neuron_id: str | None = None, *, limit: int | None = None,
                    offset: int = 0) -> list[dict]:
        """Unresolved alerts, newest first: dict(id, model, neuron_id, baseline, candidate, reason, created_at,
        delivery_status, + channel, verdict, statistics, attempts, last_error, sent_at, drift_result_id); of one
        model or neuron when given; `limit` of them from `offset` (one page)."""
        return self._alerts(only_open=True, model=model, neuron_id=neuron_id, limit=limit, offset=offset)

    def count_open_alerts(self, model: str | None = None) -> int:
        """How many alerts are unresolved (of one model when given)."""
        B, C = aliased(S.ModelVersion), aliased(S.ModelVersion)
        q = self._alert_filters(select(func.count(S.Alert.id)).select_from(S.Alert), B, C, True, None, model, None)
        with self._read() as s:
            return int(s.execute(q).scalar_one())

    def open_alert_keys(self, model: str) -> set[tuple[str, str, str]]:
        """{(neuron_id, baseline, candidate)} of the model's unresolved alerts (to flag rows): one query."""
        B, C = aliased(S.ModelVersion), aliased(S.ModelVersion)
        q = self._alert_filters(select(S.Neuron.neuron_id, B.version, C.version).select_from(S.Alert),
                                B, C, True, None, model, None)
        with self._read() as s:
            return {(n, b, c) for n, b, c in s.execute(q).all()}

    # ------------------------------------------------------------------ one neuron
    def neuron_history(self, model: str, neuron_id: str) -> dict | None:
        """dict(neuron=dict, versions=[dict(version, visualizations=[dict(method, seed, image_path, mask_path,
        mlflow_artifact_uri)], stats=dict|None, topk=[dict(index, name, value)], hist=dict(edges, counts))],
        drift=[dict(baseline, candidate, verdict, statistics, reason, created_at, flow_run_id)]); None for an
        unknown neuron. Five queries, however many versions."""
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
            for st, ps_id in s.execute(select(S.ActivationStatsRow, S.ActivationStatsRow.probe_set_id)
                                       .where(S.ActivationStatsRow.neuron_id == n.id)
                                       .order_by(S.ActivationStatsRow.created_at, S.ActivationStatsRow.id)).all():
                stats[st.model_version_id] = (st, ps_id)   # latest probe set wins
            ids = sorted({ps_id for _, ps_id in stats.values()})
            probes = {p.id: p for p in s.execute(select(S.ProbeSet).where(S.ProbeSet.id.in_(ids))).scalars().all()} if ids else {}
            drift = self._drift_rows(s, neuron_pk=n.id, active_only=False)
        out_versions = []
        for mv in versions:
            entry: dict[str, Any] = {"version": mv.version, "source": mv.source, "weights_sha256": mv.weights_sha256,
                                     "visualizations": vizs.get(mv.id, []), "stats": None, "topk": [],
                                     "hist": {"edges": [], "counts": []}}
            if mv.id in stats:
                st, ps_id = stats[mv.id]
                ps = probes[ps_id]
                d = dict(st.stats or {})
                d.update(probe_set_sha256=ps.sha256, values_path=st.values_path, created_at=_iso(st.created_at))
                entry["stats"] = d
                entry["topk"] = topk_rows(d, ps.meta)
                entry["hist"] = {"edges": d.get("hist_edges") or [], "counts": d.get("hist_counts") or []}
            out_versions.append(entry)
        return {"neuron": {"model": model, "neuron_id": n.neuron_id, "kind": n.kind, "layer": n.layer, "index": n.index,
                           "label": n.label, "references": n.references, "critical": n.critical, "active": n.active},
                "versions": out_versions,
                "drift": [{"baseline": r["baseline"], "candidate": r["candidate"], "verdict": r["verdict"],
                           "statistics": r["statistics"], "reason": r["reason"], "created_at": r["created_at"],
                           "matched_index": r["matched_index"], "probe_set_sha256": r["probe_set_sha256"], "id": r["id"],
                           "audit_run_id": r["audit_run_id"], "flow_run_id": r["flow_run_id"]}
                          for r in reversed(drift)]}

    def counts(self) -> dict[str, int]:
        """Row count per table (for checks and tests)."""
        with self._read() as s:
            return {t.name: int(s.execute(select(func.count()).select_from(t)).scalar_one())
                    for t in S.metadata.sorted_tables}
