"""The fixed probe set: every version of a model is measured on the same images.

A probe set is built from an image spec (`builtin:samples`, `builtin:samples/NAME`, a
folder) by a fixed crop recipe: crop 0 is the whole image (shorter side resized,
center crop, as the models' own preprocessing), crops 1.. are square crops of fixed,
seeded scales and positions, every other one mirrored. The recipe does not depend on
the image, so the same spec, size and crop count always give the same tensors; the
SHA-256 covers the file bytes, the preprocessing parameters and the recipe, so a
change of any of them is a new probe set.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .assets import load_rgb_images, resolve_images
from .errors import AuditInputError
from .models import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor

RECIPE_VERSION = "probe-recipe-v1"
RECIPE_SEED = 20240611
SCALE_RANGE = (0.35, 0.9)        # side of a crop as a fraction of the image's shorter side


@dataclass
class ProbeSet:
    images: torch.Tensor                     # [N, 3, S, S], ImageNet-normalized
    names: list[str]                         # 'chelsea#crop3'
    sha256: str
    skipped: dict[str, str] = field(default_factory=dict)   # path -> reason
    params: dict = field(default_factory=dict)              # spec, size, crops_per_image, recipe

    def __len__(self) -> int:
        return len(self.names)

    @property
    def groups(self) -> list[str]:
        """Source image of each probe image (crops of one photograph are not independent)."""
        return [n.split("#", 1)[0] for n in self.names]


def crop_recipe(crops_per_image: int) -> list[tuple[float, float, float, bool]]:
    """(scale, x fraction, y fraction, mirrored) per crop; crop 0 is the whole image.

    Prefix-stable: the first k crops of a longer recipe are the recipe for k crops.
    """
    rng = np.random.default_rng(RECIPE_SEED)
    recipe = [(1.0, 0.5, 0.5, False)]
    for k in range(1, crops_per_image):
        scale = float(rng.uniform(*SCALE_RANGE))
        fx, fy = float(rng.uniform()), float(rng.uniform())
        recipe.append((round(scale, 4), round(fx, 4), round(fy, 4), k % 2 == 1))
    return recipe


def _apply(img: Image.Image, step: tuple[float, float, float, bool], size: int) -> torch.Tensor:
    scale, fx, fy, flip = step
    if scale >= 1.0:
        crop = img
    else:
        w, h = img.size
        side = max(8, int(round(scale * min(w, h))))
        x0, y0 = int(round(fx * (w - side))), int(round(fy * (h - side)))
        crop = img.crop((x0, y0, x0 + side, y0 + side))
    if flip:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return image_to_tensor(crop, size)


def build_probe_set(spec: str, size: int, crops_per_image: int, base_dir: Path | None = None,
                    min_images: int = 2) -> ProbeSet:
    """The probe set of `spec` at `size` px with `crops_per_image` deterministic crops per image."""
    if size < 16:
        raise AuditInputError(f"probe size {size} is too small (at least 16 px)")
    if crops_per_image < 1:
        raise AuditInputError(f"crops_per_image must be at least 1 (got {crops_per_image})")
    paths = resolve_images(spec, base_dir=base_dir)
    loaded = load_rgb_images(paths, min_count=min_images, source=str(spec))
    recipe = crop_recipe(crops_per_image)
    h = hashlib.sha256()
    params = {"recipe_version": RECIPE_VERSION, "size": int(size), "crops_per_image": int(crops_per_image),
              "recipe": recipe, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
              "interpolation": "bicubic", "crop_pct": 1.0}
    h.update(json.dumps(params, sort_keys=True).encode())
    tensors, names, used = [], [], {}
    for img, path in zip(loaded.images, loaded.paths):
        stem = Path(path).stem
        base = stem
        i = 1
        while base in used:                       # two files with one stem in a folder tree
            i += 1
            base = f"{stem}-{i}"
        used[base] = True
        h.update(base.encode())
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
        for k, step in enumerate(recipe):
            tensors.append(_apply(img, step, size))
            names.append(f"{base}#crop{k}")
    params["spec"] = str(spec)
    return ProbeSet(images=torch.stack(tensors), names=names, sha256=h.hexdigest(),
                    skipped=dict(loaded.skipped), params=params)
