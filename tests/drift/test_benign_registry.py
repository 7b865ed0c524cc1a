"""Benign edits as a registry: the built-in recipe is registered entries, a team adds its own edit
by name or as `package.module:function`, the null is built from the edits it is given and its cache
key names them. A small conv net on random images keeps it fast; the null is built for real."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from audit.config import ThresholdsConfig
from audit.drift import benign
from audit.drift.benign import DEFAULT_EDITS, benign_recipe, recipe_key, register_benign, resolve_benign
from audit.drift.null import build_benign_null, null_cache
from audit.errors import AuditInputError
from audit.probe import ProbeSet
from audit.stats import layer_activations_full


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(h.mean((2, 3)))


@pytest.fixture()
def tiny_probe():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(24, 3, 16, 16, generator=g)
    return ProbeSet(images=images, names=[f"p{i // 4}#crop{i % 4}" for i in range(24)], sha256="tiny-probe")


@pytest.fixture()
def scratch_edit():
    """Registers 'halved-bias' for one test and removes it again."""
    def halved_bias(model: nn.Module) -> nn.Module:
        """conv bias halved"""
        with torch.no_grad():
            model.conv.bias.mul_(0.5)
        return model

    register_benign("halved-bias", halved_bias)
    yield halved_bias
    benign._EDITS.pop("halved-bias", None)


def test_builtin_recipe_is_registered_entries_and_the_config_default():
    assert set(DEFAULT_EDITS) <= set(benign.registered_benign())
    assert ThresholdsConfig().benign_edits == list(DEFAULT_EDITS)
    variants = benign_recipe(Tiny(), torch.randn(4, 3, 16, 16))
    assert [v.kind for v in variants] == ["fp16", "bf16", "int8"] + ["noise"] * 4 + ["bn"] * 4
    assert len({v.name for v in variants}) == 11


def test_unknown_edit_is_named():
    with pytest.raises(AuditInputError, match="'nope'.*valid: bf16, bn, fp16, int8, noise"):
        resolve_benign("nope")
    with pytest.raises(AuditInputError, match="cannot import module 'no_such_team.edits'"):
        resolve_benign("no_such_team.edits:export")


def test_a_registered_edit_builds_a_copy_and_leaves_the_model(scratch_edit, tiny_probe):
    model = Tiny().eval()
    before = copy.deepcopy(model.state_dict())
    (variant,) = benign_recipe(model, tiny_probe.images, edits=["halved-bias"])
    edited = variant.build()
    assert variant.kind == "halved-bias" and variant.name == "conv bias halved"
    assert torch.allclose(edited.conv.bias, 0.5 * model.conv.bias)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_module_function_spec_is_a_one_copy_edit():
    (variant,) = benign_recipe(Tiny(), torch.randn(2, 3, 16, 16), edits=["audit.drift.benign:int8_per_channel"])
    assert variant.kind == "audit.drift.benign:int8_per_channel"
    assert isinstance(variant.build(), Tiny)
    assert "audit.drift.benign:int8_per_channel@" in recipe_key(["audit.drift.benign:int8_per_channel"])


def test_a_function_that_returns_no_module_is_named():
    register_benign("returns-none", lambda model: None)
    try:
        (variant,) = benign_recipe(Tiny(), torch.randn(2, 3, 16, 16), edits=["returns-none"])
        with pytest.raises(AuditInputError, match="'returns-none' returned NoneType"):
            variant.build()
    finally:
        benign._EDITS.pop("returns-none", None)


def test_null_is_built_from_its_recipe_and_keyed_by_it(scratch_edit, tiny_probe):
    model = Tiny().eval()
    null_cache().clear()
    acts = layer_activations_full(model, tiny_probe, ["conv"], use_cache=False)
    default = build_benign_null(model, tiny_probe, ["conv"], acts, 3, None, "tiny-weights")
    own = build_benign_null(model, tiny_probe, ["conv"], acts, 3, None, "tiny-weights",
                            edits=["fp16", "halved-bias"])
    assert own.variants == ["float16 round trip", "conv bias halved"] and own.seconds > 0   # not the default's entry
    assert own.layers["conv"].variant_kinds == ["fp16", "halved-bias"]
    assert len(default.variants) == 11 and default.recipe != own.recipe
    again = build_benign_null(model, tiny_probe, ["conv"], acts, 3, None, "tiny-weights", edits=["fp16", "halved-bias"])
    assert again.seconds == 0.0 and again.layers["conv"] is own.layers["conv"]
    # a bias shift moves the magnitude, not the ranking: the bounds say so
    ln = own.layers["conv"]
    assert 0 < ln.bound("magnitude", 0.001) < float("inf") and ln.bound("rank", 0.001) == 0.0
