"""Fixtures of the fault and bad-input suite: a tiny real audit (Lite0, 3 neurons, 32 px
visualizations, a version 2 whose cat and espresso logit rows are swapped), real SQLite files, a
real MLflow store, Prefect under its test harness (its URL exported, so that subprocesses use it),
the CLI called in-process or as a real process."""
from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TABLES = ["models", "model_versions", "neurons", "probe_sets", "visualizations", "version_visualizations",
          "activation_stats", "drift_results", "alerts", "audit_checks"]


def tiny_config_dict(webhook: str | None = None) -> dict:
    return {
        "store": {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": "sqlite:///./store/mlflow.db",
                  "artifacts": "./store/artifacts"},
        "alerts": {"webhook": webhook},
        "models": [{
            "name": "tiny", "architecture": "efficientnet_lite0", "champion": "1",
            "versions": [{"version": "1", "source": "builtin:efficientnet_lite0"},
                         {"version": "2", "source": "file:./v2.safetensors"}],
            "probe_set": "builtin:samples",
            "probe": {"crops_per_image": 2, "resolution": 64},
            "visualization": {"resolution": 32, "steps": 2, "seeds": [0], "n_references": 2},
            "thresholds": {"bootstrap": 50, "top_k": 5},
            "neurons": [
                {"id": "cat", "kind": "class", "layer": "classifier", "index": 285,
                 "references": "builtin:samples/chelsea"},
                {"id": "espresso", "kind": "class", "layer": "classifier", "index": 967, "references": "top-k"},
                {"id": "b3-c40", "kind": "inner", "layer": "blocks.3", "index": 40},
            ],
        }],
    }


@pytest.fixture(scope="session")
def swapped_checkpoint(tmp_path_factory) -> Path:
    """Lite0 with the cat (285) and espresso (967) logit rows swapped: a big, unambiguous change."""
    from safetensors.torch import save_file

    from sources import load_model
    from benchmarks.edits import swap_class_rows

    m = swap_class_rows(load_model("efficientnet_lite0", "builtin:efficientnet_lite0"), 285, 967)
    path = tmp_path_factory.mktemp("ckpt") / "v2.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


def write_config(directory: Path, checkpoint: Path, data: dict | None = None, webhook: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "v2.safetensors"
    if not link.exists():
        link.symlink_to(checkpoint)
    path = directory / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(data if data is not None else tiny_config_dict(webhook), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def warm_artifacts(tmp_path_factory, swapped_checkpoint) -> str:
    """An artifact folder whose preflight cache knows the tiny config's checkpoints and images, so that a
    bad-input case builds a model only when its own change needs one (the cache is keyed by content)."""
    d = tmp_path_factory.mktemp("warm")
    data = tiny_config_dict()
    data["store"]["artifacts"] = str(d / "artifacts")
    r = cli("check", "-c", str(write_config(d, swapped_checkpoint, data)))
    assert r.code == 0, r.err
    return str(d / "artifacts")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def cli(*args: str) -> CliResult:
    """`neuron-audit ARGS` in this process (the console script's `main`), output captured."""
    from flows import runtime
    from flows.cli import main

    o, e = io.StringIO(), io.StringIO()
    with redirect_stdout(o), redirect_stderr(e):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    runtime.config.cache_clear()         # configs are rewritten between cases at other paths only, but be safe
    return CliResult(code, o.getvalue(), e.getvalue())


def cli_process(*args: str, env: dict | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """`neuron-audit ARGS` as a real process."""
    return subprocess.run([sys.executable, "-m", "audit", *args], capture_output=True, text=True, timeout=timeout,
                          env=process_env(env), **kw)


def process_env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(extra or {})}


def db_counts(db: Path, tables=TABLES) -> dict[str, int]:
    if not db.exists():
        return {}
    con = sqlite3.connect(db)
    try:
        names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables if t in names}
    finally:
        con.close()


def mlflow_run_count(mlflow_db: Path) -> int:
    if not mlflow_db.exists():
        return 0
    con = sqlite3.connect(mlflow_db)
    try:
        return con.execute("select count(*) from runs").fetchone()[0]
    finally:
        con.close()


def audit_state(directory: Path) -> dict:
    """What an audit leaves in its store, comparable between an interrupted-then-resumed audit and an
    uninterrupted one: row counts, verdicts, visualization content keys, every artifact intact."""
    from storage.artifacts import ArtifactStore

    db = directory / "store" / "audit.db"
    con = sqlite3.connect(db)
    try:
        verdicts = dict(con.execute(
            "select n.neuron_id || ':' || b.version || '->' || c.version, d.verdict from drift_results d "
            "join neurons n on n.id = d.neuron_id join model_versions b on b.id = d.baseline_version_id "
            "join model_versions c on c.id = d.candidate_version_id").fetchall())
        keys = sorted(r[0] for r in con.execute("select content_key from visualizations"))
        paths = [p for row in con.execute("select image_path, mask_path from visualizations") for p in row if p]
        paths += [p for (p,) in con.execute("select values_path from activation_stats") if p]
    finally:
        con.close()
    artifacts = ArtifactStore(directory / "store" / "artifacts", create=False)
    broken = {p: artifacts.verify(p) for p in paths if artifacts.verify(p)}
    return {"counts": db_counts(db), "verdicts": verdicts, "content_keys": keys, "broken_artifacts": broken}


def runs(directory: Path) -> list[tuple]:
    con = sqlite3.connect(directory / "store" / "audit.db")
    try:
        return con.execute("select id, status, error from audit_runs order by id").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="session")
def prefect_api(prefect_harness):
    """The session's Prefect test server (tests/conftest.py); its API URL is exported for CLI subprocesses."""
    return prefect_harness


@pytest.fixture(scope="session")
def reference(tmp_path_factory, swapped_checkpoint, prefect_api) -> dict:
    """One uninterrupted audit of the tiny config: what every fault's re-run must equal."""
    d = tmp_path_factory.mktemp("reference")
    cfg = write_config(d, swapped_checkpoint)
    r = cli("run", "-c", str(cfg))
    assert r.code == 1, (r.code, r.out, r.err)          # the swapped rows FAIL
    return {"dir": d, "config": cfg, "code": r.code, "state": audit_state(d)}


def copy_store(reference: dict, dst: Path) -> Path:
    """A copy of the reference audit's folder (config, store, checkpoint link); returns its config."""
    shutil.copytree(reference["dir"], dst, symlinks=True)
    return dst / "neuron-audit.yaml"


# ---------------------------------------------------------------- webhook receivers
