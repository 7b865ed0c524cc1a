"""Drift verdicts between two versions of a model: did a registered neuron's function change?

Modules, in the order a compare uses them:
- `columns`     which values stand for a channel (a saturated channel's spatial mean) and when it is dead;
- `statistics`  the distances and effect sizes of one neuron, or of every channel of a layer;
- `evidence_kinds` the evidence registry: each kind's distance, title and sentence (`register_evidence`);
- `resampling`  photograph-level bootstrap and permutation tests, folds, the power statement;
- `benign`      the registry of benign edits of the baseline (fp16/bf16, int8, noise, BN, a team's own);
- `null`        the benign null of every channel and its calibrated bounds (cached per baseline);
- `identity`    cross-fitted, one-to-one matching of a channel that moved to another index;
- `evidence`    typed evidence records of one neuron (and the kinds that could not be computed);
- `verdicts`    PASS/WARN/FAIL and the reason;
- `compare`     `compare_versions` (models) and `compare_activations` (activations).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from .compare import CompareResults, compare_activations, compare_neuron, compare_versions
from .evidence import Evidence, NeuronComparison
from .benign import register_benign, register_benign_variants
from .evidence_kinds import Columns, register_evidence
from .null import BenignNull, LayerNull, build_benign_null, null_cache, tail_quantile
from .statistics import (benjamini_hochberg, correlation_matrix, cross_activation, effective_k, holm, ks,
                         percentile_of, spearman, top_indices, topk_overlap, visual_distance, wasserstein_norm,
                         wilson_interval)
from .verdicts import assign_verdicts


def visual_features(images: list[np.ndarray], feature_model: nn.Module, batch_size: int = 16) -> np.ndarray:
    """[len(images), D] penultimate features of uint8 HxWx3 images in a fixed timm model at its
    input size (`audit.quality.penultimate_features`)."""
    from ..models import model_input_size
    from ..quality import penultimate_features

    return penultimate_features(feature_model, images, model_input_size(feature_model), batch=batch_size)


__all__ = ["BenignNull", "Columns", "CompareResults", "Evidence", "LayerNull", "NeuronComparison", "assign_verdicts",
           "benjamini_hochberg", "build_benign_null", "compare_activations", "compare_neuron", "compare_versions",
           "register_benign", "register_benign_variants",
           "correlation_matrix", "cross_activation", "effective_k", "holm", "ks", "null_cache", "percentile_of",
           "register_evidence", "spearman", "tail_quantile", "top_indices", "topk_overlap", "visual_distance",
           "visual_features", "wasserstein_norm", "wilson_interval"]
