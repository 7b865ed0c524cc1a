"""How a timm module lays out its output, and the one form every consumer reads: channels first.

timm modules return their activations in several layouts:

* ``nchw``      [B, C, H, W]   convolutional maps (ResNet, EfficientNet, ConvNeXt stages, ...);
* ``nhwc``      [B, H, W, C]   Swin stages and blocks, the inside of some ConvNeXt variants;
* ``tokens``    [B, N, C]      ViT / DeiT / hybrid / Mixer token sequences, possibly with ``prefix``
                               class/register tokens before the patch tokens;
* ``tokens_cf`` [B, C, N]      token sequences with channels first (Mixer's token-mixing MLP output);
* ``windows``   [B*nW, w*w, C] Swin's window attention: tokens of each window, windows in the batch;
* ``vector``    [B, C]         pooled features and logits.

`infer_layout` decides the layout from the output's shape and what the forward saw (batch size,
image size, Swin window geometry), so the same rules serve the `layers` listing, the config check
and every tap at run time. `to_canonical` turns any of them into channels first: [B, C, H, W] for
maps (token grids and Swin windows put back on the image grid, class tokens left out by default),
[B, C, N] for sequences without a grid, [B, C] for vectors.

A layer may be addressed with a *view* suffix (`LayerName`): ``blocks.6:all`` (every token,
class/register tokens included), ``blocks.6:class`` (the class/register tokens only) and
``blocks.6.attn:heads`` (one channel per attention head, see `audit.attention`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .errors import AuditInputError

LayoutKind = Literal["nchw", "nhwc", "tokens", "tokens_cf", "windows", "vector"]
TokenSelection = Literal["patches", "all", "class"]
TOKEN_SELECTIONS: tuple[str, ...] = ("patches", "all", "class")


@dataclass(frozen=True)
class LayerName:
    """A layer address: a module name plus an optional view (``:heads``, ``:all``, ``:class``)."""

    module: str
    heads: bool = False
    tokens: TokenSelection = "patches"

    @property
    def full(self) -> str:
        return self.module + (":heads" if self.heads else "") + ("" if self.tokens == "patches" else f":{self.tokens}")


def parse_layer_name(name: str) -> LayerName:
    """`blocks.6.attn:heads:class` -> LayerName('blocks.6.attn', heads=True, tokens='class')."""
    module, *views = name.split(":")
    heads, tokens = False, "patches"
    for v in views:
        if v == "heads":
            heads = True
        elif v in TOKEN_SELECTIONS:
            tokens = v
        else:
            raise AuditInputError(f"unknown layer view {v!r} in {name!r}; valid views: heads, all, class, patches")
    return LayerName(module, heads, tokens)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WindowGeometry:
    """Swin's windows of one block: window size, padded and real grid, cyclic shift."""

    window: tuple[int, int]
    padded: tuple[int, int]
    size: tuple[int, int]
    shift: tuple[int, int]

    @property
    def count(self) -> int:
        return (self.padded[0] // self.window[0]) * (self.padded[1] // self.window[1])


@dataclass(frozen=True)
class Layout:
    kind: LayoutKind
    channels: int
    prefix: int = 0                           # class/register tokens before the patch tokens
    grid: tuple[int, int] | None = None       # token grid (tokens, tokens_cf, windows)
    windows: WindowGeometry | None = None

    def describe(self) -> str:
        """Short text for `neuron-audit layers`, e.g. ``tokens 1+14x14``."""
        if self.kind in ("nchw", "nhwc"):
            return self.kind.upper()
        if self.kind == "vector":
            return "vector"
        if self.kind == "windows":
            return f"windows {self.windows.window[0]}x{self.windows.window[1]} on {self.grid[0]}x{self.grid[1]}"
        grid = f"{self.grid[0]}x{self.grid[1]}" if self.grid else "sequence"
        prefix = f"{self.prefix}+" if self.prefix else ""
        return f"{'tokens' if self.kind == 'tokens' else 'tokens (channels first)'} {prefix}{grid}"


@dataclass
class ForwardInfo:
    """What the current forward pass saw: its batch size and image size (root pre-hook) and the
    window geometry of each windowed block that ran (their pre-hooks)."""

    batch: int | None = None
    image_hw: tuple[int, int] | None = None
    windows: dict[str, WindowGeometry] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelHints:
    """Static facts about a model that the layout rules need."""

    prefix_tokens: int                        # ViT: class (+ distillation, register) tokens
    patch_grid: tuple[int, int] | None        # the patch embedding's grid, when it has one
    channels_last: bool                       # timm's output_fmt == 'NHWC' (Swin)
    input_hw: tuple[int, int]


_CHANNELS_LAST_LEAVES: tuple[type, ...] = (nn.Linear, nn.LayerNorm)


def _channels_last_leaf(module: nn.Module) -> bool | None:
    """A leaf module whose type fixes the layout (Linear/LayerNorm act on the last dim; conv and
    2-d norms on dim 1); None when the type says nothing (containers, activations)."""
    if type(module).__name__ in ("LayerNorm2d", "LayerNormChannel"):
        return False
    if isinstance(module, _CHANNELS_LAST_LEAVES):
        return True
    if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm)):
        return False
    return None


def _is_spatial(h: int, w: int, image_hw: tuple[int, int]) -> bool:
    """(h, w) can be the grid of a feature map of this image: the image size divided by one
    stride (a few pixels of slack for unpadded convolutions)."""
    ih, iw = image_hw
    if h < 1 or w < 1 or h > ih or w > iw:
        return False
    for s in {max(1, math.floor(ih / h)), math.ceil(ih / h)}:
        eh, ew = ih / s, iw / s
        if abs(h - eh) <= max(1.0, 0.05 * eh) + 0.5 and abs(w - ew) <= max(1.0, 0.05 * ew) + 0.5:
            return True
    return False


def token_grid(n: int, image_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The grid (gh, gw) of n tokens laid over an image of this aspect ratio, or None."""
    if n < 1:
        return None
    ratio = image_hw[0] / image_hw[1]
    gh = max(1, round(math.sqrt(n * ratio)))
    for cand in (gh, gh - 1, gh + 1):
        if cand >= 1 and n % cand == 0:
            gw = n // cand
            if abs(cand / gw - ratio) <= 0.15 * ratio:
                return cand, gw
    return None


def model_hints(model: nn.Module, input_hw: tuple[int, int]) -> ModelHints:
    """The static facts `infer_layout` needs, read from timm's attributes."""
    prefix = getattr(model, "num_prefix_tokens", 0)
    grid = None
    for m in model.modules():
        g = getattr(m, "grid_size", None)
        if isinstance(g, (tuple, list)) and len(g) == 2 and all(isinstance(v, int) for v in g):
            grid = (int(g[0]), int(g[1]))
            break
    return ModelHints(prefix_tokens=int(prefix) if isinstance(prefix, int) else 0, patch_grid=grid,
                      channels_last=str(getattr(model, "output_fmt", "NCHW")).upper() == "NHWC", input_hw=input_hw)


def is_windowed_block(module: nn.Module) -> bool:
    """A block that runs attention on shifted windows (timm's Swin blocks)."""
    return hasattr(module, "window_size") and hasattr(module, "shift_size")


def window_geometry(block: nn.Module, input_shape: tuple[int, ...]) -> WindowGeometry | None:
    """The windows of a Swin block for an input [B, H, W, C] (timm pads the grid to whole windows)."""
    if len(input_shape) != 4:
        return None
    h, w = int(input_shape[1]), int(input_shape[2])
    win = _pair(block.window_size)
    shift = _pair(block.shift_size)
    if win is None or shift is None:
        return None
    padded = (math.ceil(h / win[0]) * win[0], math.ceil(w / win[1]) * win[1])
    return WindowGeometry(win, padded, (h, w), shift)


def _pair(v) -> tuple[int, int] | None:
    if isinstance(v, int):
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return int(v[0]), int(v[1])
    return None


def infer_layout(shape: tuple[int, ...], hints: ModelHints, info: ForwardInfo, module: nn.Module | None = None,
                 window: WindowGeometry | None = None) -> Layout | None:
    """The layout of one module output of this shape, or None when it is not a feature map, token
    sequence or vector (attention matrices, per-head tensors, tuples...)."""
    image_hw = info.image_hw or hints.input_hw
    batch = info.batch
    dims = len(shape)
    if batch is not None and shape[0] != batch and not (dims == 3 and window is not None):
        return None
    if dims == 2:
        return Layout("vector", shape[1])
    if dims == 4:
        _, d1, d2, d3 = shape
        nchw, nhwc = _is_spatial(d2, d3, image_hw), _is_spatial(d1, d2, image_hw)
        if nchw and nhwc:
            leaf = _channels_last_leaf(module) if module is not None else None
            nhwc_wins = leaf if leaf is not None else hints.channels_last
            return Layout("nhwc", d3) if nhwc_wins else Layout("nchw", d1)
        if nchw:
            return Layout("nchw", d1)
        if nhwc:
            return Layout("nhwc", d3)
        return None
    if dims != 3:
        return None
    d0, a, b = shape
    if window is not None:
        per_image = window.count
        if batch is None:
            batch = d0 // per_image if d0 % per_image == 0 else None
        if batch is not None and d0 == batch * per_image and d0 != batch and a == window.window[0] * window.window[1]:
            return Layout("windows", b, grid=window.size, windows=window)
        if batch is not None and d0 != batch:
            return None
    p = hints.prefix_tokens
    if hints.patch_grid is not None:
        g = hints.patch_grid[0] * hints.patch_grid[1]
        if a in (g, g + p):
            return Layout("tokens", b, prefix=a - g, grid=hints.patch_grid)
        if b in (g, g + p):
            return Layout("tokens_cf", a, prefix=b - g, grid=hints.patch_grid)
    grid = token_grid(a, image_hw)
    if grid is not None:
        return Layout("tokens", b, grid=grid)
    if p and a > p and token_grid(a - p, image_hw) is not None:
        return Layout("tokens", b, prefix=p, grid=token_grid(a - p, image_hw))
    return Layout("tokens", b)


def to_canonical(t: torch.Tensor, layout: Layout, tokens: TokenSelection = "patches") -> torch.Tensor:
    """`t` in channels-first form: [B, C, H, W] maps and token grids, [B, C, N] sequences, [B, C] vectors.

    `tokens` picks which tokens of a token layout are kept: the patch tokens (default; laid out
    on their grid), all of them (a sequence), or the class/register tokens only."""
    kind = layout.kind
    if tokens != "patches" and kind not in ("tokens", "tokens_cf"):
        raise AuditInputError(f"the view ':{tokens}' needs a token layout; this layer is {layout.describe()}")
    if kind in ("nchw", "vector"):
        return t
    if kind == "nhwc":
        return t.permute(0, 3, 1, 2)
    if kind == "windows":
        return _unwindow(t, layout.windows)
    seq = t.transpose(1, 2) if kind == "tokens" else t            # [B, C, N]
    p = layout.prefix
    if tokens == "all":
        return seq
    if tokens == "class":
        if p == 0:
            raise AuditInputError("the view ':class' needs class/register tokens; this layer has none")
        return seq[:, :, :p]
    patches = seq[:, :, p:]
    if layout.grid is not None and patches.shape[2] == layout.grid[0] * layout.grid[1]:
        return patches.reshape(patches.shape[0], patches.shape[1], *layout.grid)
    return patches


def _unwindow(t: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
    """Swin windows [B*nW, wh*ww, C] back on the image grid: [B, C, H, W] (padding cropped, the
    block's cyclic shift undone)."""
    (wh, ww), (hp, wp), (h, w) = g.window, g.padded, g.size
    c = t.shape[-1]
    x = t.reshape(-1, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
    x = x[:, :h, :w]
    if any(g.shift):
        x = torch.roll(x, shifts=g.shift, dims=(1, 2))
    return x.permute(0, 3, 1, 2)


def channels_first(t: torch.Tensor) -> torch.Tensor:
    """A canonical activation (see `to_canonical`) as [B, C, N]: positions flattened, vectors N=1."""
    if t.dim() >= 3:
        return t.flatten(2)
    if t.dim() == 2:
        return t.unsqueeze(-1)
    raise ValueError(f"cannot interpret activation of shape {tuple(t.shape)} as channels")
