"""End to end: the quick demo, then the dashboard on its store, driven by a real
headless Chromium through the overview, the model, the planted neuron and the
compare page. Screenshots: test-artifacts/screenshots/e2e-*.png."""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

import pytest

from browser import SCREENSHOT_DIR, Chromium, running_server
from progress_wait import run_while_progressing

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("e2e-demo")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    # No fixed timeout: the demo runs as long as it keeps writing its store or its log (tests/progress_wait.py).
    r = run_while_progressing([sys.executable, "-m", "audit", "demo", "--quick", "--no-progress", "--dir",
                               str(directory)], watch=directory, env=env)
    assert not r.stalled, f"the quick demo stopped making progress:\n{r.stdout}\n{r.stderr}"
    assert r.returncode == 1, f"the demo must find the planted FAIL (exit 1):\n{r.stdout}\n{r.stderr}"
    assert "planted neuron espresso: FAIL" in " ".join(r.stdout.split())
    from audit.config import load_config
    from storage.repository import AuditStore

    cfg = load_config(directory / "neuron-audit.yaml")
    store = AuditStore(cfg.store.database, str(cfg.resolve_path(cfg.store.artifacts)))
    yield store, cfg.resolve_path(cfg.store.artifacts), directory, r.stdout
    store.close()


def test_quick_demo_in_chromium(demo_store, chromium):
    from dashboards.app import create_app

    store, artifacts, directory, _ = demo_store
    app = create_app(store, str(artifacts))
    pages = {
        "overview": "/",
        "model": "/models/lite0-demo",
        "neuron": "/models/lite0-demo/neurons/espresso",
        "compare": "/models/lite0-demo/compare/1/2",
    }
    with running_server(app) as base, Chromium(chromium) as browser:
        results = {name: browser.check(base + path, SCREENSHOT_DIR / f"e2e-{name}.png") for name, path in pages.items()}
        for name, res in results.items():
            assert res["broken_images"] == 0, (name, res)
            assert (SCREENSHOT_DIR / f"e2e-{name}.png").stat().st_size > 0
        assert results["neuron"]["n_images"] >= 2, "the neuron page shows the visualizations of both versions"
        assert "FAIL" in results["neuron"]["text"] and "FAIL" in results["compare"]["text"]
        assert "espresso" in results["model"]["text"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/artifacts/..%2f..%2f..%2fetc%2fpasswd", timeout=10)
        assert e.value.code == 404
    report_index = directory / "report" / "index.html"
    assert report_index.is_file(), "the demo writes the static report"


def test_quick_demo_tells_its_story(demo_store):
    """What the demo shows, from its store and its output (the checks that keep a faster demo honest):
    v1 against v2, the planted espresso FAIL with its reason, every untouched neuron PASS (the inner ones
    with the very images of v1 reused in v2; the class neurons read the changed head and are re-rendered),
    the clean batch PASS and the blurred one flagged, and the dashboard command."""
    import sqlite3

    _, _, directory, out = demo_store
    con = sqlite3.connect(directory / "store" / "audit.db")
    try:
        verdicts = dict(con.execute(
            "select n.neuron_id, d.verdict from drift_results d join neurons n on n.id = d.neuron_id "
            "join model_versions b on b.id = d.baseline_version_id join model_versions c on c.id = d.candidate_version_id "
            "where b.version = '1' and c.version = '2'").fetchall())
        linked = {}
        for neuron, version, viz in con.execute(
                "select n.neuron_id, mv.version, vv.visualization_id from version_visualizations vv "
                "join visualizations v on v.id = vv.visualization_id join neurons n on n.id = v.neuron_id "
                "join model_versions mv on mv.id = vv.model_version_id"):
            linked.setdefault(neuron, {}).setdefault(version, set()).add(viz)
    finally:
        con.close()
    untouched = ["egyptian-cat", "rocket", "tripod", "b5-c17", "b3-c40"]
    assert verdicts == {"espresso": "FAIL", **{n: "PASS" for n in untouched}}, verdicts
    for n in ("b5-c17", "b3-c40"):
        assert linked[n]["1"] and linked[n]["1"] == linked[n]["2"], (n, linked[n])     # reused, not re-rendered
    for n in ("egyptian-cat", "rocket", "tripod"):          # the fast preset's class term reads the head
        assert linked[n]["2"].isdisjoint(linked[n]["1"]), (n, linked[n])
    assert linked["espresso"]["2"].isdisjoint(linked["espresso"]["1"])            # the planted one re-rendered
    text = " ".join(out.split())
    reason = text.split("planted neuron espresso: FAIL — ", 1)[1]
    assert reason.split(" watched batch")[0].strip(), "the FAIL comes with its reason"
    assert "watched batch clean (64 images): PASS" in text
    assert "watched batch blurred (64 images): PASS" not in text and "watched batch blurred (64 images):" in text
    assert f"dashboard: neuron-audit dashboard -c {directory / 'neuron-audit.yaml'}" in text
