"""Stored statistics, cached activations and benign nulls are found again by what produced them (issue 24):
a changed `index`, checkpoint or `model_args` behind the same version label is computed again, and missing
statistics are computed, never replaced by zeros. Real SQLite store, real flow functions (flows.work), and
timm's 0.36 M-parameter `test_efficientnet` (seeded weights written as checkpoints) to keep it fast.

Each "run" of the audit starts from `new_process()`: the per-process caches of flows.runtime and the in-memory
activation and null caches are emptied, as a new `neuron-audit run` would find them; what is on disk stays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from flows import runtime, work

MODEL = "tiny-keys"
ARCH = "test_efficientnet"
ESPRESSO, CAT = 967, 285


def write_config(directory: Path, espresso_index: int = ESPRESSO, model_args: dict | None = None,
                 name: str = "neuron-audit.yaml") -> Path:
    cfg = {
        "store": {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": "sqlite:///./store/mlflow.db",
                  "artifacts": "./store/artifacts"},
        "models": [{
            "name": MODEL, "architecture": ARCH, "champion": "1",
            "model_args": model_args or {},
            "versions": [{"version": "1", "source": "file:./v1.safetensors"},
                         {"version": "2", "source": "file:./v2.safetensors"}],
            "probe_set": "builtin:samples", "probe": {"crops_per_image": 4, "resolution": 64},
            "visualization": {"resolution": 64, "steps": 2, "seeds": [0], "n_references": 4},
            "neurons": [{"id": "espresso", "kind": "class", "layer": "classifier", "index": espresso_index,
                         "references": "top-k"},
                        {"id": "b3-c17", "kind": "inner", "layer": "blocks.3", "index": 17}],
        }],
    }
    path = directory / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def save_checkpoint(path: Path, espresso_row_from: int | None = None) -> None:
    """Seeded weights of the architecture; with `espresso_row_from`, the espresso logit replaced by another
    class's (its top-k probe images change, the layers below the head do not)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    if espresso_row_from is not None:
        state["classifier.weight"][ESPRESSO] = state["classifier.weight"][espresso_row_from]
        state["classifier.bias"][ESPRESSO] = state["classifier.bias"][espresso_row_from]
    save_file(state, str(path))


def new_process() -> None:
    from audit.drift.null import null_cache
    from audit.stats import activation_cache

    for cached in (runtime.config, runtime.store, runtime._load, runtime._probe):
        cached.cache_clear()
    activation_cache().clear()
    null_cache().clear()


def audit_statistics(cfg_path: Path, version: str) -> work.VersionOutcome:
    """What every audit of a version does first: register it, then its probe statistics."""
    new_process()
    out = work.VersionOutcome(MODEL, version, weights_sha256=work.register_version(str(cfg_path), MODEL, version))
    return work.probe_statistics(str(cfg_path), MODEL, version, out)


def neuron(cfg_path: Path, neuron_id: str):
    return runtime.config(str(cfg_path)).model(MODEL).neuron(neuron_id)


def stored_values(cfg_path: Path, version: str, neuron_id: str) -> np.ndarray | None:
    loaded = runtime.load_version(str(cfg_path), MODEL, version)
    probe = runtime.probe_set(runtime.config(str(cfg_path)), runtime.config(str(cfg_path)).model(MODEL), loaded.model)
    return work.stored_probe_values(runtime.store(str(cfg_path)), MODEL, version, neuron(cfg_path, neuron_id),
                                    loaded, probe)


def true_values(cfg_path: Path, version: str, neuron_id: str) -> np.ndarray:
    """The neuron's values computed afresh from the loaded model (no cache)."""
    from audit.pipeline import neuron_target
    from audit.stats import neuron_activations

    cfg = runtime.config(str(cfg_path))
    loaded = runtime.load_version(str(cfg_path), MODEL, version)
    probe = runtime.probe_set(cfg, cfg.model(MODEL), loaded.model)
    n = neuron(cfg_path, neuron_id)
    return neuron_activations(loaded.model, probe, [neuron_target(n)], use_cache=False)[n.id].max


def visualization_key(cfg_path: Path, version: str, neuron_id: str, values: np.ndarray, seed: int = 0) -> str:
    """The content key a render of the neuron has when its references are picked by `values`."""
    from audit.pipeline import reference_recipe, references_for, visualization_content_key

    cfg = runtime.config(str(cfg_path))
    mcfg = cfg.model(MODEL)
    loaded = runtime.load_version(str(cfg_path), MODEL, version)
    probe = runtime.probe_set(cfg, mcfg, loaded.model)
    settings = work.visualization_settings(str(cfg_path), MODEL, loaded.model)
    n = neuron(cfg_path, neuron_id)
    refs = references_for(n, loaded.model, probe.images, values, size=settings.resolution,
                          recipe=reference_recipe(mcfg, n.kind), seed=seed, base_dir=cfg.base_dir)
    return visualization_content_key(loaded.model, n, refs.images, settings, seed)


def render_espresso(cfg_path: Path, version: str, outcome: work.VersionOutcome | None = None) -> work.VersionOutcome:
    outcome = outcome or work.VersionOutcome(MODEL, version)
    return work.render_visualizations(str(cfg_path), MODEL, version, None, outcome, neuron_ids=["espresso"])


def rendered(cfg_path: Path, key: str) -> bool:
    return runtime.store(str(cfg_path)).find_visualization(MODEL, "espresso", key) is not None


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """Version 1's and version 2's checkpoints (the same weights until a test changes version 2's)."""
    save_checkpoint(tmp_path / "v1.safetensors")
    save_checkpoint(tmp_path / "v2.safetensors")
    return tmp_path / "v2.safetensors"


def test_changed_index_behind_same_version_label_recomputes_statistics_and_references(tmp_path, checkpoint):
    cfg_path = write_config(tmp_path, espresso_index=ESPRESSO)
    first = audit_statistics(cfg_path, "1")
    assert sorted(first.stats_computed) == ["b3-c17", "espresso"] and not first.neuron_errors
    old = stored_values(cfg_path, "1", "espresso")

    write_config(tmp_path, espresso_index=CAT)            # the same neuron id and version label, another class
    again = audit_statistics(cfg_path, "1")
    assert again.stats_computed == ["espresso"] and again.stats_cached == ["b3-c17"]
    new = stored_values(cfg_path, "1", "espresso")
    assert np.allclose(new, true_values(cfg_path, "1", "espresso"), atol=1e-5)
    assert not np.allclose(new, old)

    # the references are the top-k probe images by the new statistics, not the stale ones
    stale_key = visualization_key(cfg_path, "1", "espresso", old)
    fresh_key = visualization_key(cfg_path, "1", "espresso", new)
    assert stale_key != fresh_key
    out = render_espresso(cfg_path, "1", again)
    assert out.viz_rendered == ["espresso#0"] and not out.neuron_errors
    assert rendered(cfg_path, fresh_key) and not rendered(cfg_path, stale_key)


def test_changed_checkpoint_behind_same_version_label_recomputes_statistics_and_references(tmp_path, checkpoint):
    cfg_path = write_config(tmp_path)
    first = audit_statistics(cfg_path, "2")
    assert sorted(first.stats_computed) == ["b3-c17", "espresso"]
    old = stored_values(cfg_path, "2", "espresso")
    assert audit_statistics(cfg_path, "2").stats_cached == ["espresso", "b3-c17"]     # unchanged: reused

    save_checkpoint(checkpoint, espresso_row_from=CAT)    # another checkpoint behind version 2, same file name
    again = audit_statistics(cfg_path, "2")
    assert sorted(again.stats_computed) == ["b3-c17", "espresso"] and not again.stats_cached
    assert first.weights_sha256 != again.weights_sha256
    new = stored_values(cfg_path, "2", "espresso")
    assert np.allclose(new, true_values(cfg_path, "2", "espresso"), atol=1e-5) and not np.allclose(new, old)

    stale_key = visualization_key(cfg_path, "2", "espresso", old)
    fresh_key = visualization_key(cfg_path, "2", "espresso", new)
    assert stale_key != fresh_key
    render_espresso(cfg_path, "2", again)
    assert rendered(cfg_path, fresh_key) and not rendered(cfg_path, stale_key)


def test_missing_statistics_are_computed_never_zero_references(tmp_path, checkpoint):
    cfg_path = write_config(tmp_path)
    new_process()
    work.register_version(str(cfg_path), MODEL, "1")        # no probe statistics stored for the version
    out = render_espresso(cfg_path, "1")
    assert out.stats_computed == ["espresso"] and out.viz_rendered == ["espresso#0"] and not out.neuron_errors
    values = true_values(cfg_path, "1", "espresso")
    assert np.allclose(stored_values(cfg_path, "1", "espresso"), values, atol=1e-5)
    zero_key = visualization_key(cfg_path, "1", "espresso", np.zeros_like(values))   # the first probe images
    assert zero_key != visualization_key(cfg_path, "1", "espresso", values)
    assert rendered(cfg_path, visualization_key(cfg_path, "1", "espresso", values)) and not rendered(cfg_path, zero_key)

    # the values file of the stored statistics is lost: computed again, never read as zeros
    store = runtime.store(str(cfg_path))
    for rel in store.version_artifacts(MODEL, "1"):
        if rel.endswith(".npz"):
            store.artifacts.path(rel).unlink()
    out = render_espresso(cfg_path, "1")
    assert out.stats_computed == ["espresso"] and out.viz_reused == ["espresso#0"]


def test_the_probe_set_is_checked_once_per_statistics_pass_and_recorded_on_either_path(tmp_path, monkeypatch):
    """A version's probe statistics checked the probe set's row twice (once more inside the computation; each
    check re-hashes every thumbnail); once is enough. Either path that computes statistics (the version's probe
    statistics, a render that finds none stored) checks it once and leaves it recorded, thumbnails intact."""
    for path in ("statistics", "render"):
        directory = tmp_path / path
        directory.mkdir()
        save_checkpoint(directory / "v1.safetensors")
        save_checkpoint(directory / "v2.safetensors")
        cfg_path = write_config(directory)
        new_process()
        work.register_version(str(cfg_path), MODEL, "1")
        store = runtime.store(str(cfg_path))
        read, checks = store.probe_set_meta, []
        monkeypatch.setattr(store, "probe_set_meta", lambda sha256: checks.append(sha256) or read(sha256))
        if path == "statistics":
            out = work.probe_statistics(str(cfg_path), MODEL, "1", work.VersionOutcome(MODEL, "1"))
            assert sorted(out.stats_computed) == ["b3-c17", "espresso"] and not out.neuron_errors
        else:
            out = render_espresso(cfg_path, "1")
            assert out.stats_computed == ["espresso"] and not out.neuron_errors
        assert len(checks) == 1, (path, checks)
        cfg = runtime.config(str(cfg_path))
        probe = runtime.probe_set(cfg, cfg.model(MODEL), runtime.load_version(str(cfg_path), MODEL, "1").model)
        meta = read(probe.sha256)
        assert meta is not None and len(meta["thumbnails"]) == len(probe.names) > 0, path
        assert all(store.artifacts.intact(t) for t in meta["thumbnails"]), path


def test_topk_references_without_statistics_are_a_named_error(tmp_path):
    import timm
    import torch

    from audit.pipeline import reference_recipe, references_for

    new_process()
    mcfg = runtime.config(str(write_config(tmp_path))).model(MODEL)
    model = timm.create_model(ARCH, pretrained=False).eval()
    with pytest.raises(ValueError, match="neuron 'espresso'.*statistics"):
        references_for(mcfg.neuron("espresso"), model, torch.zeros(8, 3, 32, 32), None, size=32,
                       recipe=reference_recipe(mcfg, "class"), seed=0)


def _npz_count(directory: Path) -> int:
    return len(list(directory.glob("*.npz"))) if directory.is_dir() else 0


def test_model_args_change_statistics_activation_cache_and_null_keys(tmp_path, checkpoint):
    save_checkpoint(checkpoint, espresso_row_from=CAT)
    avg = write_config(tmp_path)
    mx = write_config(tmp_path, model_args={"global_pool": "max"}, name="max-pool.yaml")   # same store, same labels
    cache = tmp_path / "store" / "artifacts" / "cache"

    audit_statistics(avg, "1")
    espresso_avg = stored_values(avg, "1", "espresso")
    acts_avg = _npz_count(cache / "activations")
    assert acts_avg == 2                                    # classifier and blocks.3
    out = audit_statistics(mx, "1")
    a, b = runtime.load_version(str(avg), MODEL, "1"), runtime.load_version(str(mx), MODEL, "1")
    assert a.weights_sha256 == b.weights_sha256 and a.model_key != b.model_key
    assert sorted(out.stats_computed) == ["b3-c17", "espresso"] and not out.stats_cached
    assert _npz_count(cache / "activations") == 2 * acts_avg        # no activation read across model_args
    assert not np.allclose(stored_values(mx, "1", "espresso"), espresso_avg)
    assert stored_values(avg, "1", "espresso") is None              # the row is max-pool's now: never read as avg's

    work.register_version(str(avg), MODEL, "2")
    new_process()
    work.compare_pair(str(avg), MODEL, "1", "2", None, with_visuals=False)
    nulls_avg = _npz_count(cache / "nulls")
    assert nulls_avg >= 2
    new_process()
    work.compare_pair(str(mx), MODEL, "1", "2", None, with_visuals=False)
    assert _npz_count(cache / "nulls") == 2 * nulls_avg             # other model_args: its own null


def test_unchanged_results_are_reused_and_a_head_only_change_rerenders_only_the_topk_class(tmp_path, checkpoint):
    """The keys are not too broad: an unchanged re-run computes nothing, and a head-only change keeps the inner
    neuron's references (same values) and so its stored visualization."""
    save_checkpoint(checkpoint, espresso_row_from=CAT)
    cfg_path = write_config(tmp_path)
    for version in ("1", "2"):
        out = render_espresso(cfg_path, version, audit_statistics(cfg_path, version))
        out = work.render_visualizations(str(cfg_path), MODEL, version, None, out, neuron_ids=["b3-c17"])
        if version == "1":
            assert out.viz_rendered == ["espresso#0", "b3-c17#0"]
        else:
            assert out.viz_rendered == ["espresso#0"] and out.viz_reused == ["b3-c17#0"]
    for version in ("1", "2"):
        out = work.render_visualizations(str(cfg_path), MODEL, version, None, audit_statistics(cfg_path, version))
        assert out.stats_computed == [] and out.viz_rendered == [] and not out.neuron_errors
        assert sorted(out.viz_reused) == ["b3-c17#0", "espresso#0"]
