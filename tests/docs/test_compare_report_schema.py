"""docs/compare-report.schema.json against a real report: `neuron-audit compare --json` on a tiny
random-weight timm model whose version 2 has two class rows swapped, with visualizations."""
from __future__ import annotations

import copy
import json
import typing

import jsonschema
import pytest
import yaml

from tests.docs.doc_pages import ROOT

SCHEMA = json.loads((ROOT / "docs" / "compare-report.schema.json").read_text())


def _validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA)


@pytest.fixture(scope="module")
def real_report(tmp_path_factory) -> tuple[dict, int]:
    import timm
    import torch
    from safetensors.torch import save_file

    from audit.stats import activation_cache, set_cache_dir
    from benchmarks.edits import swap_class_rows
    from flows.cli import main

    d = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    v1 = timm.create_model("test_efficientnet", pretrained=False).eval()
    v2 = swap_class_rows(v1, 3, 7)
    for name, m in (("v1", v1), ("v2", v2)):
        save_file({k: t.contiguous() for k, t in m.state_dict().items()}, d / f"{name}.safetensors")
    config = {
        "store": {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": "sqlite:///./store/mlflow.db",
                  "artifacts": "./store/artifacts"},
        "models": [{
            "name": "tiny", "architecture": "test_efficientnet",
            "versions": [{"version": "1", "source": "file:./v1.safetensors"},
                         {"version": "2", "source": "file:./v2.safetensors"}],
            "neurons": [{"id": "c3", "kind": "class", "layer": "classifier", "index": 3, "references": "top-k"},
                        {"id": "c5", "kind": "class", "layer": "classifier", "index": 5,
                         "references": "builtin:samples/chelsea"},
                        {"id": "b3-c4", "kind": "inner", "layer": "blocks.3", "index": 4}],
            "visualization": {"resolution": 32, "steps": 2, "seeds": [0, 1], "n_references": 2},
            "probe": {"crops_per_image": 4, "resolution": 48}}]}
    (d / "neuron-audit.yaml").write_text(yaml.safe_dump(config))
    out = d / "report.json"
    cache_dir = activation_cache().directory        # the store points the activation cache at itself
    try:
        with pytest.raises(SystemExit) as ended:
            main(["compare", "-c", str(d / "neuron-audit.yaml"), "--model", "tiny", "--baseline", "1",
                  "--candidate", "2", "--json", str(out)])
    finally:
        set_cache_dir(cache_dir)
    return json.loads(out.read_text()), ended.value.code


def test_real_report_matches_the_schema(real_report):
    report, code = real_report
    assert code in (0, 1)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(report)]
    assert not errors, errors
    assert [n["id"] for n in report["neurons"]] == ["c3", "c5", "b3-c4"]
    verdicts = [n["verdict"] for n in report["neurons"]]
    assert report["summary"] == {v: verdicts.count(v) for v in ("PASS", "WARN", "FAIL")}
    assert code == (1 if "FAIL" in verdicts else 0)
    # the visual statistics were computed (two seeds per version), not left null
    assert all(isinstance(n["statistics"]["visual_distance"], float) for n in report["neurons"])
    assert all(isinstance(n["statistics"]["cross_activation"], float) for n in report["neurons"])
    untouched = next(n for n in report["neurons"] if n["id"] == "c5")
    assert untouched["verdict"] == "PASS" and untouched["statistics"]["spearman"] == pytest.approx(1.0)


@pytest.mark.parametrize("break_it", [
    lambda r: r.pop("probe_set_sha256"),
    lambda r: r["neurons"][0].update(verdict="BROKEN"),
    lambda r: r["neurons"][0]["statistics"].pop("topk_p_value"),
    lambda r: r["neurons"][0]["statistics"].update(spearman="high"),
    lambda r: r["neurons"][0].update(index=-1),
    lambda r: r["summary"].pop("WARN"),
    lambda r: r.update(created_at="yesterday"),
], ids=["no-probe-hash", "bad-verdict", "missing-statistic", "text-statistic", "negative-index", "no-WARN-count",
        "bad-timestamp"])
def test_schema_rejects_a_broken_report(real_report, break_it):
    report = copy.deepcopy(real_report[0])
    break_it(report)
    assert list(_validator().iter_errors(report)), "the schema accepted a broken report"


def test_schema_enums_follow_the_code():
    from audit.config import NeuronConfig
    from audit.report import REQUIRED_STATISTICS, VERDICTS

    neuron = SCHEMA["$defs"]["neuron"]["properties"]
    assert neuron["kind"]["enum"] == list(typing.get_args(NeuronConfig.model_fields["kind"].annotation))
    assert neuron["verdict"]["enum"] == list(VERDICTS)
    assert SCHEMA["$defs"]["statistics"]["required"] == list(REQUIRED_STATISTICS)
