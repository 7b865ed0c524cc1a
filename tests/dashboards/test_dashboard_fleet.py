"""The dashboard at fleet scale, on small synthetic fleets written through the repository API
(benchmarks/fleet_store.py): the SQL statements a page sends do not grow with the history, and the
filters, pages and version picker behave."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from fleet_bench import counting_queries
from fleet_store import build_fleet

MODEL = "f-00"


def _store(tmp_path, versions: int, seed: int = 0):
    from storage.repository import AuditStore

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", tmp_path / "artifacts", upgrade=True)
    build_fleet(store, models=2, versions=versions, neurons=6, open_alerts=30, change_rate=0.5, seed=seed, prefix="f")
    return store


@pytest.fixture(scope="module")
def fleets(tmp_path_factory):
    """{versions: (store, artifacts)} for a short and a three times longer history of the same fleet shape."""
    out = {}
    for versions in (3, 9):
        tmp = tmp_path_factory.mktemp(f"fleet{versions}")
        out[versions] = (_store(tmp, versions), tmp / "artifacts")
    yield out
    for store, _ in out.values():
        store.close()


def _pages(versions: int, neuron: str) -> dict[str, str]:
    last = str(versions)
    return {"overview": "/", "overview page 2": "/?alerts_page=2", "model": f"/models/{MODEL}",
            "model filtered": f"/models/{MODEL}?verdict=FAIL&kind=inner", "neuron": f"/models/{MODEL}/neurons/{neuron}",
            "compare": f"/models/{MODEL}/compare/{versions - 1}/{last}", "compare vs champion": f"/models/{MODEL}/compare/1/{last}",
            "compare not stored": f"/models/{MODEL}/compare/{last}/2"}


def test_queries_per_page_do_not_grow_with_history(fleets):
    from dashboards.app import create_app

    counts = {}
    for versions, (store, art) in fleets.items():
        neuron = store.list_neurons(MODEL)[0]["neuron_id"]
        with TestClient(create_app(store, art)) as client:
            for name, url in _pages(versions, neuron).items():
                with counting_queries(store.engine) as seen:
                    r = client.get(url)
                assert r.status_code == 200, (versions, url, r.text[:300])
                counts.setdefault(name, []).append(len(seen))
    for name, (short, long) in counts.items():
        assert short == long, f"{name}: {short} SQL statements at 3 versions, {long} at 9"
        assert short <= 12, f"{name}: {short} SQL statements"


def test_filters_pages_and_picker(fleets):
    from dashboards.app import create_app

    store, art = fleets[9]
    with TestClient(create_app(store, art)) as client:
        # the model page lists every neuron; each filter keeps exactly the rows it names
        rows = {r["neuron_id"]: r for r in store.neuron_verdicts(MODEL)}

        def listed(query: str) -> set[str]:
            text = client.get(f"/models/{MODEL}{query}").text
            return set(re.findall(rf'<a class="strong" href="/models/{MODEL}/neurons/([^"]+)"', text))

        assert listed("") == set(rows)
        for verdict in ("FAIL", "WARN", "PASS"):
            assert listed(f"?verdict={verdict}") == {n for n, r in rows.items() if r["verdict"] == verdict}
        assert listed("?kind=class") == {n for n, r in rows.items() if r["kind"] == "class"}
        assert listed("?layer=blocks.3") == {n for n, r in rows.items() if r["layer"] == "blocks.3"}
        assert listed("?q=N001") == {n for n in rows if "n001" in n}          # case-insensitive id search
        assert listed("?q=no-such-neuron") == set()
        assert "No neuron matches this filter" in client.get(f"/models/{MODEL}?q=no-such-neuron").text

        # the open alerts come a page at a time (25 each); the pages together list each alert once
        total, listed_alerts, page = store.count_open_alerts(), 0, 1
        while True:
            text = client.get(f"/?alerts_page={page}").text
            body = text.split('id="alerts"', 1)[1].split("</table>", 1)[0]
            listed_alerts += len(re.findall(r"<tr>\s*<td>", body))
            if f'href="/?alerts_page={page + 1}"' not in text:
                break
            page += 1
        assert total == 30 and listed_alerts == total and page == 2

        # the version picker redirects to the canonical compare page; a pair never compared still renders
        r = client.get(f"/models/{MODEL}/compare?baseline=7&candidate=2", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/models/{MODEL}/compare/7/2"
        text = client.get(r.headers["location"]).text
        assert "No drift verdict is stored for v7 → v2" in text
        assert text.count('class="cmp ') == len(rows)                   # every neuron, images A and B
        assert client.get(f"/models/{MODEL}/compare/7/7").status_code == 400
        assert client.get(f"/models/{MODEL}/compare?baseline=7").status_code == 400
        assert client.get(f"/models/{MODEL}/compare/7/99").status_code == 404
