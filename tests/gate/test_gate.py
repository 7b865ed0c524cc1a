"""`neuron-audit gate` end to end on the tiny architecture: a planted FAIL exits 1 with the FAIL, its reason and
its visualizations in the Markdown summary; a benign re-save (fp16 round trip) exits 0 and recomputes nothing of
the champion; bad input exits 2 naming the option and stores nothing."""
from __future__ import annotations

import re
import shutil

import pytest

from tests.gate.conftest import gate_config


def _gate(capsys, *args) -> tuple[int, str, str]:
    from flows.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gate", "--no-progress", *map(str, args)])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_planted_fail_then_clean_pass(tmp_path, checkpoints, capsys):
    from flows import runtime

    cfg = gate_config(tmp_path / "cfg", checkpoints["champion"])
    summary = tmp_path / "ci" / "summary.md"
    candidate = tmp_path / "build" / "model.safetensors"          # outside the config, as a CI build writes it
    candidate.parent.mkdir()
    shutil.copy(checkpoints["planted"], candidate)

    code, out, err = _gate(capsys, "-c", cfg, "--model", "tiny", "--candidate", candidate, "--summary", summary)
    assert code == 1, out + err
    md = summary.read_text()
    assert "neuron-audit gate: FAIL" in md and "exit code 1" in md
    row = next(line for line in md.splitlines() if line.startswith("| planted "))
    assert "FAIL" in row
    assert "| other " in md and "| inner " in md
    reasons = md.split("### Reasons", 1)[1]
    assert "**planted**" in reasons
    links = re.findall(r"\[seed 0\]\(([^)]+)\)", reasons)
    assert len(links) >= 2                                    # the champion's and the candidate's images
    assert all((summary.parent / link).resolve().is_file() for link in links), links
    assert not list(cfg.parent.glob(".*.yaml"))              # the derived config is gone

    store = runtime.store(str(cfg))
    versions = {v["version"]: v for v in store.list_versions("tiny")}
    [label] = [v for v in versions if v.startswith("gate-")]
    assert versions[label]["source"] == f"file:{candidate.resolve()}"

    summary.unlink()
    code, out, err = _gate(capsys, "-c", cfg, "--model", "tiny", "--candidate", f"file:{checkpoints['clean']}",
                           "--summary", summary, "--no-visuals")
    assert code == 0, out + err
    md = summary.read_text()
    assert "neuron-audit gate: PASS" in md and "FAIL 0" in md and "exit code 0" in md
    assert "statistics 0 computed, 3 reused" in out.replace("\n", " ")     # the champion's, from the store


def test_bad_input_exits_2_and_stores_nothing(tmp_path, checkpoints, capsys):
    cfg = gate_config(tmp_path / "cfg", checkpoints["champion"])
    db = tmp_path / "cfg" / "store" / "audit.db"

    code, _, err = _gate(capsys, "-c", cfg, "--model", "tiny", "--candidate", tmp_path / "missing.safetensors")
    assert code == 2 and "--candidate" in err and "missing.safetensors" in err

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = _gate(capsys, "-c", cfg, "--model", "tiny", "--candidate", junk)
    assert code == 2 and "--candidate" in err and "junk.safetensors" in err, err

    code, _, err = _gate(capsys, "-c", cfg, "--model", "tiny", "--candidate", checkpoints["planted"],
                         "--against", "7")
    assert code == 2 and "--against '7'" in err

    code, _, err = _gate(capsys, "-c", cfg, "--model", "nope", "--candidate", checkpoints["planted"])
    assert code == 2 and "nope" in err
    assert not db.exists()
    assert not list(cfg.parent.glob(".*.yaml"))
