"""The production-batch pages (dashboards/watch_views.py) in real headless Chromium over a real
SQLite store: the model's batch timeline, a batch page with its evidence images, the neuron page's
"drift across production batches" section, and the same pages in the static export."""
from __future__ import annotations

import numpy as np
import pytest

from browser import SCREENSHOT_DIR, Chromium, running_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def watched_store(tmp_path_factory):
    """A store with lite0-demo's neurons and three watched batches (the last one blurred: FAIL)."""
    from audit.config import AuditConfig
    from storage.repository import AuditStore

    tmp = tmp_path_factory.mktemp("watch-browser")
    store = AuditStore(f"sqlite:///{tmp / 'audit.db'}", tmp / "artifacts", upgrade=True)
    store.sync_registry(AuditConfig.model_validate({"models": [{
        "name": "lite0-demo", "architecture": "efficientnet_lite0", "champion": "1",
        "versions": [{"version": "1", "source": "builtin:efficientnet_lite0"}],
        "neurons": [{"id": "espresso", "kind": "class", "layer": "classifier", "index": 967},
                    {"id": "b3-c40", "kind": "inner", "layer": "blocks.3", "index": 40}]}]}))
    store.upsert_model_version("lite0-demo", "1", "builtin:efficientnet_lite0", "a" * 64)
    rng = np.random.default_rng(0)
    for day, shift in (("2026-11-29", 0.1), ("2026-11-30", -0.2), ("2026-12-01-blurred", -1.6)):
        verdict = "FAIL" if shift < -1 else "PASS"
        results = []
        for nid in ("espresso", "b3-c40"):
            s = shift if nid == "b3-c40" else 0.05
            v = "FAIL" if (nid == "b3-c40" and verdict == "FAIL") else "PASS"
            images = [{"index": i, "name": f"img{i:03d}", "value": float(-i), "reference_percentile": 0.02 * i,
                       "thumbnail": store.artifacts.put_image(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))}
                      for i in range(6)]
            edges = np.linspace(-3, 3, 25)
            results.append({"neuron_id": nid, "verdict": v,
                            "reason": "channel fires lower on this batch" if v == "FAIL" else "within the reference window",
                            "statistics": {"shift": s, "shift_ci": [s - 0.3, s + 0.3], "above": 0.1, "below": 0.1 - s / 4,
                                           "p_fail_holm": 1e-9 if v == "FAIL" else 0.8, "p_value": 0.5},
                            "evidence": {"direction": "dropped", "images": images,
                                         "hist": {"edges": edges.tolist(),
                                                  "reference": np.histogram(rng.normal(size=200), edges)[0].tolist(),
                                                  "batch": np.histogram(rng.normal(shift, 1, 64), edges)[0].tolist()}}})
        store.batches.save_batch("lite0-demo", "1", day, source=f"/data/{day}", images_sha256=f"{len(day):064x}",
                                 n_images=64, skipped={}, reference={"kind": "probe", "description": "probe set",
                                                                    "n_units": 24, "sha256": "r" * 64},
                                 verdict=verdict, joint={"verdict": verdict, "ratio": 1.0 - 5 * shift,
                                                          "p_fail_holm": 0.5, "reason": "joint test"},
                                 summary={"text": "all registered channels in blocks.3 dropped" if verdict == "FAIL"
                                          else "every registered neuron responds as on the reference window",
                                          "groups": [{"layer": "blocks.3", "direction": "dropped", "kind": "inner",
                                                      "neurons": ["b3-c40"], "registered": 1, "median_shift": shift}]
                                          if verdict == "FAIL" else [],
                                          "power": {"shift_fail": 0.5, "statement": "power statement"}},
                                 neuron_ids=["espresso", "b3-c40"], image_names=[f"img{i:03d}" for i in range(64)],
                                 values=rng.normal(size=(64, 2)), results=results)
    yield store, tmp / "artifacts"
    store.close()


def test_batch_pages_in_chromium(chromium, watched_store, tmp_path):
    from dashboards.app import create_app
    from dashboards.export import export_static

    store, art = watched_store
    pages = {"watch-timeline": "/models/lite0-demo/batches",
             "watch-batch": "/models/lite0-demo/batches/2026-12-01-blurred",
             "watch-neuron": "/models/lite0-demo/neurons/b3-c40",
             "watch-model": "/models/lite0-demo"}
    with running_server(create_app(store, art)) as base, Chromium(chromium) as browser:
        r = {name: browser.check(base + path, SCREENSHOT_DIR / f"{name}.png") for name, path in pages.items()}
        for name, res in r.items():
            assert res["status"] == 200 and res["broken_images"] == 0, (name, res["broken"])
        text = r["watch-timeline"]["text"]
        assert "2026-12-01-blurred" in text and "FAIL" in text and "b3-c40" in text
        assert r["watch-batch"]["n_images"] == 12                          # 6 evidence images per neuron
        assert "all registered channels in blocks.3 dropped" in r["watch-batch"]["text"]
        assert "Drift across production batches" in r["watch-neuron"]["text"]
        assert "production batches" in r["watch-model"]["text"]
        missing = browser.check(base + "/models/lite0-demo/batches/no-such-batch")
        assert missing["status"] == 404 and "no batch 'no-such-batch'" in missing["text"]
        index = export_static(store, art, tmp_path / "site")
        page = tmp_path / "site/models/lite0-demo/batches/2026-12-01-blurred.html"
        res = browser.check(page.as_uri(), SCREENSHOT_DIR / "watch-batch-static.png")
        assert index.is_file() and res["broken_images"] == 0 and res["n_images"] == 12 and "FAIL" in res["text"]
        res = browser.check((tmp_path / "site/models/lite0-demo/batches/index.html").as_uri())
        assert res["broken_images"] == 0 and "2026-11-29" in res["text"]
