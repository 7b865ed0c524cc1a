"""Links to the MLflow and Prefect UIs: which base URLs the dashboard uses (option, config, environment), the
`--mlflow-ui` / `--prefect-ui` options of `neuron-audit report` and `dashboard`, and bad values."""
from __future__ import annotations

import pytest
import yaml

from dash_real_store import CONFIG, FLOW_RUN, MLFLOW_EXPERIMENT, MLFLOW_RUNS


def _cfg(**over):
    from audit.config import AuditConfig

    return AuditConfig.model_validate({**CONFIG, **over})


def test_ui_urls_precedence():
    from dashboards.ui_links import ui_urls

    none = {}
    assert ui_urls(_cfg(), environ=none) == (None, None)
    http_tracking = _cfg(store={"mlflow_tracking_uri": "http://tracking:5000"})
    assert ui_urls(http_tracking, environ=none) == ("http://tracking:5000", None)
    configured = _cfg(store={"mlflow_tracking_uri": "http://tracking:5000"},
                      ui={"mlflow": "https://mlflow.example", "prefect": "http://prefect.example:4200"})
    assert ui_urls(configured, environ=none) == ("https://mlflow.example", "http://prefect.example:4200")
    assert ui_urls(configured, "http://opt:1", "http://opt:2", environ=none) == ("http://opt:1", "http://opt:2")
    assert ui_urls(_cfg(), environ={"PREFECT_API_URL": "http://127.0.0.1:4200/api"}) == (None, "http://127.0.0.1:4200")
    assert ui_urls(_cfg(), environ={"PREFECT_UI_URL": "http://ui:4200", "PREFECT_API_URL": "http://x/api"})[1] == \
        "http://ui:4200"


def test_bad_ui_urls_are_named():
    from audit.errors import AuditInputError
    from dashboards.ui_links import ui_urls

    with pytest.raises(AuditInputError, match="--mlflow-ui: 'ftp://x'"):
        ui_urls(_cfg(), "ftp://x", environ={})
    from audit.config import parse_config

    with pytest.raises(AuditInputError, match=r"ui\.prefect: 'localhost:4200' is not an http\(s\) URL"):
        parse_config({**CONFIG, "ui": {"prefect": "localhost:4200"}})
    with pytest.raises(AuditInputError, match=r"ui\.grafana: unknown key"):
        parse_config({**CONFIG, "ui": {"grafana": "http://g"}})


def test_ui_section_is_not_part_of_the_config_hash():
    assert _cfg().sha256() == _cfg(ui={"mlflow": "http://m:5000"}).sha256()
    assert _cfg().sha256() != _cfg(alerts={"webhook": "http://hook"}).sha256()


def _write_config(tmp_path, store, art) -> str:
    doc = {**CONFIG, "store": {"database": store.url, "artifacts": str(art),
                               "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    path = tmp_path / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_report_links_runs_when_uis_are_given(tmp_path, populated, capsys):
    from flows.cli import main

    store, art = populated
    cfg = _write_config(tmp_path, store, art)
    with pytest.raises(SystemExit) as e:
        main(["report", "-c", cfg, "--out", str(tmp_path / "site"), "--mlflow-ui", "http://mlflow.example:5000",
              "--prefect-ui", "http://prefect.example:4200"])
    assert e.value.code == 0, capsys.readouterr()
    overview = (tmp_path / "site" / "index.html").read_text()
    assert f'href="http://mlflow.example:5000/#/experiments/{MLFLOW_EXPERIMENT}/runs/{MLFLOW_RUNS["1"]}"' in overview
    assert f'href="http://prefect.example:4200/runs/flow-run/{FLOW_RUN}"' in overview
    compare = (tmp_path / "site" / "models" / "lite0-demo" / "compare" / "1_vs_2.html").read_text()
    assert f'href="http://mlflow.example:5000/#/experiments/{MLFLOW_EXPERIMENT}/runs/{MLFLOW_RUNS["2"]}"' in compare

    with pytest.raises(SystemExit) as e:
        main(["report", "-c", cfg, "--out", str(tmp_path / "site2"), "--prefect-ui", "localhost:4200"])
    assert e.value.code == 2
    assert "--prefect-ui: 'localhost:4200' is not an http(s) URL" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "site2").exists()
