import pytest
import torch

from audit.assets import load_rgb_images, resolve_images
from audit.errors import AuditInputError, CheckpointMismatchError
from audit.models import preprocess, weights_sha256
from sources import load_model
from audit.taps import capture, default_taps, layer_channels


@pytest.mark.parametrize("name,cls", [("chelsea", 285), ("coffee", 967), ("rocket", 657), ("camera", 872)])
def test_builtin_lite0_predicts_known_classes(lite0, sample_images, name, cls):
    with torch.no_grad():
        logits = lite0(preprocess([sample_images[name]], 224))
    assert logits.argmax(-1).item() == cls


def test_builtin_samples_are_addressable_one_by_one():
    assert [p.name for p in resolve_images("builtin:samples/chelsea")] == ["chelsea.png"]
    assert len(resolve_images("builtin:samples")) >= 10
    with pytest.raises(AuditInputError, match="valid: .*chelsea"):
        resolve_images("builtin:samples/kitten")


def test_unreadable_files_are_skipped_and_odd_ones_converted_with_reasons(tmp_path, sample_images):
    sample_images["coffee"].save(tmp_path / "ok.png")
    sample_images["coffee"].convert("L").save(tmp_path / "grey.png")       # a greyscale photo: used, as RGB
    sample_images["coffee"].convert("P").save(tmp_path / "palette.png")    # converted, and named
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    loaded = load_rgb_images(resolve_images(str(tmp_path)), min_count=1)
    assert len(loaded.images) == 3 and all(im.mode == "RGB" for im in loaded.images)
    assert set(map(lambda p: p.split("/")[-1], loaded.skipped)) == {"broken.jpg"}
    assert {p.split("/")[-1]: why for p, why in loaded.converted.items()} == {"palette.png": "palette"}
    with pytest.raises(AuditInputError, match="need at least 4"):
        load_rgb_images(resolve_images(str(tmp_path)), min_count=4)


def test_file_checkpoint_roundtrip_and_mismatch(tmp_path, lite0):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in lite0.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    for f in ("w.safetensors", "w.pt"):
        m = load_model("efficientnet_lite0", f"file:{tmp_path / f}")
        assert weights_sha256(m) == weights_sha256(lite0)
    with pytest.raises(CheckpointMismatchError, match="does not match architecture .efficientnet_lite1.; missing keys"):
        load_model("efficientnet_lite1", f"file:{tmp_path / 'w.pt'}")
    bad = dict(state)
    bad.pop("conv_stem.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_model("efficientnet_lite0", f"file:{tmp_path / 'bad.pt'}")
    assert "conv_stem.weight" in str(err.value) and "extra.weight" in str(err.value)


def test_taps_and_hooks_removed_on_error(lite0):
    taps = default_taps(lite0)
    assert taps == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert layer_channels(lite0, "blocks.5") == 192
    assert layer_channels(lite0, "classifier") == 1000
    with pytest.raises(RuntimeError):
        with capture(lite0, taps):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in lite0.modules())
    with pytest.raises(AuditInputError, match="unknown layer 'blocks.99'.*blocks.5"):
        layer_channels(lite0, "blocks.99")
