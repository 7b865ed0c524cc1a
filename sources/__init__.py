"""Model sources: a source string in the config (`builtin:NAME`, `file:PATH`, `models:/NAME/VERSION`,
`models:/NAME@ALIAS`) -> the weights of a timm model.

`resolve(source, ...)` is the one entry point; schemes are registered by name (`register_source`, as timm
registers models), weights files are read by one reader (`sources.state_dicts.read_state_dict`, with `.pt2`
torch.export archives registered as a format) and every problem is a `SourceError` naming the value.

Layering: sources/ imports audit/ (and MLflow, lazily, for `models:/`); audit/ never imports sources/, and
storage/, flows/ and dashboards/ read models through here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from . import builtin, files, mlflow_registry
from .errors import (SourceError, SourceFormatError, SourceNotFoundError, TrackingUnavailableError,
                     UnknownSourceError)
from .registry import (SourceContext, SourceWeights, list_sources, read_source, register_source, resolve,
                       scheme_of, source_scheme)
from .state_dicts import read_state_dict, register_format

SCHEME_MODULES = (builtin, files, mlflow_registry)   # imported for the register_source(...) call each makes

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn


def load_model(architecture: str, source: str | None = None, state_dict: Mapping[str, "torch.Tensor"] | None = None,
               device: "str | torch.device" = "cpu", base_dir: "Path | None" = None,
               model_args: Mapping[str, Any] | None = None, num_classes: int | None = None,
               **context: Any) -> "nn.Module":
    """`audit.models.load_model` with the weights of `source` resolved here (any registered scheme; `context`:
    `tracking_uri=`, `allow_pickle=`, `model_key=` for `models:/`)."""
    from audit.models import load_model as build

    if state_dict is None:
        if source is None:
            raise UnknownSourceError("load_model needs a source or a state_dict")
        state_dict = resolve(source, base_dir=base_dir, **context).state_dict
    return build(architecture, source, state_dict=state_dict, device=device, model_args=model_args,
                 num_classes=num_classes)


__all__ = ["SourceContext", "SourceError", "SourceFormatError", "SourceNotFoundError", "SourceWeights",
           "TrackingUnavailableError", "UnknownSourceError", "list_sources", "load_model", "read_source",
           "read_state_dict", "register_format", "register_source", "resolve", "scheme_of", "source_scheme"]
