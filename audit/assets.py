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

# Real photographs only (no synthetic charts or logos). Greyscale photographs are replicated to
# three channels.
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


# Odd but decodable images are converted (palette, greyscale, 16-bit, float, CMYK, alpha, EXIF-rotated,
# huge) or skipped (too small, undecodable), and every one is named with its reason.
MIN_SIDE = 8              # px: smaller images carry no usable crop
MAX_SIDE = 4096           # px: larger images are downscaled on load (memory), then cropped as usual
_CONVERTED_MODES = {"L": "greyscale", "LA": "greyscale+alpha", "P": "palette", "PA": "palette+alpha",
                    "RGBA": "RGBA (alpha dropped)", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV",
                    "1": "1-bit", "RGBX": "RGBX", "RGBa": "RGBa", "La": "La"}


@dataclass
class LoadedImages:
    images: list[Image.Image]
    paths: list[Path]
    skipped: dict[str, str] = field(default_factory=dict)     # path -> why it was left out
    converted: dict[str, str] = field(default_factory=dict)   # path -> what was converted

    def summary(self) -> str:
        """'12 usable (2 converted: 1 CMYK, 1 16-bit; 1 skipped: a.png unreadable (truncated))'."""
        parts = []
        if self.converted:
            kinds: dict[str, int] = {}
            for why in self.converted.values():
                kinds[why] = kinds.get(why, 0) + 1
            parts.append(f"{len(self.converted)} converted: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped: " + "; ".join(
                f"{Path(k).name} {v}" for k, v in list(self.skipped.items())[:5]) + (" ..." if len(self.skipped) > 5 else ""))
        return f"{len(self.images)} usable" + (f" ({'; '.join(parts)})" if parts else "")


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float single-channel image scaled to 8-bit greyscale (not clipped)."""
    import numpy as np

    a = np.asarray(im, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535 and hi > 255):
        scaled = a / 257.0                       # the 16-bit range onto 0..255
    elif im.mode == "F" and lo >= 0 and hi <= 1.0:
        scaled = a * 255.0
    elif hi <= 255 and lo >= 0:
        scaled = a
    else:
        scaled = (a - lo) / ((hi - lo) or 1.0) * 255.0
    return Image.fromarray(np.nan_to_num(scaled).clip(0, 255).round().astype(np.uint8), mode="L")


def open_rgb(path: Path) -> tuple[Image.Image | None, str | None, str | None]:
    """(RGB image, what was converted or None, why skipped or None) for one file.

    Decodes fully (a truncated file fails here, not later); applies the EXIF orientation; converts
    palette, greyscale, 16-bit, float, CMYK and alpha images to 8-bit RGB; downscales images larger
    than MAX_SIDE; skips undecodable files and images smaller than MIN_SIDE."""
    from PIL import ImageOps

    notes = []
    try:
        with Image.open(path) as im:
            if im.format == "JPEG" and max(im.size) > MAX_SIDE:
                im.draft("RGB", (MAX_SIDE, MAX_SIDE))      # decode at a reduced scale
            im.load()
            w0, h0 = im.size
            if min(w0, h0) < MIN_SIDE:
                return None, None, f"too small ({w0}x{h0} px; at least {MIN_SIDE} px per side)"
            orientation = im.getexif().get(0x0112, 1)
            if orientation not in (1, None):
                img = ImageOps.exif_transpose(im)
                notes.append("EXIF-rotated")
            else:
                img = im.copy()
            mode = img.mode
            if mode in ("I", "F") or mode.startswith("I;16"):
                img = _to_8bit(img).convert("RGB")
                notes.append("16-bit" if mode.startswith("I;16") or mode == "I" else "float")
            elif mode != "RGB":
                img = img.convert("RGB")
                if mode != "L":                        # a greyscale photograph is not odd
                    notes.append(_CONVERTED_MODES.get(mode, mode))
    except Image.DecompressionBombError as exc:
        return None, None, f"too large to decode safely ({exc})"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        detail = str(exc).splitlines()[0][:80] if str(exc) else ""
        return None, None, f"unreadable ({exc.__class__.__name__}{': ' + detail if detail else ''})"
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
        notes.append(f"downscaled from {w0}x{h0}")
    return img, (", ".join(notes) or None), None


def load_rgb_images(paths: list[Path], min_count: int = 1, source: str = "") -> LoadedImages:
    """Open images as RGB (see `open_rgb`). Odd images are converted and named in `converted`,
    unusable ones are skipped with a reason; fails only if fewer than `min_count` remain."""
    out = LoadedImages([], [])
    for p in paths:
        img, converted, skipped = open_rgb(Path(p))
        if img is None:
            out.skipped[str(p)] = skipped or "unusable"
            continue
        if converted:
            out.converted[str(p)] = converted
        out.images.append(img)
        out.paths.append(p)
    if len(out.images) < min_count:
        raise AuditInputError(
            f"only {len(out.images)} usable image(s) in {source or [str(p) for p in paths][:3]}; "
            f"need at least {min_count} ({len(paths)} file(s) found"
            + (": " + "; ".join(f"{Path(k).name}: {v}" for k, v in list(out.skipped.items())[:5]) if out.skipped else "")
            + ")")
    return out
