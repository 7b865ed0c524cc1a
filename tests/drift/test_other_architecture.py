"""Verdicts on a CNN that is not Lite0 (issue 17 item 5: a zeroed middle channel used to PASS on other
families). A random-init ResNet-18, saved to files as a user's checkpoints are; version 2 removes one
layer3 channel's contribution of the last residual block (its batch-norm scale and shift zeroed).
timm zero-inits the last norm of each residual block by default, which would make that edit a no-op:
the model is built with zero_init_last=False so the change is real."""
from __future__ import annotations

import pytest
import timm
import torch

from audit.config import ThresholdsConfig
from audit.drift import compare_versions
from sources import load_model
from audit.probe import build_probe_set
from audit.records import NeuronTarget

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def resnet_versions(tmp_path_factory):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()
    with torch.no_grad():                        # random-init BN statistics of a trained-looking network
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    folder = tmp_path_factory.mktemp("resnet")
    torch.save(net.state_dict(), folder / "v1.pt")
    with torch.no_grad():
        net.layer3[1].bn2.weight[7] = 0.0
        net.layer3[1].bn2.bias[7] = 0.0
    torch.save(net.state_dict(), folder / "v2.pt")
    return (load_model("resnet18", f"file:{folder / 'v1.pt'}"), load_model("resnet18", f"file:{folder / 'v2.pt'}"))


def test_zeroed_middle_channel_fails_on_resnet18(resnet_versions):
    v1, v2 = resnet_versions
    probe = build_probe_set("builtin:samples", size=64, crops_per_image=3)
    targets = [NeuronTarget("l3-c7", "inner", "layer3", 7), NeuronTarget("l3-c20", "inner", "layer3", 20),
               NeuronTarget("l2-c5", "inner", "layer2", 5)]
    results = {r.neuron_id: r for r in compare_versions(v1, v2, probe, targets, ThresholdsConfig(bootstrap=100))}
    assert results["l3-c7"].verdict == "FAIL", results["l3-c7"].reason
    assert results["l3-c7"].matched_index is None
    assert results["l3-c20"].verdict == "PASS" and results["l2-c5"].verdict == "PASS"
    itself = compare_versions(v1, v1, probe, targets, ThresholdsConfig(bootstrap=100))
    assert [r.verdict for r in itself] == ["PASS"] * 3
