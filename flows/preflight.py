"""The preflight: the whole config checked against the real world before any work.

`run`, `serve`, `compare`, `watch` and the demo call `ensure_preflight` first; `neuron-audit
check` runs it alone. It adds to the pure checks of `audit.checks` (architectures, checkpoints,
layers and indices, images) what needs storage or MLflow: registered models and versions exist,
the database is reachable and writable, the artifact folder is writable, the MLflow store is
usable. Every problem is reported at once, each with its key path and value; nothing is written
(no row, no MLflow run, no folder) unless the whole preflight passes, and then only its cache.

Plugging in: `STORE_CHECKS` lists the checks of the surroundings (a function of the
`CheckContext`); per-model checks register with `audit.checks.register_model_check`.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from audit.checks import CheckContext, Problem, ResolvedSource, run_model_checks
from audit.config import AuditConfig, ModelConfig, VersionConfig, load_config
from audit.errors import AuditInputError

CACHE_FILE = "cache/preflight.json"
_MIGRATIONS = Path(__file__).resolve().parent.parent / "storage" / "migrations" / "versions"


def registry_unreachable(reason: str) -> AuditInputError:
    """The error of a registry that does not answer: reported with the key like bad input, but counted
    as infrastructure (exit 4 when nothing else is wrong)."""
    exc = AuditInputError(f"the MLflow registry cannot be read: {reason}")
    exc.infrastructure = True
    return exc


class PreflightFailed(AuditInputError):
    """Bad input found before any work (exit 2): every problem, one per line."""

    def __init__(self, origin: str, problems: list[Problem]):
        self.problems = problems
        n = len(problems)
        lines = [f"{origin}: {n} problem{'s' if n != 1 else ''} found before any work (nothing was run or stored):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class PreflightUnavailable(RuntimeError):
    """The config is fine but its surroundings cannot be reached (exit 4: infrastructure)."""

    def __init__(self, origin: str, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"{origin}: " + "; ".join(str(p) for p in problems))


@dataclass
class PreflightReport:
    cfg: AuditConfig
    problems: list[Problem]
    notes: list[str]
    identities: dict[tuple[str, str], str] = field(default_factory=dict)
    context: CheckContext | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class JsonFileCache:
    """The preflight's CheckCache: one JSON file under the artifact store, read once, written (atomically)
    only when the preflight passed."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}
        self.dirty = False
        try:
            self.entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict) -> None:
        self.entries[key] = value
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w") as fh:
                json.dump(self.entries, fh)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass                 # a cache that cannot be written only costs time on the next run


# ------------------------------------------------------------------------------ surroundings
def _writable_dir(path: Path) -> str | None:
    """None when files can be created in `path` (or, when it does not exist yet, in the nearest existing
    parent, where it would be created); else the reason. Probes with a temporary file it removes."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"no existing parent folder of {path}"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".neuron-audit-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"cannot create files in {probe} ({exc.strerror or exc.__class__.__name__})"
    return None


def known_revisions() -> set[str]:
    """The migration revisions this software knows (read from the migration files: no Alembic import)."""
    out = set()
    for f in _MIGRATIONS.glob("*.py"):
        m = re.search(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", f.read_text(), re.M)
        if m:
            out.add(m.group(1))
    return out


def _check_sqlite_file(key: str, value: str, db: Path, ctx: CheckContext, what: str) -> None:
    if db.exists():
        if not db.is_file():
            ctx.problem(key, value, f"{db} is not a file")
            return
        try:
            con = sqlite3.connect(str(db), timeout=2.0)
        except sqlite3.Error as exc:
            ctx.problem(key, value, f"cannot open the SQLite file {db}: {exc}")
            return
        try:
            con.isolation_level = None
            if not os.access(db, os.W_OK):
                raise sqlite3.OperationalError("attempt to write a readonly database")
            # a write that is rolled back: SQLite opens a protected file read-only and says so only on a write
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("CREATE TABLE neuron_audit_write_probe (x INTEGER)")
            finally:
                con.execute("ROLLBACK")
            if what == "database":
                try:
                    row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                except sqlite3.OperationalError:
                    row = None
                if row and row[0] not in known_revisions():
                    ctx.problem(key, value, f"the database is at schema revision {row[0]!r}, which this neuron-audit "
                                            "does not know (it was written by a newer version)")
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                pass                             # another process writes right now: reachable, and we will queue
            elif "readonly" in msg or "read-only" in msg:
                ctx.problem(key, value, f"the SQLite file {db} is read-only for this user: the {what} must be writable")
            else:
                ctx.problem(key, value, f"cannot write the SQLite file {db}: {msg}")
        except sqlite3.DatabaseError as exc:
            ctx.problem(key, value, f"{db} is not a SQLite database ({exc})")
        finally:
            con.close()
        # WAL and journal files are created next to the database
        reason = _writable_dir(db.parent)
        if reason:
            ctx.problem(key, value, f"the folder of the SQLite file is not writable: {reason}")
    else:
        reason = _writable_dir(db.parent)
        if reason:
            ctx.problem(key, value, f"the SQLite file {db} cannot be created: {reason}")


def check_database(ctx: CheckContext) -> None:
    """`store.database` is reachable and writable (SQLite: the file or its folder; PostgreSQL: a connection
    that may write)."""
    from storage.db import make_engine, mask_url, sqlite_path

    url = ctx.cfg.store.database
    db = sqlite_path(url)
    if db is not None:
        _check_sqlite_file("store.database", url, db, ctx, "database")
        return
    if url.startswith("sqlite"):
        return                                   # in-memory database
    from sqlalchemy import text

    from storage.errors import StoreUnavailableError

    try:
        engine = make_engine(url, retries=1, backoff_s=0.5)
    except StoreUnavailableError as exc:
        unreachable = "not a database URL" not in exc.reason and "No module" not in exc.reason \
            and "Can't load plugin" not in exc.reason
        ctx.problem("store.database", mask_url(url), exc.reason, infrastructure=unreachable)
        return
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                recovery, read_only = conn.execute(text("SELECT pg_is_in_recovery(), "
                                                        "current_setting('transaction_read_only')")).one()
                if recovery or read_only == "on":
                    ctx.problem("store.database", mask_url(url), "the PostgreSQL server only accepts reads here "
                                                                 "(a standby, or a read-only default)")
                    return
                has_runs = conn.execute(text("SELECT to_regclass('audit_runs') IS NOT NULL")).scalar()
                allowed = conn.execute(text("SELECT has_table_privilege('audit_runs', 'INSERT')" if has_runs else
                                            "SELECT has_schema_privilege(current_schema(), 'CREATE')")).scalar()
                if not allowed:
                    ctx.problem("store.database", mask_url(url),
                                "this database user may not write the audit tables" if has_runs
                                else "this database user may not create the audit tables")
    finally:
        engine.dispose()


def check_artifacts(ctx: CheckContext) -> None:
    """`store.artifacts` is a folder this user can write (or can create)."""
    path = ctx.cfg.resolve_path(ctx.cfg.store.artifacts)
    if path.exists() and not path.is_dir():
        ctx.problem("store.artifacts", ctx.cfg.store.artifacts, f"{path} exists and is not a folder")
        return
    reason = _writable_dir(path)
    if reason:
        ctx.problem("store.artifacts", ctx.cfg.store.artifacts, f"not writable: {reason}")


def check_tracking(ctx: CheckContext) -> None:
    """`store.mlflow_tracking_uri`: a local store must be writable; a server that does not answer is a
    note (results wait in the database, marked pending, and a later run logs them)."""
    uri = ctx.cfg.store.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).expanduser()
        _check_sqlite_file("store.mlflow_tracking_uri", uri, db, ctx, "MLflow store")
        reason = _writable_dir(db.parent / "mlartifacts")
        if reason:
            ctx.problem("store.mlflow_tracking_uri", uri, f"MLflow's artifact folder is not writable: {reason}")
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as r:
                ok = r.status == 200
        except (urllib.error.URLError, OSError):
            ok = False
        if not ok:
            ctx.notes.append(f"store.mlflow_tracking_uri ({uri}): the MLflow server does not answer; results will "
                             "be kept in the database as pending and logged by a later run")
    elif uri.startswith("file:") or "://" not in uri:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true", "yes"):
            ctx.problem("store.mlflow_tracking_uri", uri, "MLflow 3 refuses a file-system tracking store (its "
                        "FileStore is in maintenance mode); use a database such as sqlite:///.neuron-audit/mlflow.db, "
                        "or set MLFLOW_ALLOW_FILE_STORE=true")
            return
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):] if uri.startswith("file:")
                    else uri)
        reason = _writable_dir(path if path.is_absolute() else ctx.cfg.base_dir / path)
        if reason:
            ctx.problem("store.mlflow_tracking_uri", uri, f"not writable: {reason}")


STORE_CHECKS: list[Callable[[CheckContext], None]] = [check_database, check_artifacts, check_tracking]


# ------------------------------------------------------------------------------ the registry
def _registry_resolver(cfg: AuditConfig) -> Callable[[str], ResolvedSource]:
    def resolve(source: str) -> ResolvedSource:
        from sources.mlflow_index import version_identity
        from sources.mlflow_registry import parse_models_uri

        name, version, alias = parse_models_uri(source)
        identity = version_identity(name, version, alias, cfg.store.mlflow_tracking_uri)
        if identity is None:                      # a store only MLflow itself can read
            from sources.errors import TrackingUnavailableError
            from sources.mlflow_registry import resolve_registry_source

            try:
                state, info = resolve_registry_source(source, cfg.store.mlflow_tracking_uri)
            except TrackingUnavailableError as exc:
                raise registry_unreachable(exc.reason) from None
            identity = json.dumps([info.get("name"), info.get("version"), info.get("run_id"), info.get("source")])
            return ResolvedSource(identity, lambda: state)

        def load():
            from sources.mlflow_registry import resolve_registry_source

            return resolve_registry_source(source, cfg.store.mlflow_tracking_uri)[0]
        return ResolvedSource(identity, load)
    return resolve


def _versions_of(cfg: AuditConfig) -> Callable[[ModelConfig], list[VersionConfig]]:
    def versions_of(mcfg: ModelConfig) -> list[VersionConfig]:
        from storage.errors import TrackingUnavailableError

        from . import runtime

        try:
            return runtime.registry_versions(cfg, mcfg)
        except TrackingUnavailableError as exc:
            raise registry_unreachable(exc.reason) from None
    return versions_of


# ------------------------------------------------------------------------------ entry points
def run_preflight(config_path: str | os.PathLike, *, model: str | None = None,
                  version: str | list[str] | None = None, check_store: bool = True,
                  load_models: bool = True) -> PreflightReport:
    """Every check on the config at `config_path` (restricted to `model` / `version`(s) when given: one
    version brings the versions it is compared with, a list of versions is taken as it is).

    Raises AuditInputError only for a config that does not parse; everything else comes back as
    problems. load_models=False leaves out the checks that must build a model on a cache miss."""
    from . import runtime

    cfg_path = str(config_path)
    cfg = load_config(cfg_path)
    cache = JsonFileCache(cfg.resolve_path(cfg.store.artifacts) / CACHE_FILE)
    versions = None if version is None else [str(v) for v in ([version] if isinstance(version, (str, int)) else version)]
    selection = None if model is None else {model: versions}
    if model is None and versions is not None:
        selection = {m.name: versions for m in cfg.models if m.enabled}

    def load(mcfg: ModelConfig, vcfg: VersionConfig):
        return runtime.load_version(cfg_path, mcfg.name, vcfg.version).model

    ctx = CheckContext(cfg, cache=cache, selection=selection, resolve_source=_registry_resolver(cfg),
                       versions_of=_versions_of(cfg), load_model=load if load_models else None,
                       with_partners=not isinstance(version, (list, tuple)))
    run_model_checks(ctx)
    if check_store:
        for check in STORE_CHECKS:
            check(ctx)
    if not ctx.problems:
        cache.flush()
    return PreflightReport(cfg, list(ctx.problems), list(ctx.notes), dict(ctx.identities), ctx)


def raise_for_problems(report: PreflightReport, origin: str) -> None:
    """PreflightFailed (exit 2) when any problem is bad input; PreflightUnavailable (exit 4) when the only
    problems are unreachable surroundings."""
    if not report.problems:
        return
    if all(p.infrastructure for p in report.problems):
        raise PreflightUnavailable(origin, report.problems)
    raise PreflightFailed(origin, report.problems)


def ensure_preflight(config_path: str | os.PathLike, *, model: str | None = None,
                     version: str | list[str] | None = None, check_store: bool = True) -> PreflightReport:
    """The preflight, raising when anything is wrong; the entry every command (and `watch`) calls (a logged
    stage: a failed one is followed by the problems, each naming its key and value)."""
    from .logs import get_logger, stage

    with stage("preflight", str(config_path), get_logger("preflight")) as st:
        report = run_preflight(config_path, model=model, version=version, check_store=check_store)
        raise_for_problems(report, str(config_path))
        st.count(**{"versions identified": len(report.identities), "notes": len(report.notes)})
    return report
