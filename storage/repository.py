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
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
from sqlalchemy import Table, and_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased

from audit.records import ActivationStats, DriftResult, Visualization

from . import schema as S
from .artifacts import ArtifactStore, jsonable
from .batches import BatchRepository
from .db import make_engine, mask_url, session_factory, session_scope, sqlite_path
from .errors import NotFoundError
from .queries import DashboardQueries
from .registry_repo import RegistryRepository
from .runs_repo import RunRepository
from .timestamps import iso as _iso, now_utc as _now

T = TypeVar("T")
VERDICTS = ("PASS", "WARN", "FAIL")
_RETRYABLE = ("database is locked", "database is busy", "deadlock detected", "could not serialize",
              "server closed the connection", "connection reset", "terminating connection")


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(jsonable(obj), sort_keys=True).encode()).hexdigest()


def _safe_name(s: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(s)).strip("._") or "_"


def _is_retryable(exc: DBAPIError) -> bool:
    msg = str(exc.orig if exc.orig is not None else exc).lower()
    return exc.connection_invalidated or any(m in msg for m in _RETRYABLE)


class AuditStore(RegistryRepository, RunRepository, DashboardQueries):
    def __init__(self, database_url: str, artifacts_root: str | Path | None = None, *, write_retries: int = 8,
                 connect_retries: int = 4, upgrade: bool = False, read_only: bool = False):
        """artifacts_root None: `artifacts/` next to a SQLite file, else ./.neuron-audit/artifacts.
        upgrade=True applies the migrations first (creates the schema on an empty database).
        read_only=True: the dashboard's and report's store: the database is opened read-only and
        nothing (file, folder, row) is ever created."""
        self.url = str(database_url)
        self.read_only = read_only
        self.engine = make_engine(self.url, retries=connect_retries, read_only=read_only)
        if artifacts_root is None:
            db = sqlite_path(self.url)
            artifacts_root = (db.parent / "artifacts") if db is not None else Path(".neuron-audit/artifacts")
        self.artifacts = ArtifactStore(artifacts_root, create=not read_only)
        self.write_retries = write_retries
        self._read = session_factory(self.engine)
        self._write_factory = session_factory(self.engine, write=True)
        if upgrade:
            self.upgrade()

    @property
    def batches(self) -> BatchRepository:
        """Production batches watched for feature drift (storage/batches.py)."""
        return BatchRepository(self)

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

        if self.read_only:
            raise PermissionError(f"{self!r} is opened read-only: it cannot be upgraded")
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

    # ------------------------------------------------------------------ recorded checks (unchanged versions)
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

    # ------------------------------------------------------------------ probe sets and statistics
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
        return self.artifacts.write_named(rel, data)   # = report_file(model, baseline, candidate)

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
    @property
    def store_id(self) -> str:
        """A short stable id of this store (hash of its URL, password masked): tags the MLflow runs and keys the
        Prefect artifacts of this store, so that stores sharing one MLflow or Prefect server never collide."""
        return hashlib.sha256(mask_url(self.url).encode()).hexdigest()[:12]

    def report_file(self, model: str, baseline: str, candidate: str) -> Path:
        """Where `save_report` writes the compare report of (baseline, candidate)."""
        return self.artifacts.path(f"reports/{_safe_name(model)}/{_safe_name(baseline)}-vs-{_safe_name(candidate)}.json")

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


def _stats_from_json(d: dict) -> ActivationStats:
    names = [f.name for f in dataclasses.fields(ActivationStats)]
    return ActivationStats(**{k: d.get(k) for k in names})
