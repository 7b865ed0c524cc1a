"""The one reader of weights files: a path -> its state dict, by the file's format, without running code.

- `.pt2`: a `torch.export` archive, read record by record (sources/pt2.py);
- `.safetensors`: read with safetensors;
- anything else (`.pt`, `.pth`, `.bin`, `.ckpt`): a torch state dict (or `{"state_dict": ...}`) read with
  `weights_only=True`, which refuses pickled code.

`file:` sources and the files of a registered MLflow model version are both read here, with the same
errors (sources/errors.py)."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from .errors import SourceFormatError, SourceNotFoundError

if TYPE_CHECKING:   # torch is imported where weights are read: importing `sources` stays cheap
    import torch

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

# What `torch.load(weights_only=True)` raises for a file that is no loadable state dict: random bytes or a
# pickled class (UnpicklingError), an empty file (EOFError), plain text (KeyError), a truncated or foreign
# zip archive (RuntimeError), and an unreadable file (OSError).
UNREADABLE_CHECKPOINT = (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, ValueError, OSError)

# file suffix -> reader of that format; a suffix not here is read as a torch state dict (weights_only=True)
_FORMATS: dict[str, Callable[[Path], "dict[str, torch.Tensor]"]] = {}


def register_format(suffix: str, read: Callable[[Path], "dict[str, torch.Tensor]"]) -> None:
    """Register the reader of weights files ending in `suffix` (".pt2"); one reader per suffix."""
    if suffix in _FORMATS:
        raise ValueError(f"a weights format for {suffix!r} is already registered")
    _FORMATS[suffix] = read


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _pt2(path: Path) -> dict[str, torch.Tensor]:
    from .pt2 import pt2_state_dict

    return pt2_state_dict(path)


register_format(".pt2", _pt2)
register_format(".safetensors", _safetensors)


def read_state_dict(path: str | Path, shown: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in the weights file at `path`. `shown`: how messages name the file (default: its path).
    SourceNotFoundError for a missing file, SourceFormatError for one that holds no state dict of tensors (a
    corrupt `.safetensors` file raises safetensors' own error, which callers report as unloadable)."""
    path = Path(path)
    shown = str(path) if shown is None else shown
    if not path.is_file():
        raise SourceNotFoundError(f"checkpoint file {shown!r} does not exist", value=shown)
    if path.suffix in _FORMATS:
        return _FORMATS[path.suffix](path)
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_CHECKPOINT as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SourceFormatError(f"cannot read checkpoint {shown!r} as a torch state dict (weights_only=True): "
                                f"{type(exc).__name__}: {first}", value=shown) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceFormatError(f"checkpoint {shown!r} is not a state dict of tensors", value=shown)
    return dict(obj)
