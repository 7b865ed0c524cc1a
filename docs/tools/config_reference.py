"""docs/configuration.md from the pydantic models of audit/config.py.

Every key of `neuron-audit.yaml` gets a row: its dotted path, its type (with the bounds the
schema enforces), its default and its meaning (the field's `description=`). Sections follow
the nesting of the models; a section's introduction is the model's docstring. Nothing here
knows the individual keys, so a field added to audit/config.py appears on the next run.
"""
from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from audit.config import AuditConfig

# The smallest useful config; the page shows it, and every default spelled out under it.
MINIMAL_CONFIG = """\
models:
  - name: lite0
    architecture: efficientnet_lite0
    versions:
      - {version: "1", source: "builtin:efficientnet_lite0"}
      - {version: "2", source: "file:./checkpoints/v2.safetensors"}
    neurons:
      - {id: egyptian-cat, kind: class, layer: classifier, index: 285, references: "builtin:samples/chelsea"}
      - {id: b5-c17, kind: inner, layer: blocks.5, index: 17}
"""

_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("multiple_of", "multiple of"),
           ("min_length", "min length"), ("max_length", "max length"))
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", Path: "path",
            Any: "any"}
_PLURAL = {"string", "integer", "number", "boolean", "path", "mapping"}


def _is_model(t: Any) -> bool:
    return inspect.isclass(t) and issubclass(t, BaseModel)


def _args(t: Any) -> tuple:
    return typing.get_args(t)


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


def type_label(t: Any) -> str:
    """A YAML reader's name for the annotation `t` (any annotation: unknown ones print as Python spells them)."""
    if t in _SCALARS:
        return _SCALARS[t]
    if _is_model(t):
        return "mapping"
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in _args(t))
    if _is_union(t):
        return " or ".join(type_label(a) for a in _args(t))
    if origin in (list, tuple, set, frozenset, typing.Sequence):
        inner = type_label((_args(t)[:1] or (Any,))[0])
        return f"list of {inner}s" if inner in _PLURAL else f"list of ({inner})"
    if origin is dict:
        key, value = (_args(t) + (Any, Any))[:2]
        return f"mapping of {type_label(key)} to {type_label(value)}"
    if origin is typing.Annotated:
        return type_label(_args(t)[0])
    return getattr(t, "__name__", str(t))


def bounds(field: FieldInfo) -> list[str]:
    """The numeric and length bounds the schema enforces (from `Field(ge=..., le=...)` and friends)."""
    out = []
    for m in field.metadata:
        matched = [f"{sym} {getattr(m, attr)}" for attr, sym in _BOUNDS if getattr(m, attr, None) is not None]
        out.extend(matched or [str(m)])
    return out


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        if getattr(field, "default_factory_takes_data", False):
            return "computed from the other keys"
        value = field.default_factory()
    else:
        value = field.default
    if value is PydanticUndefined:
        return "**required**"
    if isinstance(value, BaseModel):
        return "defaults below"
    return f"`{json.dumps(to_jsonable_python(value), ensure_ascii=False)}`"


def nested_model(t: Any) -> tuple[type[BaseModel], str] | None:
    """(model, suffix) when the annotation holds a nested section: `X`, `X | None` -> "", `list[X]` -> "[]"."""
    if _is_model(t):
        return t, ""
    if _is_union(t):
        for a in _args(t):
            found = nested_model(a)
            if found:
                return found
    if typing.get_origin(t) in (list, tuple, typing.Sequence):
        inner = _args(t)[:1]
        if inner and _is_model(inner[0]):
            return inner[0], "[]"
    return None


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _doc(model: type[BaseModel]) -> str:
    return inspect.cleandoc(model.__doc__) if model.__doc__ else ""


def sections(model: type[BaseModel], path: str = "") -> list[tuple[str, type[BaseModel], list[tuple[str, ...]]]]:
    """(path, model, rows) for `model` and every model nested in it, depth first; a row is
    (key, type, default, meaning)."""
    rows, children = [], []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{path}.{name}" if path else name
        limits = bounds(field)
        kind = type_label(field.annotation) + (f" ({', '.join(limits)})" if limits else "")
        rows.append((key, kind, default_text(field), field.description or ""))
        nested = nested_model(field.annotation)
        if nested:
            children.append((nested[0], key + nested[1]))
    out = [(path, model, rows)]
    for child, child_path in children:
        out.extend(sections(child, child_path))
    return out


def undescribed_keys(model: type[BaseModel] = AuditConfig) -> list[str]:
    """Keys without a `description=`: the page would leave their meaning blank."""
    return [row[0] for _path, _m, rows in sections(model) for row in rows if not row[3].strip()]


def all_defaults_yaml() -> str:
    """MINIMAL_CONFIG with every default filled in (validated without resolving paths, so the
    page holds no machine's folders)."""
    cfg = AuditConfig.model_validate(yaml.safe_load(MINIMAL_CONFIG))
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, width=100, allow_unicode=True)


def render() -> str:
    lines = [
        "# Configuration reference (`neuron-audit.yaml`)",
        "",
        "<!-- Generated from audit/config.py by docs/tools/generate.py; do not edit by hand. -->",
        "",
        "The config file is YAML. It is checked before any work starts: an unknown key, a wrong type or",
        "a value out of range stops the command with exit code 2 and a message that names the key",
        "(`models[0].neurons[1].layer: ...`). Layer names and channel indices are then checked against",
        "the model itself (`neuron-audit layers --architecture NAME` lists them). Relative paths, and",
        "relative `sqlite:///./...` URLs, are read against the folder of the config file.",
        "",
        "## The smallest config",
        "",
        "```yaml",
        MINIMAL_CONFIG.rstrip(),
        "```",
        "",
        "## The same config with every default filled in",
        "",
        "```yaml",
        all_defaults_yaml().rstrip(),
        "```",
        "",
        "## Every key",
        "",
        "`[]` marks a list: `models[].neurons[].id` is the `id` of each neuron of each model.",
    ]
    for path, model, rows in sections(AuditConfig):
        title = f"`{path}`" if path else "Top level"
        lines += ["", f"### {title}", ""]
        doc = _doc(model)
        if doc:
            lines += [" ".join(p.split()) + "\n" for p in doc.split("\n\n")]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{key}` | {_cell(kind)} | {_cell(default)} | {_cell(meaning) or '(no description)'} |"
                  for key, kind, default, meaning in rows]
    return "\n".join(lines) + "\n"
