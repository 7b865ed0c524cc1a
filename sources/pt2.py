"""Weights out of a `torch.export` archive (`.pt2`), without running code from it.

`mlflow.pytorch.log_model` writes `data/model.pt2` by default (outside Databricks), and `torch.export.save`
writes the same layout: a zip whose `*/data/weights/<name>_weights_config.json` maps each parameter and buffer
of the original module, under its original name, to a raw little-endian byte record plus dtype, sizes and
strides. `pt2_state_dict` reads those records directly: the original module's state dict, which a timm
architecture loads again. Nothing in the archive is unpickled; entries the archive marks `use_pickle` (tensor
subclasses) are refused by name. Older archives hold a state dict saved with torch.save, read with
weights_only=True.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from .errors import SourceFormatError

# torch.export's serialized ScalarType codes (torch/_export/serde/schema.py `ScalarType`) -> torch dtypes.
PT2_DTYPES: dict[int, torch.dtype] = {
    1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
    7: torch.float32, 8: torch.float64, 9: torch.complex32, 10: torch.complex64, 11: torch.complex128,
    12: torch.bool, 13: torch.bfloat16, 28: torch.uint16, 34: torch.uint32, 35: torch.uint64,
}
PT2_STRIDED_LAYOUT = 7


def _int_list(values: list[dict], what: str, source: str) -> list[int]:
    out = []
    for v in values:
        if "as_int" not in v:
            raise SourceFormatError(f"{source}: {what} {v} is symbolic; export the model with static shapes")
        out.append(int(v["as_int"]))
    return out


def _weights_config_name(names: list[str], source: str) -> str:
    configs = sorted(n for n in names if "/data/weights/" in n and n.endswith("_weights_config.json"))
    if not configs:
        legacy = [n for n in names if "/data/weights/" in n and n.endswith(".pt")]
        if legacy:
            return legacy[0]
        raise SourceFormatError(f"{source}: no data/weights/*_weights_config.json in the torch.export archive")
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
        raise SourceFormatError(f"{source}: not a torch.export archive ({exc})") from None
    with archive:
        names = archive.namelist()
        byteorder = next((archive.read(n).decode().strip() for n in names if n.endswith("/byteorder")), "little")
        if byteorder != "little":
            raise SourceFormatError(f"{source}: byte order {byteorder!r} is not supported (only little-endian)")
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
                raise SourceFormatError(f"{source}: weight {name!r} is stored pickled (a tensor subclass); "
                                          "neuron-audit reads plain tensors only")
            tm = meta["tensor_meta"]
            dtype = PT2_DTYPES.get(int(tm["dtype"]))
            if dtype is None or int(tm.get("layout", PT2_STRIDED_LAYOUT)) != PT2_STRIDED_LAYOUT:
                raise SourceFormatError(f"{source}: weight {name!r} has dtype code {tm['dtype']} / layout "
                                          f"{tm.get('layout')}, which neuron-audit cannot read")
            record = meta["path_name"]
            if record not in records:
                raw = bytearray(archive.read(f"{weights_dir}/{record}"))
                if len(raw) % dtype.itemsize:
                    raise SourceFormatError(f"{source}: record {record} of {name!r} is {len(raw)} bytes, not a "
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
                raise SourceFormatError(f"{source}: weight {name!r} ({sizes}) needs {last + 1} elements but its "
                                          f"record holds {flat.numel()}")
            state[name] = torch.as_strided(flat, sizes, strides, offset).clone()
        return state
