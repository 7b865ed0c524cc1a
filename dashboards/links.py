"""URLs of the dashboard's pages and artifacts.

`Links` gives the live server's absolute paths (with query parameters for filters and pages);
`StaticLinks` gives relative `.html` paths between the files of the static export, which has no
query parameters (filters and pagination are hidden there, and each page lists everything).
Both render the very same templates. Create one per rendered page: `artifact()` remembers what it
looked up during that page only (a file deleted later is not served from a stale answer).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from .sanitize import png_size, safe_artifact


def slug(s: Any) -> str:
    """A file-name-safe, collision-free form of an id (for the static export)."""
    s = str(s)
    out = re.sub(r"[^A-Za-z0-9._-]", "_", s)
    if out != s or out.startswith(".") or not out:
        out = (out.lstrip(".") or "_") + "-" + hashlib.sha1(s.encode()).hexdigest()[:6]
    return out


def _query(params: dict[str, Any]) -> str:
    """`?a=1&b=2` of the parameters that are set (None, "" and page 1 are left out), or ""."""
    kept = {k: v for k, v in params.items() if v not in (None, "") and not (k.endswith("page") and v == 1)}
    return "?" + urlencode(kept) if kept else ""


class Links:
    """URLs of the live server (absolute paths)."""

    static_mode = False

    def __init__(self, artifacts_root: Path):
        self.artifacts_root = Path(artifacts_root)
        self._root_resolved = self.artifacts_root.resolve()
        self._artifacts: dict[str, dict | None] = {}

    @staticmethod
    def q(s: Any) -> str:
        return quote(str(s), safe="")

    def home(self, **params: Any) -> str:
        return "/" + _query(params)

    def model(self, model: str, sort: str | None = None, **params: Any) -> str:
        return f"/models/{self.q(model)}" + _query({"sort": sort, **params})

    def neuron(self, model: str, neuron_id: str, **params: Any) -> str:
        return f"/models/{self.q(model)}/neurons/{self.q(neuron_id)}" + _query(params)

    def compare(self, model: str, baseline: str, candidate: str, **params: Any) -> str:
        return f"/models/{self.q(model)}/compare/{self.q(baseline)}/{self.q(candidate)}" + _query(params)

    def compare_picker(self, model: str) -> str:
        """Target of the version picker's form (baseline, candidate as query parameters)."""
        return f"/models/{self.q(model)}/compare"

    def static(self, name: str) -> str:
        return f"/static/{name}"

    def _artifact_url(self, rel: str) -> str:
        return "/artifacts/" + quote(rel.replace("\\", "/"), safe="/")

    def artifact(self, rel: Any) -> dict | None:
        """dict(url, rel, width, height, small) for an existing artifact inside the root, else None."""
        key = str(rel)
        if key in self._artifacts:
            return self._artifacts[key]
        p = safe_artifact(self.artifacts_root, rel, resolved_root=self._root_resolved)
        found = None
        if p is not None:
            rel_posix = p.relative_to(self._root_resolved).as_posix()
            size = png_size(p)
            w, h = size if size else (None, None)
            found = {"url": self._artifact_url(rel_posix), "rel": rel_posix, "width": w, "height": h,
                     "small": bool(w and w < 96)}
        self._artifacts[key] = found
        return found


class StaticLinks(Links):
    """Relative links between the files of the static export (query parameters are dropped)."""

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

    def home(self, **params: Any) -> str:
        return self.root + "index.html"

    def model(self, model: str, sort: str | None = None, **params: Any) -> str:
        return self.root + quote(self.model_path(model))

    def neuron(self, model: str, neuron_id: str, **params: Any) -> str:
        return self.root + quote(self.neuron_path(model, neuron_id))

    def compare(self, model: str, baseline: str, candidate: str, **params: Any) -> str:
        return self.root + quote(self.compare_path(model, baseline, candidate))

    def compare_picker(self, model: str) -> str:
        return ""

    def static(self, name: str) -> str:
        return self.root + "static/" + name

    def _artifact_url(self, rel: str) -> str:
        self.used.add(rel)
        return self.root + "artifacts/" + quote(rel, safe="/")
