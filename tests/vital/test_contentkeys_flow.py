"""The incremental audit through flows.work on a real SQLite store: a version whose conv_head
changed re-renders the class neurons (they read it) and reuses the inner neuron (it does not);
the stored settings are the ones the render used."""
from __future__ import annotations

import json
import sqlite3

import pytest
import torch
import yaml


@pytest.fixture(scope="module")
def conv_head_config(tmp_path_factory, lite0):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("convhead")
    state = {k: v.clone().contiguous() for k, v in lite0.state_dict().items()}
    state["conv_head.weight"] = state["conv_head.weight"] * 0.5
    save_file(state, str(root / "v2.safetensors"))
    cfg = {
        "store": {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": "sqlite:///./store/mlflow.db",
                  "artifacts": "./store/artifacts"},
        "models": [{
            "name": "lite0", "architecture": "efficientnet_lite0",
            "versions": [{"version": "1", "source": "builtin:efficientnet_lite0"},
                         {"version": "2", "source": "file:./v2.safetensors"}],
            "probe": {"crops_per_image": 2, "resolution": 64},
            "visualization": {"resolution": 32, "steps": 2, "seeds": [0], "n_references": 3},
            "neurons": [
                {"id": "cat", "kind": "class", "layer": "classifier", "index": 285,
                 "references": ["builtin:samples/chelsea", "builtin:samples/coffee"]},
                {"id": "espresso", "kind": "class", "layer": "classifier", "index": 967, "references": "top-k"},
                {"id": "b3", "kind": "inner", "layer": "blocks.3", "index": 7},
            ],
        }],
    }
    path = root / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def test_conv_head_change_rerenders_class_neurons_only(conv_head_config):
    from flows import work

    outcomes = {}
    for v in ("1", "2"):
        work.register_version(conv_head_config, "lite0", v)
        o = work.probe_statistics(conv_head_config, "lite0", v, work.VersionOutcome("lite0", v))
        outcomes[v] = work.render_visualizations(conv_head_config, "lite0", v, None, o)
        assert o.neuron_errors == {}, o.neuron_errors
    assert sorted(outcomes["1"].viz_rendered) == ["b3#0", "cat#0", "espresso#0"]
    assert sorted(outcomes["2"].viz_rendered) == ["cat#0", "espresso#0"]
    assert outcomes["2"].viz_reused == ["b3#0"]

    again = work.render_visualizations(conv_head_config, "lite0", "2", None, work.VersionOutcome("lite0", "2"))
    assert again.viz_rendered == [] and sorted(again.viz_reused) == ["b3#0", "cat#0", "espresso#0"]

    from pathlib import Path

    db = Path(conv_head_config).parent / "store" / "audit.db"
    con = sqlite3.connect(db)
    try:
        rows = con.execute("select settings from visualizations").fetchall()
    finally:
        con.close()
    stored = [json.loads(r[0]) for r in rows]
    cat = [s for s in stored if s.get("index") == 285]
    assert cat and all(s["taps"][-1] == "bn2" and s["read_taps"][-1] == "bn2" for s in cat)
    assert all(s["resolution"] == 32 and s["steps"] == 2 and s["preset"] == "fast" for s in stored)
    assert all("2 distinct photograph(s)" in s["references"] and s["n_photographs"] == 2 for s in cat)
    inner = [s for s in stored if s.get("target_layer") == "blocks.3"]
    assert inner and inner[0]["read_taps"] == ["bn1", "blocks.0", "blocks.1", "blocks.2"]
