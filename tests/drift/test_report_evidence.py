"""The evidence travels: compare -> report JSON -> the store (a real SQLite file and artifact folder)
-> the evidence card of the neuron page, with the new top images marked."""
from __future__ import annotations

import json

import numpy as np

from audit.config import ThresholdsConfig
from audit.drift import compare_activations
from audit.drift.null import BenignNull
from audit.report import build_report
from tests.drift.synthetic import GROUPS, INNER, N, NAMES, acts, null_of


def test_evidence_reaches_the_neuron_page(tmp_path):
    from dashboards.evidence_view import evidence_context
    from dashboards.formatting import jinja_env
    from dashboards.links import Links
    from storage.repository import AuditStore

    rng = np.random.default_rng(1)
    values = rng.normal(size=(N, 16))
    order = np.argsort(-values[:, 0])
    b = values.copy()
    top, low = order[:5], order[-5:]
    b[top, 0], b[low, 0] = values[low, 0], values[top, 0] + 5      # the bottom five become the top
    base = acts(values)
    results = compare_activations({"blocks.1": base}, {"blocks.1": acts(b)}, [INNER],
                                  BenignNull({"blocks.1": null_of(base, 0.05)}), NAMES, GROUPS,
                                  ThresholdsConfig(bootstrap=100))
    assert results[0].verdict == "FAIL"
    report = json.loads(json.dumps(build_report("m", "1", "2", "probe-sha", results), allow_nan=False))
    assert report["probe"]["n_photographs"] == 12 and report["neurons"][0]["evidence"]["topk"]["new_in_b"]

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", tmp_path / "artifacts", upgrade=True)
    thumbs = [store.artifacts.put_image(np.full((8, 8, 3), i % 256, np.uint8)) for i in range(N)]
    store.upsert_probe_set("probe-sha", "synthetic", N, {"names": NAMES, "thumbnails": thumbs})
    store.save_report("m", "1", "2", report)
    links = Links(tmp_path / "artifacts")
    ctx = evidence_context(store, links, "m", "c0", {"baseline": "1", "candidate": "2"})
    assert ctx["verdict"] == "FAIL" and ctx["rows"][0]["level"] == "fail"
    new = [t for t in ctx["top_b"] if t["new"]]
    assert {t["index"] for t in new} == set(report["neurons"][0]["evidence"]["topk"]["new_in_b"])
    assert all(t["image"] and t["image"]["url"].startswith("/artifacts/") for t in ctx["top_b"])
    html = jinja_env().get_template("_evidence.html").render(evidence=ctx, links=links)
    assert "Why: evidence of v1 → v2" in html and html.count('class="ev-new"') == len(new)
    assert "12 photographs" in html                     # the power statement: too few photographs
    assert evidence_context(store, links, "m", "c0", {"baseline": "1", "candidate": "3"}) is None
