"""Attention heads as neurons: the activation is the norm of the head's slice of the attention
output, read the same under timm's fused attention; attention maps as evidence; the config check
and the probe statistics treat a head like any channel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.attention import attention_maps
from audit.config import ModelConfig, check_neurons_against_model
from audit.pipeline import neuron_target
from audit.stats import neuron_activations
from audit.taps import capture


def _explicit_attention(attn, x):
    """q, k, v, probabilities and per-head outputs of a timm Attention, computed by hand: [B, H, N, *]."""
    b, n, c = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    return probs, probs @ v


def _block_input(model, block, images):
    seen = {}
    h = block.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        h.remove()
    return seen["x"]


def test_head_activation_under_fused_attention(family_model, probe64):
    model = family_model("vit")
    block = model.blocks[6]
    assert block.attn.fused_attn, "timm runs the fused kernel here: the head must still be read"
    images = probe64.images[:3]
    with torch.no_grad(), capture(model, ["blocks.6.attn:heads"]) as acts:
        model(images)
    with torch.no_grad():
        _, out = _explicit_attention(block.attn, block.norm1(_block_input(model, block, images)))
    expected = out.norm(dim=-1)[:, :, 1:].reshape(3, block.attn.num_heads, 4, 4)   # patch tokens on the grid
    assert acts["blocks.6.attn:heads"].shape == (3, 3, 4, 4)
    torch.testing.assert_close(acts["blocks.6.attn:heads"], expected, atol=1e-5, rtol=1e-4)
    assert block.attn.fused_attn


def test_attention_maps_are_the_class_token_row(family_model, probe64):
    model = family_model("deit")
    attn = model.blocks[5].attn
    images = probe64.images[:2]
    maps = attention_maps(model, "blocks.5.attn", 2, images)
    with torch.no_grad():
        probs, _ = _explicit_attention(attn, model.blocks[5].norm1(_block_input(model, model.blocks[5], images)))
    np.testing.assert_allclose(maps, probs[:, 2, 0, 1:].reshape(2, 4, 4).numpy(), atol=1e-5, rtol=1e-4)
    assert attn.fused_attn, "fused attention is restored after reading the maps"


@pytest.mark.slow
def test_swin_attention_maps_on_the_grid(family_model, probe64):
    maps = attention_maps(family_model("swin"), "layers.0.blocks.1.attn", 1, probe64.images[:2])
    assert maps.shape == (2, 16, 16) and np.isfinite(maps).all()
    # each window's queries spread probability 1 over its 49 keys: the mean received is 1/49 per window
    assert abs(float(maps.mean()) - 1 / 49) < 0.01


def _model_cfg(layer, index, kind="head", **extra):
    return ModelConfig.model_validate({"name": "m", "architecture": "vit_tiny_patch16_224",
                                       "versions": [{"version": "1", "source": "file:x.safetensors"}],
                                       "neurons": [{"id": "h", "kind": kind, "layer": layer, "index": index, **extra}]})


def test_config_check_for_heads(family_model):
    model = family_model("vit")
    assert check_neurons_against_model(_model_cfg("blocks.6.attn", 2), model) == {}
    assert "has 3 heads" in check_neurons_against_model(_model_cfg("blocks.6.attn", 3), model)["h"]
    msg = check_neurons_against_model(_model_cfg("blocks.6.mlp", 0), model)["h"]
    assert "not an attention module" in msg and "blocks.0.attn" in msg
    assert check_neurons_against_model(_model_cfg("blocks.6", 191, kind="inner", tokens="class"), model) == {}
    msg = check_neurons_against_model(_model_cfg("layer3", 0, kind="inner", tokens="all"), family_model("resnet18"))
    assert "needs tokens" in msg["h"]


def test_head_neuron_statistics_pool_patch_tokens(family_model, probe64):
    """A head neuron's probe values are the spatial max/mean of its activation over patch tokens."""
    model = family_model("vit")
    cfg = _model_cfg("blocks.6.attn", 1)
    target = neuron_target(cfg.neurons[0])
    assert target.layer == "blocks.6.attn:heads" and target.kind == "head"
    acts = neuron_activations(model, probe64, [target], use_cache=False)["h"]
    block = model.blocks[6]
    with torch.no_grad():
        _, out = _explicit_attention(block.attn, block.norm1(_block_input(model, block, probe64.images)))
    per_token = out[:, 1].norm(dim=-1)[:, 1:]
    np.testing.assert_allclose(acts.max, per_token.amax(1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(acts.mean, per_token.mean(1).numpy(), rtol=1e-4, atol=1e-5)
