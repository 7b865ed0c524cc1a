"""How an audit is named and summarised in Prefect (pure parts; the flow tests check them on a real server)."""
from __future__ import annotations

import re

from flows.prefect_names import (artifact_key, batch_label, model_markdown, models_label, neuron_batches,
                                 verdict_state, verdict_summary)


def _summary(fail: bool) -> dict:
    neurons = [{"id": "cat", "verdict": "FAIL" if fail else "PASS", "reason": "fires on dogs"},
               {"id": "b5-c17", "verdict": "WARN", "reason": "shifted"}]
    return {"run_id": 7, "flow_run_id": "fr-1",
            "versions": [{"model": "m", "version": "2", "stats_computed": ["cat"], "stats_cached": ["b5-c17"],
                          "viz_rendered": [], "viz_reused": ["cat#0", "b5-c17#0"], "neuron_errors": {"x": "bad"}}],
            "reports": [{"model": "m", "baseline": "1", "candidate": "2", "neurons": neurons,
                         "summary": {"PASS": 0 if fail else 1, "WARN": 1, "FAIL": 1 if fail else 0}}]}


def test_artifact_keys_are_valid_and_unique_per_store_and_model():
    keys = {artifact_key(store, model) for store in ("a1b2c3d4e5f6", "0123456789ab")
            for model in ("lite0-demo", "Lite0_Demo", "lite0 demo", "x" * 300)}
    assert len(keys) == 8
    assert all(re.fullmatch(r"[a-z0-9-]+", k) and len(k) < 100 for k in keys)


def test_fail_is_named_in_the_state_message_and_tagged():
    tagged = []
    state = verdict_state(_summary(fail=True), tagger=lambda fr, tags: tagged.append((fr, tags)))
    assert state.is_completed() and "drift FAIL" in state.message and "m 1→2 cat" in state.message
    assert tagged == [("fr-1", ["verdict:FAIL"])]
    assert verdict_summary(_summary(fail=False))[0] == "WARN"
    assert verdict_summary({"reports": [], "versions": [{}]}) == ("none", "1 version(s) audited, nothing to compare")


def test_markdown_names_verdicts_work_and_unaudited_neurons():
    text = model_markdown(_summary(fail=True), "m")
    assert "| 1 | 2 | 0 | 1 | 1 |" in text and "| 2 | 1 / 1 | 0 / 2 | 1 |" in text
    assert "`cat`: fires on dogs" in text and "v2 `x`: bad" in text


def test_batches_and_labels():
    ids = [f"n{i}" for i in range(19)]
    batches = neuron_batches(ids, 8)
    assert [len(b) for b in batches] == [8, 8, 3] and sum(batches, []) == ids
    assert batch_label(batches[2], ids) == "neurons 17-19 of 19 (n16 … n18)"
    assert batch_label(["a"]) == "1 neuron (a)"
    assert models_label(["a", "b", "c", "d"]) == "a, b +2 more"
