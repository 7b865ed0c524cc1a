"""The dashboard and `report` only read the store; an unchanged version costs almost nothing."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.conftest import (REPO, audit_state, cli, copy_store, mlflow_run_count, process_env, runs,
                                   tiny_config_dict, write_config)

pytestmark = pytest.mark.usefixtures("prefect_api")


def _tree_digest(root: Path) -> dict[str, str]:
    """path -> sha256 of every file under root (what changed, appeared or vanished)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith((".db-shm", ".db-wal"))}


def test_dashboard_and_report_never_write_the_store(tmp_path, reference):
    from fastapi.testclient import TestClient

    from dashboards.app import create_app
    from flows import runtime

    d = tmp_path / "audit"
    cfg = copy_store(reference, d)
    data = json.loads(json.dumps(tiny_config_dict()))
    data["models"][0]["neurons"].append({"id": "new-neuron", "kind": "class", "layer": "classifier", "index": 1})
    data["models"].append({**data["models"][0], "name": "a-new-model"})
    import yaml

    cfg.write_text(yaml.safe_dump(data, sort_keys=False))       # a config with models and neurons the store lacks
    before = _tree_digest(d / "store")
    store = runtime.read_store(str(cfg))
    client = TestClient(create_app(store, d / "store" / "artifacts"))
    pages = ["/", "/models/tiny", "/models/tiny/neurons/cat", "/models/tiny/compare/1/2", "/models/a-new-model"]
    assert [client.get(u).status_code for u in pages] == [200, 200, 200, 200, 404]
    assert client.post("/").status_code == 405
    store.close()
    r = cli("report", "-c", str(cfg), "--out", str(tmp_path / "html"))
    assert r.code == 0 and (tmp_path / "html" / "index.html").is_file(), r.err
    assert _tree_digest(d / "store") == before, "the dashboard or report changed the store"
    con = sqlite3.connect(d / "store" / "audit.db")
    assert con.execute("select count(*) from models where name = 'a-new-model'").fetchone()[0] == 0
    con.close()


def test_dashboard_on_a_store_that_does_not_exist_is_bad_input_and_creates_nothing(tmp_path, swapped_checkpoint):
    cfg = write_config(tmp_path, swapped_checkpoint)
    r = cli("report", "-c", str(cfg), "--out", str(tmp_path / "html"))
    assert r.code == 2 and "store.database" in r.err and "no audit store" in r.err, r.err
    assert not (tmp_path / "store").exists()


def test_an_unchanged_version_is_recognised_without_torch_prefect_or_mlflow(tmp_path, reference):
    """The re-run of an unchanged audit loads no model, starts no Prefect, calls no MLflow: it writes one
    audit_runs row (the recorded check) and no artifact byte, and exits with the stored verdicts' code."""
    d = tmp_path / "audit"
    cfg = copy_store(reference, d)
    artifacts_before = _tree_digest(d / "store" / "artifacts")
    mlflow_before = (mlflow_run_count(d / "store" / "mlflow.db"), _tree_digest(d / "store" / "mlartifacts")
                     if (d / "store" / "mlartifacts").exists() else {})
    script = ("import sys\nfrom flows.cli import main\ncode = 0\ntry:\n    main(['run', '-c', sys.argv[1]])\n"
              "except SystemExit as e:\n    code = e.code\n"
              "heavy = sorted(m for m in ('torch', 'timm', 'prefect', 'mlflow') if m in sys.modules)\n"
              "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\nsys.exit(code)\n")
    env = process_env()
    env.pop("PREFECT_API_URL", None)            # no server may be needed at all
    r = subprocess.run([sys.executable, "-c", script, str(cfg)], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=300)
    assert r.returncode == reference["code"], r.stderr[-2000:]
    assert "HEAVY=\n" in r.stderr, r.stderr[-500:]
    assert "unchanged since their last audit" in r.stdout and "FAIL" in r.stdout
    assert _tree_digest(d / "store" / "artifacts") == artifacts_before
    assert (mlflow_run_count(d / "store" / "mlflow.db"), _tree_digest(d / "store" / "mlartifacts")
            if (d / "store" / "mlartifacts").exists() else {}) == mlflow_before
    (_, s1, _), (_, s2, _) = runs(d)
    assert (s1, s2) == ("completed", "completed")
    assert audit_state(d) == reference["state"]


def test_a_changed_version_is_audited_again_and_an_unchanged_one_is_not(tmp_path, reference, swapped_checkpoint):
    """Changing only a threshold keeps both versions (no model work) but redoes their comparison."""
    import yaml

    d = tmp_path / "audit"
    cfg = copy_store(reference, d)
    data = yaml.safe_load(cfg.read_text())
    data["models"][0]["thresholds"]["spearman_warn"] = 0.96
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    r = cli("run", "-c", str(cfg))
    assert r.code == reference["code"], r.err
    assert "unchanged since their last audit (weights, config, images and software): tiny v1, tiny v2" in r.out
    assert "audited tiny" not in r.out            # no version was recomputed
    assert audit_state(d)["counts"] == reference["state"]["counts"]
