"""Plain records passed between the library, the store and the flows."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

NeuronKind = Literal["class", "inner", "head"]
Verdict = Literal["PASS", "WARN", "FAIL"]


@dataclass(frozen=True)
class NeuronTarget:
    neuron_id: str
    kind: NeuronKind
    layer: str
    index: int


@dataclass
class Visualization:
    neuron_id: str
    method: str
    seed: int
    image: np.ndarray                      # uint8 [H, W, 3]
    mask: np.ndarray | None = None         # float32 [H, W] in [0, 1]
    loss_history: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0                   # wall time of the whole render
    loop_seconds: float = 0.0              # of which the optimization loop (the rest: reference preparation)


@dataclass
class ActivationStats:
    neuron_id: str
    n: int
    mean: float
    std: float
    quantiles: dict[str, float]
    frac_active: float
    hist_edges: list[float]
    hist_counts: list[int]
    topk_indices: list[int]
    topk_values: list[float]


@dataclass
class DriftResult:
    neuron_id: str
    layer: str
    index: int
    kind: NeuronKind
    verdict: Verdict
    statistics: dict[str, float | None]
    matched_index: int | None
    reason: str
    ci: dict[str, list[float]] = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)   # audit.drift.evidence.to_jsonable: the typed evidence as JSON
