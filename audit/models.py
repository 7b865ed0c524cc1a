"""Building timm models from built-in weights, files or in-memory state dicts."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

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


_RESERVED_MODEL_ARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "features_only")


def create_architecture(architecture: str, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """`timm.create_model(architecture, pretrained=False, **model_args)`, with errors that name the
    architecture or the argument timm rejected."""
    args = dict(model_args or {})
    reserved = [k for k in args if k in _RESERVED_MODEL_ARGS]
    if reserved:
        raise AuditInputError(f"model_args.{reserved[0]}: not allowed (the weights come from the model's `versions`)")
    if not timm.is_model(architecture):
        raise AuditInputError(f"unknown timm architecture {architecture!r} "
                              f"(`timm.list_models('{architecture.split('_')[0]}*')` lists similar names)")
    try:
        return timm.create_model(architecture, pretrained=False, **args)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:  # how timm reports bad arguments
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items()) or "no arguments"
        raise AuditInputError(f"timm.create_model({architecture!r}) rejected model_args ({shown}): "
                              f"{exc.__class__.__name__}: {exc}") from None


def classifier_weight_key(model: nn.Module) -> str | None:
    """State-dict key of the classifier's weight (its rows are the classes), or None."""
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if get_classifier is not None else None
    if not isinstance(head, nn.Module):
        return None
    for name, module in model.named_modules():
        if module is head and name and isinstance(getattr(module, "weight", None), torch.Tensor):
            return f"{name}.weight"
    return None


def fit_head_to_checkpoint(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """Resize the classifier to the checkpoint's number of classes (a fine-tuned head), in place.

    Returns the new number of classes, or None when the head already fits or the checkpoint has
    no tensor for it (the shape check then reports the problem)."""
    key = classifier_weight_key(model)
    if key is None or key not in state or not hasattr(model, "reset_classifier"):
        return None
    want = int(state[key].shape[0])
    have = int(model.state_dict()[key].shape[0])
    if want == have:
        return None
    model.reset_classifier(want)
    return want


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
               device: str | torch.device = "cpu", base_dir: Path | None = None,
               model_args: Mapping[str, Any] | None = None, num_classes: int | None = None) -> nn.Module:
    """A timm model in eval mode with weights from `source` (builtin:NAME, file:PATH) or `state_dict`.

    The architecture is `timm.create_model(architecture, **model_args)`. Its head takes
    `num_classes` when given, else the checkpoint's own size (a model fine-tuned for 10 classes
    loads as a 10-class model). `models:/` sources are resolved by storage/, which passes the
    weights as `state_dict`.
    """
    if state_dict is None:
        state_dict = read_source(source, base_dir)
    args = dict(model_args or {})
    if num_classes is not None:
        if "num_classes" in args and int(args["num_classes"]) != num_classes:
            raise AuditInputError(f"num_classes: {num_classes} disagrees with model_args.num_classes: {args['num_classes']}")
        args["num_classes"] = num_classes
    model = create_architecture(architecture, args)
    if "num_classes" not in args:
        fit_head_to_checkpoint(model, state_dict)
    load_state_into(model, state_dict, source or "<state dict>", architecture)
    return model.to(device).eval()


def read_source(source: str | None, base_dir: Path | None = None) -> Mapping[str, torch.Tensor]:
    """The state dict of a `builtin:NAME` or `file:PATH` source."""
    if source is None:
        raise AuditInputError("load_model needs a source or a state_dict")
    if source.startswith("builtin:"):
        return builtin_state_dict(source[len("builtin:"):])
    if source.startswith("file:"):
        p = Path(source[len("file:"):])
        return file_state_dict(p if p.is_absolute() or base_dir is None else base_dir / p)
    if source.startswith("models:/"):
        raise AuditInputError(f"source {source!r} is an MLflow registry URI: resolve it through storage.resolve")
    raise AuditInputError(f"unknown model source {source!r}; valid: builtin:NAME, file:PATH, models:/NAME/VERSION, models:/NAME@ALIAS")


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


def model_input_hw(model: nn.Module) -> tuple[int, int]:
    """The (height, width) the model takes: a fixed-size patch embedding's `img_size` (ViT, DeiT,
    Swin, Mixer and hybrids built with `img_size=`), else timm's data config (`pretrained_cfg`)."""
    for m in model.modules():
        size = getattr(m, "img_size", None)
        if size is not None and getattr(m, "strict_img_size", False) and not getattr(m, "dynamic_img_size", False):
            if isinstance(size, int):
                return size, size
            if isinstance(size, (tuple, list)) and len(size) == 2:
                return int(size[0]), int(size[1])
    try:
        from timm.data import resolve_model_data_config

        size = resolve_model_data_config(model)["input_size"]
    except (ImportError, KeyError, TypeError, AttributeError):
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {}
        size = cfg.get("input_size", (3, 224, 224))
    return int(size[-2]), int(size[-1])


def model_input_size(model: nn.Module) -> int:
    """The model's input side (its height; timm's fixed-size models are square)."""
    return model_input_hw(model)[0]


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
