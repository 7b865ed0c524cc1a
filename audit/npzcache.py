"""One cache for arrays computed from content: an in-memory LRU in front of an optional folder of
`.npz` files, each named by the SHA-256 of its key and the cache's format version.

The activation cache (audit/stats.py) and the benign null's cache (audit/drift/null.py) are both
this: a value made of numpy arrays, found again by a key that says what produced it. Bumping
`version` when the stored arrays change meaning makes every older file unreachable (it is never
read again), so a cache can never hand back values of an older definition. Files are written to a
temporary name and renamed, so a reader sees a whole file or none; an unreadable file is a miss.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generic, Hashable, Mapping, TypeVar

import numpy as np

V = TypeVar("V")


class NpzCache(Generic[V]):
    """`get(key)` / `put(key, value)` for values that `encode` turns into named arrays and `decode`
    rebuilds (raising KeyError or ValueError when the arrays do not fit: a miss, not an error)."""

    def __init__(self, version: int | str, encode: Callable[[V], Mapping[str, np.ndarray]],
                 decode: Callable[[Mapping[str, np.ndarray]], V], max_entries: int = 64,
                 directory: str | Path | None = None):
        self.version = version
        self.encode = encode
        self.decode = decode
        self.max_entries = max_entries
        self.directory = Path(directory) if directory else None
        self._mem: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def file_name(self, key: Hashable) -> str:
        """The file a key is stored in: its hash together with the cache's format version."""
        return hashlib.sha256(repr((self.version, key)).encode()).hexdigest()[:40] + ".npz"

    def get(self, key: Hashable, directory: Path | None = None) -> V | None:
        """The value stored under `key` (memory first, then `directory` or the cache's own folder)."""
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                self.hits += 1
                return self._mem[key]
        folder = directory if directory is not None else self.directory
        value = self._read(folder / self.file_name(key)) if folder is not None else None
        with self._lock:
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
        self._remember(key, value)
        return value

    def put(self, key: Hashable, value: V, directory: Path | None = None) -> None:
        """Remember `value` and, when there is a folder, write it atomically."""
        self._remember(key, value)
        folder = directory if directory is not None else self.directory
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.file_name(key)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npz")
        np.savez(tmp, **dict(self.encode(value)))
        os.replace(tmp, path)

    def clear(self) -> None:
        """Forget the in-memory entries (the files stay)."""
        with self._lock:
            self._mem.clear()

    def _read(self, path: Path) -> V | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return self.decode({name: z[name] for name in z.files})
        except (OSError, ValueError, KeyError):
            return None

    def _remember(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._mem[key] = value
            self._mem.move_to_end(key)
            while len(self._mem) > self.max_entries:
                self._mem.popitem(last=False)
