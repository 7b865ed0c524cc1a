"""Layouts read right on every family: timm's own feature_info is the ground truth for channel
counts and grids; token grids and Swin windows are checked against the modules' own tensors."""
from __future__ import annotations

import math

import pytest
import torch

from families import family_params

from audit.errors import AuditInputError
from audit.layouts import infer_layout, ForwardInfo, ModelHints, parse_layer_name, token_grid
from audit.taps import capture, channels_first, describe_layers, layer_channels, layer_layout


@pytest.mark.parametrize("key", family_params())
def test_feature_stages_match_timm_feature_info(key, family_model, probe64):
    """Every feature_info stage: `layers`/config channel count = timm's num_chs, and the captured
    activation is channels first on the grid timm's reduction implies (64 px input)."""
    model = family_model(key)
    info = model.feature_info
    stages = [f["module"] for f in info]
    with torch.no_grad(), capture(model, stages) as acts:
        model(probe64.images[:2])
    for f in info:
        side = math.ceil(64 / f["reduction"])
        assert layer_channels(model, f["module"]) == f["num_chs"], f
        assert tuple(acts[f["module"]].shape) == (2, f["num_chs"], side, side), (f, tuple(acts[f["module"]].shape))


def test_swin_stage_is_nhwc_not_nchw(family_model):
    model = family_model("swin")
    assert layer_layout(model, "layers.2").kind == "nhwc"
    assert layer_channels(model, "layers.2") == 384                 # not its height


@pytest.mark.parametrize("key,stem", [("vit", "patch_embed"), ("deit", "patch_embed"), ("mixer", "stem"),
                                      pytest.param("vit_hybrid", "patch_embed", marks=pytest.mark.slow)])
def test_token_grid_is_the_patch_convolution_map(key, stem, family_model, probe64):
    """Patch tokens put back on their grid are exactly the patch embedding's convolution output
    (row-major order, no transposition)."""
    model = family_model(key)
    with torch.no_grad(), capture(model, [f"{stem}.proj", stem]) as acts:
        model(probe64.images[:3])
    torch.testing.assert_close(acts[stem], acts[f"{stem}.proj"])


def test_vit_token_views(family_model, probe64):
    model = family_model("vit")
    with torch.no_grad(), capture(model, ["blocks.3", "blocks.3:all", "blocks.3:class"]) as acts, \
            capture(model, ["blocks.3"], raw=True) as raw:
        model(probe64.images[:2])
    tokens = raw["blocks.3"]                                        # [2, 1 + 16, 192]
    assert acts["blocks.3"].shape == (2, 192, 4, 4)
    torch.testing.assert_close(acts["blocks.3:all"], tokens.transpose(1, 2))
    torch.testing.assert_close(acts["blocks.3:class"], tokens[:, :1].transpose(1, 2))
    torch.testing.assert_close(channels_first(acts["blocks.3"]), tokens[:, 1:].transpose(1, 2))
    with pytest.raises(AuditInputError, match="class/register tokens"):
        layer_layout(family_model("mixer"), "blocks.3:class")
    with pytest.raises(AuditInputError, match="needs tokens"):
        layer_layout(family_model("resnet18"), "layer2:all")


@pytest.mark.slow
def test_swin_windows_put_back_on_the_image_grid(family_model, probe64):
    """The window attention's output, un-windowed by `audit.layouts`, equals what the Swin block
    itself makes of it (timm's window_reverse and reverse cyclic shift), in a shifted block."""
    model = family_model("swin")
    block = model.layers[0].blocks[1]
    assert any(block.shift_size), "the second block of a stage is the shifted one"
    seen = {}
    handle = block.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    try:
        with torch.no_grad(), capture(model, ["layers.0.blocks.1.attn"]) as acts:
            model(probe64.images[:2])
    finally:
        handle.remove()
    with torch.no_grad():
        expected = block._attn(block.norm1(seen["x"]))             # [B, H, W, C]
    torch.testing.assert_close(acts["layers.0.blocks.1.attn"], expected.permute(0, 3, 1, 2))
    assert layer_layout(model, "layers.0.blocks.1.attn").kind == "windows"


@pytest.mark.parametrize("key", family_params())
def test_every_listed_layer_can_be_captured(key, family_model, probe64):
    """Whatever `layers` lists can be read as a channel-first activation with the listed channel count."""
    model = family_model(key)
    described = describe_layers(model)
    names = [n for n in described if n.split(":")[0].count(".") <= 2]
    with torch.no_grad(), capture(model, names) as acts:
        model(probe64.images[:1])
    for name in names:
        assert acts[name].shape[1] == described[name].channels, (name, tuple(acts[name].shape))


def test_layout_rules_on_shapes():
    hints = ModelHints(prefix_tokens=1, patch_grid=(14, 14), channels_last=False, input_hw=(224, 224))
    info = ForwardInfo(batch=2, image_hw=(224, 224))
    assert infer_layout((2, 64, 56, 56), hints, info).kind == "nchw"
    assert infer_layout((2, 56, 56, 96), hints, info).kind == "nhwc"
    assert infer_layout((2, 197, 192), hints, info) .prefix == 1
    assert infer_layout((2, 512, 196), hints, info).kind == "tokens_cf"
    assert infer_layout((2, 3, 197, 197), hints, info) is None          # attention probabilities
    assert infer_layout((2, 1000), hints, info).kind == "vector"
    assert token_grid(196, (224, 224)) == (14, 14) and token_grid(50, (224, 224)) is None
    assert token_grid(70, (224, 320)) == (7, 10)
    assert parse_layer_name("blocks.6.attn:heads:class").full == "blocks.6.attn:heads:class"
    with pytest.raises(AuditInputError, match="unknown layer view"):
        parse_layer_name("blocks.6:cls")
