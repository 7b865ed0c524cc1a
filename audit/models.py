"""Building timm models from built-in weights, files or in-memory state dicts."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from .builtin_weights import BUILTIN_MODELS, builtin_weight_file  # noqa: F401 (re-exported)
from .errors import AuditInputError, CheckpointMismatchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_builtin_weight_file = builtin_weight_file   # the name this module used before


def builtin_state_dict(name: str) -> OrderedDict[str, torch.Tensor]:
    """The shipped weights remapped to timm's key names (same tensors, same order)."""
    if name not in BUILTIN_MODELS:
        raise AuditInputError(f"unknown built-in model {name!r}; valid: {', '.join('builtin:' + m for m in BUILTIN_MODELS)}")
    raw = torch.load(_builtin_weight_file(name), map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(raw) != len(target):
        raise CheckpointMismatchError(f"builtin:{name}", name, [], [f"{len(raw)} tensors vs {len(target)}"])
    remapped = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(raw.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise CheckpointMismatchError(f"builtin:{name}", name, [], [], [f"{src_key}->{dst_key} {tuple(tensor.shape)} vs {tuple(ref.shape)}"])
        remapped[dst_key] = tensor
    return remapped


def file_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file or a torch state dict (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise AuditInputError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-checkpoints
        raise AuditInputError(f"cannot read checkpoint {str(path)!r} as a torch state dict: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AuditInputError(f"checkpoint {str(path)!r} is not a state dict of tensors")
    return dict(obj)


def create_architecture(architecture: str) -> nn.Module:
    try:
        return timm.create_model(architecture, pretrained=False)
    except RuntimeError as exc:
        raise AuditInputError(f"unknown timm architecture {architecture!r} ({exc})") from exc


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, architecture: str) -> nn.Module:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, architecture, missing, unexpected, mismatched)
    model.load_state_dict(state, strict=True)
    return model


def load_model(architecture: str, source: str | None = None, state_dict: Mapping[str, torch.Tensor] | None = None,
               device: str | torch.device = "cpu", base_dir: Path | None = None) -> nn.Module:
    """A timm model in eval mode with weights from `source` (builtin:NAME, file:PATH) or `state_dict`.

    `models:/` sources are resolved by storage/, which passes the weights as `state_dict`.
    """
    model = create_architecture(architecture)
    if state_dict is None:
        if source is None:
            raise AuditInputError("load_model needs a source or a state_dict")
        if source.startswith("builtin:"):
            state_dict = builtin_state_dict(source[len("builtin:"):])
        elif source.startswith("file:"):
            p = Path(source[len("file:"):])
            state_dict = file_state_dict(p if p.is_absolute() or base_dir is None else base_dir / p)
        elif source.startswith("models:/"):
            raise AuditInputError(f"source {source!r} is an MLflow registry URI: resolve it through storage.resolve")
        else:
            raise AuditInputError(f"unknown model source {source!r}; valid: builtin:NAME, file:PATH, models:/NAME/VERSION, models:/NAME@ALIAS")
    load_state_into(model, state_dict, source or "<state dict>", architecture)
    return model.to(device).eval()


def weights_sha256(state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Content hash of the weights (names, dtypes, shapes and bytes), independent of file format."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_input_size(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def image_to_tensor(img: Image.Image, size: int, crop_pct: float = 1.0) -> torch.Tensor:
    """Resize the shorter side to size/crop_pct (bicubic), center crop, normalize: [3, size, size]."""
    scale = size / crop_pct / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.convert("RGB").resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return normalize(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0,1] RGB -> ImageNet-normalized (any leading dims, channel dim at -3)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x * std + mean


def preprocess(images: list[Image.Image], size: int) -> torch.Tensor:
    return torch.stack([image_to_tensor(im, size) for im in images])


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """A normalized [3,H,W] tensor -> uint8 [H,W,3]."""
    rgb = denormalize(x.detach().cpu().float()).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
