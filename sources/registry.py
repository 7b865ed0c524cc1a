"""Model sources by scheme, in the style of timm's model registry: a scheme (`builtin`, `file`, `models`) is
registered once with the function that reads it, and `resolve(source)` is the one way a source string becomes
weights.

A reader takes the part after the scheme's prefix and a `SourceContext` (where relative paths start, which
MLflow store `models:/` reads, whether pickled models are allowed) and returns `SourceWeights`. Adding a
scheme is one `register_source(...)` call in a module that `sources/__init__.py` imports, and its test."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import UnknownSourceError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SourceContext:
    """What a reader may need besides the source string."""
    base_dir: Path | None = None          # relative `file:` paths start here (the config's folder)
    tracking_uri: str | None = None       # the MLflow store `models:/` sources are read from
    allow_pickle: bool = False            # the model's `allow_pickle: true` (pickled registry versions)
    model_key: str | None = None          # the config key of the model, for messages (`models[my-net]`)


@dataclass
class SourceWeights:
    """The weights a source resolved to. `info`: what the scheme knows about where they came from (the
    registry's name, version, run and format for `models:/`; None for others)."""
    source: str
    state_dict: Mapping[str, "torch.Tensor"]
    info: dict[str, Any] | None = None


@dataclass(frozen=True)
class SourceScheme:
    """One registered scheme: `prefix` starts its sources (`builtin:`), `syntax` shows them in messages."""
    name: str
    prefix: str
    syntax: tuple[str, ...]
    read: Callable[[str, SourceContext], SourceWeights]
    description: str = ""


_SCHEMES: dict[str, SourceScheme] = {}


def register_source(name: str, prefix: str, read: Callable[[str, SourceContext], SourceWeights], *,
                    syntax: tuple[str, ...] | str = (), description: str = "") -> SourceScheme:
    """Register the reader of sources that start with `prefix` under `name`. A name registered twice is a
    programming error (two modules claiming one scheme)."""
    if name in _SCHEMES:
        raise ValueError(f"model source scheme {name!r} is already registered")
    scheme = SourceScheme(name, prefix, (syntax,) if isinstance(syntax, str) else tuple(syntax) or (prefix + "...",),
                          read, description)
    _SCHEMES[name] = scheme
    return scheme


def source_scheme(name: str) -> SourceScheme:
    """The scheme registered under `name`."""
    if name not in _SCHEMES:
        raise UnknownSourceError(f"unknown model source scheme {name!r}; registered: {', '.join(_SCHEMES)}",
                                 value=name)
    return _SCHEMES[name]


def list_sources() -> list[str]:
    """The registered scheme names, in registration order."""
    return list(_SCHEMES)


def scheme_of(source: str) -> SourceScheme:
    """The scheme whose prefix starts `source`; UnknownSourceError lists the valid forms."""
    for scheme in _SCHEMES.values():
        if source.startswith(scheme.prefix):
            return scheme
    valid = ", ".join(s for scheme in _SCHEMES.values() for s in scheme.syntax)
    raise UnknownSourceError(f"unknown model source {source!r}; valid: {valid}", value=source)


def resolve(source: str, context: SourceContext | None = None, **settings: Any) -> SourceWeights:
    """The weights of `source` (any registered scheme). `context`, or its fields as keyword arguments
    (`base_dir=`, `tracking_uri=`, `allow_pickle=`, `model_key=`), says where relative paths start and which
    registry `models:/` reads."""
    if context is None:
        context = SourceContext(**settings)
    elif settings:
        raise TypeError("resolve() takes a context or its fields, not both")
    scheme = scheme_of(source)
    return scheme.read(source[len(scheme.prefix):], context)


def read_source(source: str | None, base_dir: Path | None = None) -> Mapping[str, "torch.Tensor"]:
    """The state dict of a source (the former `audit.models.read_source`)."""
    if source is None:
        raise UnknownSourceError("load_model needs a source or a state_dict")
    return resolve(source, base_dir=base_dir).state_dict
