"""Lists on the pages: the neuron filter (verdict, kind, layer, id search), sort orders and pages.

Neuron lists are as long as a model's registry, not its history, so they are filtered and sorted
here, after the one query that reads them; alerts, which grow with history, are paged in SQL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .formatting import SEVERITY, float_or

SORTS = {
    "severity": "severity (FAIL first)",
    "neuron": "neuron id",
    "layer": "layer / index",
    "spearman": "Spearman ρ (lowest first)",
    "wasserstein": "Wasserstein (highest first)",
}
NO_VERDICT = "none"          # the verdict filter's value for neurons not compared yet


def severity(verdict: Any) -> int:
    """0 FAIL, 1 WARN, 2 PASS, 3 no verdict (the order of the default sort)."""
    return SEVERITY.get(str(verdict).upper() if verdict else "", 3)


def sort_neurons(rows: list[dict], sort: str) -> list[dict]:
    """`rows` in the order named by `sort` (a key of SORTS; anything else: severity), ties by neuron id."""
    key_id = lambda r: str(r.get("neuron_id", ""))  # noqa: E731
    stat = lambda r, k: (r.get("statistics") or {}).get(k)  # noqa: E731
    if sort == "neuron":
        return sorted(rows, key=key_id)
    if sort == "layer":
        return sorted(rows, key=lambda r: (str(r.get("layer", "")), float_or(r.get("index"), 0), key_id(r)))
    if sort == "spearman":
        return sorted(rows, key=lambda r: (float_or(stat(r, "spearman"), math.inf), key_id(r)))
    if sort == "wasserstein":
        return sorted(rows, key=lambda r: (-float_or(stat(r, "wasserstein_norm"), -math.inf), key_id(r)))
    return sorted(rows, key=lambda r: (severity(r.get("verdict")), key_id(r)))


@dataclass
class NeuronFilter:
    """Which neurons a model or compare page lists: by verdict (FAIL/WARN/PASS/none), kind, layer, and a
    case-insensitive search in the neuron id and label. Empty fields match everything."""
    verdict: str = ""
    kind: str = ""
    layer: str = ""
    q: str = ""

    @classmethod
    def from_params(cls, verdict: str | None = None, kind: str | None = None, layer: str | None = None,
                    q: str | None = None) -> "NeuronFilter":
        v = (verdict or "").strip()
        v = v.upper() if v.upper() in SEVERITY else (NO_VERDICT if v.lower() == NO_VERDICT else "")
        return cls(v, (kind or "").strip(), (layer or "").strip(), (q or "").strip()[:200])

    @property
    def active(self) -> bool:
        return bool(self.verdict or self.kind or self.layer or self.q)

    def params(self) -> dict[str, str]:
        """The query parameters that reproduce this filter."""
        return {k: v for k, v in (("verdict", self.verdict), ("kind", self.kind), ("layer", self.layer),
                                  ("q", self.q)) if v}

    def matches(self, row: dict) -> bool:
        verdict = str(row.get("verdict") or "").upper()
        if self.verdict == NO_VERDICT and verdict:
            return False
        if self.verdict and self.verdict != NO_VERDICT and verdict != self.verdict:
            return False
        if self.kind and str(row.get("kind")) != self.kind:
            return False
        if self.layer and str(row.get("layer")) != self.layer:
            return False
        if self.q:
            needle = self.q.lower()
            if needle not in str(row.get("neuron_id", "")).lower() and needle not in str(row.get("label") or "").lower():
                return False
        return True

    def apply(self, rows: list[dict]) -> list[dict]:
        return [r for r in rows if self.matches(r)]

    @staticmethod
    def choices(rows: list[dict]) -> dict[str, list[str]]:
        """The kinds and layers present in `rows`, for the filter form's selects."""
        return {"kinds": sorted({str(r.get("kind")) for r in rows if r.get("kind")}),
                "layers": sorted({str(r.get("layer")) for r in rows if r.get("layer")})}


@dataclass
class Pager:
    """One page of a list: `page` (1-based, clamped to the last page), `per_page` (None: everything on one
    page, as in the static export) and `total`; `links`: dict(label, url, current) for previous, page numbers
    (a gap has no url) and next."""
    total: int
    page: int = 1
    per_page: int | None = None
    links: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, total: int, page: Any, per_page: int | None) -> "Pager":
        try:
            p = int(page or 1)
        except (TypeError, ValueError):
            p = 1
        pages = max(1, math.ceil(total / per_page)) if per_page else 1
        return cls(total=total, page=min(max(p, 1), pages), per_page=per_page)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page)) if self.per_page else 1

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page if self.per_page else 0

    @property
    def first_item(self) -> int:
        return min(self.total, self.offset + 1)

    @property
    def last_item(self) -> int:
        return min(self.total, self.offset + self.per_page) if self.per_page else self.total

    def slice(self, items: list) -> list:
        return items[self.offset:self.offset + self.per_page] if self.per_page else list(items)

    def link(self, url_of: Callable[[int], str]) -> "Pager":
        """Fill `links`: previous, a window of page numbers around this one, next."""
        if self.pages <= 1:
            return self
        window = sorted({1, self.pages, *range(max(1, self.page - 2), min(self.pages, self.page + 2) + 1)})
        out: list[dict] = []
        if self.page > 1:
            out.append({"label": "‹ previous", "url": url_of(self.page - 1), "current": False})
        last = 0
        for n in window:
            if n - last > 1:
                out.append({"label": "…", "url": None, "current": False})
            out.append({"label": str(n), "url": None if n == self.page else url_of(n), "current": n == self.page})
            last = n
        if self.page < self.pages:
            out.append({"label": "next ›", "url": url_of(self.page + 1), "current": False})
        self.links = out
        return self
