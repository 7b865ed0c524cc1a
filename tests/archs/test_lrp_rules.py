"""LRP through attention and LayerNorm: conservation where the rule promises it (CP-LRP on a
bias-free ViT), AttnLRP equal to the published formulas, z+ equal to its definition, one forward
serving relevance and an exact ordinary gradient, and unknown module types reported."""
from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from audit import lrp_rules
from audit.errors import AuditInputError
from audit.lrp_rules import LRPRuleWarning, LRPState, install_rules, register_rule
from audit.relevance import activations_and_relevance, relevance_pass, tap_relevance


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def bias_free_vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=4, num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    return model


def test_cp_lrp_conserves_relevance_through_a_vit(bias_free_vit):
    """CP-LRP (Ali et al. 2022): with no biases, every layer's relevance sums to the target logit."""
    model = bias_free_vit
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    taps = ["pos_drop:all", "blocks.0:all", "blocks.1:all", "blocks.2:all", "blocks.3:all", "norm:all"]
    for c in (3, 7):
        rel = tap_relevance(model, x, "head", c, taps, attention_rule="cp")
        for t in taps:
            sums = rel[t].sum(dim=(1, 2))
            torch.testing.assert_close(sums, logits[:, c], rtol=1e-4, atol=1e-5, msg=f"{t}: {sums} vs {logits[:, c]}")


def test_attnlrp_is_not_conservative_but_differs_from_cp(bias_free_vit):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    cp = tap_relevance(bias_free_vit, x, "head", 3, ["pos_drop:all"], attention_rule="cp")["pos_drop:all"]
    attn = tap_relevance(bias_free_vit, x, "head", 3, ["pos_drop:all"], attention_rule="attnlrp")["pos_drop:all"]
    assert not torch.allclose(cp, attn, rtol=1e-3, atol=1e-6)
    assert torch.isfinite(attn).all()


class _Wrap(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x)


def _reference_attention_relevance(attn, x, r_out, rule):
    """Relevance at the input of a bias-free timm Attention, propagated directly by the published
    rules (relevance, not gradients): linear epsilon rule; AttnLRP: uniform rule on both matrix
    products (Prop. 3.3) and the softmax rule R_in = L (R_A - A sum R_A) (Prop. 3.1); CP-LRP: the
    attention probabilities are constants."""
    b, n, c = x.shape
    h, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x)
    q, k, v = qkv.reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    qs = q * attn.scale
    logits = qs @ k.transpose(-2, -1)
    probs = logits.softmax(-1)
    av = probs @ v                                                   # [b, h, n, d]
    o = av.transpose(1, 2).reshape(b, n, h * d)
    out = attn.proj(o)
    r_o = o * ((r_out / out) @ attn.proj.weight)                     # linear rule (no bias)
    r_av = r_o.reshape(b, n, h, d).transpose(1, 2)
    if rule == "cp":
        r_v = v * (probs.transpose(-2, -1) @ (r_av / av))
        r_q = torch.zeros_like(q)
        r_k = torch.zeros_like(k)
    else:
        norm = r_av / (2 * av)
        r_probs = probs * (norm @ v.transpose(-2, -1))
        r_v = v * (probs.transpose(-2, -1) @ norm)
        r_logits = logits * (r_probs - probs * r_probs.sum(-1, keepdim=True))
        norm2 = r_logits / (2 * logits)
        r_q = qs * (norm2 @ k)                                       # q * scale -> q: identity rule
        r_k = k * (norm2.transpose(-2, -1) @ qs)
    r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(b, n, 3 * h * d)
    return x * ((r_qkv / qkv) @ attn.qkv.weight), out


@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
def test_attention_rules_equal_the_published_formulas(rule):
    torch.manual_seed(3)
    attn = timm.layers.Attention(16, num_heads=2, qkv_bias=False, proj_bias=False).eval()
    model = _Wrap(attn)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    model.double()
    g = torch.randn(2, 5, 16, dtype=torch.float64)
    installed = install_rules(model, LRPState(active=True), attention_rule=rule)
    try:
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        (grad,) = torch.autograd.grad(out, xr, g)
    finally:
        installed.remove()
    with torch.no_grad():
        expected, out_ref = _reference_attention_relevance(attn, x, out.detach() * g, rule)
    torch.testing.assert_close(out.detach(), out_ref)
    torch.testing.assert_close(x * grad, expected, rtol=1e-7, atol=1e-9)
    assert _hook_count(model) == 0 and attn.fused_attn == timm.layers.use_fused_attn()


def _zplus_reference(conv, x, r_out):
    """z+ by its definition: R_i = sum_j (x_i w_ij)^+ / (sum_i' (x_i' w_i'j)^+ + 1e-9) R_j, over unfolded patches."""
    k = conv.kernel_size
    cols = F.unfold(x, k, padding=conv.padding, stride=conv.stride)              # [B, C*k*k, L]
    w = conv.weight.reshape(conv.out_channels, -1)                             # [O, C*k*k]
    contrib = (w[None, :, :, None] * cols[:, None]).clamp(min=0)               # [B, O, C*k*k, L]
    share = contrib / (contrib.sum(2, keepdim=True) + 1e-9)                     # the rule's stabilizer
    r = (share * r_out.flatten(2)[:, :, None]).sum(1)                          # [B, C*k*k, L]
    return F.fold(r, x.shape[-2:], k, padding=conv.padding, stride=conv.stride)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("kernel,stride,groups", [(3, 2, 1), (1, 1, 1), (3, 1, 2)])
def test_zplus_equals_its_definition(signed, kernel, stride, groups):
    """z+ on dense, pointwise (matrix-product path) and grouped convolutions, with non-negative and
    signed inputs, against R_i = sum_j (x_i w_ij)^+ / z+_j R_j computed on unfolded patches."""
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, kernel, padding=kernel // 2, stride=stride, groups=groups).double()
    model = nn.Sequential(conv)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    x = x if signed else x.abs()
    installed = install_rules(model, LRPState(active=True))
    try:
        xr = x.clone().requires_grad_(True)
        y = model(xr)
        g = torch.randn_like(y)
        (grad,) = torch.autograd.grad(y, xr, g)
    finally:
        installed.remove()
    r_out = y.detach() * g
    per_group = [_zplus_reference(_group_conv(conv, k), x[:, k * 4 // groups:(k + 1) * 4 // groups],
                                  r_out[:, k * 6 // groups:(k + 1) * 6 // groups]) for k in range(groups)]
    torch.testing.assert_close(x * grad, torch.cat(per_group, 1), rtol=1e-6, atol=1e-9)


def _group_conv(conv, k):
    """Group k of a grouped convolution as a dense one."""
    o = conv.out_channels // conv.groups
    dense = nn.Conv2d(conv.in_channels // conv.groups, o, conv.kernel_size, conv.stride, conv.padding).double()
    dense.weight.data = conv.weight.data[k * o:(k + 1) * o]
    return dense


def test_depthwise_convolutions_keep_epsilon():
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3).double()
    model = nn.Sequential(conv)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with torch.enable_grad():
        installed = install_rules(model, LRPState(active=True))
        try:
            (grad,) = torch.autograd.grad(model(x), x, g)
        finally:
            installed.remove()
        (plain,) = torch.autograd.grad(model(x), x, g)
    torch.testing.assert_close(grad, plain)


@pytest.mark.parametrize("key,taps,target,index", [
    ("efficientnet_b0", ["bn1", "blocks.2", "blocks.4"], "classifier", 3),
    ("vit", ["patch_embed", "blocks.2", "blocks.5:all"], "blocks.7", 11),
])
def test_one_forward_serves_relevance_and_the_true_gradient(key, taps, target, index, family_model, probe64):
    """`relevance_pass`: the relevance equals `tap_relevance`'s, and a loss back-propagated after it
    gets exactly the gradient of a model without rules."""
    model = family_model(key)
    x0 = probe64.images[:3]
    with torch.enable_grad(), relevance_pass(model, taps, [target]) as rp:
        model(x0.clone().requires_grad_(True))
        rel = rp.relevance([target, target], [index, index], rows=[0, 2])
    expected_rel = tap_relevance(model, x0[[0, 2]], target, index, taps)
    acts, rel_stopped = activations_and_relevance(model, x0, taps, [target], [index], rows=[2])
    for t in taps:
        torch.testing.assert_close(rel[t], expected_rel[t], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rel_stopped[t], expected_rel[t][1:], rtol=1e-4, atol=1e-6)
        assert acts[t].requires_grad and acts[t].shape[0] == 3
    x = x0.clone().requires_grad_(True)          # the gradient of a loss after a relevance pass is the true one
    with torch.enable_grad(), relevance_pass(model, taps, [target]) as rp:
        model(x)
        rp.relevance([target], [index], rows=[1])
        loss = sum((a ** 2).mean() for a in rp.activations.values())
    loss.backward()
    plain = x0.clone().requires_grad_(True)
    from audit.taps import capture

    with capture(model, taps) as acts:
        model(plain)
    sum((a ** 2).mean() for a in acts.values()).backward()
    torch.testing.assert_close(x.grad, plain.grad, rtol=1e-5, atol=1e-8)
    assert _hook_count(model) == 0


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("batch", [1, 3])
def test_true_gradient_under_the_rules_in_any_memory_order(memory_format, batch):
    """A 1x1 convolution (z+ node) then BatchNorm, as in every EfficientNet block: with the rules installed
    and inactive, the input gradient is the model's own, also for a channels-last batch of one (the CPU
    layout `audit.models.fast_layout` gives VITAL's loop); the node's output once renormalized the
    batch stride there and the gradient came out wrong by about 115 %."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32)).eval()
    x0 = torch.randn(batch, 16, 24, 24)

    def input_grad(rules: bool) -> torch.Tensor:
        x = x0.clone().requires_grad_(True)
        installed = install_rules(model, LRPState(active=False), "zplus", "cp", "warn") if rules else None
        try:
            y = model(x.contiguous(memory_format=memory_format) if memory_format is torch.channels_last else x * 1)
        finally:
            if installed is not None:
                installed.remove()
        (y ** 2).mean().backward()
        return x.grad

    torch.testing.assert_close(input_grad(True), input_grad(False), rtol=1e-5, atol=1e-7)


def test_hooks_flags_and_fused_attention_restored(family_model, probe64):
    assert any(getattr(m, "inplace", False) for m in family_model("resnet18").modules())
    assert any(getattr(m, "fused_attn", False) for m in family_model("vit").modules())
    for key, target in (("resnet18", "layer3"), ("vit", "blocks.6.attn:heads")):
        model = family_model(key)
        inplace = [getattr(m, "inplace", None) for m in model.modules()]
        fused = [getattr(m, "fused_attn", None) for m in model.modules()]
        with pytest.raises(IndexError):
            tap_relevance(model, probe64.images[:1], target, 10_000, [target])
        tap_relevance(model, probe64.images[:1], target, 1, [target])
        assert _hook_count(model) == 0
        assert [getattr(m, "inplace", None) for m in model.modules()] == inplace
        assert [getattr(m, "fused_attn", None) for m in model.modules()] == fused


def _net_with(module: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), module, nn.Conv2d(4, 2, 1)).eval()


def test_unknown_module_type_is_reported(monkeypatch):
    monkeypatch.setattr(lrp_rules, "_LAYER_MAP", list(lrp_rules._LAYER_MAP))
    monkeypatch.setattr(lrp_rules, "_PLANS", type(lrp_rules._PLANS)())

    class Squareplus(nn.Module):            # an activation timm might add tomorrow
        def forward(self, x):
            return 0.5 * (x + torch.sqrt(x * x + 4))

    net = _net_with(Squareplus())
    x = torch.randn(1, 3, 6, 6)
    with pytest.warns(LRPRuleWarning, match="Squareplus"):
        tap_relevance(net, x, "2", 0, ["0"])
    with pytest.raises(AuditInputError, match="no LRP rule for module type .*Squareplus"):
        with relevance_pass(net, ["0"], ["2"], on_unknown="error"):
            pass
    register_rule(Squareplus, "gate")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LRPRuleWarning)
        rel = tap_relevance(net, x, "2", 0, ["0", "1"])           # no warning once a rule is registered
    # the identity rule: the activation passes its relevance on unchanged
    torch.testing.assert_close(rel["0"].sum(), rel["1"].sum(), rtol=1e-4, atol=1e-6)

    class MyAttention(nn.Module):           # attention-like: heads, no registered rule
        num_heads = 2

        def __init__(self):
            super().__init__()
            self.lin = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.lin(x).softmax(1) * x

    with pytest.warns(LRPRuleWarning, match="MyAttention"):
        tap_relevance(_net_with(MyAttention()), x, "2", 0, ["0"])
