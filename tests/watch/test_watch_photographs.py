"""`watch` on NEW photographs against a folder reference of other photographs (real Lite0, the CLI):
broken preprocessing (blur; an R/B swap on colour photographs) is flagged by the whole-layer test,
the held-out photographs themselves pass; the default probe reference is announced with its limits; the reference's model
outputs are cached by content (hit on a second call, recomputed when the weights change)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from watch_testlib import write_config

# The scikit-image photographs (the probe set's, and three texture photographs) split once into a
# reference folder and held-out photographs: no crop of one photograph is on both sides.
REFERENCE = ("astronaut.png", "camera.png", "coffee.png", "coins.png", "moon.png", "motorcycle_left.png",
             "retina.jpg", "brick.png")
HELD_OUT = ("chelsea.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_right.png", "rocket.jpg", "grass.png",
            "gravel.png")


def _square(img: Image.Image, size: int = 128) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size),
                                                                                          Image.BICUBIC)


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory) -> dict:
    from audit.assets import skimage_data_dir

    root = tmp_path_factory.mktemp("photographs")
    shifts = {"clean": lambda im: im, "blurred": lambda im: im.filter(ImageFilter.GaussianBlur(4))}
    out = {}
    for name, files in (("reference", REFERENCE), ("held", HELD_OUT)):
        for shift, fn in shifts.items():
            if name == "reference" and shift != "clean":
                continue
            folder = root / (name if name == "reference" else shift)
            folder.mkdir()
            for f in files:
                fn(_square(Image.open(skimage_data_dir() / f).convert("RGB"))).save(folder / (f.split(".")[0] + ".png"))
            out[folder.name] = folder
    return out


def watch(config, *args) -> int:
    from flows.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["watch", "-c", str(config), *[str(a) for a in args]])
    return exc.value.code


def _folder_config(tmp_path, photo_folders, mlflow_uri):
    return write_config(tmp_path / "cfg", watch={"reference": str(photo_folders["reference"]), "min_images": 5},
                        mlflow=mlflow_uri)


def test_new_photographs_pass_and_broken_preprocessing_fails_against_a_folder(tmp_path, photo_folders, mlflow_uri):
    config = _folder_config(tmp_path, photo_folders, mlflow_uri)
    reports = {}
    for shift in ("clean", "blurred"):
        out = tmp_path / f"{shift}.json"
        code = watch(config, "--model", "lite0", "--images", photo_folders[shift], "--json", out)
        reports[shift] = (code, json.loads(out.read_text()))
    code, clean = reports["clean"]
    assert code == 0 and clean["verdict"] != "FAIL", clean["summary"]
    assert clean["reference"]["kind"] == "folder" and clean["reference"]["layer_photographs"] == len(REFERENCE)
    assert clean["layers"]["verdict"] != "FAIL" and "limits" not in clean["reference"]
    for shift in ("blurred",):
        code, rep = reports[shift]
        assert code == 1 and rep["verdict"] == "FAIL", (shift, rep["summary"])
        lay = rep["layers"]
        assert lay["verdict"] == "FAIL" and lay["p_fail_holm"] < 0.01
        assert {x["layer"] for x in lay["layers"]} >= {"blocks.0", "blocks.2", "blocks.3", "blocks.5", "bn2"}
        assert "whole layers moved" in lay["reason"] and "whole layers moved" in rep["summary"]
        # a neuron whose interval excludes zero is not "within the reference window"
        for n in rep["neurons"]:
            lo, hi = n["statistics"]["shift_ci"]
            if n["verdict"] == "PASS" and (lo > 0 or hi < 0):
                assert not n["reason"].startswith("within the reference window"), n["reason"]


def test_the_default_probe_reference_is_announced(tmp_path, photo_folders, mlflow_uri, capsys):
    config = write_config(tmp_path / "cfg", watch={"min_images": 5}, mlflow=mlflow_uri)
    out = tmp_path / "r.json"
    watch(config, "--model", "lite0", "--images", photo_folders["clean"], "--json", out)
    report = json.loads(out.read_text())
    assert report["reference"]["kind"] == "probe"
    limits = report["reference"]["limits"]
    assert "cannot tell broken inputs from a batch of other, ordinary photographs" in limits
    assert "watch.reference: <folder" in limits and "watch.reference: batches" in limits
    err = capsys.readouterr().err
    assert "the reference is the probe set" in " ".join(err.split())


def test_the_reference_is_cached_by_content_and_recomputed_when_the_weights_change(tmp_path, photo_folders,
                                                                                   mlflow_uri):
    from audit.models import builtin_state_dict
    from flows import runtime

    config = _folder_config(tmp_path, photo_folders, mlflow_uri)
    keys = []
    for _ in range(2):
        report = json.loads(_run(config, tmp_path, photo_folders))
        keys.append((report["reference"]["cache"], report["reference"]["cache_key"]))
    assert keys[0][0] == "computed" and keys[1] == ("hit", keys[0][1])

    state = {k: v.clone() for k, v in builtin_state_dict("efficientnet_lite0").items()}
    state["conv_stem.weight"] *= 1.5                      # other weights behind the same version label
    torch.save(state, tmp_path / "v1.pt")
    text = config.read_text().replace("builtin:efficientnet_lite0", f"file:{tmp_path / 'v1.pt'}")
    config.write_text(text)
    runtime.config.cache_clear()
    runtime._load.cache_clear()
    report = json.loads(_run(config, tmp_path, photo_folders))
    assert report["reference"]["cache"] == "computed" and report["reference"]["cache_key"] != keys[0][1]


def _run(config, tmp_path, photo_folders) -> str:
    out = tmp_path / "c.json"
    watch(config, "--model", "lite0", "--images", photo_folders["clean"], "--json", out)
    return out.read_text()


TUXPAINT = "/usr/share/tuxpaint/stamps"


def test_swapped_channels_of_new_colour_photographs_fail_against_a_folder(tmp_path, mlflow_uri):
    """60 photographic Tux Paint stamps (Debian's tuxpaint-stamps-default, the benchmark's photographs):
    30 as the reference folder, 30 others as the batch, as they are and with R and B swapped. The
    skimage photographs are too few (and a third greyscale) to see a swap."""
    import importlib.util
    from pathlib import Path

    if not Path(TUXPAINT).is_dir():
        pytest.skip("needs Debian's tuxpaint-stamps-default (apt-get install -y tuxpaint-stamps-default)")
    spec = importlib.util.spec_from_file_location("ddb", Path(__file__).parents[2] / "benchmarks" / "data_drift_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    files = sorted(Path(TUXPAINT).rglob("*.png"))
    photos = []
    for f in files:
        if "symbols" in f.parts or "cartoon" in f.parts or "_mirror" in f.name:
            continue
        p = bench.stamp_photograph(f)
        if p is not None:
            photos.append(_square(p))
    rng = np.random.default_rng(7)
    pick = rng.permutation(len(photos))[:60]
    folders = {k: tmp_path / k for k in ("reference", "clean", "swapped")}
    for k in folders.values():
        k.mkdir()
    for j, i in enumerate(pick):
        im = photos[i]
        if j < 30:
            im.save(folders["reference"] / f"r{j:02d}.png")
        else:
            im.save(folders["clean"] / f"b{j:02d}.png")
            Image.fromarray(np.ascontiguousarray(np.asarray(im)[..., ::-1])).save(folders["swapped"] / f"b{j:02d}.png")
    config = write_config(tmp_path / "cfg", watch={"reference": str(folders["reference"]), "min_images": 5},
                          mlflow=mlflow_uri)
    verdicts = {}
    for k in ("clean", "swapped"):
        out = tmp_path / f"{k}.json"
        verdicts[k] = (watch(config, "--model", "lite0", "--images", folders[k], "--json", out),
                       json.loads(out.read_text()))
    assert verdicts["clean"][0] == 0 and verdicts["clean"][1]["layers"]["verdict"] != "FAIL"
    code, rep = verdicts["swapped"]
    assert code == 1 and rep["layers"]["verdict"] == "FAIL", rep["layers"]["reason"]


def test_a_second_call_with_an_unchanged_reference_runs_no_reference_photograph_through_the_model(
        tmp_path, photo_folders, mlflow_uri):
    """Every input the model sees is recorded by a forward pre-hook on the very model the CLI loads: the
    first call runs the reference photographs through it, the second (same reference, weights, neurons)
    runs only the batch's."""
    from audit.probe import build_probe_set
    from flows import runtime

    config = _folder_config(tmp_path, photo_folders, mlflow_uri)
    runtime.config.cache_clear()
    runtime._load.cache_clear()
    model = runtime.load_version(str(config), "lite0", "1").model
    size = runtime.probe_size(runtime.config(str(config)).model("lite0"), model)
    reference = build_probe_set(str(photo_folders["reference"]), size=size, crops_per_image=1).images
    batch = build_probe_set(str(photo_folders["clean"]), size=size, crops_per_image=1).images
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().flatten(1).clone()))

    def photographs_through_the_model(images: torch.Tensor) -> int:
        rows = torch.cat([s for s in seen if s.shape[1] == images[0].numel()])
        return sum(bool(torch.isclose(rows, im.flatten()[None], atol=1e-5).all(1).any()) for im in images)

    try:
        calls = []
        for _ in range(2):
            seen.clear()
            report = json.loads(_run(config, tmp_path, photo_folders))
            calls.append((report["reference"]["cache"], photographs_through_the_model(reference),
                          photographs_through_the_model(batch)))
    finally:
        handle.remove()
    assert calls[0] == ("computed", len(reference), len(batch))
    assert calls[1] == ("hit", 0, len(batch))
