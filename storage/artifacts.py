"""Content-addressed file artifacts under one root: PNG images and masks, npz arrays, JSON.

Every `put_*` returns a path relative to the root (POSIX form, e.g. `images/ab/ab12....png`);
the same content always maps to the same path, so re-saving is free and two writers never clash
(files are written to a temp name and renamed atomically).

The name of a content-addressed file is its SHA-256 (of the bytes; of the arrays for `.npz`), so
`verify(rel)` can tell a deleted, truncated or overwritten file from an intact one without any
record in the database, and `put_*` rewrites a file that exists but fails that check.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image


_DIGEST_NAME = re.compile(r"^[0-9a-f]{64}$")


class ArtifactStore:
    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        """create=False (read-only users: dashboard, report) never makes the folder."""
        self.root = Path(root).expanduser().resolve()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------
    def path(self, rel: str | os.PathLike) -> Path:
        """Absolute path of a relative artifact path; refuses absolute paths and paths escaping the root."""
        rel_s = str(rel)
        if not rel_s or Path(rel_s).is_absolute() or rel_s.startswith(("/", "\\")):
            raise ValueError(f"artifact path {rel_s!r} must be relative to the artifact root {self.root}")
        p = (self.root / rel_s).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"artifact path {rel_s!r} escapes the artifact root {self.root}")
        return p

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def _write(self, kind: str, digest: str, suffix: str, data: bytes) -> str:
        rel = f"{kind}/{digest[:2]}/{digest}{suffix}"
        dest = self.path(rel)
        if not _same_bytes(dest, data):        # absent, truncated or overwritten: (re)write it
            _atomic_write(dest, data, suffix)
        return rel

    # -- integrity -----------------------------------------------------------------------
    def verify(self, rel: str | None) -> str | None:
        """None when the artifact is intact, else what is wrong with it ("missing", "hash mismatch ...").

        Content-addressed files are checked against the SHA-256 in their name (of the bytes; of the
        arrays for .npz); other files (named reports) only for existence and a non-zero size."""
        if not rel:
            return "no path recorded"
        try:
            p = self.path(rel)
        except ValueError as exc:
            return str(exc)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable ({exc.__class__.__name__})"
        if size == 0:
            return "empty file"
        digest = p.name.split(".", 1)[0]
        if not _DIGEST_NAME.match(digest):
            return None
        try:
            if p.suffix == ".npz":
                actual = _arrays_digest(self.get_arrays(rel))
            else:
                actual = _file_sha256(p)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            return f"unreadable ({exc.__class__.__name__})"
        return None if actual == digest else f"hash mismatch (size {size} B)"

    def intact(self, rel: str | None) -> bool:
        return self.verify(rel) is None

    def put_bytes(self, data: bytes, suffix: str = ".bin", kind: str = "files") -> str:
        return self._write(kind, hashlib.sha256(data).hexdigest(), suffix, data)

    # -- images --------------------------------------------------------------------------
    def put_image(self, image: np.ndarray | Image.Image) -> str:
        """An RGB image (uint8 [H,W,3], or a PIL image) as PNG."""
        if isinstance(image, Image.Image):
            pil = image.convert("RGB")
        else:
            arr = np.asarray(image)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            if arr.ndim != 3 or arr.shape[2] not in (3, 4):
                raise ValueError(f"image must be [H,W,3] uint8, got shape {arr.shape}")
            if arr.dtype != np.uint8:
                arr = np.clip(np.asarray(arr, dtype=np.float64) * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
            pil = Image.fromarray(np.ascontiguousarray(arr[..., :3]), mode="RGB")
        return self.put_bytes(_png_bytes(pil), ".png", "images")

    def put_mask(self, mask: np.ndarray) -> str:
        """A mask (float in [0,1], or uint8) as an 8-bit greyscale (L) PNG."""
        arr = np.asarray(mask)
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise ValueError(f"mask must be [H,W], got shape {np.asarray(mask).shape}")
        if arr.dtype != np.uint8:
            arr = (np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return self.put_bytes(_png_bytes(Image.fromarray(arr, mode="L")), ".png", "masks")

    def get_image(self, rel: str) -> np.ndarray:
        with Image.open(self.path(rel)) as im:
            return np.asarray(im.convert("RGB")).copy()

    def get_mask(self, rel: str) -> np.ndarray:
        """The mask as float32 [H,W] in [0,1]."""
        with Image.open(self.path(rel)) as im:
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0

    # -- arrays --------------------------------------------------------------------------
    def put_arrays(self, arrays: Mapping[str, np.ndarray]) -> str:
        """A dict of arrays as .npz, addressed by the arrays' names, dtypes, shapes and bytes."""
        clean = {}
        for k in sorted(arrays):
            a = np.ascontiguousarray(np.asarray(arrays[k]))
            if a.dtype == object:
                raise ValueError(f"array {k!r} has dtype object; only numeric arrays are stored")
            clean[k] = a
        digest = _arrays_digest(clean)
        rel = f"arrays/{digest[:2]}/{digest}.npz"
        if self.verify(rel) is None:           # npz bytes are not reproducible (zip times): check the arrays
            return rel
        buf = io.BytesIO()
        np.savez_compressed(buf, **clean)
        _atomic_write(self.path(rel), buf.getvalue(), ".npz")
        return rel

    def get_arrays(self, rel: str) -> dict[str, np.ndarray]:
        with np.load(self.path(rel), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    # -- JSON ----------------------------------------------------------------------------
    def put_json(self, obj: Any, kind: str = "json") -> str:
        data = json.dumps(jsonable(obj), sort_keys=True, indent=1, allow_nan=False).encode()
        return self.put_bytes(data, ".json", kind)

    def get_json(self, rel: str) -> Any:
        return json.loads(self.path(rel).read_text())

    def write_named(self, rel: str, data: bytes) -> Path:
        """Write `data` at a chosen relative path (not content-addressed), atomically."""
        dest = self.path(rel)
        _atomic_write(dest, data)
        return dest


def _arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[k]))
        h.update(k.encode() + b"\0" + a.dtype.str.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _same_bytes(dest: Path, data: bytes) -> bool:
    """True when `dest` holds exactly `data` (size first, then the bytes)."""
    try:
        if dest.stat().st_size != len(data):
            return False
        return dest.read_bytes() == data
    except OSError:
        return False


def placeholder_png(size: int = 96) -> bytes:
    """A grey square with a cross: what the dashboard shows for a missing or corrupt image."""
    from PIL import ImageDraw

    img = Image.new("RGB", (size, size), (236, 238, 242))
    draw = ImageDraw.Draw(img)
    draw.line((0, 0, size - 1, size - 1), fill=(180, 184, 192), width=2)
    draw.line((0, size - 1, size - 1, 0), fill=(180, 184, 192), width=2)
    return _png_bytes(img)


def _png_bytes(pil: Image.Image) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays -> Python; non-finite floats -> None (PostgreSQL JSONB rejects NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _atomic_write(dest: Path, data: bytes, suffix: str = "") -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
