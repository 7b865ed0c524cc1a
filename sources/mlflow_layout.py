"""Which file of a registered MLflow model version holds its weights, and the pickled layout.

`mlflow.pytorch.log_model` writes one of two layouts under the model's `data/` folder:
- `model.pt2` (the default outside Databricks): a `torch.export` archive, read without unpickling by
  sources/pt2.py.
- `model.pth` with `pickle_module_info.txt` (`serialization_format="pickle"`): the whole module pickled, which
  runs code when loaded. `pickled_model_state_dict` loads it only when the caller says the user opted in.

A version may also hold a plain state dict (`.safetensors`, or a torch file read with `weights_only=True`), as
`mlflow.pytorch.log_state_dict` or `sources.mlflow_registry.register_state_dict` write it. Every weights file is
read by the one reader, sources/state_dicts.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SourceFormatError
from .state_dicts import STATE_DICT_SUFFIXES

if TYPE_CHECKING:
    import torch

PICKLE_OPT_IN = "allow_pickle: true"


def pickled_model_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a module logged with `serialization_format="pickle"`: unpickles it (runs code from the
    file). Call only when the user opted in for this model."""
    import mlflow.pytorch
    import torch

    module = mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
    if not isinstance(module, torch.nn.Module):
        raise SourceFormatError(f"{Path(model_dir).name}: the pickled object is a {type(module).__name__}, "
                                "not a torch module")
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def read_mlmodel(path: str | Path) -> dict:
    """The `MLmodel` file of a logged model as a dict ({} when unreadable)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_layout(files: list[str], mlmodel: dict) -> tuple[str, str | None]:
    """(format, relative file) of a model version's artifact listing: format is "pt2", "pickle", "state_dict"
    or "unknown". `files` are paths relative to the version's artifact root, `mlmodel` its MLmodel (or {})."""
    pytorch = (mlmodel.get("flavors") or {}).get("pytorch") or {}
    data_dir = str(pytorch.get("model_data") or "data").strip("/")
    in_data = [f for f in files if f.startswith(data_dir + "/")]
    pt2 = sorted(f for f in (in_data or files) if f.endswith(".pt2"))
    if pt2:
        return "pt2", pt2[0]
    if pytorch and any(f.endswith("/model.pth") or f == "model.pth" for f in in_data):
        return "pickle", next(f for f in in_data if f.endswith("model.pth"))
    for group in ((".safetensors",), STATE_DICT_SUFFIXES[1:]):
        cands = sorted((f for f in files if f.endswith(group)), key=lambda f: (f.count("/"), f))
        if cands:
            return "state_dict", cands[0]
    return "unknown", None


def pickle_refusal(uri: str, model_key: str | None = None) -> str:
    """The message for a pickled model version the user did not opt in for."""
    where = f"`{model_key}.allow_pickle: true`" if model_key else f"`{PICKLE_OPT_IN}` on the model"
    return (f"{uri}: the model version was logged with serialization_format='pickle'; unpickling runs code from "
            f"the file, so neuron-audit loads it only when you opt in with {where} in the config. "
            "Safer: log it in the default pt2 format (mlflow.pytorch.log_model(model, name='model', "
            "input_example=...)) or as a state dict.")
