"""Cheap, read-only look-ups in the MLflow model registry, without importing MLflow.

Importing MLflow costs seconds; the preflight and the recognition of unchanged versions only
need to know which versions a registered model has and what a version points to. For a
`sqlite:///` tracking store that is one SQL query on its file; for an `http(s)://` server one
REST call. Every function returns None when it cannot tell cheaply (another store type, an
unexpected schema); callers then fall back to `sources.mlflow_registry`, which uses MLflow itself.
"""
from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import SourceNotFoundError

_TIMEOUT_S = 5.0


def _sqlite_file(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):]).expanduser()


def _query(db: Path, sql: str, args: tuple) -> list[tuple] | None:
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=_TIMEOUT_S)
    except sqlite3.Error:
        return None
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.Error:          # no such table / column: not an MLflow store we know
        return None
    finally:
        con.close()


def _rest(tracking_uri: str, path: str, params: dict) -> dict | None:
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        return None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def registered_versions(name: str, tracking_uri: str) -> list[str] | None:
    """The versions of registered model `name`, ascending; raises SourceNotFoundError when the store holds
    no such registered model; None when this cannot be told without MLflow."""
    db = _sqlite_file(tracking_uri)
    if db is not None:
        if not db.is_file():
            raise SourceNotFoundError(f"no registered model {name!r}: the MLflow store {tracking_uri} does not exist", value=name)
        known = _query(db, "SELECT name FROM registered_models WHERE name = ?", (name,))
        if known is None:
            return None
        if not known:
            raise SourceNotFoundError(f"no registered model {name!r} in {tracking_uri}", value=name)
        rows = _query(db, "SELECT version FROM model_versions WHERE name = ? AND current_stage != 'Deleted_Internal'",
                      (name,))
        return None if rows is None else sorted({str(v) for (v,) in rows}, key=lambda v: (len(v), v))
    if tracking_uri.startswith(("http://", "https://")):
        got = _rest(tracking_uri, "registered-models/get", {"name": name})
        if got is None:
            return None
        if not got:
            raise SourceNotFoundError(f"no registered model {name!r} in {tracking_uri}", value=name)
        found = _rest(tracking_uri, "model-versions/search", {"filter": f"name = '{name}'", "max_results": 10000})
        if found is None:
            return None
        return sorted({str(v["version"]) for v in found.get("model_versions", [])}, key=lambda v: (len(v), v))
    return None


def version_identity(name: str, version: str | None, alias: str | None, tracking_uri: str) -> str | None:
    """What a registered version points to (name, version, run, source, creation time): a version of the
    registry is immutable, so this identifies its content. Raises SourceNotFoundError for a missing one;
    None when this cannot be told without MLflow."""
    db = _sqlite_file(tracking_uri)
    if db is not None:
        if not db.is_file():
            raise SourceNotFoundError(f"registered model {name!r}: the MLflow store {tracking_uri} does not exist", value=name)
        if alias is not None:
            rows = _query(db, "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, alias))
            if rows is None:
                return None
            if not rows:
                raise SourceNotFoundError(f"registered model {name!r} has no alias {alias!r} in {tracking_uri}", value=name)
            version = str(rows[0][0])
        rows = _query(db, "SELECT version, run_id, source, creation_time FROM model_versions "
                          "WHERE name = ? AND version = ? AND current_stage != 'Deleted_Internal'", (name, int(version)))
        if rows is None:
            return None
        if not rows:
            raise SourceNotFoundError(f"registered model {name!r} has no version {version!r} in {tracking_uri}", value=name)
        return json.dumps([name, *[str(x) for x in rows[0]]])
    if tracking_uri.startswith(("http://", "https://")):
        if alias is not None:
            got = _rest(tracking_uri, "registered-models/alias", {"name": name, "alias": alias})
        else:
            got = _rest(tracking_uri, "model-versions/get", {"name": name, "version": version})
        if got is None:
            return None
        mv = got.get("model_version")
        if not mv:
            raise SourceNotFoundError(f"no registered model version {name}{'@' + alias if alias else '/' + str(version)} "
                                      f"in {tracking_uri}", value=name)
        return json.dumps([name, str(mv.get("version")), str(mv.get("run_id")), str(mv.get("source")),
                           str(mv.get("creation_timestamp"))])
    return None


def run_exists(run_id: str, tracking_uri: str) -> bool | None:
    """Whether an MLflow run is in the store (and not deleted); None when this cannot be told cheaply."""
    db = _sqlite_file(tracking_uri)
    if db is not None:
        if not db.is_file():
            return False
        rows = _query(db, "SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,))
        return None if rows is None else bool(rows) and rows[0][0] != "deleted"
    if tracking_uri.startswith(("http://", "https://")):
        got = _rest(tracking_uri, "runs/get", {"run_id": run_id})
        if got is None:
            return None
        run = got.get("run")
        return bool(run) and run.get("info", {}).get("lifecycle_stage") != "deleted"
    return None
