"""Weights out of the files a registered MLflow model version holds, without running code from them.

`mlflow.pytorch.log_model` writes one of two layouts under the model's `data/` folder:
- `model.pt2` (the default outside Databricks): a `torch.export` archive, a zip whose
  `*/data/weights/<name>_weights_config.json` maps each parameter and buffer of the original module, under its
  original name, to a raw little-endian byte record plus dtype, sizes and strides. `pt2_state_dict` reads those
  records directly: the original module's state dict, which a timm architecture loads again. Nothing in the
  archive is unpickled; entries the archive marks `use_pickle` (tensor subclasses) are refused by name.
- `model.pth` with `pickle_module_info.txt` (`serialization_format="pickle"`): the whole module pickled, which
  runs code when loaded. `pickled_model_state_dict` loads it only when the caller says the user opted in.

A version may also hold a plain state dict (`.safetensors`, or a torch file read with `weights_only=True`), as
`mlflow.pytorch.log_state_dict` or `storage.resolve.register_state_dict` write it.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from audit.errors import AuditInputError

# torch.export's serialized ScalarType codes (torch/_export/serde/schema.py `ScalarType`) -> torch dtypes.
PT2_DTYPES: dict[int, torch.dtype] = {
    1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
    7: torch.float32, 8: torch.float64, 9: torch.complex32, 10: torch.complex64, 11: torch.complex128,
    12: torch.bool, 13: torch.bfloat16, 28: torch.uint16, 34: torch.uint32, 35: torch.uint64,
}
PT2_STRIDED_LAYOUT = 7
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
PICKLE_OPT_IN = "allow_pickle: true"


class RegistryFormatError(AuditInputError):
    """A registered model version's files hold no weights neuron-audit can read (or only pickled code)."""


def _int_list(values: list[dict], what: str, source: str) -> list[int]:
    out = []
    for v in values:
        if "as_int" not in v:
            raise RegistryFormatError(f"{source}: {what} {v} is symbolic; export the model with static shapes")
        out.append(int(v["as_int"]))
    return out


def _weights_config_name(names: list[str], source: str) -> str:
    configs = sorted(n for n in names if "/data/weights/" in n and n.endswith("_weights_config.json"))
    if not configs:
        legacy = [n for n in names if "/data/weights/" in n and n.endswith(".pt")]
        if legacy:
            return legacy[0]
        raise RegistryFormatError(f"{source}: no data/weights/*_weights_config.json in the torch.export archive")
    # an archive may hold several programs; the one logged by mlflow.pytorch is named "model"
    return next((n for n in configs if n.endswith("/model_weights_config.json")), configs[0])


def pt2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers of the module a `torch.export` archive (`.pt2`) was exported from,
    under their original names: raw byte records only, nothing unpickled."""
    path = Path(path)
    source = path.name
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise RegistryFormatError(f"{source}: not a torch.export archive ({exc})") from None
    with archive:
        names = archive.namelist()
        byteorder = next((archive.read(n).decode().strip() for n in names if n.endswith("/byteorder")), "little")
        if byteorder != "little":
            raise RegistryFormatError(f"{source}: byte order {byteorder!r} is not supported (only little-endian)")
        config_name = _weights_config_name(names, source)
        if config_name.endswith(".pt"):
            # Older torch.export archives: a state dict saved with torch.save; weights_only refuses code.
            import io

            state = torch.load(io.BytesIO(archive.read(config_name)), map_location="cpu", weights_only=True)
            return {k: v.detach().clone() for k, v in state.items()}
        weights_dir = config_name.rsplit("/", 1)[0]
        entries = json.loads(archive.read(config_name)).get("config", {})
        records: dict[str, torch.Tensor] = {}
        state: dict[str, torch.Tensor] = {}
        for name, meta in entries.items():
            if meta.get("use_pickle"):
                raise RegistryFormatError(f"{source}: weight {name!r} is stored pickled (a tensor subclass); "
                                          "neuron-audit reads plain tensors only")
            tm = meta["tensor_meta"]
            dtype = PT2_DTYPES.get(int(tm["dtype"]))
            if dtype is None or int(tm.get("layout", PT2_STRIDED_LAYOUT)) != PT2_STRIDED_LAYOUT:
                raise RegistryFormatError(f"{source}: weight {name!r} has dtype code {tm['dtype']} / layout "
                                          f"{tm.get('layout')}, which neuron-audit cannot read")
            record = meta["path_name"]
            if record not in records:
                raw = bytearray(archive.read(f"{weights_dir}/{record}"))
                if len(raw) % dtype.itemsize:
                    raise RegistryFormatError(f"{source}: record {record} of {name!r} is {len(raw)} bytes, not a "
                                              f"multiple of {dtype} ({dtype.itemsize} bytes)")
                records[record] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            sizes = _int_list(tm["sizes"], "size", source)
            strides = _int_list(tm["strides"], "stride", source)
            offset = int(tm.get("storage_offset", {}).get("as_int", 0))
            flat = records[record]
            if any(s == 0 for s in sizes):
                state[name] = torch.empty(sizes, dtype=dtype)
                continue
            last = offset + sum((s - 1) * st for s, st in zip(sizes, strides))
            if last >= flat.numel():
                raise RegistryFormatError(f"{source}: weight {name!r} ({sizes}) needs {last + 1} elements but its "
                                          f"record holds {flat.numel()}")
            state[name] = torch.as_strided(flat, sizes, strides, offset).clone()
        return state


def state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file or a torch state dict read with weights_only=True (no code runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for files that are no state dict
        raise RegistryFormatError(f"{path.name}: not a state dict readable with weights_only=True "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RegistryFormatError(f"{path.name} is not a state dict of tensors")
    return dict(obj)


def pickled_model_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a module logged with `serialization_format="pickle"`: unpickles it (runs code from the
    file). Call only when the user opted in for this model."""
    import mlflow.pytorch

    module = mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
    if not isinstance(module, torch.nn.Module):
        raise RegistryFormatError(f"{Path(model_dir).name}: the pickled object is a {type(module).__name__}, "
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
