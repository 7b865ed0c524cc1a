"""Logs a scheduler can read (flows/logs.py): without a TTY every long stage logs one line when it starts and
one when it ends (its duration and what it produced); --json-logs makes every stderr line a JSON object;
--quiet leaves errors, warnings and the verdicts. A real `neuron-audit` process on the tiny config of the
fault suite, its stderr a pipe (no TTY), against the session's Prefect server."""
from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from tests.faults.conftest import cli, cli_process, swapped_checkpoint, write_config  # noqa: F401 (fixture)

AUDIT_STAGES = {"preflight", "plan", "register", "probe statistics", "render", "MLflow sync", "compare", "alerts",
                "static report"}


def _json_lines(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing logged"
    docs = [json.loads(line) for line in lines]          # every line is one JSON object
    for d in docs:
        assert {"timestamp", "level", "logger", "message"} <= set(d), d
        assert d["logger"].startswith(("neuron_audit", "prefect")), d
    return docs


def _stage_events(docs: list[dict]) -> dict[tuple[str, str], Counter]:
    events: dict[tuple[str, str], Counter] = {}
    for d in docs:
        if "stage" in d:
            events.setdefault((d["stage"], d["subject"]), Counter())[d["event"]] += 1
    return events


@pytest.fixture(scope="module")
def audited(tmp_path_factory, swapped_checkpoint, prefect_harness):  # noqa: F811
    """A fresh audit of the tiny config by a real process with --json-logs (stdout and stderr are pipes)."""
    d = tmp_path_factory.mktemp("logs")
    cfg = write_config(d, swapped_checkpoint)
    r = cli_process("--json-logs", "run", "-c", str(cfg))
    return cfg, r


@pytest.mark.slow
def test_json_logs_one_start_and_one_end_per_stage(audited):
    _cfg, r = audited
    assert r.returncode == 1, r.stderr[-3000:]          # the swapped rows FAIL
    docs = _json_lines(r.stderr)
    events = _stage_events(docs)
    assert AUDIT_STAGES <= {stage for stage, _ in events}, sorted(events)
    for (stage, subject), seen in events.items():
        # `run` checks (and, once a store exists, plans) before it starts the flow, and the flow (which a
        # scheduler may start without the CLI) checks and plans again: up to two honest pairs; every other stage
        # runs once per subject
        most = 2 if stage in ("preflight", "plan") else 1
        assert seen["start"] == seen["end"] and 1 <= seen["start"] <= most and set(seen) == {"start", "end"}, \
            (stage, subject, seen)
    ends = [d for d in docs if d.get("event") == "end"]
    for d in ends:
        assert d["level"] == "INFO" and isinstance(d["duration_s"], (int, float)) and d["duration_s"] >= 0, d
        assert "done in" in d["message"], d
    by_stage = {(d["stage"], d["subject"]): d for d in ends}
    renders = [d for (stage, _), d in by_stage.items() if stage == "render"]
    assert {d["subject"] for d in renders} == {"3 visualizations of tiny v1", "3 visualizations of tiny v2"}
    for d in renders:       # what it produced: every visualization is either rendered or reused
        assert d["counts"]["re-rendered"] + d["counts"]["reused"] == 3, d
        assert f"{d['counts']['re-rendered']} re-rendered" in d["message"], d
    compare = by_stage[("compare", "tiny v1 -> v2")]
    assert compare["counts"]["FAIL"] >= 1 and compare["counts"]["neurons"] == 3, compare
    assert "FAIL" in r.stdout                             # stdout keeps the verdict table
    assert "━" not in r.stderr                            # no progress bar without a TTY


@pytest.mark.slow
def test_quiet_and_text_lines_on_the_unchanged_rerun(audited):
    cfg, _ = audited
    quiet = cli_process("--quiet", "run", "-c", str(cfg))
    assert quiet.returncode == 1, quiet.stderr
    assert "FAIL" in quiet.stdout and "tiny: 1 -> 2" in quiet.stdout    # the verdict is still printed
    assert "…" not in quiet.stderr and "done in" not in quiet.stderr, quiet.stderr

    text = cli_process("run", "-c", str(cfg))
    assert text.returncode == 1, text.stderr
    starts = [line for line in text.stderr.splitlines() if line.endswith(" …")]
    ends = [line for line in text.stderr.splitlines() if " … done in " in line]
    assert any(" INFO    plan " in line for line in starts), text.stderr
    assert len(starts) == len(ends) >= 2, text.stderr
    assert any("0 versions to audit, 2 versions unchanged" in line for line in ends), text.stderr


def test_quiet_still_prints_errors(tmp_path):
    r = cli_process("--quiet", "run", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2
    assert "error:" in r.stderr and "does not exist" in r.stderr
    j = cli_process("--json-logs", "run", "-c", str(tmp_path / "missing.yaml"))
    assert j.returncode == 2
    errors = [d for d in _json_lines(j.stderr) if d["level"] == "ERROR"]
    assert errors and "does not exist" in errors[-1]["message"], j.stderr


def test_watch_logs_its_stage_as_json(tmp_path, swapped_checkpoint):  # noqa: F811
    """`watch` in this process (the console script's main), stderr captured: one start and one end line; the
    call's logging choice ends with it."""
    import os

    from flows.demo import write_watch_batches

    env_before = os.environ.get("NEURON_AUDIT_JSON_LOGS")

    cfg = write_config(tmp_path, swapped_checkpoint)
    folder = write_watch_batches(tmp_path, n=24)["clean"]
    r = cli("--json-logs", "watch", "-c", str(cfg), "--model", "tiny", "--images", str(folder))
    assert r.code in (0, 1), r.err
    events = _stage_events(_json_lines(r.err))
    assert events[("watch", "batch clean of tiny")] == Counter(start=1, end=1), events
    end = next(d for d in _json_lines(r.err) if d.get("stage") == "watch" and d["event"] == "end")
    assert end["counts"]["images"] == 24 and end["counts"]["verdict"] in ("PASS", "WARN", "FAIL"), end
    assert os.environ.get("NEURON_AUDIT_JSON_LOGS") == env_before
    # the call's own console handler is gone and propagation is back (handlers other code put there, such
    # as pytest's capture handlers after an earlier test in the same session, are not the CLI's to remove)
    ours = [h for h in logging.getLogger("neuron_audit").handlers if getattr(h, "_neuron_audit", False)]
    assert logging.getLogger("neuron_audit").propagate and not ours


def test_stage_counts_and_failure(caplog):
    from flows.logs import describe_counts, stage

    log = logging.getLogger("neuron_audit.test")
    with caplog.at_level(logging.INFO, logger="neuron_audit.test"):
        with stage("render", "12 visualizations", log) as st:
            st.count(**{"re-rendered": 2, "reused": 10})
        with pytest.raises(KeyError):
            with stage("compare", "v1 -> v2", log):
                raise KeyError("x")
    messages = [(r.levelname, r.getMessage(), getattr(r, "event", None)) for r in caplog.records]
    assert messages[0] == ("INFO", "render 12 visualizations …", "start")
    assert messages[1][1].startswith("render 12 visualizations … done in ") and \
        messages[1][1].endswith(" s, 2 re-rendered, 10 reused")
    assert messages[3][0] == "WARNING" and "failed after" in messages[3][1] and messages[3][2] == "failed"
    assert describe_counts({"images": 24, "verdict": "PASS"}) == "24 images, verdict PASS"


def test_step_reporter_shows_the_step_total_not_the_loss():
    """The VITAL bar showed `131/tensor([42.7302])`: the optimizers call progress(step, losses)."""
    import torch

    from flows import progress

    seen = []
    progress.set_callback(lambda stage, done, total: seen.append((stage, done, total)))
    try:
        reporter = progress.step_reporter("VITAL cat", 300)
        reporter(130, torch.tensor([42.7302]))
    finally:
        progress.set_callback(None)
    assert seen == [("VITAL cat", 131, 300)]
