"""Bad input never runs: each case exits 2 before any work, names the key (or file) and the value,
prints no traceback, and writes no row and no MLflow run. Cases run the real CLI in-process on real
files (checkpoints, images, SQLite files); a few need a real process (a read-only file for a user
without root's override) and live in test_faults.py."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.faults.conftest import cli, db_counts, tiny_config_dict, write_config


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _photo(path: Path, seed: int = 0, size=(48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    return _png(path, rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _truncated_png(path: Path) -> Path:
    _photo(path, seed=3, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_as_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


def _tiny_png(path: Path) -> Path:
    return _png(path, np.zeros((1, 1, 3), dtype=np.uint8))


def _folder(d: Path, name: str, makers) -> str:
    f = d / name
    f.mkdir(parents=True, exist_ok=True)
    for i, make in enumerate(makers):
        make(f / f"img{i}.png")
    return str(f)


# Each case: (id, mutate(config dict, folder) -> extra CLI args or None, expected key, expected text)
def _neuron(i):
    return lambda c: c["models"][0]["neurons"][i]


CASES = [
    ("unknown-layer", lambda c, d: _neuron(2)(c).update(layer="blocks.99"),
     "models[0].neurons[2].layer", "unknown layer 'blocks.99'"),
    ("channel-out-of-range", lambda c, d: _neuron(2)(c).update(index=4000),
     "models[0].neurons[2].index", "4000 is out of range"),
    ("class-index-5000", lambda c, d: _neuron(0)(c).update(index=5000),
     "models[0].neurons[0].index", "5000 is out of range"),
    ("class-neuron-on-inner-layer", lambda c, d: _neuron(0)(c).update(layer="blocks.5", index=3),
     "models[0].neurons[0].layer", "not the model's head"),
    ("missing-reference-folder", lambda c, d: _neuron(0)(c).update(references=str(d / "nope")),
     "models[0].neurons[0].references", "does not exist"),
    ("empty-reference-folder", lambda c, d: _neuron(0)(c).update(references=_folder(d, "empty", [])),
     "models[0].neurons[0].references", "no image files found"),
    ("reference-text-named-png", lambda c, d: _neuron(0)(c).update(references=_folder(d, "txt", [_text_as_png])),
     "models[0].neurons[0].references", "unreadable"),
    ("reference-truncated-png", lambda c, d: _neuron(0)(c).update(references=_folder(d, "trunc", [_truncated_png])),
     "models[0].neurons[0].references", "unreadable"),
    ("reference-1x1", lambda c, d: _neuron(0)(c).update(references=_folder(d, "one", [_tiny_png])),
     "models[0].neurons[0].references", "too small (1x1 px"),
    ("unknown-builtin-sample", lambda c, d: _neuron(0)(c).update(references="builtin:samples/unicorn"),
     "models[0].neurons[0].references", "unknown built-in sample 'unicorn'"),
    ("missing-probe-folder", lambda c, d: c["models"][0].update(probe_set=str(d / "no-probe")),
     "models[0].probe_set", "does not exist"),
    ("probe-one-usable-image", lambda c, d: c["models"][0].update(
        probe_set=_folder(d, "probe1", [_photo, _text_as_png, _tiny_png])),
     "models[0].probe_set", "1 usable image(s) of 3"),
    ("unknown-architecture", lambda c, d: c["models"][0].update(architecture="no_such_net"),
     "models[0].architecture", "not a timm architecture"),
    ("architecture-typo", lambda c, d: c["models"][0].update(architecture="efficientnet_lit0"),
     "models[0].architecture", "did you mean efficientnet_lite0"),
    ("missing-checkpoint", lambda c, d: c["models"][0]["versions"][1].update(source="file:./missing.safetensors"),
     "models[0].versions[1].source", "does not exist"),
    ("garbage-safetensors", lambda c, d: (d.joinpath("junk.safetensors").write_bytes(b"\x00garbage" * 50),
                                          c["models"][0]["versions"][1].update(source="file:./junk.safetensors")),
     "models[0].versions[1].source", "cannot load it"),
    ("garbage-torch-file", lambda c, d: (d.joinpath("junk.pt").write_text("not a checkpoint"),
                                         c["models"][0]["versions"][1].update(source="file:./junk.pt")),
     "models[0].versions[1].source", "cannot read checkpoint"),
    ("checkpoint-of-another-architecture", lambda c, d: c["models"][0].update(architecture="efficientnet_lite1"),
     "models[0].versions[1].source", "does not match architecture 'efficientnet_lite1'"),
    ("unknown-builtin-model", lambda c, d: c["models"][0]["versions"][0].update(source="builtin:efficientnet_lite9"),
     "models[0].versions[0].source", "unknown built-in model"),
    ("checkpoint-is-a-folder", lambda c, d: ((d / "ckdir").mkdir(),
                                             c["models"][0]["versions"][1].update(source="file:./ckdir")),
     "models[0].versions[1].source", "is not a file"),
    ("registered-model-typo", lambda c, d: c["models"][0].update(versions=[], champion=None,
                                                                  mlflow_registered_model="no-such-model"),
     "models[0].mlflow_registered_model", "no-such-model"),
    ("registry-version-missing", lambda c, d: c["models"][0]["versions"][1].update(source="models:/no-such-model/3"),
     "models[0].versions[1].source", "no-such-model"),
    ("unknown-tap", lambda c, d: c["models"][0]["visualization"].update(taps=["blocks.1", "blocks.42"]),
     "models[0].visualization.taps[1]", "unknown layer 'blocks.42'"),
    ("tap-weights-length", lambda c, d: c["models"][0]["visualization"].update(taps=["blocks.1", "blocks.2"],
                                                                              tap_weights=[1.0]),
     "models[0].visualization.tap_weights", "1 weights for 2 taps"),
    ("database-is-a-folder", lambda c, d: ((d / "dbdir").mkdir(), c["store"].update(database=f"sqlite:///{d}/dbdir")),
     "store.database", "is not a file"),
    ("database-not-sqlite", lambda c, d: ((d / "x.db").write_text("hello, not a database " * 100),
                                          c["store"].update(database=f"sqlite:///{d}/x.db")),
     "store.database", "not a SQLite database"),
    ("database-url-unknown-dialect", lambda c, d: c["store"].update(database="nosuchdb://user@host/db"),
     "store.database", "nosuchdb"),
    ("artifacts-is-a-file", lambda c, d: ((d / "afile").write_text("x"), c["store"].update(artifacts="./afile")),
     "store.artifacts", "is not a folder"),
    ("mlflow-store-is-a-folder", lambda c, d: ((d / "mlf").mkdir(),
                                               c["store"].update(mlflow_tracking_uri=f"sqlite:///{d}/mlf")),
     "store.mlflow_tracking_uri", "is not a file"),
    ("every-model-disabled", lambda c, d: c["models"][0].update(enabled=False),
     "models", "nothing to audit"),
    ("unknown-model-option", lambda c, d: ["--model", "nope"], "--model", "unknown model"),
    ("unknown-version-option", lambda c, d: ["--version", "7"], "--version", "has no version '7'"),
    ("unknown-config-key", lambda c, d: c["store"].update(databse="x"), "store.databse", "unknown key"),
    ("bad-cron", lambda c, d: c.update(schedule={"cron": "nightly"}), "schedule.cron", "not a 5-field cron"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_the_key(tmp_path, swapped_checkpoint, warm_artifacts, case):
    _, mutate, key, text = case
    data = tiny_config_dict()
    data["store"]["artifacts"] = warm_artifacts          # its preflight cache spares the model builds
    extra = mutate(data, tmp_path)
    cfg = write_config(tmp_path, swapped_checkpoint, data)
    args = ["run", "-c", str(cfg)] + (extra if isinstance(extra, list) else [])
    r = cli(*args)
    assert r.code == 2, (r.code, r.out, r.err)
    assert key in r.err and text in r.err, r.err
    assert "Traceback" not in r.err + r.out
    assert not (tmp_path / "store" / "audit.db").exists(), "a row store was created"
    assert not (tmp_path / "store" / "mlflow.db").exists(), "an MLflow store was created"


def test_every_problem_is_reported_at_once(tmp_path, swapped_checkpoint):
    data = tiny_config_dict()
    data["models"][0]["neurons"][2].update(layer="blocks.99")
    data["models"][0]["neurons"][0].update(references=str(tmp_path / "nope"))
    data["models"][0]["versions"][1].update(source="file:./missing.safetensors")
    cfg = write_config(tmp_path, swapped_checkpoint, data)
    r = cli("check", "-c", str(cfg))
    assert r.code == 2
    assert "3 problems found before any work" in r.err, r.err
    for key in ("models[0].neurons[2].layer", "models[0].neurons[0].references", "models[0].versions[1].source"):
        assert key in r.err
    assert not (tmp_path / "store").exists()


def test_compare_with_unknown_version_is_bad_input(tmp_path, swapped_checkpoint):
    cfg = write_config(tmp_path, swapped_checkpoint)
    r = cli("compare", "-c", str(cfg), "--model", "tiny", "--baseline", "1", "--candidate", "9")
    assert r.code == 2 and "--version = '9'" in r.err and "Traceback" not in r.err, r.err
    assert not (tmp_path / "store" / "audit.db").exists()


def test_missing_config_and_broken_yaml(tmp_path):
    r = cli("run", "-c", str(tmp_path / "nope.yaml"))
    assert r.code == 2 and "does not exist" in r.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n  - name: x\n")
    r = cli("check", "-c", str(bad))
    assert r.code == 2 and "not valid YAML" in r.err and "Traceback" not in r.err


def _cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (40, 32), (10, 200, 30, 0)).save(path.with_suffix(".jpg"))
    return path.with_suffix(".jpg")


def _palette_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 40, 3), dtype=np.uint8)).convert("P").save(path)
    return path


def _sixteen_bit_png(path: Path) -> Path:
    a = (np.linspace(0, 65535, 40 * 32).reshape(32, 40)).astype(np.uint16)
    Image.fromarray(a).save(path)       # mode I;16
    return path


def _wide_png(path: Path) -> Path:
    return _png(path, np.random.default_rng(2).integers(0, 255, (12, 8000, 3), dtype=np.uint8))


def test_odd_images_are_converted_or_skipped_with_a_named_count(tmp_path, swapped_checkpoint):
    """Palette, 16-bit, CMYK and 8000 px images are converted; 1x1, truncated and non-images are skipped;
    the preflight passes because enough usable images remain, and says what it did."""
    probe = _folder(tmp_path, "probe", [_photo, _palette_png, _sixteen_bit_png, _cmyk_jpeg, _wide_png, _tiny_png,
                                        _truncated_png, _text_as_png])
    data = tiny_config_dict()
    data["models"][0]["probe_set"] = probe
    cfg = write_config(tmp_path, swapped_checkpoint, data)
    r = cli("check", "-c", str(cfg))
    assert r.code == 0, r.err
    assert "5 usable image(s) of 8" in r.err
    assert "4 converted" in r.err and "3 skipped" in r.err
    for what in ("palette", "16-bit", "CMYK", "downscaled from 8000x12", "too small (1x1", "unreadable"):
        assert what in r.err, what
    from audit.assets import load_rgb_images, resolve_images

    loaded = load_rgb_images(resolve_images(probe))
    assert len(loaded.images) == 5 and all(im.mode == "RGB" for im in loaded.images)
    sixteen = next(im for im, p in zip(loaded.images, loaded.paths) if p.name == "img2.png")
    assert np.asarray(sixteen).max() == 255 and np.asarray(sixteen).min() == 0    # scaled, not clipped
    assert max(next(im for im, p in zip(loaded.images, loaded.paths) if p.name == "img4.png").size) == 4096
