"""`AuditStore`: every read and write of audit results.

Writes are idempotent upserts keyed by content (re-running an audit never duplicates rows), each
public write is one transaction (`save_neuron_results` writes one neuron's statistics and
visualizations in one), and two processes may write at once: SQLite runs in WAL mode and write
transactions start with BEGIN IMMEDIATE behind a busy timeout; PostgreSQL uses
`INSERT ... ON CONFLICT`; transient lock/deadlock errors are retried with backoff.

Read queries return plain dicts (JSON-friendly: timestamps are ISO-8601 UTC strings); artifact paths
(`image_path`, `mask_path`, `values_path`) are relative to the artifact root: `store.artifact_path(rel)`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
from sqlalchemy import Table, and_, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased

from audit.records import ActivationStats, DriftResult, Visualization

from . import schema as S
from .artifacts import ArtifactStore, jsonable
from .db import make_engine, mask_url, session_factory, session_scope
from .errors import NotFoundError

T = TypeVar("T")
VERDICTS = ("PASS", "WARN", "FAIL")
_RETRYABLE = ("database is locked", "database is busy", "deadlock detected", "could not serialize",
              "server closed the connection", "connection reset", "terminating connection")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds")


def _aware(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(jsonable(obj), sort_keys=True).encode()).hexdigest()


def _safe_name(s: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(s)).strip("._") or "_"


def _is_retryable(exc: DBAPIError) -> bool:
    msg = str(exc.orig if exc.orig is not None else exc).lower()
    return exc.connection_invalidated or any(m in msg for m in _RETRYABLE)


class AuditStore:
    def __init__(self, database_url: str, artifacts_root: str | Path | None = None, *, write_retries: int = 8,
                 connect_retries: int = 4, upgrade: bool = False):
        """artifacts_root None: `artifacts/` next to a SQLite file, else ./.neuron-audit/artifacts.
        upgrade=True applies the migrations first (creates the schema on an empty database)."""
        self.url = str(database_url)
        self.engine = make_engine(self.url, retries=connect_retries)
        if artifacts_root is None:
            db = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
            artifacts_root = (Path(db).parent / "artifacts") if db and db != ":memory:" else Path(".neuron-audit/artifacts")
        self.artifacts = ArtifactStore(artifacts_root)
        self.write_retries = write_retries
        self._read = session_factory(self.engine)
        self._write_factory = session_factory(self.engine, write=True)
        if upgrade:
            self.upgrade()

    def __repr__(self) -> str:
        return f"AuditStore({mask_url(self.url)!r}, {str(self.artifacts.root)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "AuditStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def upgrade(self, revision: str = "head") -> None:
        """Apply the Alembic migrations (creates the schema on an empty database)."""
        from .migrate import upgrade

        upgrade(self.url, revision)

    def schema_is_current(self) -> bool:
        """True when the database is at the newest migration (else: `neuron-audit db upgrade`)."""
        from alembic.runtime.migration import MigrationContext

        from .migrate import head

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() == head()

    def artifact_path(self, rel: str) -> Path:
        """Absolute path of an artifact path stored in a row (refuses paths escaping the root)."""
        return self.artifacts.path(rel)

    def _write(self, fn: Callable[[Session], T]) -> T:
        delay = 0.05
        for attempt in range(self.write_retries + 1):
            try:
                with session_scope(self._write_factory) as s:
                    return fn(s)
            except DBAPIError as exc:
                if attempt == self.write_retries or not _is_retryable(exc):
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _insert(self, s: Session, table: Table):
        name = s.get_bind().dialect.name
        if name == "postgresql":
            return pg_insert(table)
        if name == "sqlite":
            return sqlite_insert(table)
        raise NotImplementedError(f"database dialect {name!r} is not supported (use SQLite or PostgreSQL)")

    def _upsert(self, s: Session, table: Table, values: dict, keys: list[str], update_cols: list[str] | None = None) -> int:
        """INSERT ... ON CONFLICT (keys) DO UPDATE SET update_cols (or DO NOTHING); returns the row id."""
        stmt = self._insert(s, table).values(**values)
        if update_cols:
            stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update_cols})
            return s.execute(stmt.returning(table.c.id)).scalar_one()
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
        rid = s.execute(stmt.returning(table.c.id)).scalar_one_or_none()
        if rid is None:
            rid = s.execute(select(table.c.id).where(and_(*[table.c[k] == values[k] for k in keys]))).scalar_one()
        return rid

    # --- id lookups (raise NotFoundError naming what is missing) ---
    def _model_id(self, s: Session, model: str) -> int:
        mid = s.execute(select(S.Model.id).where(S.Model.name == model)).scalar_one_or_none()
        if mid is None:
            raise NotFoundError(f"model {model!r} is not in the store (sync the registry first)")
        return mid

    def _version_id(self, s: Session, model: str, version: str) -> int:
        vid = s.execute(select(S.ModelVersion.id).join(S.Model, S.Model.id == S.ModelVersion.model_id)
                        .where(S.Model.name == model, S.ModelVersion.version == str(version))).scalar_one_or_none()
        if vid is None:
            raise NotFoundError(f"version {version!r} of model {model!r} is not in the store (upsert_model_version first)")
        return vid

    def _neuron_pk(self, s: Session, model: str, neuron_id: str) -> int:
        nid = s.execute(select(S.Neuron.id).join(S.Model, S.Model.id == S.Neuron.model_id)
                        .where(S.Model.name == model, S.Neuron.neuron_id == neuron_id)).scalar_one_or_none()
        if nid is None:
            raise NotFoundError(f"neuron {neuron_id!r} of model {model!r} is not in the registry (sync_registry first)")
        return nid

    def _probe_id(self, s: Session, sha256: str) -> int:
        pid = s.execute(select(S.ProbeSet.id).where(S.ProbeSet.sha256 == sha256)).scalar_one_or_none()
        if pid is None:
            raise NotFoundError(f"probe set {sha256[:12]}... is not in the store (upsert_probe_set first)")
        return pid

    # ------------------------------------------------------------------ registry
    def sync_registry(self, cfg) -> None:
        """Upsert the models and neurons of an AuditConfig; neurons no longer in the config become inactive."""
        def tx(s: Session) -> None:
            for m in cfg.models:
                mid = self._upsert(s, S.Model.__table__, {"name": m.name, "architecture": m.architecture,
                                                          "champion": m.champion, "created_at": _now()},
                                   ["name"], ["architecture", "champion"])
                keep = []
                for n in m.neurons:
                    self._upsert(s, S.Neuron.__table__,
                                 {"model_id": mid, "neuron_id": n.id, "kind": n.kind, "layer": n.layer, "index": n.index,
                                  "label": n.label, "references": n.references, "critical": n.critical, "active": True},
                                 ["model_id", "neuron_id"],
                                 ["kind", "layer", "index", "label", "references", "critical", "active"])
                    keep.append(n.id)
                s.execute(update(S.Neuron).where(S.Neuron.model_id == mid, S.Neuron.neuron_id.not_in(keep))
                          .values(active=False))
        self._write(tx)

    def upsert_model_version(self, model: str, version: str, source: str | None, weights_sha256: str | None) -> int:
        def tx(s: Session) -> int:
            mid = self._upsert(s, S.Model.__table__, {"name": model, "architecture": None, "champion": None,
                                                      "created_at": _now()}, ["name"])
            return self._upsert(s, S.ModelVersion.__table__,
                                {"model_id": mid, "version": str(version), "source": source,
                                 "weights_sha256": weights_sha256, "registered_at": _now()},
                                ["model_id", "version"], ["source", "weights_sha256"])
        return self._write(tx)

    # ------------------------------------------------------------------ runs
    def start_run(self, flow_run_id: str | None, config_sha256: str | None, package_version: str | None) -> int:
        """A new audit run (status 'running'). The same flow_run_id (a retried flow run) reuses its row."""
        def tx(s: Session) -> int:
            values = {"flow_run_id": flow_run_id, "config_sha256": config_sha256, "package_version": package_version,
                      "started_at": _now(), "finished_at": None, "status": "running", "error": None}
            if flow_run_id is None:
                return s.execute(self._insert(s, S.AuditRun.__table__).values(**values)
                                 .returning(S.AuditRun.__table__.c.id)).scalar_one()
            return self._upsert(s, S.AuditRun.__table__, values, ["flow_run_id"],
                                ["config_sha256", "package_version", "finished_at", "status", "error"])
        return self._write(tx)

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        """status: 'completed' | 'failed' | 'crashed' (free text allowed)."""
        def tx(s: Session) -> None:
            n = s.execute(update(S.AuditRun).where(S.AuditRun.id == run_id)
                          .values(status=status, finished_at=_now(), error=(error or None) and str(error)[:20000])).rowcount
            if not n:
                raise NotFoundError(f"audit run {run_id} does not exist")
        self._write(tx)

    def mark_stale_runs(self, older_than_s: float = 6 * 3600, status: str = "crashed") -> int:
        """Runs still 'running' that started more than older_than_s ago (their process died) get `status`."""
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, timezone.utc)

        def tx(s: Session) -> int:
            return s.execute(update(S.AuditRun).where(S.AuditRun.status == "running", S.AuditRun.started_at < cutoff)
                             .values(status=status, finished_at=_now(),
                                     error="the audit process ended without finishing the run")).rowcount
        return self._write(tx)

    # ------------------------------------------------------------------ probe sets and statistics
    def upsert_probe_set(self, sha256: str, spec: str, n_images: int, meta: Mapping | None = None) -> int:
        """meta may hold `names` (one per probe image), used to name top-k images in neuron_history."""
        return self._write(lambda s: self._upsert(
            s, S.ProbeSet.__table__, {"sha256": sha256, "spec": spec, "n_images": int(n_images),
                                      "meta": jsonable(dict(meta or {})), "created_at": _now()},
            ["sha256"], ["spec", "n_images", "meta"]))

    def probe_set_meta(self, sha256: str) -> dict | None:
        """The stored meta of a probe set, or None when the probe set is not stored yet."""
        with self._read() as s:
            meta = s.execute(select(S.ProbeSet.meta).where(S.ProbeSet.sha256 == sha256)).first()
        return None if meta is None else dict(meta[0] or {})

    def _save_stats(self, s: Session, model: str, version: str, neuron_id: str, probe_sha256: str,
                    stats: ActivationStats, values_path: str | None, run_id: int | None) -> int:
        return self._upsert(s, S.ActivationStatsRow.__table__,
                            {"neuron_id": self._neuron_pk(s, model, neuron_id),
                             "model_version_id": self._version_id(s, model, version),
                             "probe_set_id": self._probe_id(s, probe_sha256),
                             "stats": jsonable(dataclasses.asdict(stats)), "values_path": values_path,
                             "audit_run_id": run_id, "created_at": _now()},
                            ["neuron_id", "model_version_id", "probe_set_id"],
                            ["stats", "values_path", "audit_run_id", "created_at"])

    def save_stats(self, model: str, version: str, neuron_id: str, probe_sha256: str, stats: ActivationStats,
                   values: Mapping[str, np.ndarray] | None = None, run_id: int | None = None) -> int:
        """Upsert one neuron's statistics on a probe set (+ the raw per-image values as npz). Returns the row id."""
        values_path = self.artifacts.put_arrays(values) if values else None
        return self._write(lambda s: self._save_stats(s, model, version, neuron_id, probe_sha256, stats, values_path, run_id))

    def load_stats(self, model: str, version: str, neuron_id: str, probe_sha256: str
                   ) -> tuple[ActivationStats, dict[str, np.ndarray]] | None:
        with self._read() as s:
            row = s.execute(
                select(S.ActivationStatsRow)
                .join(S.Neuron, S.Neuron.id == S.ActivationStatsRow.neuron_id)
                .join(S.Model, S.Model.id == S.Neuron.model_id)
                .join(S.ModelVersion, S.ModelVersion.id == S.ActivationStatsRow.model_version_id)
                .join(S.ProbeSet, S.ProbeSet.id == S.ActivationStatsRow.probe_set_id)
                .where(S.Model.name == model, S.ModelVersion.version == str(version), S.Neuron.neuron_id == neuron_id,
                       S.ProbeSet.sha256 == probe_sha256)).scalar_one_or_none()
        if row is None:
            return None
        values = {}
        if row.values_path and self.artifacts.exists(row.values_path):
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

    def set_visualization_uri(self, viz_id: int, uri: str) -> None:
        self._write(lambda s: s.execute(update(S.Visualization).where(S.Visualization.id == viz_id)
                                        .values(mlflow_artifact_uri=uri)))

    def save_neuron_results(self, model: str, version: str, neuron_id: str, *, run_id: int | None = None,
                            probe_sha256: str | None = None, stats: ActivationStats | None = None,
                            values: Mapping[str, np.ndarray] | None = None,
                            visualizations: list[tuple[str, Visualization]] = (),
                            reused_visualization_ids: list[int] = ()) -> dict:
        """One neuron's results for one version in ONE transaction: statistics (+ values), new visualizations
        as (content_key, Visualization) pairs, and links to reused visualizations. All or nothing.
        Returns {"stats_id": int|None, "visualization_ids": [...]}."""
        values_path = self.artifacts.put_arrays(values) if values else None
        paths = [self._write_viz_files(v) for _, v in visualizations]

        def tx(s: Session) -> dict:
            out = {"stats_id": None, "visualization_ids": []}
            if stats is not None:
                if probe_sha256 is None:
                    raise ValueError("save_neuron_results: stats need probe_sha256")
                out["stats_id"] = self._save_stats(s, model, version, neuron_id, probe_sha256, stats, values_path, run_id)
            for (key, viz), p in zip(visualizations, paths):
                out["visualization_ids"].append(self._save_visualization(s, model, version, neuron_id, key, viz, run_id, p))
            if reused_visualization_ids:
                vid = self._version_id(s, model, version)
                for rid in reused_visualization_ids:
                    self._link(s, vid, int(rid), reused=True)
                    out["visualization_ids"].append(int(rid))
            return out
        return self._write(tx)

    # ------------------------------------------------------------------ drift, reports, alerts
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
        return self.artifacts.write_named(rel, data)

    def load_report(self, model: str, baseline: str, candidate: str) -> dict | None:
        """The latest compare report of candidate vs baseline written by `save_report` (None if absent or unreadable)."""
        rel = f"reports/{_safe_name(model)}/{_safe_name(baseline)}-vs-{_safe_name(candidate)}.json"
        try:
            return json.loads(self.artifacts.path(rel).read_text())
        except (OSError, ValueError):
            return None

    def create_alert_if_new(self, drift_result_id: int, channel: str) -> int | None:
        """A new alert for a drift result, or None when an open alert (resolved_at NULL) already exists on this
        channel for the same neuron and (baseline, candidate) pair. A resolved alert of the same drift result and
        channel (the neuron recovered, then failed again) is reopened (delivery 'pending') and its id returned."""
        def tx(s: Session) -> int | None:
            dr = s.get(S.DriftResultRow, drift_result_id)
            if dr is None:
                raise NotFoundError(f"drift result {drift_result_id} does not exist")
            # serialize alert creation per neuron (PostgreSQL; SQLite writers are serialized already)
            s.execute(select(S.Neuron.id).where(S.Neuron.id == dr.neuron_id).with_for_update())
            D = S.DriftResultRow
            open_id = s.execute(
                select(S.Alert.id).join(D, D.id == S.Alert.drift_result_id)
                .where(D.neuron_id == dr.neuron_id, D.baseline_version_id == dr.baseline_version_id,
                       D.candidate_version_id == dr.candidate_version_id, S.Alert.channel == channel,
                       S.Alert.resolved_at.is_(None))).first()
            if open_id is not None:
                return None
            resolved = s.execute(select(S.Alert.id).where(S.Alert.drift_result_id == drift_result_id,
                                                          S.Alert.channel == channel)).scalar_one_or_none()
            if resolved is not None:   # the neuron failed again after recovering: reopen the alert
                s.execute(update(S.Alert).where(S.Alert.id == resolved).values(
                    resolved_at=None, created_at=_now(), delivery_status="pending", sent_at=None, attempts=0,
                    last_error=None))
                return resolved
            stmt = (self._insert(s, S.Alert.__table__)
                    .values(drift_result_id=drift_result_id, channel=channel, created_at=_now(), delivery_status="pending",
                            attempts=0, resolved_at=None)
                    .on_conflict_do_nothing(index_elements=["drift_result_id", "channel"]))
            return s.execute(stmt.returning(S.Alert.__table__.c.id)).scalar_one_or_none()
        return self._write(tx)

    def mark_alert(self, alert_id: int, delivered: bool, error: str | None = None) -> None:
        """Record a delivery attempt: 'sent' (sent_at set) or 'failed' (last_error kept)."""
        def tx(s: Session) -> None:
            values: dict[str, Any] = {"attempts": S.Alert.attempts + 1}
            if delivered:
                values.update(delivery_status="sent", sent_at=_now(), last_error=None)
            else:
                values.update(delivery_status="failed", last_error=(error or "delivery failed")[:5000])
            if not s.execute(update(S.Alert).where(S.Alert.id == alert_id).values(**values)).rowcount:
                raise NotFoundError(f"alert {alert_id} does not exist")
        self._write(tx)

    def resolve_alert(self, alert_id: int) -> None:
        self._write(lambda s: s.execute(update(S.Alert).where(S.Alert.id == alert_id, S.Alert.resolved_at.is_(None))
                                        .values(resolved_at=_now())))

    def alert_payload(self, alert_id: int) -> dict:
        """What a webhook receives for an alert: model, neuron, versions, verdict, statistics, reason."""
        for a in self._alerts(only_open=False, alert_id=alert_id):
            return a
        raise NotFoundError(f"alert {alert_id} does not exist")

    def undelivered_alerts(self, channel: str = "webhook") -> list[dict]:
        """Open alerts on `channel` whose delivery is 'pending' or 'failed', oldest first, each with `payload`
        (the JSON a webhook receives: text, model, baseline, candidate, neuron{...}, links)."""
        out = []
        for a in reversed(self._alerts(only_open=True)):
            if a["channel"] != channel or a["delivery_status"] == "sent":
                continue
            neuron = {"id": a["neuron_id"], "kind": a["kind"], "layer": a["layer"], "index": a["index"],
                      "label": a["label"], "verdict": a["verdict"], "statistics": a["statistics"],
                      "matched_index": a["matched_index"], "reason": a["reason"]}
            text = (f":rotating_light: neuron-audit FAIL — {a['model']} {a['baseline']} → {a['candidate']}: "
                    f"neuron `{a['neuron_id']}` ({a['kind']} {a['layer']}[{a['index']}]) — {a['reason']}")
            a["payload"] = {"text": text, "model": a["model"], "baseline": a["baseline"], "candidate": a["candidate"],
                            "neuron": neuron, "links": {}, "alert_id": a["id"], "attempts": a["attempts"]}
            out.append(a)
        return out

    # ------------------------------------------------------------------ MLflow bookkeeping
    def mark_mlflow(self, run_id: int, model: str, version: str, mlflow_run_id: str | None = None,
                    error: str | None = None, params: Mapping | None = None, report_path: str | None = None) -> int:
        """Record the MLflow run of (audit run, version): 'logged' when mlflow_run_id is given, else 'pending'
        (error counts an attempt). params/report_path are kept so a later run can log the pending one."""
        def tx(s: Session) -> int:
            vid = self._version_id(s, model, version)
            t = S.MlflowRun.__table__
            row_id = self._upsert(s, t, {"audit_run_id": run_id, "model_version_id": vid, "mlflow_run_id": None,
                                         "status": "pending", "params": jsonable(dict(params or {})),
                                         "report_path": report_path, "attempts": 0, "updated_at": _now()},
                                  ["audit_run_id", "model_version_id"])
            values: dict[str, Any] = {"updated_at": _now()}
            if params is not None:
                values["params"] = jsonable(dict(params))
            if report_path is not None:
                values["report_path"] = report_path
            if mlflow_run_id:
                values.update(mlflow_run_id=mlflow_run_id, status="logged", last_error=None)
            elif error is not None:
                values.update(status="pending", attempts=t.c.attempts + 1, last_error=str(error)[:5000])
            s.execute(update(t).where(t.c.id == row_id).values(**values))
            return row_id
        return self._write(tx)

    def mlflow_run(self, run_id: int, model: str, version: str) -> dict | None:
        """The MLflow bookkeeping row of (audit run, version): dict(id, status, mlflow_run_id, attempts, last_error)."""
        with self._read() as s:
            row = s.execute(select(S.MlflowRun).join(S.ModelVersion, S.ModelVersion.id == S.MlflowRun.model_version_id)
                            .join(S.Model, S.Model.id == S.ModelVersion.model_id)
                            .where(S.MlflowRun.audit_run_id == run_id, S.Model.name == model,
                                   S.ModelVersion.version == str(version))).scalar_one_or_none()
        if row is None:
            return None
        return {"id": row.id, "status": row.status, "mlflow_run_id": row.mlflow_run_id, "attempts": row.attempts,
                "last_error": row.last_error}

    def pending_mlflow(self) -> list[dict]:
        """Results not yet in MLflow: dict(id, audit_run_id, model, version, model_version_id, params, report_path,
        attempts, last_error)."""
        with self._read() as s:
            rows = s.execute(
                select(S.MlflowRun, S.Model.name, S.ModelVersion.version)
                .join(S.ModelVersion, S.ModelVersion.id == S.MlflowRun.model_version_id)
                .join(S.Model, S.Model.id == S.ModelVersion.model_id)
                .where(S.MlflowRun.status == "pending").order_by(S.MlflowRun.id)).all()
        return [{"id": r.id, "audit_run_id": r.audit_run_id, "model": name, "version": version,
                 "model_version_id": r.model_version_id, "params": r.params, "report_path": r.report_path,
                 "attempts": r.attempts, "last_error": r.last_error} for r, name, version in rows]

    def mlflow_payload(self, run_id: int, model: str, version: str) -> dict:
        """Everything the MLflow run of (audit run, version) shows, read from the store:
        dict(model_version_id, source, weights_sha256, metrics{key: float}, visualizations[dict(id, neuron_id,
        method, seed, image, mask)] with absolute file paths, drift[dict]), params, report_path, run_key (identifies
        this (audit run, version) of this store in MLflow, so a re-created database never matches old runs)."""
        with self._read() as s:
            vid = self._version_id(s, model, version)
            mv = s.get(S.ModelVersion, vid)
            metrics: dict[str, float] = {}
            stats_rows = s.execute(select(S.ActivationStatsRow, S.Neuron.neuron_id)
                                   .join(S.Neuron, S.Neuron.id == S.ActivationStatsRow.neuron_id)
                                   .where(S.ActivationStatsRow.model_version_id == vid)
                                   .order_by(S.ActivationStatsRow.created_at, S.ActivationStatsRow.id)).all()
            for row, nid in stats_rows:   # latest probe set last: it wins
                st = row.stats or {}
                for k in ("mean", "std", "frac_active", "n"):
                    metrics[f"{nid}.{k}"] = st.get(k)
                for q, val in (st.get("quantiles") or {}).items():
                    metrics[f"{nid}.q{q}"] = val
            B = aliased(S.ModelVersion)
            drift = []
            for d, nid, base in s.execute(select(S.DriftResultRow, S.Neuron.neuron_id, B.version)
                                          .join(S.Neuron, S.Neuron.id == S.DriftResultRow.neuron_id)
                                          .join(B, B.id == S.DriftResultRow.baseline_version_id)
                                          .where(S.DriftResultRow.candidate_version_id == vid)
                                          .order_by(S.DriftResultRow.created_at, S.DriftResultRow.id)).all():
                prefix = f"{nid}.vs{_safe_name(base)}"
                for k, val in (d.statistics or {}).items():
                    metrics[f"{prefix}.{k}"] = val
                metrics[f"{prefix}.verdict"] = float(VERDICTS.index(d.verdict)) if d.verdict in VERDICTS else None
                drift.append({"neuron_id": nid, "baseline": base, "verdict": d.verdict, "reason": d.reason})
            vizs = []
            for v, nid in s.execute(select(S.Visualization, S.Neuron.neuron_id)
                                    .join(S.VersionVisualization, S.VersionVisualization.visualization_id == S.Visualization.id)
                                    .join(S.Neuron, S.Neuron.id == S.Visualization.neuron_id)
                                    .where(S.VersionVisualization.model_version_id == vid)
                                    .order_by(S.Neuron.neuron_id, S.Visualization.method, S.Visualization.seed)).all():
                vizs.append({"id": v.id, "neuron_id": nid, "method": v.method, "seed": v.seed,
                             "image": str(self.artifacts.path(v.image_path)),
                             "mask": str(self.artifacts.path(v.mask_path)) if v.mask_path else None})
                if v.loss_history:
                    metrics[f"{nid}.{v.method}.s{v.seed}.final_loss"] = v.loss_history[-1]
                metrics[f"{nid}.{v.method}.s{v.seed}.seconds"] = v.seconds
            row = s.execute(select(S.MlflowRun).where(S.MlflowRun.audit_run_id == run_id,
                                                      S.MlflowRun.model_version_id == vid)).scalar_one_or_none()
            run = s.get(S.AuditRun, run_id)
            if run is None:
                raise NotFoundError(f"audit run {run_id} does not exist")
            run_key = _sha([mask_url(self.url), run_id, _iso(run.started_at), run.flow_run_id, vid])[:24]
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}
        return {"model_version_id": vid, "source": mv.source, "weights_sha256": mv.weights_sha256, "metrics": metrics,
                "visualizations": vizs, "drift": drift, "params": (row.params if row else {}) or {},
                "report_path": row.report_path if row else None, "run_key": run_key}

    # ------------------------------------------------------------------ read queries (dashboard)
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


def _stats_from_json(d: dict) -> ActivationStats:
    names = [f.name for f in dataclasses.fields(ActivationStats)]
    return ActivationStats(**{k: d.get(k) for k in names})
