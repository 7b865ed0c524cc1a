"""The runs aggregate of the audit store (`RunRepository`, mixed into `AuditStore`).

An audit run is one execution of the nightly flow: its status ('running', then 'completed',
'completed_with_errors', 'interrupted', 'failed'), its owner process (host, pid, pid start time) and
heartbeat, so that the next run can tell a killed one and mark it 'interrupted'. Attached to runs: the
recorded checks (`audit_checks`: the fingerprint of a complete audit of a version or comparison, so an
unchanged one is skipped) and the MLflow bookkeeping (`mlflow_runs`: what each run logged per version,
or left pending; `mlflow_logged`: the ledger of what each MLflow run holds). The methods need the
store's plumbing (`self._write`, `self._read`, `self._upsert`, `self._insert`, the id lookups).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import schema as S
from .artifacts import jsonable
from .errors import NotFoundError
from .timestamps import aware as _aware, iso as _iso, now_utc as _now


class RunRepository:
    """Audit runs (ownership, heartbeats, interrupted runs), recorded checks and the MLflow ledger."""

    # ------------------------------------------------------------------ runs
    def start_run(self, flow_run_id: str | None, config_sha256: str | None, package_version: str | None) -> int:
        """A new audit run (status 'running'), owned by this process (host, pid, pid start time), so that
        the next run can tell it was killed. The same flow_run_id (a retried flow run) reuses its row."""
        from .process import current_process

        me = current_process()

        def tx(s: Session) -> int:
            values = {"flow_run_id": flow_run_id, "config_sha256": config_sha256, "package_version": package_version,
                      "started_at": _now(), "finished_at": None, "status": "running", "error": None,
                      "host": me.host[:255], "pid": me.pid, "pid_started": me.started, "heartbeat_at": _now(),
                      "summary": None}
            if flow_run_id is None:
                return s.execute(self._insert(s, S.AuditRun.__table__).values(**values)
                                 .returning(S.AuditRun.__table__.c.id)).scalar_one()
            return self._upsert(s, S.AuditRun.__table__, values, ["flow_run_id"],
                                ["config_sha256", "package_version", "finished_at", "status", "error", "host", "pid",
                                 "pid_started", "heartbeat_at", "summary"])
        return self._write(tx)

    def heartbeat(self, run_id: int) -> None:
        """A sign of life of a running run (each task calls it); runs of other hosts are judged by its age."""
        self._write(lambda s: s.execute(update(S.AuditRun).where(S.AuditRun.id == run_id, S.AuditRun.status == "running")
                                        .values(heartbeat_at=_now())))

    def finish_run(self, run_id: int, status: str, error: str | None = None, summary: Mapping | None = None) -> None:
        """status: 'completed' | 'completed_with_errors' | 'interrupted' | 'failed' (free text allowed).
        summary: what the run skipped, could not audit and warned about (JSON)."""
        def tx(s: Session) -> None:
            values: dict[str, Any] = {"status": status, "finished_at": _now(),
                                      "error": (error or None) and str(error)[:20000]}
            if summary is not None:
                values["summary"] = jsonable(dict(summary))
            n = s.execute(update(S.AuditRun).where(S.AuditRun.id == run_id).values(**values)).rowcount
            if not n:
                raise NotFoundError(f"audit run {run_id} does not exist")
        self._write(tx)

    def run(self, run_id: int) -> dict:
        """dict(id, status, error, summary, started_at, finished_at, host, pid) of one audit run."""
        with self._read() as s:
            r = s.get(S.AuditRun, run_id)
            if r is None:
                raise NotFoundError(f"audit run {run_id} does not exist")
            return {"id": r.id, "status": r.status, "error": r.error, "summary": r.summary or {},
                    "started_at": _iso(r.started_at), "finished_at": _iso(r.finished_at), "host": r.host, "pid": r.pid}

    def mark_interrupted_runs(self, stale_heartbeat_s: float = 3 * 3600) -> list[int]:
        """Runs still 'running' whose process is gone become 'interrupted': on this host, a dead (or reused)
        pid; on another host (or without an owner), a heartbeat older than stale_heartbeat_s. Returns their ids."""
        from .process import owner_alive

        cutoff = datetime.fromtimestamp(time.time() - stale_heartbeat_s, timezone.utc)
        with self._read() as s:
            running = s.execute(select(S.AuditRun.id, S.AuditRun.host, S.AuditRun.pid, S.AuditRun.pid_started,
                                       S.AuditRun.heartbeat_at, S.AuditRun.started_at)
                                .where(S.AuditRun.status == "running")).all()
        dead = []
        for rid, host, pid, started, beat, began in running:
            alive = owner_alive(host, pid, started)
            if alive is False or (alive is None and (_aware(beat) or _aware(began)) < cutoff):
                dead.append(rid)
        if not dead:
            return []

        def tx(s: Session) -> None:
            s.execute(update(S.AuditRun).where(S.AuditRun.id.in_(dead), S.AuditRun.status == "running")
                      .values(status="interrupted", finished_at=_now(),
                              error="interrupted: the audit process ended before the run finished (killed or lost); "
                                    "finished results are kept and the next run completes the rest"))
        self._write(tx)
        return dead

    def mark_stale_runs(self, older_than_s: float = 6 * 3600, status: str = "crashed") -> int:
        """Runs still 'running' that started more than older_than_s ago (their process died) get `status`."""
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, timezone.utc)

        def tx(s: Session) -> int:
            return s.execute(update(S.AuditRun).where(S.AuditRun.status == "running", S.AuditRun.started_at < cutoff)
                             .values(status=status, finished_at=_now(),
                                     error="the audit process ended without finishing the run")).rowcount
        return self._write(tx)

    # ------------------------------------------------------------------ recorded checks (unchanged versions)
    def record_check(self, model: str, kind: str, subject: str, fingerprint: str, manifest: Mapping,
                     run_id: int | None) -> int:
        """Upsert the fingerprint of a complete audit of a version (kind 'version') or comparison ('compare')."""
        def tx(s: Session) -> int:
            return self._upsert(s, S.AuditCheck.__table__,
                                {"model_id": self._model_id(s, model), "kind": kind, "subject": str(subject),
                                 "fingerprint": fingerprint, "manifest": jsonable(dict(manifest)),
                                 "audit_run_id": run_id, "checked_at": _now()},
                                ["model_id", "kind", "subject"], ["fingerprint", "manifest", "audit_run_id", "checked_at"])
        return self._write(tx)

    def get_check(self, model: str, kind: str, subject: str) -> dict | None:
        """dict(fingerprint, manifest, audit_run_id, checked_at) of the recorded check, or None."""
        with self._read() as s:
            row = s.execute(select(S.AuditCheck).join(S.Model, S.Model.id == S.AuditCheck.model_id)
                            .where(S.Model.name == model, S.AuditCheck.kind == kind,
                                   S.AuditCheck.subject == str(subject))).scalar_one_or_none()
        if row is None:
            return None
        return {"fingerprint": row.fingerprint, "manifest": dict(row.manifest or {}), "audit_run_id": row.audit_run_id,
                "checked_at": _iso(row.checked_at)}

    def forget_check(self, model: str, kind: str, subject: str) -> None:
        """Drop a recorded check (its results must be recomputed, e.g. an artifact is gone)."""
        def tx(s: Session) -> None:
            mid = s.execute(select(S.Model.id).where(S.Model.name == model)).scalar_one_or_none()
            if mid is not None:
                s.execute(S.AuditCheck.__table__.delete().where(S.AuditCheck.model_id == mid, S.AuditCheck.kind == kind,
                                                                S.AuditCheck.subject == str(subject)))
        self._write(tx)

    # ------------------------------------------------------------------ MLflow bookkeeping
    def mark_mlflow(self, run_id: int, model: str, version: str, mlflow_run_id: str | None = None,
                    error: str | None = None, experiment_id: str | None = None) -> int:
        """Record what audit run `run_id` logged for (model, version): 'logged' into `mlflow_run_id` (in experiment
        `experiment_id`), or 'pending' (an error counts an attempt; the next run logs what is missing)."""
        def tx(s: Session) -> int:
            vid = self._version_id(s, model, version)
            t = S.MlflowRun.__table__
            row_id = self._upsert(s, t, {"audit_run_id": run_id, "model_version_id": vid, "mlflow_run_id": None,
                                         "status": "pending", "params": {}, "report_path": None, "attempts": 0,
                                         "updated_at": _now()},
                                  ["audit_run_id", "model_version_id"])
            values: dict[str, Any] = {"updated_at": _now()}
            if mlflow_run_id:
                values.update(mlflow_run_id=mlflow_run_id, status="logged", last_error=None)
                if experiment_id:
                    values["mlflow_experiment_id"] = experiment_id
            elif error is not None:
                values.update(status="pending", attempts=t.c.attempts + 1, last_error=str(error)[:5000])
            s.execute(update(t).where(t.c.id == row_id).values(**values))
            return row_id
        return self._write(tx)

    def mlflow_run(self, run_id: int, model: str, version: str) -> dict | None:
        """What audit run `run_id` logged for (model, version): dict(id, status, mlflow_run_id, mlflow_experiment_id,
        attempts, last_error), or None when it logged nothing (e.g. nothing was new)."""
        with self._read() as s:
            row = s.execute(select(S.MlflowRun).join(S.ModelVersion, S.ModelVersion.id == S.MlflowRun.model_version_id)
                            .join(S.Model, S.Model.id == S.ModelVersion.model_id)
                            .where(S.MlflowRun.audit_run_id == run_id, S.Model.name == model,
                                   S.ModelVersion.version == str(version))).scalar_one_or_none()
        if row is None:
            return None
        return {"id": row.id, "status": row.status, "mlflow_run_id": row.mlflow_run_id,
                "mlflow_experiment_id": row.mlflow_experiment_id, "attempts": row.attempts,
                "last_error": row.last_error}

    def pending_mlflow(self) -> list[dict]:
        """Versions with results not yet in MLflow: dict(id, audit_run_id, model, version, model_version_id,
        attempts, last_error), oldest first."""
        with self._read() as s:
            rows = s.execute(
                select(S.MlflowRun, S.Model.name, S.ModelVersion.version)
                .join(S.ModelVersion, S.ModelVersion.id == S.MlflowRun.model_version_id)
                .join(S.Model, S.Model.id == S.ModelVersion.model_id)
                .where(S.MlflowRun.status == "pending").order_by(S.MlflowRun.id)).all()
        return [{"id": r.id, "audit_run_id": r.audit_run_id, "model": name, "version": version,
                 "model_version_id": r.model_version_id, "attempts": r.attempts, "last_error": r.last_error}
                for r, name, version in rows]

    def mlflow_ledger(self, model: str, version: str) -> tuple[str | None, dict[str, str]]:
        """(MLflow run id, {key: digest}) of what the newest MLflow run of (model, version) holds according to the
        ledger; (None, {}) when nothing was logged yet."""
        L = S.MlflowLogged
        with self._read() as s:
            vid = self._version_id(s, model, version)
            run = s.execute(select(L.mlflow_run_id).where(L.model_version_id == vid)
                            .order_by(L.id.desc()).limit(1)).scalar_one_or_none()
            if run is None:
                return None, {}
            rows = s.execute(select(L.key, L.digest).where(L.mlflow_run_id == run)).all()
        return run, {k: d for k, d in rows}

    def record_mlflow_logged(self, model: str, version: str, mlflow_run_id: str, entries: Mapping[str, str],
                             audit_run_id: int | None = None) -> None:
        """Add to the ledger what was just logged into `mlflow_run_id` ({key: digest}; a key logged again gets its
        new digest)."""
        if not entries:
            return
        def tx(s: Session) -> None:
            vid = self._version_id(s, model, version)
            t = S.MlflowLogged.__table__
            for key, digest in entries.items():
                self._upsert(s, t, {"model_version_id": vid, "mlflow_run_id": mlflow_run_id, "key": key[:500],
                                    "digest": str(digest)[:128], "audit_run_id": audit_run_id, "logged_at": _now()},
                             ["mlflow_run_id", "key"], ["digest", "audit_run_id", "logged_at"])
        self._write(tx)
