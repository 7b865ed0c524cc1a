"""The dashboard's read queries (storage/queries.py) against straightforward Python references computed from
every stored row, on small fleets drawn from seeds (benchmarks/fleet_store.py), on SQLite and PostgreSQL."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from fleet_store import build_fleet, fleet_config, pattern  # noqa: E402

from audit.records import DriftResult, Visualization  # noqa: E402
from storage.repository import AuditStore  # noqa: E402

VERDICTS = ("PASS", "WARN", "FAIL")


def _fleet(db_url, tmp_path, seed: int) -> AuditStore:
    """3 models x 5 versions x 6 neurons, a second probe set re-comparing some pairs (several rows per pair),
    and one neuron per model retired from the registry (inactive)."""
    store = AuditStore(db_url, tmp_path / "artifacts", upgrade=True)
    build_fleet(store, models=3, versions=5, neurons=6, open_alerts=9, warn_rate=0.2, change_rate=0.4, seed=seed,
                prefix=f"s{seed}")
    other = "e" * 64
    store.upsert_probe_set(other, "folder:./probe2", 10, {"names": [f"p{i}" for i in range(10)]})
    cfg = fleet_config(3, 5, 6, prefix=f"s{seed}")
    for m in cfg.models[:2]:
        for n in m.neurons[:3]:
            store.save_drift(m.name, "3", "4", other, DriftResult(n.id, n.layer, n.index, n.kind, "WARN",
                                                                  {"spearman": 0.9}, None, "second probe set"))
    for m in cfg.models:      # retire the last neuron of every model
        m.neurons.pop()
    # a new neuron of the first model: images for versions 2 and 3, never compared
    fresh = cfg.models[0].neurons[0].model_copy(update={"id": "fresh"})
    cfg.models[0].neurons.append(fresh)
    store.sync_registry(cfg)
    for v in ("2", "3"):
        store.save_neuron_results(cfg.models[0].name, v, "fresh", visualizations=[
            (f"fresh-{v}", Visualization("fresh", "vital", 0, pattern(90 + int(v))))])
    return store


def _all_rows(store, model=None):
    with store._read() as s:
        return store._drift_rows(s, model)            # every active row, oldest first (created_at, id)


def _latest(rows, key):
    out = {}
    for r in rows:                                    # oldest first: the last one wins
        out[key(r)] = r
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_latest_verdicts_counts_and_comparisons_match_every_row(db_url, tmp_path, seed):
    store = _fleet(db_url, tmp_path, seed)
    try:
        models = [m["name"] for m in store.list_models()]
        total = {v: 0 for v in VERDICTS}
        by_model = store.verdict_counts_by_model()
        latest_comps = store.latest_comparisons()
        for model in models:
            rows = _all_rows(store, model)
            latest = _latest(rows, lambda r: r["neuron_id"])
            got = store.latest_verdicts(model)
            assert [r["neuron_id"] for r in got] == sorted(latest)
            assert [r["id"] for r in got] == [latest[n]["id"] for n in sorted(latest)]
            counts = {v: sum(1 for r in latest.values() if r["verdict"] == v) for v in VERDICTS}
            assert by_model[model] == counts == store.verdict_counts(model)
            for v in VERDICTS:
                total[v] += counts[v]
            newest = max(rows, key=lambda r: (r["created_at"], r["id"]))
            assert latest_comps[model] == {"baseline": newest["baseline"], "candidate": newest["candidate"],
                                           "created_at": newest["created_at"]}
            # per (baseline, candidate): the latest row of each neuron, counted
            per_pair = _latest(rows, lambda r: (r["neuron_id"], r["baseline"], r["candidate"]))
            expect = {}
            for (nid, b, c), r in per_pair.items():
                e = expect.setdefault((b, c), {v: 0 for v in VERDICTS})
                e[r["verdict"]] += 1
            comps = store.comparisons(model)
            assert {(c["baseline"], c["candidate"]): c["counts"] for c in comps} == expect
            order = [max(((r["created_at"], r["id"]) for r in rows if (r["baseline"], r["candidate"]) == (c["baseline"], c["candidate"])))
                     for c in comps]
            assert order == sorted(order, reverse=True)            # newest first
            for c in comps[:4]:
                one = store.comparison(model, c["baseline"], c["candidate"])
                ref = _latest([r for r in rows if (r["baseline"], r["candidate"]) == (c["baseline"], c["candidate"])],
                              lambda r: r["neuron_id"])
                assert [r["id"] for r in one] == [ref[n]["id"] for n in sorted(ref)]
        assert store.verdict_counts() == total
        assert store.comparison(models[0], "2", "5") == []         # never compared
    finally:
        store.close()


@pytest.mark.parametrize("seed", [3])
def test_thumbnails_images_and_top_probes_match_each_neurons_history(db_url, tmp_path, seed):
    store = _fleet(db_url, tmp_path, seed)
    try:
        for model in [m["name"] for m in store.list_models()]:
            latest = _latest(_all_rows(store, model), lambda r: r["neuron_id"])
            thumbs = store.latest_thumbnails(model)
            pair = ("2", "4")
            vizs = store.version_visualizations(model, pair)
            topk = store.top_probes(model, pair, limit=3)
            neurons = store.list_neurons(model)
            assert set(thumbs) == {n["neuron_id"] for n in neurons}
            for n in neurons:
                nid = n["neuron_id"]
                h = store.neuron_history(model, nid)
                by_version = {v["version"]: v for v in h["versions"]}
                # reference: the candidate of the latest comparison first, then the newest version with an image
                order = [latest[nid]["candidate"]] if nid in latest else []
                order += [v["version"] for v in reversed(h["versions"])]
                expect = next((v, sorted(by_version[v]["visualizations"], key=lambda z: (z["method"], z["seed"], z["id"]))[0])
                              for v in order if by_version[v]["visualizations"])
                assert thumbs[nid]["version"] == expect[0] and thumbs[nid]["image_path"] == expect[1]["image_path"]
                for v in pair:
                    assert [z["image_path"] for z in vizs.get((nid, v), [])] == \
                        [z["image_path"] for z in by_version[v]["visualizations"]]
                    assert topk.get((nid, v), []) == by_version[v]["topk"][:3]
        assert store.latest_thumbnails(f"s{seed}-00")["fresh"]["version"] == "3"   # no comparison: the newest image
    finally:
        store.close()


def test_open_alerts_pages_and_counts(db_url, tmp_path):
    store = _fleet(db_url, tmp_path, 4)
    try:
        every = store.open_alerts()
        assert store.count_open_alerts() == len(every) > 0
        paged = [a for off in range(0, len(every), 4) for a in store.open_alerts(limit=4, offset=off)]
        assert [a["id"] for a in paged] == [a["id"] for a in every]
        model = every[0]["model"]
        mine = [a for a in every if a["model"] == model]
        assert [a["id"] for a in store.open_alerts(model=model)] == [a["id"] for a in mine]
        assert store.count_open_alerts(model) == len(mine)
        assert store.open_alert_keys(model) == {(a["neuron_id"], a["baseline"], a["candidate"]) for a in mine}
        nid = mine[0]["neuron_id"]
        assert [a["id"] for a in store.open_alerts(model=model, neuron_id=nid)] == \
            [a["id"] for a in mine if a["neuron_id"] == nid]
    finally:
        store.close()


def test_versions_runs_and_mlflow(db_url, tmp_path):
    store = _fleet(db_url, tmp_path, 5)
    try:
        recent = store.recent_versions(per_model=2)
        for m in store.list_models():
            assert recent[m["name"]] == store.list_versions(m["name"])[-2:]
            assert store.model_info(m["name"]) == m
            runs = store.mlflow_runs_by_version(m["name"])
            assert sorted(runs, key=int) == [v["version"] for v in store.list_versions(m["name"])]
        assert store.model_info("nope") is None
        last = store.recent_runs(limit=1)[0]
        assert len(last["mlflow_runs"]) == 3 and {r["version"] for r in last["mlflow_runs"]} == {"5"}
        assert last["mlflow_run_ids"] == [r["run_id"] for r in last["mlflow_runs"]]
    finally:
        store.close()
