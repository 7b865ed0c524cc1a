"""Names of a model's classes (`labels:` on the model), so that reasons and pages speak of
"defect" or "scratch", not "class 3".

`labels:` is a list (index -> name) or the path of a file: a text file with one name per line,
or a `.json` file holding a list. Relative paths are read against the config file's folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import ModelConfig, NeuronConfig
from .errors import AuditInputError

__all__ = ["class_labels", "class_label", "neuron_title", "labels_problem"]


def class_labels(model_cfg: ModelConfig, base_dir: Path | None = None) -> list[str] | None:
    """The model's class names by index, or None when `labels:` is not set."""
    spec = model_cfg.labels
    if spec is None:
        return None
    if isinstance(spec, list):
        return [str(x) for x in spec]
    path = Path(spec)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    key = f"models[{model_cfg.name}].labels"
    if not path.is_file():
        raise AuditInputError(f"{key}: label file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AuditInputError(f"{key}: {str(path)!r} is not valid JSON: {exc}") from None
        if not isinstance(names, list) or not all(isinstance(x, (str, int, float)) for x in names):
            raise AuditInputError(f"{key}: {str(path)!r} must hold a JSON list of names")
        names = [str(x) for x in names]
    else:
        names = text.splitlines()
        while names and not names[-1].strip():
            names.pop()
        names = [x.strip() for x in names]
    empty = [i for i, x in enumerate(names) if not x]
    if not names or empty:
        raise AuditInputError(f"{key}: {str(path)!r} has {'no names' if not names else f'an empty name at line {empty[0] + 1}'}")
    return names


def class_label(model_cfg: ModelConfig, index: int, base_dir: Path | None = None) -> str:
    """The name of class `index` ("defect"), or "class 3" without labels."""
    names = class_labels(model_cfg, base_dir)
    if names is not None and 0 <= index < len(names):
        return names[index]
    return f"class {index}"


def neuron_title(model_cfg: ModelConfig, neuron: NeuronConfig, base_dir: Path | None = None) -> str:
    """What pages and reasons call a neuron: its own `label`, else for a class neuron its class name,
    else its kind, layer and index ("head 1 of blocks.6.attn")."""
    if neuron.label:
        return neuron.label
    if neuron.kind == "class":
        return class_label(model_cfg, neuron.index, base_dir)
    if neuron.kind == "head":
        return f"head {neuron.index} of {neuron.layer}"
    return f"channel {neuron.index} of {neuron.layer}"


def labels_problem(model_cfg: ModelConfig, num_classes: int, base_dir: Path | None = None) -> str | None:
    """A message when the labels do not fit a head of `num_classes` outputs (or cannot be read)."""
    try:
        names = class_labels(model_cfg, base_dir)
    except AuditInputError as exc:
        return str(exc)
    if names is not None and len(names) != num_classes:
        return (f"models[{model_cfg.name}].labels: {len(names)} names for a head of {num_classes} classes "
                f"(one name per class, in index order)")
    return None
