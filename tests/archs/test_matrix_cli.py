"""The architecture matrix through the command line (issue 17): for each family, built with its own
10-class head and audited from `file:` checkpoints,

* `neuron-audit layers` lists the blocks with timm's channel counts (and the heads, and the head);
* `neuron-audit run` on two versions renders the class, inner and (with attention) head neurons;
* `neuron-audit compare` FAILs the class whose classifier row was swapped with another class's and
  PASSes an untouched control class.

One `run` per group of families (the slow group: densenet121, ConvNeXt, Swin, the hybrid ViT) under
one Prefect test server; the CLI is called in-process through `flows.cli.main`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from families import FAMILIES, choose_swap, family_params, neurons_for, save, swap_rows

STEPS = 2


def _cli(capsys, *args) -> tuple[int, str, str]:
    from flows.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _write_group(directory: Path, keys: list[str], family_model) -> dict:
    from audit.probe import build_probe_set

    meta = {}
    models = []
    for key in keys:
        fam = FAMILIES[key]
        model = family_model(key)
        probe = build_probe_set("builtin:samples", size=fam.resolution, crops_per_image=2)   # as the audit's
        with torch.no_grad():
            logits = model(probe.images).numpy()
        a, b, control = choose_swap(logits, seed=0)
        neurons = neurons_for(fam, model, a, control, seed=0)
        v1 = save(model, directory / f"{key}-v1.safetensors")
        v2_model = swap_rows(_copy(model), a, b)
        v2 = save(v2_model, directory / f"{key}-v2.safetensors")
        models.append({
            "name": key, "architecture": fam.architecture, "model_args": dict(fam.model_args),
            "versions": [{"version": "1", "source": f"file:{v1.name}"}, {"version": "2", "source": f"file:{v2.name}"}],
            "probe_set": "builtin:samples", "probe": {"crops_per_image": 2, "resolution": fam.resolution},
            "visualization": {"resolution": fam.resolution, "steps": STEPS, "seeds": [0], "n_references": 2},
            "thresholds": {"bootstrap": 200}, "neurons": neurons})
        meta[key] = {"swap": (a, b), "control": control, "neurons": neurons}
    cfg = {"store": {"database": "sqlite:///./audit.db", "mlflow_tracking_uri": "sqlite:///./mlflow.db",
                     "artifacts": "./artifacts"}, "models": models}
    path = directory / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return {"config": path, "meta": meta}


def _copy(model):
    import copy

    return copy.deepcopy(model)


@pytest.fixture(scope="module")
def prefect_server(prefect_harness):
    """The session's Prefect test server (tests/conftest.py)."""
    return prefect_harness


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, family_model, prefect_server):
    """group ('fast' | 'slow') -> its config, per-family metadata and the `run` exit code, built and
    run on first use."""
    groups: dict[str, dict] = {}

    def get(key: str, capsys) -> tuple[dict, dict]:
        group = "slow" if FAMILIES[key].slow else "fast"
        if group not in groups:
            keys = [k for k, f in FAMILIES.items() if f.slow == (group == "slow")]
            built = _write_group(tmp_path_factory.mktemp(f"matrix-{group}"), keys, family_model)
            code, out, err = _cli(capsys, "run", "-c", str(built["config"]))
            built.update(run_code=code, run_out=out, run_err=err)
            groups[group] = built
        g = groups[group]
        return g, g["meta"][key]

    return get


@pytest.mark.parametrize("key", family_params())
def test_family_through_the_cli(key, matrix, family_model, capsys):
    group, meta = matrix(key, capsys)
    cfg = str(group["config"])
    model = family_model(key)

    # layers: timm's channel counts for every feature stage, the heads, the 10-class head
    code, out, err = _cli(capsys, "layers", "-c", cfg, "--model", key)
    assert code == 0, err
    rows = {(r[0], r[1]): r for r in (line.split("\t") for line in out.splitlines() if line and line[0] != "#")}
    for f in model.feature_info:
        assert rows[(f["module"], "inner")][3] == str(f["num_chs"]), f
    heads = [n for n in meta["neurons"] if n["kind"] == "head"]
    for n in heads:
        assert int(rows[(n["layer"], "head")][3]) == model.get_submodule(n["layer"]).num_heads
    head_layer = meta["neurons"][0]["layer"]
    assert rows[(head_layer, "class")][3] == "10"

    # run: every neuron rendered in both versions (class, inner and head)
    assert group["run_code"] == 1, group["run_err"][-3000:]          # 1: the planted FAIL was found
    from flows import runtime
    from flows.work import stored_visualizations

    store = runtime.store(cfg)
    for n in meta["neurons"]:
        images = stored_visualizations(store, key, n["id"], ["1", "2"])
        for version in ("1", "2"):
            assert images[version], f"{key}: no visualization of {n['id']} in version {version}"
            img = images[version][0]
            assert img.shape == (FAMILIES[key].resolution,) * 2 + (3,) and np.asarray(img).std() > 0
    kinds = {n["kind"] for n in meta["neurons"]}
    assert kinds == ({"class", "inner", "head"} if heads else {"class", "inner"})

    # compare (the visual statistics were computed by `run`'s own compare; here the probe statistics,
    # which the verdict rests on first): the swapped row FAILs, the untouched control class PASSes
    report_path = group["config"].parent / f"{key}-compare.json"
    code, out, err = _cli(capsys, "compare", "-c", cfg, "--model", key, "--baseline", "1", "--candidate", "2",
                          "--json", str(report_path), "--no-visuals")
    assert code == 1, err[-3000:]
    report = json.loads(report_path.read_text())
    verdicts = {n["id"]: n for n in report["neurons"]}
    assert not report.get("errors"), report.get("errors")
    assert verdicts["swapped"]["verdict"] == "FAIL", verdicts["swapped"]
    assert verdicts["control"]["verdict"] == "PASS", verdicts["control"]
    assert set(verdicts) == {n["id"] for n in meta["neurons"]}
