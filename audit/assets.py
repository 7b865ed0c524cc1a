"""Built-in sample photographs and user image folders.

`builtin:samples` are the real photographs scikit-image ships in `skimage/data`;
they serve as reference and probe images for the demo and the tests, offline.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import AuditInputError

# Real photographs only (no synthetic charts or logos). Greyscale photographs of the
# built-in set are replicated to three channels; user folders skip non-RGB files.
BUILTIN_SAMPLES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def skimage_data_dir() -> Path:
    import skimage

    return Path(os.path.dirname(skimage.__file__)) / "data"


def builtin_sample_names() -> list[str]:
    return sorted(BUILTIN_SAMPLES)


def resolve_images(spec: str | os.PathLike, base_dir: Path | None = None) -> list[Path]:
    """Paths of the images a spec names: `builtin:samples`, `builtin:samples/NAME[,NAME]`, a folder or a file."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        rest = spec[len("builtin:"):]
        if rest == "samples":
            names = builtin_sample_names()
        elif rest.startswith("samples/"):
            names = [n for n in rest[len("samples/"):].split(",") if n]
            unknown = [n for n in names if n not in BUILTIN_SAMPLES]
            if unknown:
                raise AuditInputError(
                    f"unknown built-in sample {unknown[0]!r} in {spec!r}; valid: {', '.join(builtin_sample_names())}")
        else:
            raise AuditInputError(f"unknown built-in image set {spec!r}; valid: builtin:samples, builtin:samples/NAME")
        root = skimage_data_dir()
        return [root / BUILTIN_SAMPLES[n] for n in names]
    path = Path(spec)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise AuditInputError(f"image folder {str(path)!r} does not exist (give a folder of images, "
                              "builtin:samples or builtin:samples/NAME)")
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclass
class LoadedImages:
    images: list[Image.Image]
    paths: list[Path]
    skipped: dict[str, str] = field(default_factory=dict)   # path -> reason


def load_rgb_images(paths: list[Path], min_count: int = 1, source: str = "") -> LoadedImages:
    """Open images as RGB. Unreadable or non-RGB files are skipped with a reason;
    fails only if fewer than `min_count` remain."""
    builtin_root = skimage_data_dir()
    out = LoadedImages([], [])
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                if im.mode in ("RGB",):
                    img = im.copy()
                elif im.mode in ("RGBA", "P", "PA") or (p.parent == builtin_root and im.mode in ("L", "LA", "I;16")):
                    img = im.convert("RGB")
                else:
                    out.skipped[str(p)] = f"not an RGB image (mode {im.mode})"
                    continue
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            out.skipped[str(p)] = f"unreadable ({exc.__class__.__name__})"
            continue
        out.images.append(img)
        out.paths.append(p)
    if len(out.images) < min_count:
        raise AuditInputError(
            f"only {len(out.images)} usable image(s) in {source or [str(p) for p in paths][:3]}; "
            f"need at least {min_count} (skipped {len(out.skipped)}: "
            + "; ".join(f"{Path(k).name}: {v}" for k, v in list(out.skipped.items())[:5]) + ")")
    return out
