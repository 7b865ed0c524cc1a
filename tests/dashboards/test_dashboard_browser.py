"""Real headless Chromium through the dashboard: every image loads, the FAIL neuron shows FAIL,
the CSS-only mask toggle works, the static export opens from file://. Screenshots go to
test-artifacts/screenshots/ (relative to the repository root)."""
from __future__ import annotations

import pytest

from browser import SCREENSHOT_DIR, Chromium, running_server

pytestmark = pytest.mark.browser


def test_pages_in_chromium(chromium, populated):
    from dashboards.app import create_app

    store, art = populated
    app = create_app(store, art, mlflow_ui_url="http://127.0.0.1:5000", prefect_ui_url="http://127.0.0.1:4200")
    pages = {
        "overview": "/",
        "model": "/models/lite0-demo",
        "neuron-fail": "/models/lite0-demo/neurons/espresso",
        "neuron-masks": "/models/lite0-demo/neurons/b5-c17",
        "compare": "/models/lite0-demo/compare/1/2",
    }
    with running_server(app) as base, Chromium(chromium) as browser:
        results = {}
        for name, path in pages.items():
            r = browser.check(base + path, SCREENSHOT_DIR / f"{name}.png")
            results[name] = r
            assert r["status"] == 200, (name, r["status"])
            assert r["broken_images"] == 0, (name, r["broken"])
            assert (SCREENSHOT_DIR / f"{name}.png").stat().st_size > 10_000
        assert results["model"]["n_images"] >= 3
        assert results["neuron-fail"]["n_images"] >= 4 and results["compare"]["n_images"] >= 6
        assert "FAIL" in results["neuron-fail"]["text"]
        assert "espresso" in results["overview"]["text"] and "FAIL" in results["overview"]["text"]
        # FAIL first on the model page
        text = results["model"]["text"]
        assert text.index("espresso") < text.index("egyptian-cat")

        # the CSS-only overlay toggle: masks hidden, then shown after a click on the label
        browser.check(base + pages["neuron-masks"])
        opacity = "getComputedStyle(document.querySelector('.viz-mask')).opacity"
        assert browser.evaluate(opacity) == "0"
        browser.evaluate("document.querySelector('label[for=mask-toggle]').click()")
        browser.evaluate("new Promise(r => setTimeout(r, 400))")
        assert browser.evaluate(opacity) == "1"
        browser.screenshot(SCREENSHOT_DIR / "neuron-masks-on.png")

        # the version picker: choose A = v2, B = v1 on the model page and open it (a GET form, redirected)
        browser.check(base + pages["model"])
        browser.evaluate("document.querySelector('form.picker select[name=baseline]').value = '2';"
                         "document.querySelector('form.picker select[name=candidate]').value = '1';"
                         "document.querySelector('form.picker').submit()")
        browser.wait_event("Page.loadEventFired")
        assert browser.evaluate("location.pathname") == "/models/lite0-demo/compare/2/1"
        assert "No drift verdict is stored" in browser.evaluate("document.body.innerText")
        # the filter: only FAIL
        browser.check(base + pages["model"])
        browser.evaluate("document.querySelector('form.filters select[name=verdict]').value = 'FAIL';"
                         "document.querySelector('form.filters').submit()")
        browser.wait_event("Page.loadEventFired")
        rows = browser.evaluate("Array.from(document.querySelectorAll('table.neurons a.strong')).map(a => a.textContent)")
        assert rows == ["espresso"], rows

        # a traversal attempt answers the friendly 404 page
        r = browser.check(base + "/artifacts/%2e%2e/%2e%2e/etc/passwd")
        assert r["status"] == 404 and "root:" not in r["text"]


def test_static_export_in_chromium(chromium, populated, tmp_path):
    from dashboards.export import export_static

    store, art = populated
    index = export_static(store, art, tmp_path / "site")
    with Chromium(chromium) as browser:
        for name, page in (("static-overview", index),
                           ("static-neuron", tmp_path / "site/models/lite0-demo/neurons/espresso.html"),
                           ("static-compare", tmp_path / "site/models/lite0-demo/compare/1_vs_2.html")):
            r = browser.check(page.as_uri(), SCREENSHOT_DIR / f"{name}.png")
            assert r["broken_images"] == 0, (name, r["broken"])
            assert "FAIL" in r["text"]
        assert r["n_images"] >= 6
        # the stylesheet applied from disk (the top bar is dark)
        bg = browser.evaluate("getComputedStyle(document.querySelector('.topbar')).backgroundColor")
        assert bg == "rgb(22, 33, 58)"
