"""Server-side SVG plots (no JavaScript): overlaid histograms and drift statistics
over versions with threshold bands and alert markers.

Every function returns a `markupsafe.Markup` string ready to be placed inline
in a Jinja2 template; all text that comes from the store is escaped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from markupsafe import Markup, escape

# Colour-blind friendly series colours (Okabe-Ito).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
VERDICT_COLOURS = {"PASS": "#1a7f37", "WARN": "#b7791f", "FAIL": "#c62828"}


def _f(x: float) -> str:
    return f"{x:.1f}"


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.0e}"
    if a >= 10:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2f}".rstrip("0").rstrip(".")


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = mag
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            step = m * mag
            break
    start = math.ceil(lo / step - 1e-9) * step
    out = []
    v = start
    while v <= hi + 1e-9 * step:
        out.append(round(v, 12))
        v += step
    return out


def _empty(width: int, height: int, message: str) -> Markup:
    return Markup(
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(message)}"><rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" '
        f'class="plot-frame"/><text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="plot-empty">'
        f"{escape(message)}</text></svg>"
    )


# --------------------------------------------------------------------------- histograms
def histogram_overlay(series: Sequence[dict], width: int = 560, height: int = 240, title: str = "") -> Markup:
    """Overlaid activation histograms, one step line (+ light fill) per version.

    `series`: [dict(label, edges, counts)]. Counts are converted to densities so
    that versions with different bin edges or probe counts are comparable.
    """
    ss = []
    for s in series:
        edges = [float(e) for e in (s.get("edges") or [])]
        counts = [float(c) for c in (s.get("counts") or [])]
        if len(edges) != len(counts) + 1 or not counts:
            continue
        total = sum(counts) or 1.0
        dens = []
        for i, c in enumerate(counts):
            w = edges[i + 1] - edges[i]
            dens.append(c / total / w if w > 0 else 0.0)
        ss.append((str(s.get("label", "")), edges, dens))
    if not ss:
        return _empty(width, height, "no activation histogram stored")
    ml, mr, mt, mb = 48, 12, 26 if title else 12, 34
    pw, ph = width - ml - mr, height - mt - mb
    x0 = min(e[0] for _, e, _ in ss)
    x1 = max(e[-1] for _, e, _ in ss)
    if x1 <= x0:
        x1 = x0 + 1
    y1 = max(max(d) for _, _, d in ss) * 1.08 or 1.0

    def X(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return mt + ph - v / y1 * ph

    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="activation histograms">']
    if title:
        parts.append(f'<text x="{ml}" y="16" class="plot-title">{escape(title)}</text>')
    for t in nice_ticks(0, y1, 3):
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{_f(Y(t))}" y2="{_f(Y(t))}" class="grid"/>')
        parts.append(f'<text x="{ml - 6}" y="{_f(Y(t) + 4)}" text-anchor="end" class="tick">{_fmt_tick(t)}</text>')
    for t in nice_ticks(x0, x1, 6):
        parts.append(f'<line x1="{_f(X(t))}" x2="{_f(X(t))}" y1="{mt + ph}" y2="{mt + ph + 4}" class="axis"/>')
        parts.append(f'<text x="{_f(X(t))}" y="{mt + ph + 16}" text-anchor="middle" class="tick">{_fmt_tick(t)}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 3}" text-anchor="middle" class="axis-label">activation</text>')
    parts.append(f'<text x="12" y="{mt + ph / 2}" text-anchor="middle" class="axis-label" '
                 f'transform="rotate(-90 12 {mt + ph / 2})">density</text>')
    for k, (label, edges, dens) in enumerate(ss):
        col = PALETTE[k % len(PALETTE)]
        pts = [(X(edges[0]), Y(0))]
        for i, d in enumerate(dens):
            pts.append((X(edges[i]), Y(d)))
            pts.append((X(edges[i + 1]), Y(d)))
        pts.append((X(edges[-1]), Y(0)))
        path = " ".join(f"{_f(x)},{_f(y)}" for x, y in pts)
        parts.append(f'<polygon points="{path}" fill="{col}" fill-opacity="0.12" stroke="none"/>')
        parts.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="1.8">'
                     f"<title>version {escape(label)}</title></polyline>")
    parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>')
    # legend
    lx = ml + pw
    for k, (label, _, _) in enumerate(reversed(ss)):
        idx = len(ss) - 1 - k
        col = PALETTE[idx % len(PALETTE)]
        text = f"v{label}"
        lx -= 14 + 7 * len(text) + 10
        parts.append(f'<rect x="{_f(lx)}" y="{mt - (14 if title else 2)}" width="10" height="10" fill="{col}"/>')
        parts.append(f'<text x="{_f(lx + 14)}" y="{mt - (5 if title else -7)}" class="legend">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------- drift statistics
@dataclass(frozen=True)
class StatSpec:
    key: str
    label: str
    direction: str | None          # "low_bad" | "high_bad" | None
    warn: float | None = None
    fail: float | None = None
    lo: float | None = None        # natural bounds of the axis (None: from the data)
    hi: float | None = None
    log: bool = False
    help: str = ""
    short: str = ""


def stat_specs(thresholds) -> list[StatSpec]:
    """Specs of the compare report's statistics, thresholds from `ThresholdsConfig`."""
    t = thresholds
    g = lambda name, default=None: getattr(t, name, default) if t is not None else default  # noqa: E731
    return [
        StatSpec("spearman", "Spearman ρ (probe ranking)", "low_bad", g("spearman_warn", 0.95), g("spearman_fail", 0.80),
                 None, 1.0, help="rank correlation of the neuron's probe-set activations, baseline vs candidate", short="Spearman ρ"),
        StatSpec("topk_jaccard", "top-k Jaccard", "low_bad", g("topk_jaccard_warn", 0.60), g("topk_jaccard_fail", 0.30),
                 0.0, 1.0, help="overlap of the top-activating probe images", short="top-k Jaccard"),
        StatSpec("topk_p_value", "top-k overlap p-value", None, None, None, None, 1.0, log=True,
                 help=f"hypergeometric p-value of the top-k overlap (α = {g('alpha', 0.05)})", short="top-k p"),
        StatSpec("wasserstein_norm", "Wasserstein (normalised)", "high_bad", g("wasserstein_warn", 0.35),
                 g("wasserstein_fail", 1.0), 0.0, None, help="distance between activation distributions / baseline std", short="Wasserstein"),
        StatSpec("cross_activation", "cross-activation", None, None, None, None, None,
                 help="candidate's response to the baseline's visualization, relative", short="cross-act."),
        StatSpec("visual_distance", "visual distance", "high_bad", g("visual_distance_warn", 2.0), None, 0.0, None,
                 help="distance between visualizations in units of the seed-to-seed spread", short="visual dist."),
    ]


def band_of(spec: StatSpec, value) -> str | None:
    """'fail' | 'warn' | 'ok' for a value against the spec's thresholds, None when unknown."""
    if value is None or spec.direction is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    if spec.direction == "low_bad":
        if spec.fail is not None and v < spec.fail:
            return "fail"
        if spec.warn is not None and v < spec.warn:
            return "warn"
        return "ok"
    if spec.fail is not None and v > spec.fail:
        return "fail"
    if spec.warn is not None and v > spec.warn:
        return "warn"
    return "ok"


def stat_over_versions(spec: StatSpec, points: Sequence[dict], width: int = 360, height: int = 190) -> Markup:
    """One statistic over comparisons (x: "baseline→candidate" in time order).

    `points`: [dict(label, value, verdict, alert: bool)]. Threshold bands are
    shaded (red: FAIL region, amber: WARN region); points are coloured by the
    comparison's verdict and alerts get a ring and a ▲ marker.
    """
    vals = []
    for p in points:
        v = p.get("value")
        try:
            v = float(v) if v is not None else None
        except (TypeError, ValueError):
            v = None
        if v is not None and (not math.isfinite(v) or (spec.log and v <= 0)):
            v = None if not spec.log else (1e-300 if v is not None and v <= 0 else None)
        vals.append(v)
    present = [v for v in vals if v is not None]
    if not points:
        return _empty(width, height, "no comparisons yet")
    ml, mr, mt, mb = 46, 14, 28, 40
    pw, ph = width - ml - mr, height - mt - mb

    tf = (lambda v: math.log10(v)) if spec.log else (lambda v: v)
    cand = [tf(v) for v in present]
    for th in (spec.warn, spec.fail):
        if th is not None:
            cand.append(tf(th))
    if spec.lo is not None:
        cand.append(tf(spec.lo))
    if spec.hi is not None:
        cand.append(tf(spec.hi))
    if not cand:
        cand = [0.0, 1.0]
    lo, hi = min(cand), max(cand)
    # show a little of each band beyond its threshold, so the FAIL region is always visible
    if spec.direction == "low_bad" and spec.fail is not None and not spec.log:
        gap = (spec.warn - spec.fail) if spec.warn is not None else abs(spec.fail) * 0.2 or 0.1
        floor = spec.fail - 0.5 * gap
        lo = min(lo, floor if spec.lo is None else max(spec.lo, floor))
    if spec.direction == "high_bad" and not spec.log:
        top = max(t for t in (spec.warn, spec.fail) if t is not None) if (spec.warn or spec.fail) else None
        if top is not None:
            gap = (spec.fail - spec.warn) if (spec.fail is not None and spec.warn is not None) else abs(top) * 0.25 or 0.1
            hi = max(hi, top + 0.4 * gap)
    if spec.log:
        lo = math.floor(lo)
        hi = max(math.ceil(hi), lo + 1)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.06
    if spec.lo is None or (present and tf(min(present)) < tf(spec.lo)):
        lo -= pad
    if spec.hi is None or (present and tf(max(present)) > tf(spec.hi)):
        hi += pad

    def Y(v: float) -> float:
        c = min(max(v, lo), hi)
        return mt + ph - (c - lo) / (hi - lo) * ph

    n = len(points)

    def X(i: int) -> float:
        return ml + (pw / 2 if n == 1 else 10 + i * (pw - 20) / (n - 1))

    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(spec.label)} over versions">',
             f'<text x="{ml}" y="16" class="plot-title">{escape(spec.label)}</text>']
    # bands
    if spec.direction == "low_bad":
        if spec.fail is not None:
            parts.append(_band(ml, pw, Y(tf(spec.fail)), Y(lo), "band-fail", f"FAIL below {spec.fail:g}"))
        if spec.warn is not None:
            top = Y(tf(spec.warn))
            bottom = Y(tf(spec.fail)) if spec.fail is not None else Y(lo)
            parts.append(_band(ml, pw, top, bottom, "band-warn", f"WARN below {spec.warn:g}"))
    elif spec.direction == "high_bad":
        if spec.fail is not None:
            parts.append(_band(ml, pw, Y(hi), Y(tf(spec.fail)), "band-fail", f"FAIL above {spec.fail:g}"))
        if spec.warn is not None:
            top = Y(tf(spec.fail)) if spec.fail is not None else Y(hi)
            parts.append(_band(ml, pw, top, Y(tf(spec.warn)), "band-warn", f"WARN above {spec.warn:g}"))
    # grid + ticks
    if spec.log:
        step = max(1, math.ceil((hi - lo) / 5))
        ticks = list(range(int(hi), int(lo) - 1, -step))
    else:
        ticks = nice_ticks(lo, hi, 4)
    for t in ticks:
        if t < lo - 1e-9 or t > hi + 1e-9:
            continue
        y = Y(t)
        lab = f"1e{int(t)}" if spec.log and t != 0 else ("1" if spec.log else _fmt_tick(t))
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{_f(y)}" y2="{_f(y)}" class="grid"/>')
        parts.append(f'<text x="{ml - 6}" y="{_f(y + 4)}" text-anchor="end" class="tick">{lab}</text>')
    for th, cls in ((spec.warn, "th-warn"), (spec.fail, "th-fail")):
        if th is not None:
            parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{_f(Y(tf(th)))}" y2="{_f(Y(tf(th)))}" class="{cls}"/>')
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plot-frame"/>')
    # line through present values
    line = [(X(i), Y(tf(v))) for i, v in enumerate(vals) if v is not None]
    if len(line) > 1:
        parts.append('<polyline points="' + " ".join(f"{_f(x)},{_f(y)}" for x, y in line)
                     + '" fill="none" class="series"/>')
    for i, (p, v) in enumerate(zip(points, vals)):
        x = X(i)
        label = str(p.get("label", ""))
        parts.append(f'<text x="{_f(x)}" y="{mt + ph + 15}" text-anchor="middle" class="tick">{escape(_short(label, 12))}</text>')
        if v is None:
            parts.append(f'<text x="{_f(x)}" y="{_f(mt + ph / 2)}" text-anchor="middle" class="tick na">n/a</text>')
            continue
        verdict = str(p.get("verdict") or "")
        col = VERDICT_COLOURS.get(verdict, "#555")
        y = Y(tf(v))
        tip = f"{label}: {spec.key} = {_fmt_value(v)}" + (f" ({verdict})" if verdict else "") + (" — alert" if p.get("alert") else "")
        if p.get("alert"):
            parts.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="8" fill="none" stroke="{VERDICT_COLOURS["FAIL"]}" '
                         f'stroke-width="2" class="alert-ring"/>')
            parts.append(f'<text x="{_f(x)}" y="{mt + ph + 30}" text-anchor="middle" class="alert-mark">▲ alert</text>')
        parts.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="4.5" fill="{col}" stroke="#fff" stroke-width="1.2">'
                     f"<title>{escape(tip)}</title></circle>")
    parts.append("</svg>")
    return Markup("".join(parts))


def _band(ml: float, pw: float, y_top: float, y_bottom: float, cls: str, title: str) -> str:
    h = max(0.0, y_bottom - y_top)
    return (f'<rect x="{ml}" y="{_f(y_top)}" width="{pw}" height="{_f(h)}" class="{cls}">'
            f"<title>{escape(title)}</title></rect>")


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _fmt_value(v: float) -> str:
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e4):
        return f"{v:.2e}"
    return f"{v:.3f}"


def verdict_bar(counts: dict, width: int = 160, height: int = 10) -> Markup:
    """A thin stacked bar of PASS/WARN/FAIL counts."""
    total = sum(int(counts.get(k, 0) or 0) for k in ("PASS", "WARN", "FAIL"))
    if total == 0:
        return Markup("")
    parts = [f'<svg class="vbar" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="verdict counts">']
    x = 0.0
    for k in ("FAIL", "WARN", "PASS"):
        c = int(counts.get(k, 0) or 0)
        if not c:
            continue
        w = c / total * width
        parts.append(f'<rect x="{_f(x)}" y="0" width="{_f(w)}" height="{height}" fill="{VERDICT_COLOURS[k]}">'
                     f"<title>{k}: {c}</title></rect>")
        x += w
    parts.append("</svg>")
    return Markup("".join(parts))
