"""`neuron-audit watch`: exit codes, the JSON report, idempotent re-runs, one alert per new FAIL,
bad input that stores nothing. Real Lite0, real SQLite store, real MLflow (sqlite) store."""
from __future__ import annotations

import json

import pytest
import yaml

from watch_testlib import write_config


def watch(config, *args) -> int:
    from flows.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["watch", "-c", str(config), *[str(a) for a in args]])
    return exc.value.code


def _store(config):
    from flows import runtime

    return runtime.store(str(config))


def _watch_rows(config) -> dict:
    c = _store(config).counts()
    return {k: c[k] for k in ("watch_batches", "watch_results", "watch_alerts")}


def test_clean_passes_blurred_fails_and_reruns_update_in_place(tmp_path, batches, webhook, mlflow_uri):
    config = write_config(tmp_path / "cfg", webhook=webhook.url, mlflow=mlflow_uri)
    out = tmp_path / "clean.json"
    assert watch(config, "--model", "lite0", "--images", batches["clean"], "--json", out) == 0
    report = json.loads(out.read_text())
    for key in ("model", "version", "batch_id", "n_images", "neurons"):
        assert key in report
    assert (report["model"], report["version"], report["batch_id"], report["n_images"]) == ("lite0", "1", "clean", 48)
    assert report["verdict"] != "FAIL" and len(report["neurons"]) == 5
    for n in report["neurons"]:
        assert {"id", "verdict", "reason", "statistics"} <= set(n) and n["reason"]
        assert n["verdict"] != "FAIL"
    assert webhook.received == []

    out = tmp_path / "blurred.json"
    assert watch(config, "--model", "lite0", "--images", batches["blurred"], "--json", out) == 1
    report = json.loads(out.read_text())
    # the greyscale image is converted and used; the undecodable one is skipped and named
    assert report["n_images"] == 49 and report["n_skipped"] == 1
    assert set(report["skipped"]) == {"broken.jpg"}
    fails = [n for n in report["neurons"] if n["verdict"] == "FAIL"]
    assert fails, report["summary"]
    for n in fails:
        st = n["statistics"]
        assert st["p_fail_holm"] < 0.01                                   # watch.alpha
        assert abs(st["shift"]) >= 0.5 or max(abs(st["above"] - st["above_reference"]),
                                               abs(st["below"] - st["below_reference"])) >= 0.15
        assert n["id"] in report["summary"]
        assert len(n["evidence"]["images"]) == 6 and all(im["thumbnail"] for im in n["evidence"]["images"])
    assert report["summary"] and report["power"]["statement"]
    assert report["mlflow_run_id"]
    n_alerts = len(fails) + (report["joint"]["verdict"] == "FAIL") + (report["layers"]["verdict"] == "FAIL")
    assert len(webhook.received) == n_alerts
    assert all(a["kind"] == "watch" and a["batch_id"] == "blurred" for a in webhook.received)

    before = _watch_rows(config)
    assert before == {"watch_batches": 2, "watch_results": 10, "watch_alerts": n_alerts}
    # the same batch again: updated in place, nothing duplicated, no second alert
    assert watch(config, "--model", "lite0", "--images", batches["blurred"]) == 1
    assert _watch_rows(config) == before
    assert len(webhook.received) == n_alerts
    # another folder under a batch id seen before replaces that batch
    assert watch(config, "--model", "lite0", "--images", batches["clean"], "--batch-id", "blurred") == 0
    assert _watch_rows(config)["watch_batches"] == 2
    assert _store(config).batches.get_batch("lite0", "blurred")["verdict"] != "FAIL"


@pytest.mark.parametrize("args,expected", [
    (["--model", "nope", "--images", "{clean}"], "unknown model 'nope'"),
    (["--model", "lite0", "--version", "7", "--images", "{clean}"], "unknown version '7'"),
    (["--model", "lite0", "--images", "{empty}"], "only 0 usable image(s)"),
    (["--model", "lite0", "--images", "{missing}"], "is not a folder"),
    (["--model", "lite0", "--images", "{clean}", "--batch-id", "a/b"], "--batch-id: 'a/b'"),
])
def test_bad_input_is_exit_2_and_stores_nothing(tmp_path, batches, capsys, args, expected):
    config = write_config(tmp_path / "cfg")
    folders = {**{k: str(v) for k, v in batches.items()}, "missing": str(tmp_path / "missing")}
    assert watch(config, *[a.format(**folders) for a in args]) == 2
    assert expected in capsys.readouterr().err
    assert not (config.parent / "store" / "audit.db").exists()      # checked before the store was touched


def test_too_few_usable_images_names_the_skipped(tmp_path, batches, capsys):
    config = write_config(tmp_path / "cfg", watch={"min_images": 60})
    assert watch(config, "--model", "lite0", "--images", batches["blurred"]) == 2
    err = capsys.readouterr().err
    # broken.jpg does not decode (skipped, named); grey.png is greyscale (converted to RGB, used)
    assert "only 49 usable image(s)" in err and "need at least 60" in err and "broken.jpg" in err
    assert not (config.parent / "store" / "audit.db").exists()


def test_unknown_layer_is_watched_without_that_neuron_exit_3(tmp_path, batches, mlflow_uri):
    config = write_config(tmp_path / "cfg", mlflow=mlflow_uri)
    cfg = yaml.safe_load(config.read_text())
    cfg["models"][0]["neurons"].append({"id": "ghost", "kind": "inner", "layer": "blocks.99", "index": 1})
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "r.json"
    assert watch(config, "--model", "lite0", "--images", batches["clean"], "--json", out) == 3
    report = json.loads(out.read_text())
    assert "ghost" in report["errors"] and "blocks.99" in report["errors"]["ghost"]
    assert len(report["neurons"]) == 5


def test_reference_window_from_a_folder_and_from_earlier_batches(tmp_path, batches, sample_images, capsys,
                                                                 mlflow_uri):
    from watch_testlib import write_batch

    config = write_config(tmp_path / "cfg", watch={"reference": "batches", "reference_batches": 2})
    assert watch(config, "--model", "lite0", "--images", batches["clean"]) == 2
    assert "'batches' needs earlier PASS batches" in capsys.readouterr().err
    assert _watch_rows(config)["watch_batches"] == 0

    reference = write_batch(tmp_path / "reference", sample_images, seed=21, n=60)
    config = write_config(tmp_path / "cfg2", watch={"reference": str(reference)}, mlflow=mlflow_uri)
    out = tmp_path / "r.json"
    assert watch(config, "--model", "lite0", "--images", batches["blurred"], "--json", out) == 1
    report = json.loads(out.read_text())
    assert report["reference"]["kind"] == "folder" and report["reference"]["n_units"] == 60
