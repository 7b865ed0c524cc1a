"""The dashboard's pages over a real SQLite store written through the repository API (dash_real_store.py):
content, sorting, links, masking, artifact serving, read-only methods, the empty state."""
from __future__ import annotations

import os
import re

import pytest

from dash_real_store import FLOW_RUN, MLFLOW_EXPERIMENT, MLFLOW_RUNS

PAGES = ["/", "/models/lite0-demo", "/models/lite0-demo?sort=neuron", "/models/lite0-demo/neurons/espresso",
         "/models/lite0-demo/neurons/b5-c17", "/models/lite1-prod/neurons/b4-c9", "/models/lite0-demo/compare/1/2",
         "/models/lite1-prod/compare/1/3"]


def _srcs(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)


@pytest.mark.parametrize("url", PAGES)
def test_pages_render_and_every_image_is_served(client, url):
    r = client.get(url)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/html")
    assert "<title>" in r.text and "/static/style.css" in r.text
    srcs = _srcs(r.text)
    assert srcs or url == "/", url
    for src in srcs:
        assert src.startswith("/artifacts/"), src
        img = client.get(src)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png", src
        assert img.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_secrets_and_no_machine_paths_in_pages(client, art_root):
    for url in PAGES:
        text = client.get(url).text
        assert "hunter2" not in text and "mlflow-user" not in text, url
        # the footer names the store without the folders of this machine (screenshots go into the docs)
        assert str(art_root.parent) not in text and str(art_root) not in text, url
        assert "store <code>SQLite audit.db</code>" in text, url


def test_store_label_masks_passwords_and_drops_paths():
    from dashboards.sanitize import store_label

    assert store_label("postgresql+psycopg://audit:s3cr3t-pw@db.internal:5432/audit") == \
        "postgresql+psycopg://audit:***@db.internal:5432/audit"
    assert store_label("sqlite:////home/someone/projects/x/.neuron-audit/audit.db") == "SQLite audit.db"
    assert store_label("sqlite:///./rel/audit.db?mode=ro") == "SQLite audit.db"
    assert store_label("sqlite://") == "SQLite (in memory)"
    assert store_label(None) is None


def test_overview(client):
    text = client.get("/").text
    assert "lite0-demo" in text and "lite1-prod" in text
    assert "Open alerts" in text and "now fires on cat photographs" in text
    assert "completed" in text and "failed" in text and "CheckpointMismatchError" in text
    assert f'href="http://127.0.0.1:4200/runs/flow-run/{FLOW_RUN}"' in text
    for rid in MLFLOW_RUNS.values():
        assert f'href="http://127.0.0.1:5000/#/experiments/{MLFLOW_EXPERIMENT}/runs/{rid}"' in text
    assert 'href="/models/lite0-demo/compare/1/2"' in text
    # global counts = latest verdict per active neuron: lite0 1 FAIL 1 WARN 2 PASS; lite1 b4-c9's latest is 1→3 FAIL
    assert re.search(r'bigcount-fail"><b>2</b>', text)
    assert re.search(r'bigcount-warn"><b>1</b>', text)
    assert re.search(r'bigcount-pass"><b>2</b>', text)


def test_run_ids_are_text_without_ui_urls(plain_client):
    text = plain_client.get("/").text
    assert "http://127.0.0.1:4200" not in text and "/runs/" not in text
    assert FLOW_RUN[:8] in text and MLFLOW_RUNS["1"][:8] in text     # the ids, as text
    model = plain_client.get("/models/lite0-demo").text
    assert MLFLOW_RUNS["2"][:8] in model and "/runs/" not in model


def _row_order(text: str) -> list[str]:
    body = text.split('<table class="table neurons">', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<a class="strong" href="/models/lite0-demo/neurons/([^"]+)"', body)


def test_model_page_sorts_by_severity_by_default(client):
    text = client.get("/models/lite0-demo").text
    assert _row_order(text) == ["espresso", "b5-c17", "b3-c4", "egyptian-cat"]
    assert 'badge-fail">FAIL' in text and "now fires on cat photographs" in text
    assert 'href="/models/lite0-demo?sort=neuron"' in text
    assert _row_order(client.get("/models/lite0-demo?sort=neuron").text) == ["b3-c4", "b5-c17", "egyptian-cat", "espresso"]
    assert _row_order(client.get("/models/lite0-demo?sort=spearman").text)[0] == "espresso"
    assert _row_order(client.get("/models/lite0-demo?sort=nonsense").text)[0] == "espresso"
    assert "band-fail" in text and "band-warn" in text
    # the MLflow run of each version, linked
    assert f'href="http://127.0.0.1:5000/#/experiments/{MLFLOW_EXPERIMENT}/runs/{MLFLOW_RUNS["2"]}"' in text


def test_neuron_page(client, real_store):
    text = client.get("/models/lite0-demo/neurons/b5-c17").text
    assert text.count("<svg") >= 5                    # histogram + statistics over versions
    assert "band-warn" in text and "band-fail" in text and "th-warn" in text
    assert 'id="mask-toggle"' in text and 'class="viz-mask' in text
    assert "Top-activating probe images" in text
    for v in real_store.neuron_history("lite0-demo", "b5-c17")["versions"]:
        for t in v["topk"]:
            assert f">{t['name']}</span>" in text
    assert f'href="http://127.0.0.1:4200/runs/flow-run/{FLOW_RUN}"' in text     # the run that compared it
    text = client.get("/models/lite0-demo/neurons/espresso").text
    assert 'badge-fail">FAIL' in text and "alert-ring" in text and "open alert" in text
    assert 'id="mask-toggle"' not in text             # no masks for this neuron: no toggle
    # a version whose image file is gone shows a placeholder, not a broken image
    gone = real_store.neuron_history("lite1-prod", "b4-c9")["versions"][2]["visualizations"][0]["image_path"]
    text = client.get("/models/lite1-prod/neurons/b4-c9").text
    assert "image file missing" in text and gone not in text
    assert text.count("<circle") >= 3                 # three comparisons over time


def test_compare_page(client):
    text = client.get("/models/lite0-demo/compare/1/2").text
    for nid in ("espresso", "b5-c17", "b3-c4", "egyptian-cat"):
        assert f'href="/models/lite0-demo/neurons/{nid}"' in text
    assert text.index("espresso") < text.index("egyptian-cat")
    assert "now fires on cat photographs" in text and "Spearman 0.91 below warn 0.95" in text
    assert "A · v1" in text and "B · v2" in text
    assert f'href="http://127.0.0.1:5000/#/experiments/{MLFLOW_EXPERIMENT}/runs/{MLFLOW_RUNS["2"]}"' in text
    assert f'href="http://127.0.0.1:4200/runs/flow-run/{FLOW_RUN}"' in text
    assert "No drift verdict is stored" not in text


@pytest.mark.parametrize("url", ["/models/nope", "/models/nope/neurons/x", "/models/lite0-demo/neurons/nope",
                                 "/models/lite0-demo/compare/1/9", "/models/lite0-demo/compare/9/1",
                                 "/models/nope/compare/1/2", "/nothing-here", "/static/../app.py", "/static/nope.css"])
def test_unknown_pages_are_404(client, url):
    r = client.get(url)
    assert r.status_code == 404
    assert "Not found" in r.text


def test_artifact_served(client, real_store):
    rel = real_store.neuron_history("lite0-demo", "espresso")["versions"][0]["visualizations"][0]["image_path"]
    r = client.get("/artifacts/" + rel)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


TRAVERSALS = [
    "/artifacts/../secret.txt",
    "/artifacts/../../etc/passwd",
    "/artifacts/%2e%2e/secret.txt",
    "/artifacts/%2e%2e/%2e%2e/etc/passwd",
    "/artifacts/%2E%2E/secret.txt",
    "/artifacts/..%2fsecret.txt",
    "/artifacts/%2e%2e%2fsecret.txt",
    "/artifacts/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/artifacts/images/../../secret.txt",
    "/artifacts/images/%2e%2e/%2e%2e/secret.txt",
    "/artifacts/..%5csecret.txt",
    "/artifacts/..\\secret.txt",
    "/artifacts/%252e%252e/secret.txt",
    "/artifacts//etc/passwd",
    "/artifacts/%2fetc%2fpasswd",
    "/artifacts/etc/passwd%00.png",
    "/artifacts/",
    "/artifacts/images",
    "/artifacts/escape-link/passwd",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_is_404(client, art_root, url):
    assert (art_root.parent / "secret.txt").is_file()
    link = art_root / "escape-link"
    if not link.exists() and hasattr(os, "symlink"):
        os.symlink("/etc", link)          # a symlink inside the root that points outside it
    r = client.get(url)
    assert r.status_code == 404, (url, r.status_code)
    assert "TOPSECRET" not in r.text and "root:" not in r.text


def test_path_traversal_raw_request(client):
    """Without client-side normalisation of `..` (raw request target)."""
    import httpx

    transport = client._transport
    for raw in (b"/artifacts/../secret.txt", b"/artifacts/../../../../etc/passwd", b"/artifacts/%2e%2e/secret.txt"):
        req = httpx.Request("GET", "http://testserver/")
        req.url = httpx.URL("http://testserver/").copy_with(raw_path=raw)
        resp = transport.handle_request(req)
        resp.read()
        assert resp.status_code == 404, raw
        assert b"TOPSECRET" not in resp.content


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("url", ["/", "/models/lite0-demo", "/artifacts/images/x.png", "/healthz", "/nowhere",
                                 "/models/lite0-demo/compare?baseline=1&candidate=2"])
def test_only_get_is_allowed(client, method, url):
    r = client.request(method, url)
    assert r.status_code == 405
    assert "GET" in r.headers.get("allow", "")


def test_head_is_allowed(client):
    assert client.head("/").status_code == 200


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "models": 2}


def test_healthz_reports_broken_store(tmp_path):
    from fastapi.testclient import TestClient

    from dashboards.app import create_app
    from storage import migrate
    from storage.repository import AuditStore

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = AuditStore(url, tmp_path / "artifacts", upgrade=True)
    migrate.downgrade(url, "base")           # the tables are gone under the running dashboard
    with TestClient(create_app(store, tmp_path / "artifacts")) as c:
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "error"
    store.close()


def test_empty_state(empty_client):
    r = empty_client.get("/")
    assert r.status_code == 200
    assert "No audits yet" in r.text and "neuron-audit demo" in r.text and "neuron-audit run" in r.text
    assert empty_client.get("/models/anything").status_code == 404
    assert empty_client.get("/healthz").json()["status"] == "ok"


def test_svg_helpers():
    from audit.config import ThresholdsConfig
    from dashboards import svg

    specs = {s.key: s for s in svg.stat_specs(ThresholdsConfig())}
    assert svg.band_of(specs["spearman"], 0.5) == "fail"
    assert svg.band_of(specs["spearman"], 0.9) == "warn"
    assert svg.band_of(specs["spearman"], 0.99) == "ok"
    assert svg.band_of(specs["wasserstein_norm"], 2.0) == "fail"
    assert svg.band_of(specs["wasserstein_norm"], None) is None
    assert svg.band_of(specs["cross_activation"], 0.1) is None
    out = svg.stat_over_versions(specs["spearman"], [{"label": "1→2", "value": None}, {"label": "2→3", "value": 0.5,
                                                                                        "verdict": "FAIL", "alert": True}])
    assert "n/a" in out and "alert-ring" in out and "band-fail" in out
    assert "no activation histogram" in svg.histogram_overlay([{"label": "1", "edges": [], "counts": []}])
    assert "<polyline" in svg.histogram_overlay([{"label": "1<b>", "edges": [0, 1, 2], "counts": [3, 4]}])
    assert "1<b>" not in svg.histogram_overlay([{"label": "1<b>", "edges": [0, 1, 2], "counts": [3, 4]}])
    p = svg.stat_over_versions(specs["topk_p_value"], [{"label": "a", "value": 1e-12}, {"label": "b", "value": 0.3}])
    assert ">1e-12</text>" in p                       # the log axis reaches down to the smallest p-value
    assert "topk_p_value = 1.00e-12" in p and "topk_p_value = 0.300" in p


def test_mask_url():
    from dashboards.sanitize import link_url, mask_url

    assert mask_url("postgresql+psycopg://u:pw@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert mask_url("sqlite:///./a.db") == "sqlite:///./a.db"
    assert mask_url("http://h/x?token=s3cr3t&a=1") == "http://h/x?token=***&a=1"
    assert link_url("http://u:p@h:5000/") == "http://h:5000"
    assert link_url("javascript:alert(1)") is None


def test_formatting():
    from dashboards.formatting import fmt_duration, fmt_num, fmt_time

    assert fmt_duration(252.4) == "4 min 12 s" and fmt_duration(9.1) == "9.1 s" and fmt_duration(None) == "—"
    assert fmt_duration(3 * 3600 + 125) == "3 h 02 min"
    assert fmt_num(1e-12) == "1.00e-12" and fmt_num(0.5) == "0.500" and fmt_num(7) == "7" and fmt_num(None) == "—"
    assert fmt_time("2026-11-20T02:00:00+00:00") == "2026-11-20 02:00 UTC"


def test_one_url_masker_for_store_preflight_and_dashboard():
    """The store's messages, the preflight and the dashboard mask with the same function: a secret in the
    query string is hidden everywhere, not only on the dashboard."""
    from dashboards.sanitize import mask_url as page_mask
    from storage.db import mask_url as store_mask

    for url in ("postgresql+psycopg://u:pw@h:5432/db", "postgresql://u@h/db?password=s3cr3t",
                "http://h/x?token=abc&a=1", "sqlite:///./a.db"):
        assert page_mask(url) == store_mask(url)
    assert "s3cr3t" not in store_mask("postgresql://u@h/db?password=s3cr3t")
    assert page_mask(None) is None
