"""View layer shared by the live app (`app.py`) and the static export (`export.py`).

`Views` turns the store's plain dicts into template contexts; a `Links` object
decides what the URLs look like (absolute paths for the server, relative
`.html` files for the export), so both render the very same templates.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import re
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import jinja2
from markupsafe import Markup, escape

from . import svg

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

VERDICTS = ("FAIL", "WARN", "PASS")
SEVERITY = {"FAIL": 0, "WARN": 1, "PASS": 2}
SORTS = {
    "severity": "severity (FAIL first)",
    "neuron": "neuron id",
    "layer": "layer / index",
    "spearman": "Spearman ρ (lowest first)",
    "wasserstein": "Wasserstein (highest first)",
}


class NotFound(LookupError):
    """The page's subject (model, neuron, comparison) is not in the store."""


# --------------------------------------------------------------------------- safety helpers
_SECRET_QS = re.compile(r"(?i)((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)=)[^&;\s]+")


def mask_url(url: Any) -> str | None:
    """A URL fit to show: the password (and secret query values) replaced by ***."""
    if url is None:
        return None
    s = str(url)
    try:
        parts = urlsplit(s)
        if parts.password is not None or (parts.username and "@" in parts.netloc):
            host = parts.netloc.rsplit("@", 1)[1]
            user = parts.username or ""
            netloc = f"{user}:***@{host}" if parts.password is not None else f"{user}@{host}"
            s = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        s = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", s)
    return _SECRET_QS.sub(r"\1***", s)


def link_url(url: str | None) -> str | None:
    """A base URL fit for an href: no userinfo at all, no trailing slash; only http(s)."""
    if not url:
        return None
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return None
    if parts.scheme not in ("http", "https"):
        return None
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def safe_artifact(root: Path, rel: Any) -> Path | None:
    """`root/rel` resolved, when it is an existing file inside `root`; else None."""
    if rel is None:
        return None
    s = str(rel)
    if not s or "\x00" in s:
        return None
    try:
        root_r = Path(root).resolve()
        p = (root_r / s).resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    if not p.is_relative_to(root_r) or p == root_r:
        return None
    try:
        if not p.is_file():
            return None
    except OSError:
        return None
    return p


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) read from a PNG header; None for other files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) >= 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def slug(s: Any) -> str:
    """A file-name-safe, collision-free form of an id (for the static export)."""
    s = str(s)
    out = re.sub(r"[^A-Za-z0-9._-]", "_", s)
    if out != s or out.startswith(".") or not out:
        out = (out.lstrip(".") or "_") + "-" + hashlib.sha1(s.encode()).hexdigest()[:6]
    return out


# --------------------------------------------------------------------------- links
class Links:
    """URLs of the live server (absolute paths)."""

    static_mode = False

    def __init__(self, artifacts_root: Path):
        self.artifacts_root = Path(artifacts_root)

    @staticmethod
    def q(s: Any) -> str:
        return quote(str(s), safe="")

    def home(self) -> str:
        return "/"

    def model(self, model: str, sort: str | None = None) -> str:
        u = f"/models/{self.q(model)}"
        return u + ("?" + urlencode({"sort": sort}) if sort else "")

    def neuron(self, model: str, neuron_id: str) -> str:
        return f"/models/{self.q(model)}/neurons/{self.q(neuron_id)}"

    def compare(self, model: str, baseline: str, candidate: str) -> str:
        return f"/models/{self.q(model)}/compare/{self.q(baseline)}/{self.q(candidate)}"

    def static(self, name: str) -> str:
        return f"/static/{name}"

    def _artifact_url(self, rel: str) -> str:
        return "/artifacts/" + quote(rel.replace("\\", "/"), safe="/")

    def artifact(self, rel: Any) -> dict | None:
        """dict(url, width, height, small) for an existing artifact inside the root, else None."""
        p = safe_artifact(self.artifacts_root, rel)
        if p is None:
            return None
        rel_posix = p.relative_to(self.artifacts_root.resolve()).as_posix()
        size = png_size(p)
        w, h = size if size else (None, None)
        return {"url": self._artifact_url(rel_posix), "rel": rel_posix, "width": w, "height": h,
                "small": bool(w and w < 96)}


class StaticLinks(Links):
    """Relative links between the files of the static export."""

    static_mode = True

    def __init__(self, artifacts_root: Path, depth: int, used: set[str]):
        super().__init__(artifacts_root)
        self.root = "../" * depth
        self.used = used

    @staticmethod
    def model_path(model: str) -> str:
        return f"models/{slug(model)}/index.html"

    @staticmethod
    def neuron_path(model: str, neuron_id: str) -> str:
        return f"models/{slug(model)}/neurons/{slug(neuron_id)}.html"

    @staticmethod
    def compare_path(model: str, baseline: str, candidate: str) -> str:
        return f"models/{slug(model)}/compare/{slug(baseline)}_vs_{slug(candidate)}.html"

    def home(self) -> str:
        return self.root + "index.html"

    def model(self, model: str, sort: str | None = None) -> str:
        return self.root + quote(self.model_path(model))

    def neuron(self, model: str, neuron_id: str) -> str:
        return self.root + quote(self.neuron_path(model, neuron_id))

    def compare(self, model: str, baseline: str, candidate: str) -> str:
        return self.root + quote(self.compare_path(model, baseline, candidate))

    def static(self, name: str) -> str:
        return self.root + "static/" + name

    def _artifact_url(self, rel: str) -> str:
        self.used.add(rel)
        return self.root + "artifacts/" + quote(rel, safe="/")


# --------------------------------------------------------------------------- formatting
def fmt_time(v: Any) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, (int, float)):
        v = _dt.datetime.fromtimestamp(v, tz=_dt.timezone.utc)
    if isinstance(v, str):
        try:
            v = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return v
    if isinstance(v, _dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(_dt.timezone.utc)
        return v.strftime("%Y-%m-%d %H:%M") + " UTC"
    return str(v)


def _as_dt(v: Any) -> _dt.datetime | None:
    if isinstance(v, _dt.datetime):
        return v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc)
    if isinstance(v, str):
        try:
            d = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            return None
    return None


def fmt_duration(v: Any) -> str:
    if v is None:
        return "—"
    try:
        s = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def fmt_num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == int(x) and abs(x) < 1e6 and isinstance(v, int):
        return str(int(x))
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def badge(verdict: Any) -> Markup:
    v = str(verdict).upper() if verdict else ""
    if v in SEVERITY:
        return Markup(f'<span class="badge badge-{v.lower()}">{v}</span>')
    return Markup('<span class="badge badge-none">—</span>')


def status_badge(status: Any) -> Markup:
    s = str(status or "unknown")
    low = s.lower()
    cls = ("ok" if low in ("completed", "success", "succeeded", "ok", "finished", "done", "sent", "delivered")
           else "bad" if low in ("failed", "crashed", "error", "errored", "cancelled", "canceled")
           else "run" if low in ("running", "pending", "scheduled", "started")
           else "none")
    return Markup(f'<span class="status status-{cls}">{escape(s)}</span>')


def _jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html", "xml"], default=True),
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=fmt_time, duration=fmt_duration, num=fmt_num, badge=badge,
                       status_badge=status_badge, mask_url=mask_url)
    env.globals.update(badge=badge, VERDICTS=VERDICTS)
    return env


# --------------------------------------------------------------------------- views
def _sev(v: Any) -> int:
    return SEVERITY.get(str(v).upper() if v else "", 3)


def _float_or(v: Any, default: float) -> float:
    try:
        x = float(v)
        return x if math.isfinite(x) else default
    except (TypeError, ValueError):
        return default


def sort_neurons(rows: list[dict], sort: str) -> list[dict]:
    key_id = lambda r: str(r.get("neuron_id", ""))  # noqa: E731
    if sort == "neuron":
        return sorted(rows, key=key_id)
    if sort == "layer":
        return sorted(rows, key=lambda r: (str(r.get("layer", "")), _float_or(r.get("index"), 0), key_id(r)))
    if sort == "spearman":
        return sorted(rows, key=lambda r: (_float_or((r.get("statistics") or {}).get("spearman"), math.inf), key_id(r)))
    if sort == "wasserstein":
        return sorted(rows, key=lambda r: (-_float_or((r.get("statistics") or {}).get("wasserstein_norm"), -math.inf),
                                           key_id(r)))
    return sorted(rows, key=lambda r: (_sev(r.get("verdict")), key_id(r)))


def run_links(mlflow_run_ids: Any) -> list[tuple[str, str]]:
    """[(label, run_id)] from the store's `mlflow_run_ids` (dict, list, str or None)."""
    if not mlflow_run_ids:
        return []
    if isinstance(mlflow_run_ids, dict):
        return [(f"v{k}", str(v)) for k, v in mlflow_run_ids.items() if v]
    if isinstance(mlflow_run_ids, str):
        return [(mlflow_run_ids[:8], mlflow_run_ids)]
    out = []
    for v in mlflow_run_ids:
        if isinstance(v, dict):
            rid = v.get("run_id") or v.get("id")
            if rid:
                out.append((str(v.get("version", str(rid)[:8])), str(rid)))
        elif v:
            out.append((str(v)[:8], str(v)))
    return out


class Views:
    def __init__(self, store: Any, artifacts_root: str | Path, mlflow_ui_url: str | None = None,
                 prefect_ui_url: str | None = None, thresholds: Any = None, title: str = "neuron-audit"):
        self.store = store
        self.artifacts_root = Path(artifacts_root)
        self.mlflow_ui_url = link_url(mlflow_ui_url)
        self.prefect_ui_url = link_url(prefect_ui_url)
        if thresholds is None:
            try:
                from audit.config import ThresholdsConfig

                thresholds = ThresholdsConfig()
            except Exception:  # pragma: no cover - audit is part of the package
                thresholds = None
        self.thresholds = thresholds
        self.specs = svg.stat_specs(thresholds)
        self.spec_by_key = {s.key: s for s in self.specs}
        self.title = title
        self.env = _jinja_env()

    # ----------------------------------------------------------------- helpers
    def mlflow_run_url(self, run_id: str) -> str | None:
        return f"{self.mlflow_ui_url}/#/runs/{quote(str(run_id), safe='')}" if self.mlflow_ui_url else None

    def prefect_run_url(self, flow_run_id: Any) -> str | None:
        if not (self.prefect_ui_url and flow_run_id):
            return None
        return f"{self.prefect_ui_url}/runs/flow-run/{quote(str(flow_run_id), safe='')}"

    def stat_cells(self, statistics: dict | None) -> list[dict]:
        st = statistics or {}
        out = []
        for spec in self.specs:
            v = st.get(spec.key)
            out.append({"key": spec.key, "label": spec.label, "short": spec.short or spec.label, "value": v, "text": fmt_num(v),
                        "band": svg.band_of(spec, v) or "", "help": spec.help})
        return out

    def _common(self, links: Links) -> dict:
        db = getattr(self.store, "database_url", None) or getattr(self.store, "url", None)
        return {
            "links": links,
            "static_mode": links.static_mode,
            "app_title": self.title,
            "database_url": mask_url(db) if db else None,
            "artifacts_root": str(self.artifacts_root),
            "mlflow_ui_url": self.mlflow_ui_url,
            "prefect_ui_url": self.prefect_ui_url,
            "generated_at": fmt_time(_dt.datetime.now(_dt.timezone.utc)),
            "svg": svg,
        }

    def render(self, template: str, ctx: dict) -> str:
        return self.env.get_template(template).render(**ctx)

    def _model_names(self) -> list[str]:
        return [str(m.get("name")) for m in self.store.list_models()]

    def _require_model(self, model: str) -> dict:
        for m in self.store.list_models():
            if str(m.get("name")) == model:
                return m
        raise NotFound(f"no model named {model!r} in the store")

    def _history(self, model: str, neuron_id: str) -> dict | None:
        try:
            h = self.store.neuron_history(model, neuron_id)
        except (KeyError, LookupError, ValueError):
            return None
        if not h or not h.get("neuron"):
            return None
        return h

    def _viz_by_version(self, history: dict | None, links: Links) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        if not history:
            return out
        for v in history.get("versions") or []:
            items = []
            for viz in v.get("visualizations") or []:
                img = links.artifact(viz.get("image_path"))
                mask = links.artifact(viz.get("mask_path"))
                items.append({"method": viz.get("method") or "?", "seed": viz.get("seed"), "image": img, "mask": mask,
                              "missing": viz.get("image_path") is not None and img is None,
                              "mlflow_artifact_uri": mask_url(viz.get("mlflow_artifact_uri"))})
            items.sort(key=lambda d: (str(d["method"]), _float_or(d["seed"], 0)))
            out[str(v.get("version"))] = items
        return out

    # ----------------------------------------------------------------- pages
    def overview(self, links: Links) -> tuple[str, dict]:
        ctx = self._common(links)
        models = self.store.list_models()
        runs = self.store.recent_runs(limit=20)
        if not models:
            ctx.update(page_title="No audits yet", runs=runs)
            return "empty.html", ctx
        rows = []
        for m in models:
            name = str(m.get("name"))
            versions = self.store.list_versions(name)
            counts = self.store.verdict_counts(name) or {}
            comps = sorted(self.store.comparisons(name) or [], key=lambda c: _as_dt(c.get("created_at")) or _dt.datetime.min.replace(tzinfo=_dt.timezone.utc))
            rows.append({**m, "name": name, "versions": versions, "counts": counts,
                         "latest_comparison": comps[-1] if comps else None})
        run_rows = []
        for r in runs:
            run_rows.append({**r, "prefect_url": self.prefect_run_url(r.get("flow_run_id")),
                             "mlflow_links": [(lab, rid, self.mlflow_run_url(rid))
                                              for lab, rid in run_links(r.get("mlflow_run_ids"))]})
        names = {r["name"] for r in rows}
        alerts = [{**a, "known_model": str(a.get("model")) in names} for a in self.store.open_alerts()]
        ctx.update(page_title="Overview", models=rows, runs=run_rows, alerts=alerts,
                   counts=self.store.verdict_counts() or {})
        return "overview.html", ctx

    def model(self, links: Links, model: str, sort: str | None = None) -> tuple[str, dict]:
        m = self._require_model(model)
        sort = sort if sort in SORTS else "severity"
        ctx = self._common(links)
        verdicts = list(self.store.latest_verdicts(model) or [])
        # Registered neurons without any comparison yet (when the store can list them).
        lister = getattr(self.store, "list_neurons", None)
        if callable(lister):
            have = {str(r.get("neuron_id")) for r in verdicts}
            try:
                for n in lister(model) or []:
                    if str(n.get("neuron_id")) not in have and n.get("active", True):
                        verdicts.append({**n, "verdict": None, "baseline": None, "candidate": None, "statistics": {}})
            except Exception:
                pass
        alerts = {(str(a.get("neuron_id")), str(a.get("baseline")), str(a.get("candidate")))
                  for a in self.store.open_alerts() if str(a.get("model")) == model}
        rows = []
        for r in sort_neurons(list(verdicts), sort):
            nid = str(r.get("neuron_id"))
            thumb = None
            vizs = self._viz_by_version(self._history(model, nid), links)
            cand = str(r.get("candidate")) if r.get("candidate") is not None else None
            order = ([cand] if cand in vizs else []) + list(reversed(list(vizs)))
            for ver in order:
                for item in vizs.get(ver, []):
                    if item["image"]:
                        thumb = {**item, "version": ver}
                        break
                if thumb:
                    break
            rows.append({**r, "neuron_id": nid, "thumb": thumb, "cells": self.stat_cells(r.get("statistics")),
                         "alert": (nid, str(r.get("baseline")), str(r.get("candidate"))) in alerts})
        comps = sorted(self.store.comparisons(model) or [],
                       key=lambda c: _as_dt(c.get("created_at")) or _dt.datetime.min.replace(tzinfo=_dt.timezone.utc),
                       reverse=True)
        counts: dict[str, int] = {k: 0 for k in VERDICTS}
        for r in rows:
            v = str(r.get("verdict") or "").upper()
            if v in counts:
                counts[v] += 1
        ctx.update(page_title=f"{model}", model=m, model_name=model, versions=self.store.list_versions(model),
                   neurons=rows, comparisons=comps, sort=sort, sorts=SORTS, counts=counts,
                   stat_specs=[s for s in self.specs if s.key in ("spearman", "topk_jaccard", "wasserstein_norm")])
        return "model.html", ctx

    def neuron(self, links: Links, model: str, neuron_id: str) -> tuple[str, dict]:
        m = self._require_model(model)
        h = self._history(model, neuron_id)
        if h is None:
            raise NotFound(f"no neuron {neuron_id!r} registered for model {model!r}")
        ctx = self._common(links)
        neuron = h["neuron"]
        versions = [dict(v) for v in (h.get("versions") or [])]
        vizs = self._viz_by_version(h, links)
        methods: list[str] = []
        for items in vizs.values():
            for it in items:
                if it["method"] not in methods:
                    methods.append(it["method"])
        viz_rows = [{"method": meth,
                     "cells": [[it for it in vizs.get(str(v.get("version")), []) if it["method"] == meth]
                               for v in versions]}
                    for meth in methods]
        any_mask = any(it["mask"] for items in vizs.values() for it in items)
        for v in versions:
            topk = []
            for t in v.get("topk") or []:
                topk.append({**t, "image": links.artifact(t.get("image_path") or t.get("path"))})
            v["topk_rows"] = topk
            v["version"] = str(v.get("version"))
            st = v.get("stats") or None
            v["stats_rows"] = []
            if st:
                for k in ("n", "mean", "std", "frac_active"):
                    if k in st:
                        v["stats_rows"].append((k, fmt_num(st[k])))
                for k, val in sorted((st.get("quantiles") or {}).items(), key=lambda kv: _qkey(kv[0])):
                    v["stats_rows"].append((f"q{k}" if not str(k).startswith(("q", "p")) else str(k), fmt_num(val)))
        stat_keys: list[str] = []
        for v in versions:
            v["stats_map"] = dict(v["stats_rows"])
            for k, _ in v["stats_rows"]:
                if k not in stat_keys:
                    stat_keys.append(k)
        hist = svg.histogram_overlay([{"label": v["version"], "edges": (v.get("hist") or {}).get("edges"),
                                       "counts": (v.get("hist") or {}).get("counts")} for v in versions])
        drift = sorted(h.get("drift") or [], key=lambda d: (_as_dt(d.get("created_at"))
                       or _dt.datetime.min.replace(tzinfo=_dt.timezone.utc), _float_or(d.get("id"), 0)))
        alerts = [a for a in self.store.open_alerts()
                  if str(a.get("model")) == model and str(a.get("neuron_id")) == str(neuron_id)]
        alert_keys = {(str(a.get("baseline")), str(a.get("candidate"))) for a in alerts}
        charts = []
        for spec in self.specs:
            pts = [{"label": f"{d.get('baseline')}→{d.get('candidate')}",
                    "value": (d.get("statistics") or {}).get(spec.key), "verdict": d.get("verdict"),
                    "alert": (str(d.get("baseline")), str(d.get("candidate"))) in alert_keys} for d in drift]
            if drift and all(p["value"] is None for p in pts):
                continue
            charts.append({"spec": spec, "svg": svg.stat_over_versions(spec, pts)})
        drift_rows = [{**d, "cells": self.stat_cells(d.get("statistics")),
                       "alert": (str(d.get("baseline")), str(d.get("candidate"))) in alert_keys} for d in reversed(drift)]
        latest = drift[-1] if drift else None
        from .evidence_view import evidence_context

        evidence = evidence_context(self.store, links, model, neuron_id, latest)
        ctx.update(evidence=evidence)
        ctx.update(page_title=f"{neuron.get('neuron_id', neuron_id)} · {model}", model=m, model_name=model,
                   neuron=neuron, versions=versions, viz_rows=viz_rows, any_mask=any_mask, hist_svg=hist,
                   charts=charts, drift=drift_rows, stat_keys=stat_keys, latest=latest, alerts=alerts,
                   has_topk=any(v["topk_rows"] for v in versions))
        return "neuron.html", ctx

    def compare(self, links: Links, model: str, baseline: str, candidate: str) -> tuple[str, dict]:
        m = self._require_model(model)
        rows = self.store.comparison(model, baseline, candidate) or []
        comps = self.store.comparisons(model) or []
        meta = next((c for c in comps if str(c.get("baseline")) == baseline and str(c.get("candidate")) == candidate), None)
        if not rows and meta is None:
            raise NotFound(f"no comparison {baseline!r} → {candidate!r} for model {model!r}")
        ctx = self._common(links)
        alerts = {(str(a.get("neuron_id")), str(a.get("baseline")), str(a.get("candidate")))
                  for a in self.store.open_alerts() if str(a.get("model")) == model}
        out = []
        any_mask = False
        for r in sort_neurons(list(rows), "severity"):
            nid = str(r.get("neuron_id"))
            hist = self._history(model, nid)
            vizs = self._viz_by_version(hist, links)
            a, b = vizs.get(str(baseline), []), vizs.get(str(candidate), [])
            topk = {str(v.get("version")): [{**t, "image": links.artifact(t.get("image_path") or t.get("path"))}
                                            for t in (v.get("topk") or [])[:6]]
                    for v in ((hist or {}).get("versions") or [])}
            methods = []
            for it in a + b:
                if it["method"] not in methods:
                    methods.append(it["method"])
            pairs = [{"method": meth, "a": [it for it in a if it["method"] == meth][:1],
                      "b": [it for it in b if it["method"] == meth][:1]} for meth in methods]
            any_mask = any_mask or any(it["mask"] for it in a + b)
            out.append({**r, "neuron_id": nid, "pairs": pairs, "topk_a": topk.get(str(baseline), []),
                        "topk_b": topk.get(str(candidate), []), "cells": self.stat_cells(r.get("statistics")),
                        "alert": (nid, str(baseline), str(candidate)) in alerts})
        counts = {k: sum(1 for r in out if str(r.get("verdict") or "").upper() == k) for k in VERDICTS}
        others = [c for c in comps if not (str(c.get("baseline")) == baseline and str(c.get("candidate")) == candidate)]
        ctx.update(page_title=f"{model}: {baseline} → {candidate}", model=m, model_name=model, baseline=baseline,
                   candidate=candidate, rows=out, counts=counts, meta=meta, any_mask=any_mask, others=others)
        return "compare.html", ctx

    def not_found(self, links: Links, message: str) -> tuple[str, dict]:
        ctx = self._common(links)
        ctx.update(page_title="Not found", message=message)
        return "404.html", ctx

    # ----------------------------------------------------------------- enumeration for the export
    def all_pages(self) -> Iterable[tuple[str, tuple]]:
        """("overview"|"model"|"neuron"|"compare", args) for every page of the store."""
        yield "overview", ()
        for name in self._model_names():
            yield "model", (name,)
            seen = set()
            lister = getattr(self.store, "list_neurons", None)
            extra = []
            if callable(lister):
                try:
                    extra = [n for n in (lister(name) or []) if n.get("active", True)]
                except Exception:
                    extra = []
            for r in list(self.store.latest_verdicts(name) or []) + extra:
                nid = str(r.get("neuron_id"))
                if nid not in seen:
                    seen.add(nid)
                    yield "neuron", (name, nid)
            for c in self.store.comparisons(name) or []:
                for r in self.store.comparison(name, str(c.get("baseline")), str(c.get("candidate"))) or []:
                    nid = str(r.get("neuron_id"))
                    if nid not in seen:
                        seen.add(nid)
                        yield "neuron", (name, nid)
                yield "compare", (name, str(c.get("baseline")), str(c.get("candidate")))


def _qkey(k: Any) -> float:
    m = re.search(r"[\d.]+", str(k))
    return float(m.group()) if m else math.inf
