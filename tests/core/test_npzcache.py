"""audit/npzcache.py: the one cache behind the activation cache and the benign null's cache."""
from __future__ import annotations

import numpy as np

from audit.npzcache import NpzCache


def _cache(tmp_path, version=1, max_entries=2):
    return NpzCache(version, encode=lambda v: {"a": v}, decode=lambda z: z["a"], max_entries=max_entries,
                    directory=tmp_path)


def test_values_come_back_from_memory_then_from_disk(tmp_path):
    c = _cache(tmp_path)
    c.put(("w", "probe", "layer"), np.arange(3.0))
    assert np.array_equal(c.get(("w", "probe", "layer")), np.arange(3.0)) and c.hits == 1
    fresh = _cache(tmp_path)                      # a new process: only the files remain
    assert np.array_equal(fresh.get(("w", "probe", "layer")), np.arange(3.0))
    assert fresh.get(("w", "probe", "other")) is None and fresh.misses == 1
    assert not list(tmp_path.glob("*.tmp.npz"))    # written atomically


def test_a_new_version_never_reads_an_older_file(tmp_path):
    _cache(tmp_path, version=1).put("k", np.ones(2))
    assert _cache(tmp_path, version=2).get("k") is None


def test_memory_is_bounded_and_a_damaged_file_is_a_miss(tmp_path):
    c = _cache(tmp_path, max_entries=2)
    for i in range(3):
        c.put(i, np.full(1, i))
    assert len(c._mem) == 2 and 0 not in c._mem
    (tmp_path / c.file_name(0)).write_bytes(b"not an npz")
    c.clear()
    assert c.get(0) is None
    assert np.array_equal(c.get(2), np.full(1, 2))


def test_a_directory_given_per_call_overrides_the_cache_folder(tmp_path):
    c = NpzCache("v", encode=lambda v: {"a": v}, decode=lambda z: z["a"])
    c.put("k", np.zeros(1), directory=tmp_path / "nulls")
    assert (tmp_path / "nulls" / c.file_name("k")).is_file()
    c.clear()
    assert c.get("k") is None and c.get("k", directory=tmp_path / "nulls") is not None
