"""End to end: the quick demo, then the dashboard on its store, driven by a real
headless Chromium through the overview, the model, the planted neuron and the
compare page. Screenshots: test-artifacts/screenshots/e2e-*.png."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from browser import SCREENSHOT_DIR, Chromium, ensure_chromium, running_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("e2e-demo")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "audit", "demo", "--quick", "--no-progress", "--dir", str(directory)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 1, f"the demo must find the planted FAIL (exit 1):\n{r.stdout}\n{r.stderr}"
    assert "planted neuron espresso: FAIL" in " ".join(r.stdout.split())
    from audit.config import load_config
    from storage.repository import AuditStore

    cfg = load_config(directory / "neuron-audit.yaml")
    store = AuditStore(cfg.store.database, str(cfg.resolve_path(cfg.store.artifacts)))
    yield store, cfg.resolve_path(cfg.store.artifacts), directory
    store.close()


def test_quick_demo_in_chromium(demo_store):
    chromium = ensure_chromium()
    if not chromium:
        pytest.skip("chromium is not installed and could not be installed with apt-get")
    from dashboards.app import create_app

    store, artifacts, directory = demo_store
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
