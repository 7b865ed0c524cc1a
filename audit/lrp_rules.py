"""LRP rules registered by module type, in the manner of Zennit's layer-map composites.

Every rule is written in the gradient x input form: relevance at a tensor a is a * g, where g is
the gradient the modified backward pass delivers, and each rule changes the backward of one module
type so that this product redistributes relevance as the rule says. A rule does not change any
forward value. It inserts a `_RuleNode` after the module: in *normal* mode (``LRPState.active``
false) its backward is the true gradient, in *LRP* mode it is the rule's. One forward can
therefore serve both a relevance pass (LRP mode, `torch.autograd.grad` with ``retain_graph``) and an
ordinary loss backward (normal mode): `audit.relevance.RelevancePass`.

The rules (names as registered in `RULES`):

* ``epsilon`` (LRP-0 / epsilon with vanishing epsilon): linear maps (nn.Linear, convolutions with
  ``conv_rule="epsilon"``, BatchNorm in eval mode, average pooling) need no change: gradient x
  input *is* the rule; biases absorb their share. ``pass`` is the same for modules that only move
  values (dropout, identity, flatten, max pooling as winner-takes-all, DropPath, layer scale).
* ``zplus`` (z+, alpha1-beta0; Bach et al. 2015, Montavon et al. 2017) for plain nn.Conv2d that mix
  channels: only positive contributions (x_i w_ij)^+ carry relevance, R_i = sum_j (x_i w_ij)^+ /
  z+_j R_j. The VITAL authors' rule family. Depthwise convolutions keep epsilon: there z+ only
  reshapes relevance inside one channel's kernel window, and it measured no better
  (benchmarks/lrp_localization.py: correlation between a channel's own map and the relevance it
  sends two blocks down, 6 channels x 24 probe crops x 3 layer pairs; chosen on Lite0 (0.48 mean),
  held out on Lite1 / Lite2: 0.28 / 0.38 with this default, 0.25 / 0.36 with z+ on depthwise
  convolutions too (``conv_rule="zplus-all"``), 0.10 / 0.14 with epsilon (``"epsilon"``)).
* ``gate`` (the identity rule of AttnLRP, Achtibat et al. ICML 2024, eq. 9) for element-wise
  nonlinearities (ReLU6, SiLU, GELU, Hardswish, Mish, ...): relevance passes unchanged, i.e. the
  gradient is scaled by f(x)/x instead of f'(x). For ReLU, LeakyReLU and PReLU f(x)/x = f'(x):
  their own gradient is the rule and they get no node (``pass``).
* ``constant`` for multiplicative gates (nn.Sigmoid/Hardsigmoid modules of squeeze-excitation):
  the gate is a constant, relevance flows through the gated signal only.
* ``norm`` for LayerNorm, LayerNorm2d and GroupNorm: the standard deviation is a constant (AttnLRP
  Proposition 3.4, also CP-LRP's LayerNorm rule, Ali et al. ICML 2022); the centring is linear.
* attention, two published rules (``attention_rule``):
  - ``cp`` (CP-LRP, Ali et al., "XAI for Transformers: Better Explanations through Conservative
    Propagation", ICML 2022): the attention probabilities are constants; relevance flows through
    the values only. Conservative: on a bias-free ViT the relevance sums are preserved.
  - ``attnlrp`` (AttnLRP, Achtibat et al., ICML 2024): the softmax rule of Proposition 3.1,
    R_in = x (R_out - s sum R_out), which in gradient x input form is the softmax's own gradient;
    the uniform rule (Proposition 3.3) for the two matrix products q k^T and A v, which halves the
    gradient into each factor (at the probabilities and at the q, k, v projection). Not
    conservative: the softmax rule has a bias term that absorbs relevance.
  Both switch timm's fused attention off while installed (its softmax is not reachable by hooks).

A module type without a rule is reported, not silently given the plain gradient: an unknown leaf
module (a new activation, say) or an attention-like container (``num_heads``) triggers an
`LRPRuleWarning` once per type, or an AuditInputError with ``on_unknown="error"``. Register a rule
with `register_rule`.
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import unfused_attention
from .errors import AuditInputError

__all__ = ["LRPState", "Rule", "RULES", "register_rule", "rule_for", "install_rules", "LRPRuleWarning",
           "CONV_RULES", "ATTENTION_RULES"]

CONV_RULES = ("zplus", "zplus-all", "epsilon")
ATTENTION_RULES = ("cp", "attnlrp")


class LRPRuleWarning(UserWarning):
    """A module type has no LRP rule: relevance passes it with the plain gradient."""


@dataclass
class LRPState:
    """Whether backward passes through the installed rule nodes follow the rules (LRP mode) or the
    true gradient (normal mode)."""

    active: bool = False


Backward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]


class _RuleNode(torch.autograd.Function):
    """Identity on the module output y; its backward is the rule's (LRP mode) or the true one.

    The output is a view of y (no copy); `install_rules` switches in-place activations off, since
    autograd forbids modifying such a view in place."""

    @staticmethod
    def forward(ctx, x, y, backward: Backward, state: LRPState):
        ctx.backward_fn, ctx.state = backward, state
        ctx.save_for_backward(x, y)
        # A view with y's own strides: view_as renormalizes the stride of a size-1 dimension, and a
        # channels-last batch of one then got a wrong true gradient (oneDNN's backward misread it).
        return y[...]

    @staticmethod
    def backward(ctx, g):
        if not ctx.state.active:
            return None, g, None, None
        x, y = ctx.saved_tensors
        gx, gy = ctx.backward_fn(x, y, g)
        if not ctx.needs_input_grad[0]:
            gx = None
        return gx, gy, None, None


def _node(x, y, backward: Backward, state: LRPState):
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or not y.requires_grad:
        return None
    return _RuleNode.apply(x, y, backward, state)


class Rule:
    """How relevance passes one module backward. `install` adds the hooks (and any setting it must
    change) and returns the functions that undo them."""

    name = "rule"

    def applies(self, module: nn.Module) -> bool:
        """Whether the rule can act on this module (else: epsilon for linear maps, reported otherwise)."""
        return True

    def install(self, module: nn.Module, state: LRPState) -> list[Callable[[], None]]:
        return []


class Pass(Rule):
    """Gradient x input is already the rule (linear maps: epsilon / LRP-0; value-moving modules)."""

    def __init__(self, name: str):
        self.name = name


class OutputRule(Rule):
    """A rule applied at the module's output from its input x, output y and output gradient g."""

    def backward(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> tuple:
        raise NotImplementedError

    def applies(self, module: nn.Module) -> bool:
        return True

    def install(self, module: nn.Module, state: LRPState) -> list[Callable[[], None]]:
        if not self.applies(module):
            return []
        undo: list[Callable[[], None]] = []
        fn = lambda x, y, g: self.backward(module, x, y, g)  # noqa: E731
        handle = module.register_forward_hook(lambda _m, inputs, out: _node(inputs[0] if inputs else None, out, fn, state))
        undo.append(handle.remove)
        return undo


class Gate(OutputRule):
    """Identity rule for element-wise nonlinearities: d/dx becomes f(x)/x (0 where x = 0)."""

    name = "gate"

    def backward(self, module, x, y, g):
        if x.shape != y.shape:
            return None, g
        return g * torch.nan_to_num(y / x, nan=0.0, posinf=0.0, neginf=0.0), None


class Constant(OutputRule):
    """The module's output is a constant: no relevance reaches its input."""

    name = "constant"

    def backward(self, module, x, y, g):
        return None, None


class Scale(OutputRule):
    """The gradient into the module's output is scaled (AttnLRP's uniform rule halves it)."""

    def __init__(self, factor: float, name: str = "scale"):
        self.factor, self.name = factor, name

    def backward(self, module, x, y, g):
        return None, g * self.factor


class ZPlus(OutputRule):
    """z+ for plain nn.Conv2d (zero padding, numeric padding); other convolutions keep epsilon.

    R_i = sum_j (x_i w_ij)^+ / z+_j R_j with z+_j = sum_i (x_i w_ij)^+ and R_j = y_j g_j; the
    positive contributions are x+ w+ and x- w- (the second only when the input has negative values).
    With ``depthwise=False`` depthwise convolutions (one input channel per output channel, where
    z+ only reshapes relevance inside the kernel window) keep epsilon."""

    def __init__(self, name: str = "zplus", depthwise: bool = False):
        self.name, self.depthwise = name, depthwise

    def applies(self, module):
        ok = (isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward
              and module.padding_mode == "zeros" and not isinstance(module.padding, str))
        if ok and not self.depthwise:
            ok = not (module.groups > 1 and module.groups == module.in_channels)
        return ok

    def backward(self, m, x, y, g):
        w = m.weight.detach()
        signed = bool((x < 0).any())
        if m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0) and m.groups == 1:
            gx = self._pointwise(w.flatten(1), x, y, g, signed)
        elif m.groups == 1 and signed:
            gx = self._signed_dense(m, w, x, y, g)
        else:
            gx = self._grouped(m, w, x, y, g, signed)
        return gx, None

    @staticmethod
    def _pointwise(w, x, y, g, signed):
        """1x1 convolutions as matrix products (no im2col): most of EfficientNet's and MobileNet's work."""
        b, c = x.shape[:2]
        xs = x.reshape(b, c, -1)
        if signed:                                   # [x+, x-] against [w+, w-]: both positive parts in one product
            x2 = torch.cat((xs.clamp(min=0), xs.clamp(max=0)), 1)
            w2 = torch.cat((w.clamp(min=0), w.clamp(max=0)), 1)
            s = g.reshape(b, w.shape[0], -1) * y.reshape(b, w.shape[0], -1) / (w2 @ x2 + 1e-9)
            g2 = w2.t() @ s
            return torch.where(xs > 0, g2[:, :c], g2[:, c:]).reshape(x.shape)
        wp = w.clamp(min=0)
        s = g.reshape(b, w.shape[0], -1) * y.reshape(b, w.shape[0], -1) / (wp @ xs + 1e-9)
        return (wp.t() @ s).reshape(x.shape)

    @staticmethod
    def _input_grad(shape, w, s, m, groups: int) -> torch.Tensor:
        """The convolution's input gradient for output gradient `s` and weights `w`, as a transposed
        convolution (oneDNN's deconvolution: about a third faster here than `conv2d_input`); the
        output padding restores the input size that strided convolutions round down."""
        extra = tuple(int(shape[2 + i] - ((s.shape[2 + i] - 1) * m.stride[i] - 2 * m.padding[i]
                                          + m.dilation[i] * (w.shape[2 + i] - 1) + 1)) for i in range(2))
        return F.conv_transpose2d(s, w, None, m.stride, m.padding, extra, groups, m.dilation)

    @staticmethod
    def _signed_dense(m, w, x, y, g):
        """Signed input, groups 1: the two positive parts as one convolution over [x+, x-]."""
        args = (m.stride, m.padding, m.dilation, 1)
        c = x.shape[1]
        x2 = torch.cat((x.clamp(min=0), x.clamp(max=0)), 1)
        w2 = torch.cat((w.clamp(min=0), w.clamp(max=0)), 1)
        s = g * y / (F.conv2d(x2, w2, None, *args) + 1e-9)          # z+ >= 0; where it is 0 no x_i w_ij is > 0
        g2 = ZPlus._input_grad(x2.shape, w2, s, m, 1)
        return torch.where(x > 0, g2[:, :c], g2[:, c:])

    @staticmethod
    def _grouped(m, w, x, y, g, signed):
        args = (m.stride, m.padding, m.dilation, m.groups)
        wp = w.clamp(min=0)
        if not signed:
            s = g * y / (F.conv2d(x, wp, None, *args) + 1e-9)
            return ZPlus._input_grad(x.shape, wp, s, m, m.groups)
        wn = w.clamp(max=0)
        s = g * y / (F.conv2d(x.clamp(min=0), wp, None, *args) + F.conv2d(x.clamp(max=0), wn, None, *args) + 1e-9)
        return torch.where(x > 0, ZPlus._input_grad(x.shape, wp, s, m, m.groups),
                           ZPlus._input_grad(x.shape, wn, s, m, m.groups))


class NormIdentity(OutputRule):
    """LayerNorm / LayerNorm2d / GroupNorm with the standard deviation taken as a constant."""

    name = "norm"

    def backward(self, m, x, y, g):
        xf, gf = x.float(), g.float()
        w = getattr(m, "weight", None)
        if isinstance(m, nn.GroupNorm):
            shape = (1, -1) + (1,) * (x.dim() - 2)
            gw = gf * w.view(shape) if w is not None else gf
            groups = m.num_groups
            xs = xf.reshape(x.shape[0], groups, -1)
            gs = gw.reshape(x.shape[0], groups, -1)
            std = (xs.var(-1, unbiased=False, keepdim=True) + m.eps).sqrt()
            gx = ((gs - gs.mean(-1, keepdim=True)) / std).reshape(x.shape)
            return gx.to(x.dtype), None
        if type(m).__name__ in ("LayerNorm2d", "LayerNormChannel"):
            dims: tuple[int, ...] = (1,)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            gw = gf * w.view(shape) if w is not None else gf
        else:
            dims = tuple(range(-len(m.normalized_shape), 0))
            gw = gf * w if w is not None else gf
        std = (xf.var(dims, unbiased=False, keepdim=True) + m.eps).sqrt()
        gx = (gw - gw.mean(dims, keepdim=True)) / std
        return gx.to(x.dtype), None


class NormActIdentity(Rule):
    """timm's GroupNormAct/LayerNormAct (normalization, then an activation child): the norm rule on
    the normalization (the activation child gets its own rule)."""

    name = "norm-act"

    def install(self, module, state):
        act = getattr(module, "act", None)
        saved: dict[str, torch.Tensor] = {}
        norm = NormIdentity()
        fn = lambda x, y, g: norm.backward(module, x, y, g)  # noqa: E731
        h1 = module.register_forward_pre_hook(lambda _m, args: saved.__setitem__("x", args[0]))
        target = act if isinstance(act, nn.Module) else getattr(module, "drop", None)
        if not isinstance(target, nn.Module):
            h1.remove()
            return []

        def pre(_m, args):
            out = _node(saved.get("x"), args[0], fn, state)
            return None if out is None else (out,) + tuple(args[1:])

        h2 = target.register_forward_pre_hook(pre)
        return [h1.remove, h2.remove, saved.clear]


class Attention(Rule):
    """CP-LRP or AttnLRP on a timm attention module (explicit path, `attn_drop` after the softmax)."""

    def __init__(self, name: str):
        if name not in ATTENTION_RULES:
            raise ValueError(f"unknown attention rule {name!r}; valid: {', '.join(ATTENTION_RULES)}")
        self.name = name

    def applies(self, module):
        return isinstance(getattr(module, "attn_drop", None), nn.Module)

    def install(self, module, state):
        probs = module.attn_drop
        ctx = unfused_attention([module])
        ctx.__enter__()
        undo: list[Callable[[], None]] = [lambda: ctx.__exit__(None, None, None)]
        if self.name == "cp":
            undo += Constant().install(probs, state)
        else:
            undo += Scale(0.5, "uniform").install(probs, state)
            qkv = getattr(module, "qkv", None)
            if isinstance(qkv, nn.Module):
                undo += Scale(0.5, "uniform").install(qkv, state)
            else:           # separate q/k/v projections
                for child in ("q", "k", "v", "q_proj", "k_proj", "v_proj"):
                    c = getattr(module, child, None)
                    if isinstance(c, nn.Module):
                        undo += Scale(0.5, "uniform").install(c, state)
        return undo


def _timm_types(names: Iterable[str], modules: Iterable[str] = ("timm.layers.activations",
                                                              "timm.layers.activations_me")) -> tuple[type, ...]:
    import importlib

    out = []
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        out += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(out)


# Positively homogeneous piecewise-linear activations (f(x) = f'(x) x): the identity rule is their gradient.
_HOMOGENEOUS_TYPES: tuple[type, ...] = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.RReLU) + _timm_types(("PReLU",))
_GATE_TYPES: tuple[type, ...] = (nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.ELU, nn.Mish, nn.Softplus, nn.Tanh,
                                 nn.CELU, nn.SELU, nn.Hardtanh) + _timm_types(
    ("Swish", "Mish", "GELU", "GELUTanh", "HardSwish", "QuickGELU", "Tanh", "SwishMe", "MishMe", "HardSwishMe"))
_CONSTANT_TYPES: tuple[type, ...] = (nn.Sigmoid, nn.Hardsigmoid) + _timm_types(("Sigmoid", "HardSigmoid", "HardSigmoidMe"))
_PASS_TYPES: tuple[type, ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.MaxPool1d, nn.MaxPool2d,
    nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten, nn.Unflatten,
    nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.Softmax, nn.Embedding) + _timm_types(
    ("DropPath", "FastAdaptiveAvgPool", "AdaptiveAvgMaxPool2d", "SelectAdaptivePool2d", "LayerScale", "LayerScale2d",
     "MaxPool2dSame", "AvgPool2dSame", "PatchDropout", "BlurPool2d"),
    ("timm.layers.drop", "timm.layers.adaptive_avgmax_pool", "timm.layers.layer_scale", "timm.layers.pool2d_same",
     "timm.layers.patch_dropout", "timm.layers.blur_pool", "timm.models.vision_transformer"))


def _attention_types() -> tuple[type, ...]:
    types = _timm_types(("Attention",), ("timm.layers.attention",)) + _timm_types(
        ("WindowAttention",), ("timm.models.swin_transformer",))
    return types


def _norm_act_types() -> tuple[type, ...]:
    return _timm_types(("GroupNormAct", "GroupNorm1Act", "LayerNormAct", "LayerNormAct2d"), ("timm.layers.norm_act",))


# Rule names -> rules. "conv" and "attention" are slots filled by `install_rules`' arguments.
RULES: dict[str, Rule] = {
    "epsilon": Pass("epsilon"), "pass": Pass("pass"), "zplus": ZPlus("zplus", depthwise=False),
    "zplus-all": ZPlus("zplus-all", depthwise=True), "gate": Gate(), "constant": Constant(),
    "norm": NormIdentity(), "norm-act": NormActIdentity(), "cp": Attention("cp"), "attnlrp": Attention("attnlrp"),
}

# Module types -> rule names; the first match wins (later registrations come first).
_LAYER_MAP: list[tuple[tuple[type, ...], str]] = [
    (_norm_act_types(), "norm-act"),
    (_attention_types(), "attention"),
    ((nn.LayerNorm, nn.GroupNorm), "norm"),
    (_HOMOGENEOUS_TYPES, "pass"),
    (_GATE_TYPES, "gate"),
    (_CONSTANT_TYPES, "constant"),
    ((nn.Conv2d,), "conv"),
    (_PASS_TYPES, "pass"),
]


def register_rule(types: type | tuple[type, ...], rule: str | Rule) -> None:
    """Use `rule` (a registered name, or a Rule, registered under its `name`) for modules of `types`.
    Later registrations take precedence, so a project can override the defaults."""
    if isinstance(rule, Rule):
        RULES[rule.name] = rule
        rule = rule.name
    if rule not in RULES and rule not in ("conv", "attention"):
        raise ValueError(f"unknown LRP rule {rule!r}; registered: {', '.join(sorted(RULES))}")
    types = types if isinstance(types, tuple) else (types,)
    _LAYER_MAP.insert(0, (types, rule))
    _PLANS.clear()


def rule_for(module: nn.Module, conv_rule: str = "zplus", attention_rule: str = "cp") -> Rule | None:
    """The rule registered for this module's type (slots resolved), or None when there is none."""
    for types, name in _LAYER_MAP:
        if types and isinstance(module, types):
            if name == "conv":
                name = conv_rule
            elif name == "attention":
                name = attention_rule
            return RULES[name]
    return None


_REPORTED: set[type] = set()


def _report_unknown(module: nn.Module, why: str, on_unknown: str) -> None:
    kind = type(module)
    msg = (f"no LRP rule for module type {kind.__module__}.{kind.__name__}: {why}; relevance passes it with the "
           f"plain gradient. Register one with audit.lrp_rules.register_rule({kind.__name__}, ...)")
    if on_unknown == "error":
        raise AuditInputError(msg)
    if on_unknown == "warn" and kind not in _REPORTED:
        _REPORTED.add(kind)
        warnings.warn(msg, LRPRuleWarning, stacklevel=3)


@dataclass
class InstalledRules:
    state: LRPState
    undo: list[Callable[[], None]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def remove(self) -> None:
        while self.undo:
            self.undo.pop()()


@dataclass
class _Plan:
    rules: list[tuple[nn.Module, Rule]]
    unknown: list[tuple[str, nn.Module]]
    inplace: list[nn.Module]            # modules with an `inplace` flag: off while rules are installed


_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str], _Plan]]" = weakref.WeakKeyDictionary()


def _plan(model: nn.Module, conv_rule: str, attention_rule: str) -> _Plan:
    """Which rule each module gets (computed once per model and rule choice: a VITAL run installs the
    rules on every step)."""
    plans = _PLANS.setdefault(model, {})
    key = (conv_rule, attention_rule)
    if key in plans:
        return plans[key]
    rules: list[tuple[nn.Module, Rule]] = []
    unknown: list[tuple[str, nn.Module]] = []
    handled: set[int] = set()
    for name, module in model.named_modules():
        if not name or id(module) in handled:
            continue
        rule = rule_for(module, conv_rule, attention_rule)
        if rule is None:
            if next(module.children(), None) is None or isinstance(getattr(module, "num_heads", None), int):
                unknown.append((name, module))
            continue
        if isinstance(rule, Attention):
            for child in ("attn_drop", "qkv"):
                c = getattr(module, child, None)
                if isinstance(c, nn.Module):
                    handled.add(id(c))
        if isinstance(rule, Pass):
            continue
        if not rule.applies(module):
            if isinstance(rule, Attention):      # its probabilities (`attn_drop`) cannot be reached
                unknown.append((name, module))
            continue
        rules.append((module, rule))
    inplace = [m for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)]
    plans[key] = _Plan(rules, unknown, inplace)
    return plans[key]


def install_rules(model: nn.Module, state: LRPState, conv_rule: str = "zplus", attention_rule: str = "cp",
                  on_unknown: str = "warn") -> InstalledRules:
    """Install the rules on every module of `model`; `InstalledRules.remove` undoes all of it.

    Modules inside a module that has a rule are still visited (an attention module's projections
    are linear; its `attn_drop` is handled by the attention rule and skipped here). Module types
    without a rule are reported (`on_unknown`: warn once per type, error, or ignore)."""
    if conv_rule not in CONV_RULES:
        raise AuditInputError(f"unknown conv_rule {conv_rule!r}; valid: {', '.join(CONV_RULES)}")
    if attention_rule not in ATTENTION_RULES:
        raise AuditInputError(f"unknown attention_rule {attention_rule!r}; valid: {', '.join(ATTENTION_RULES)}")
    if on_unknown not in ("warn", "error", "ignore"):
        raise ValueError(f"on_unknown must be warn, error or ignore, not {on_unknown!r}")
    plan = _plan(model, conv_rule, attention_rule)
    installed = InstalledRules(state, unknown=[n for n, _ in plan.unknown])
    for name, module in plan.unknown:
        _report_unknown(module, f"first at {name!r}", on_unknown)
    try:
        for module in plan.inplace:          # a rule node's output must not be modified in place
            if module.inplace:
                module.inplace = False
                installed.undo.append(lambda module=module: setattr(module, "inplace", True))
        for module, rule in plan.rules:
            installed.undo.extend(rule.install(module, state))
    except BaseException:
        installed.remove()
        raise
    return installed
