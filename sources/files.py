"""The `file:PATH` source: a weights file on disk (`.safetensors`, a torch state dict, or a `.pt2` archive),
read by the one reader in sources/state_dicts.py. A relative PATH starts at the config's folder."""
from __future__ import annotations

from pathlib import Path

from .registry import SourceContext, SourceWeights, register_source
from .state_dicts import read_state_dict


def source_path(path: str, base_dir: Path | None) -> Path:
    """Where a `file:` source's PATH points: as given when absolute, else under `base_dir`."""
    p = Path(path)
    return p if p.is_absolute() or base_dir is None else base_dir / p


def read_file(path: str, context: SourceContext) -> SourceWeights:
    return SourceWeights(f"file:{path}", read_state_dict(source_path(path, context.base_dir)))


register_source("file", "file:", read_file, syntax="file:PATH",
                description="a .safetensors file, a torch state dict (weights_only=True) or a torch.export .pt2 archive")
