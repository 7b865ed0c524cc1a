"""`AuditStore`: every read and write of audit results.

Writes are idempotent upserts keyed by content (re-running an audit never duplicates rows), each
public write is one transaction (`save_neuron_results` writes one neuron's statistics and
visualizations in one), and two processes may write at once: SQLite runs in WAL mode and write
transactions start with BEGIN IMMEDIATE behind a busy timeout; PostgreSQL uses
`INSERT ... ON CONFLICT`; transient lock/deadlock errors are retried with backoff.

Read queries return plain dicts (JSON-friendly: timestamps are ISO-8601 UTC strings); artifact paths
(`image_path`, `mask_path`, `values_path`) are relative to the artifact root: `store.artifact_path(rel)`.

This module holds the construction of the store, its engine and sessions, and what every aggregate
shares (the retried write transaction, the dialect's upsert, the id lookups). Each aggregate's reads and
writes live in a module of its own, mixed into `AuditStore` so that every method stays `store.<name>`:
`storage/registry_repo.py` (models, versions, neurons, probe sets), `storage/runs_repo.py` (audit runs,
recorded checks, MLflow bookkeeping), `storage/results_repo.py` (statistics, visualizations, drift
results, reports), `storage/alerts_repo.py` (alerts) and `storage/queries.py` (the dashboard's reads);
production batches are `store.batches` (`storage/batches.py`).
"""
from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Callable, TypeVar

from sqlalchemy import Table, and_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session

from . import schema as S
from .alerts_repo import AlertRepository
from .artifacts import ArtifactStore
from .batches import BatchRepository
from .db import make_engine, mask_url, session_factory, session_scope, sqlite_path
from .errors import NotFoundError
from .queries import DashboardQueries
from .registry_repo import RegistryRepository
from .results_repo import ResultRepository
from .runs_repo import RunRepository
from .timestamps import iso as _iso, now_utc as _now  # noqa: F401 (storage/batches.py imports both from here)

T = TypeVar("T")
VERDICTS = ("PASS", "WARN", "FAIL")
_RETRYABLE = ("database is locked", "database is busy", "deadlock detected", "could not serialize",
              "server closed the connection", "connection reset", "terminating connection")


def _is_retryable(exc: DBAPIError) -> bool:
    msg = str(exc.orig if exc.orig is not None else exc).lower()
    return exc.connection_invalidated or any(m in msg for m in _RETRYABLE)


class AuditStore(RegistryRepository, RunRepository, ResultRepository, AlertRepository, DashboardQueries):
    """The audit store: this class opens the database and the artifact files and holds what every aggregate
    shares (transactions with retries, upserts, id lookups); the reads and writes of each aggregate are
    mixed in: `RegistryRepository`, `RunRepository`, `ResultRepository`, `AlertRepository`, `DashboardQueries`;
    production batches are `store.batches`."""

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

    # ------------------------------------------------------------------ store identity
    @property
    def store_id(self) -> str:
        """A short stable id of this store (hash of its URL, password masked): tags the MLflow runs and keys the
        Prefect artifacts of this store, so that stores sharing one MLflow or Prefect server never collide."""
        try:   # SQLAlchemy's own rendering, not the display masker: the id must never change with it
            canonical = make_url(self.url).render_as_string(hide_password=True)
        except ArgumentError:
            canonical = str(self.url)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]
