"""Every command runs on a config that sets only the required keys: the resolution follows the
model's input size, the steps and references come from the default preset. A small random-init
timm model (test_efficientnet, 160 px input) keeps it fast."""
from __future__ import annotations

import json

import pytest
import yaml

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def minimal_config(tmp_path_factory):
    import timm
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("minimal")
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "tiny.safetensors"))
    cfg = {"models": [{"name": "tiny", "architecture": "test_efficientnet",
                       "versions": [{"version": "1", "source": "file:tiny.safetensors"}],
                       "neurons": [{"id": "c3", "kind": "class", "layer": "classifier", "index": 3},
                                   {"id": "b2-c1", "kind": "inner", "layer": "blocks.2", "index": 1}]}]}
    path = root / "neuron-audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _main(capsys, *argv) -> tuple[int, str, str]:
    from flows.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_visualize_run_evaluate_on_required_keys_only(minimal_config, capsys):
    png = minimal_config.parent / "c3.png"
    code, _, err = _main(capsys, "visualize", "-c", str(minimal_config), "--model", "tiny", "--version", "1",
                         "--neuron", "c3", "--steps", "3", "--out", str(png))
    assert code == 0, err
    from PIL import Image

    assert Image.open(png).size == (160, 160)             # the model's own input size

    code, _, err = _main(capsys, "run", "-c", str(minimal_config))
    assert code == 0, err
    code, out, err = _main(capsys, "evaluate", "-c", str(minimal_config), "--model", "tiny", "--version", "1")
    assert code == 0, err
    result = json.loads(out)
    assert result["vital"]["class"]["neurons"]["c3"]["n_images"] == 1
    inner = result["vital"]["inner"]["neurons"]["b2-c1"]
    assert 0 <= inner["percentile"] <= 100 and 1 <= inner["specificity_rank"] <= inner["channels"]
