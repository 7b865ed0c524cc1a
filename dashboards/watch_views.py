"""Dashboard pages of production-batch watching (`neuron-audit watch`), beside views.py:

    /models/{model}/batches               the model's batch timeline: each neuron's mean shift over
                                          batches with its interval and the FAIL band, and the batches
    /models/{model}/batches/{batch_id}    one batch: verdicts, joint test, which neurons moved together,
                                          evidence images and reference-vs-batch histograms

and the "drift across batches" section of the neuron page (the `batch_drift` template global).
Links work for the live server and for the static export (`links.static_mode`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable
from urllib.parse import quote

from markupsafe import Markup, escape
from sqlalchemy.exc import DBAPIError

from . import svg

VERDICT_ORDER = {"FAIL": 0, "WARN": 1, "PASS": 2}


# --------------------------------------------------------------------------- links
def _slug(s: Any) -> str:
    from .views import slug

    return slug(s)


def timeline_path(model: str) -> str:
    return f"models/{_slug(model)}/batches/index.html"


def batch_path(model: str, batch_id: str) -> str:
    return f"models/{_slug(model)}/batches/{_slug(batch_id)}.html"


def timeline_url(links, model: str) -> str:
    if links.static_mode:
        return links.root + quote(timeline_path(model))
    return f"/models/{quote(str(model), safe='')}/batches"


def batch_url(links, model: str, batch_id: str) -> str:
    if links.static_mode:
        return links.root + quote(batch_path(model, batch_id))
    return f"/models/{quote(str(model), safe='')}/batches/{quote(str(batch_id), safe='')}"


def _repo(store):
    return getattr(store, "batches", None)


def has_batches(store, model: str) -> bool:
    repo = _repo(store)
    try:
        return bool(repo and repo.has_batches(model))
    except DBAPIError:          # a store without the watch tables (older schema) simply has none
        return False


# --------------------------------------------------------------------------- plots
def shift_timeline(points: list[dict], shift_fail: float, width: int = 420, height: int = 170, title: str = "") -> Markup:
    """Mean shift (reference SDs) over batches: interval whiskers, points coloured by verdict, the
    FAIL bands |shift| >= shift_fail shaded. `points`: [dict(label, shift, ci, verdict)]."""
    vals = [p.get("shift") for p in points]
    present = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    if not present:
        return svg._empty(width, height, "no batch watched yet")
    cis = [c for p in points for c in (p.get("ci") or []) if c is not None and math.isfinite(float(c))]
    span = max([abs(v) for v in present + cis] + [shift_fail * 1.6])
    lo, hi = -span * 1.05, span * 1.05
    ml, mr, mt, mb = 40, 10, 22 if title else 8, 30
    pw, ph = width - ml - mr, height - mt - mb
    n = len(points)

    def X(i: int) -> float:
        return ml + (pw / 2 if n == 1 else 8 + i * (pw - 16) / (n - 1))

    def Y(v: float) -> float:
        return mt + ph - (min(max(v, lo), hi) - lo) / (hi - lo) * ph

    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="mean shift over batches">']
    if title:
        parts.append(f'<text x="{ml}" y="15" class="plot-title">{escape(title)}</text>')
    parts.append(f'<rect x="{ml}" y="{svg._f(Y(hi))}" width="{pw}" height="{svg._f(Y(shift_fail) - Y(hi))}" '
                 f'class="band-fail"><title>FAIL: shift above +{shift_fail:g} SD</title></rect>')
    parts.append(f'<rect x="{ml}" y="{svg._f(Y(-shift_fail))}" width="{pw}" height="{svg._f(Y(lo) - Y(-shift_fail))}" '
                 f'class="band-fail"><title>FAIL: shift below -{shift_fail:g} SD</title></rect>')
    for t in svg.nice_ticks(lo, hi, 4):
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{svg._f(Y(t))}" y2="{svg._f(Y(t))}" class="grid"/>')
        parts.append(f'<text x="{ml - 5}" y="{svg._f(Y(t) + 4)}" text-anchor="end" class="tick">{svg._fmt_tick(t)}</text>')
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plot-frame"/>')
    line = [(X(i), Y(float(v))) for i, v in enumerate(vals) if v is not None and math.isfinite(float(v))]
    if len(line) > 1:
        parts.append('<polyline points="' + " ".join(f"{svg._f(x)},{svg._f(y)}" for x, y in line)
                     + '" fill="none" class="series"/>')
    step = max(1, math.ceil(n / 8))
    for i, p in enumerate(points):
        v = vals[i]
        x = X(i)
        if i % step == 0 or i == n - 1:
            parts.append(f'<text x="{svg._f(x)}" y="{mt + ph + 14}" text-anchor="middle" class="tick">'
                         f'{escape(svg._short(str(p.get("label", "")), 12))}</text>')
        if v is None or not math.isfinite(float(v)):
            continue
        ci = p.get("ci") or []
        if len(ci) == 2 and all(c is not None for c in ci):
            parts.append(f'<line x1="{svg._f(x)}" x2="{svg._f(x)}" y1="{svg._f(Y(float(ci[0])))}" '
                         f'y2="{svg._f(Y(float(ci[1])))}" stroke="#667" stroke-width="1.2"/>')
        col = svg.VERDICT_COLOURS.get(str(p.get("verdict")), "#555")
        tip = f"{p.get('label')}: shift {float(v):+.2f} SD ({p.get('verdict')})"
        parts.append(f'<circle cx="{svg._f(x)}" cy="{svg._f(Y(float(v)))}" r="4" fill="{col}" stroke="#fff" '
                     f'stroke-width="1"><title>{escape(tip)}</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))


def reference_vs_batch(hist: dict, width: int = 300, height: int = 130) -> Markup:
    """Densities of the reference (grey) and the batch (blue) on common bins."""
    edges = [float(e) for e in (hist or {}).get("edges") or []]
    series = [("reference", hist.get("reference") or [], "#888"), ("batch", hist.get("batch") or [], "#0072B2")]
    if len(edges) < 2 or any(len(c) != len(edges) - 1 for _, c, _ in series):
        return svg._empty(width, height, "no histogram")
    ml, mr, mt, mb = 8, 8, 16, 20
    pw, ph = width - ml - mr, height - mt - mb
    dens = []
    for _, counts, _ in series:
        tot = float(sum(counts)) or 1.0
        dens.append([c / tot for c in counts])
    top = max(max(d) for d in dens) or 1.0
    x0, x1 = edges[0], edges[-1]

    def X(v: float) -> float:
        return ml + (v - x0) / ((x1 - x0) or 1.0) * pw

    parts = [f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="reference and batch histograms">']
    for (label, _, col), d in zip(series, dens):
        pts = [(X(edges[0]), mt + ph)]
        for i, v in enumerate(d):
            y = mt + ph - v / top * ph
            pts += [(X(edges[i]), y), (X(edges[i + 1]), y)]
        pts.append((X(edges[-1]), mt + ph))
        path = " ".join(f"{svg._f(x)},{svg._f(y)}" for x, y in pts)
        parts.append(f'<polygon points="{path}" fill="{col}" fill-opacity="0.15" stroke="none"/>')
        parts.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="1.6"><title>{label}</title></polyline>')
    parts.append(f'<text x="{ml}" y="11" class="legend" fill="#888">reference</text>'
                 f'<text x="{ml + 70}" y="11" class="legend" fill="#0072B2">batch</text>')
    parts.append(f'<text x="{ml}" y="{height - 4}" class="tick">{svg._fmt_tick(x0)}</text>'
                 f'<text x="{ml + pw}" y="{height - 4}" text-anchor="end" class="tick">{svg._fmt_tick(x1)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------- pages
def _shift_fail(batch: dict | None) -> float:
    """The FAIL size of a mean shift the batch was judged with (the config default when unknown)."""
    from audit.config import WatchConfig

    sf = ((batch or {}).get("summary") or {}).get("power", {}).get("shift_fail")
    return float(sf) if sf else WatchConfig().shift_fail


def timeline_page(views, links, model: str) -> tuple[str, dict]:
    """The batch timeline of a model (NotFound for an unknown model)."""
    from .views import NotFound

    m = views.require_model(model)
    repo = _repo(views.store)
    batches = repo.list_batches(model) if repo else []
    if not batches:
        raise NotFound(f"no production batch watched for model {model!r} yet (neuron-audit watch)")
    timeline = repo.neuron_timeline(model)
    sf = _shift_fail(batches[-1])
    charts = []
    for nid in sorted(timeline):
        pts = [{"label": p["batch_id"], "shift": p["shift"], "ci": p["shift_ci"], "verdict": p["verdict"]}
               for p in timeline[nid]]
        last = timeline[nid][-1]
        charts.append({"neuron_id": nid, "svg": shift_timeline(pts, sf), "last": last})
    charts.sort(key=lambda c: (VERDICT_ORDER.get(c["last"]["verdict"], 3), c["neuron_id"]))
    rows = [{**b, "url": batch_url(links, model, b["batch_id"])} for b in reversed(batches)]
    counts = {v: sum(1 for b in batches if b["verdict"] == v) for v in ("FAIL", "WARN", "PASS")}
    ctx = views.common(links)
    ctx.update(page_title=f"{model}: production batches", model=m, model_name=model, charts=charts, batches=rows,
               counts=counts, shift_fail=sf, neuron_url=lambda nid: links.neuron(model, nid))
    return "batch_timeline.html", ctx


def batch_page(views, links, model: str, batch_id: str) -> tuple[str, dict]:
    """One watched batch (NotFound for an unknown model or batch)."""
    from .views import NotFound

    m = views.require_model(model)
    repo = _repo(views.store)
    b = repo.batch_results(model, batch_id) if repo else None
    if b is None:
        raise NotFound(f"no batch {batch_id!r} watched for model {model!r}")
    neurons = []
    for n in sorted(b["neurons"], key=lambda n: (VERDICT_ORDER.get(n["verdict"], 3), n["neuron_id"])):
        ev = n.get("evidence") or {}
        images = [{**im, "image": links.artifact(im.get("thumbnail"))} for im in ev.get("images", [])]
        neurons.append({**n, "images": images, "hist_svg": reference_vs_batch(ev.get("hist") or {}),
                        "direction": ev.get("direction"), "url": links.neuron(model, n["neuron_id"])})
    alerts = repo.alerts(model, batch_id)
    ctx = views.common(links)
    ctx.update(page_title=f"{model}: batch {batch_id}", model=m, model_name=model, batch=b, neurons=neurons,
               summary=b.get("summary") or {}, joint=b.get("joint") or {}, alerts=alerts,
               timeline_url=timeline_url(links, model))
    return "batch.html", ctx


def neuron_section(views, links, model: str, neuron_id: str) -> dict | None:
    """The neuron page's "drift across batches" data, or None when the neuron was never watched."""
    repo = _repo(views.store)
    if repo is None:
        return None
    try:
        points = repo.neuron_timeline(model, neuron_id).get(neuron_id) or []
    except DBAPIError:          # a store without the watch tables: no section
        return None
    if not points:
        return None
    pts = [{"label": p["batch_id"], "shift": p["shift"], "ci": p["shift_ci"], "verdict": p["verdict"]} for p in points]
    rows = [{**p, "url": batch_url(links, model, p["batch_id"])} for p in reversed(points[-10:])]
    sf = _shift_fail(repo.get_batch(model, points[-1]["batch_id"]))
    return {"svg": shift_timeline(pts, sf, width=560, height=180), "rows": rows,
            "timeline_url": timeline_url(links, model), "n": len(points)}


def install(views) -> None:
    """Template globals the shared templates use: `batch_drift(links, model, neuron_id)` for the
    neuron page and `batch_timeline_link(links, model)` (None when the model has no batches)."""
    views.env.globals["batch_drift"] = lambda links, model, nid: neuron_section(views, links, model, nid)
    views.env.globals["batch_timeline_link"] = (
        lambda links, model: timeline_url(links, model) if has_batches(views.store, model) else None)


def static_pages(views) -> Iterable[tuple[str, int, Any]]:
    """(relative path, depth, build(links)) of every batch page, for the static export."""
    repo = _repo(views.store)
    if repo is None:
        return
    for name in views.model_names():
        try:
            batches = repo.list_batches(name)
        except DBAPIError:      # no watch tables in this store
            continue
        if not batches:
            continue
        yield timeline_path(name), 3, (lambda links, n=name: timeline_page(views, links, n))
        for b in batches:
            yield batch_path(name, b["batch_id"]), 3, (lambda links, n=name, bid=b["batch_id"]: batch_page(views, links, n, bid))
