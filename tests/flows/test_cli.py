"""The command line's contract: exit codes and messages that name the bad key."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from progress_wait import run_while_progressing


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """The command line in its own process, waited on while it makes progress (its stage lines, or files
    written under `cwd`), not for a fixed time: a loaded machine makes a compare several times slower."""
    cmd = [sys.executable, "-m", "audit", *args]
    r = run_while_progressing(cmd, watch=[Path(cwd)] if cwd else [], cwd=cwd)
    assert not r.stalled, f"{' '.join(args)}: no output and no file written for a long time: {r.stderr[-2000:]}"
    return subprocess.CompletedProcess(cmd, r.returncode, r.stdout, r.stderr)


def test_help_everywhere():
    for cmd in ([], ["demo"], ["run"], ["serve"], ["visualize"], ["compare"], ["dashboard"], ["report"], ["db", "upgrade"]):
        r = cli(*cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


def test_missing_config_is_exit_2():
    r = cli("run", "-c", "/nonexistent/neuron-audit.yaml")
    assert r.returncode == 2
    assert "does not exist" in r.stderr


@pytest.mark.parametrize("mutate,expected", [
    (lambda c: c["models"][0]["neurons"][0].update(kind="klass"), "models[0].neurons[0].kind"),
    (lambda c: c["models"][0]["versions"][0].update(source="s3://x"), "models[0].versions[0].source"),
    (lambda c: c["schedule"].update(cron="every night"), "schedule.cron"),
    (lambda c: c["models"][0].update(champion="7"), "champion '7' is not one of the versions"),
    (lambda c: c["store"].update(databse="x"), "store.databse: unknown key"),
])
def test_bad_config_values_name_the_key(tmp_path, tiny_config, mutate, expected):
    cfg = yaml.safe_load(tiny_config.read_text())
    mutate(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = cli("compare", "-c", str(bad), "--model", "lite0-demo", "--baseline", "1", "--candidate", "2")
    assert r.returncode == 2
    assert expected in r.stderr


def test_unknown_layer_and_channel_out_of_range(tmp_path, tiny_config):
    cfg = yaml.safe_load(tiny_config.read_text())
    cfg["models"][0]["neurons"][4].update(layer="blocks.99")
    cfg["models"][0]["neurons"][5].update(index=4000)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = cli("visualize", "-c", str(bad), "--model", "lite0-demo", "--version", "1", "--neuron", "b5-c17",
            "--steps", "2", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2
    assert "unknown layer 'blocks.99'" in r.stderr and "blocks.5" in r.stderr
    r = cli("visualize", "-c", str(bad), "--model", "lite0-demo", "--version", "1", "--neuron", "b3-c40",
            "--steps", "2", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2
    assert "4000 is out of range" in r.stderr and "has 80 channels" in r.stderr


def test_visualize_writes_png(tmp_path, tiny_config):
    out = tmp_path / "egyptian-cat.png"
    r = cli("visualize", "-c", str(tiny_config), "--model", "lite0-demo", "--version", "1",
            "--neuron", "egyptian-cat", "--steps", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(out).size == (64, 64)


def test_compare_writes_spec_report_and_exits_1_on_fail(tmp_path, tiny_config):
    import json

    out = tmp_path / "report.json"
    r = cli("compare", "-c", str(tiny_config), "--model", "lite0-demo", "--baseline", "1", "--candidate", "2",
            "--no-visuals", "--json", str(out))
    assert r.returncode == 1, r.stderr
    report = json.loads(out.read_text())
    for key in ("model", "baseline", "candidate", "probe_set_sha256", "created_at", "neurons", "summary"):
        assert key in report
    espresso = next(n for n in report["neurons"] if n["id"] == "espresso")
    assert espresso["verdict"] == "FAIL" and espresso["reason"]
    for key in ("id", "layer", "index", "kind", "verdict", "statistics", "matched_index", "reason"):
        assert key in espresso
    for key in ("spearman", "topk_jaccard", "topk_p_value", "wasserstein_norm", "cross_activation", "visual_distance"):
        assert key in espresso["statistics"]
    # Only the planted neuron changed (a head-only change of the espresso row).
    verdicts = {n["id"]: n["verdict"] for n in report["neurons"]}
    assert verdicts == {"egyptian-cat": "PASS", "espresso": "FAIL", "rocket": "PASS", "tripod": "PASS",
                        "b5-c17": "PASS", "b3-c40": "PASS"}, report["neurons"]
    assert report["summary"] == {"PASS": 5, "WARN": 0, "FAIL": 1}
