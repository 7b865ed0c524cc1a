"""Models as users train them: the head size read from the checkpoint or given, other
timm.create_model arguments in `model_args`, class labels; `neuron-audit layers` takes the same."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from families import FAMILIES, save

from audit.config import parse_config
from audit.errors import AuditInputError, CheckpointMismatchError
from audit.labels import class_label, class_labels, labels_problem, neuron_title
from audit.models import model_input_hw
from sources import load_model


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, family_model):
    d = tmp_path_factory.mktemp("ckpts")
    save(family_model("resnet18"), d / "resnet18-10.safetensors")
    save(family_model("vit"), d / "vit64-10.safetensors")
    return d


def test_head_size_read_from_the_checkpoint(ckpt_dir, family_model):
    m = load_model("resnet18", f"file:{ckpt_dir / 'resnet18-10.safetensors'}")
    assert m.fc.out_features == 10
    torch.testing.assert_close(m.fc.weight, family_model("resnet18").fc.weight)
    m = load_model("resnet18", f"file:{ckpt_dir / 'resnet18-10.safetensors'}", num_classes=10)
    assert m.fc.out_features == 10
    with pytest.raises(CheckpointMismatchError, match=r"fc.weight \(10, 512\) vs \(7, 512\)"):
        load_model("resnet18", f"file:{ckpt_dir / 'resnet18-10.safetensors'}", num_classes=7)


def test_model_args_reach_timm(ckpt_dir):
    m = load_model("vit_tiny_patch16_224", f"file:{ckpt_dir / 'vit64-10.safetensors'}", model_args={"img_size": 64})
    assert model_input_hw(m) == (64, 64) and m.head.out_features == 10
    with pytest.raises(CheckpointMismatchError, match="pos_embed"):
        load_model("vit_tiny_patch16_224", f"file:{ckpt_dir / 'vit64-10.safetensors'}")
    with pytest.raises(AuditInputError, match="rejected model_args .*no_such_arg"):
        load_model("resnet18", f"file:{ckpt_dir / 'resnet18-10.safetensors'}", model_args={"no_such_arg": 1})
    with pytest.raises(AuditInputError, match="unknown timm architecture 'resnet_18'"):
        load_model("resnet_18", f"file:{ckpt_dir / 'resnet18-10.safetensors'}")


def _cfg(model: dict) -> dict:
    base = {"name": "m", "architecture": "resnet18", "versions": [{"version": "1", "source": "file:x.safetensors"}],
            "neurons": [{"id": "defect", "kind": "class", "layer": "fc", "index": 3}]}
    return {"models": [{**base, **model}]}


@pytest.mark.parametrize("model,expected", [
    ({"model_args": {"pretrained": True}}, "models[0].model_args"),
    ({"model_args": {"num_classes": 10}}, "model's `num_classes`"),
    ({"num_classes": -1}, "models[0].num_classes"),
    ({"labels": []}, "models[0].labels"),
    ({"neurons": [{"id": "h", "kind": "head", "layer": "blocks.6.attn:heads", "index": 0}]}, "module name only"),
    ({"neurons": [{"id": "c", "kind": "class", "layer": "fc", "index": 0, "tokens": "all"}]}, "not to class neurons"),
])
def test_bad_model_keys_are_named(model, expected):
    with pytest.raises(AuditInputError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        parse_config(_cfg(model))


def test_labels_list_and_file(tmp_path):
    cfg = parse_config(_cfg({"labels": [f"c{i}" for i in range(9)] + ["defect"]})).models[0]
    assert class_labels(cfg) [9] == "defect" and class_label(cfg, 3) == "c3"
    assert labels_problem(cfg, 10) is None and "10 names for a head of 7" in labels_problem(cfg, 7)
    (tmp_path / "labels.txt").write_text("ok\nscratch\ndent\ndefect\n\n")
    cfg = parse_config(_cfg({"labels": "labels.txt"}), base_dir=tmp_path).models[0]
    assert class_labels(cfg, tmp_path) == ["ok", "scratch", "dent", "defect"]
    assert neuron_title(cfg, cfg.neurons[0], tmp_path) == "defect"
    (tmp_path / "gap.txt").write_text("ok\n\ndent\n")
    cfg = parse_config(_cfg({"labels": "gap.txt"})).models[0]
    assert "empty name at line 2" in labels_problem(cfg, 3, tmp_path)
    assert "does not exist" in labels_problem(parse_config(_cfg({"labels": "none.txt"})).models[0], 3, tmp_path)
    assert class_label(parse_config(_cfg({})).models[0], 3) == "class 3"


def _layers(*args):
    r = subprocess.run([sys.executable, "-m", "audit", "layers", *args], capture_output=True, text=True, timeout=600)
    rows = [line.split("\t") for line in r.stdout.splitlines() if line and not line.startswith("#")]
    return r, {(row[0], row[1]): row for row in rows}


def test_layers_command_takes_model_args_and_configs(tmp_path, ckpt_dir):
    r, rows = _layers("--architecture", "vit_tiny_patch16_224", "--model-arg", "img_size=64",
                      "--model-arg", "num_classes=10", "--depth", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# vit_tiny_patch16_224: input 64x64")
    assert rows[("blocks.6", "inner")][2:4] == ["tokens 1+4x4", "192"]
    assert rows[("blocks.6.attn", "head")][3] == "3"
    assert rows[("head", "class")][3] == "10"
    cfg = {"models": [{"name": "r", "architecture": "resnet18",
                       "versions": [{"version": "1", "source": f"file:{ckpt_dir / 'resnet18-10.safetensors'}"}],
                       "neurons": [{"id": "defect", "kind": "class", "layer": "fc", "index": 3}]}]}
    path = tmp_path / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r, rows = _layers("-c", str(path), "--model", "r", "--depth", "0")
    assert r.returncode == 0, r.stderr
    assert rows[("fc", "class")][3] == "10"                       # the checkpoint's head, not timm's 1000
    assert rows[("layer2", "inner")][2:] == ["NCHW", "128", "default tap"]
    r, _ = _layers("--architecture", "resnet18", "--model-arg", "bogus")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr
