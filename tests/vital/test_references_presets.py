"""References that describe the class (lists of photographs, whole-image forms, the few-photographs
warning), the presets in the config, and a small recognition check of a rendered class image."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from audit.config import ModelConfig, NeuronConfig, parse_config
from audit.errors import AuditInputError
from audit.pipeline import reference_recipe, references_for
from audit.presets import FEW_PHOTOGRAPHS, ReferenceRecipe


def _model_cfg(**vis) -> ModelConfig:
    return ModelConfig(name="m", architecture="efficientnet_lite0",
                       versions=[{"version": "1", "source": "builtin:efficientnet_lite0"}],
                       neurons=[{"id": "x", "kind": "class", "layer": "classifier", "index": 1}], visualization=vis)


def test_class_references_from_a_list_count_distinct_photographs_and_warn(lite0, tmp_path):
    from audit.assets import BUILTIN_SAMPLES, skimage_data_dir

    n = NeuronConfig(id="cat", kind="class", layer="classifier", index=285,
                     references=["builtin:samples/chelsea", "builtin:samples/coffee", "builtin:samples/chelsea"])
    refs = references_for(n, lite0, None, None, size=32, recipe=ReferenceRecipe("crops", 6), seed=0)
    assert refs.images.shape == (6, 3, 32, 32) and refs.n_photographs == 2 and not refs.use_relevance
    few_photographs = [w for w in refs.warnings if "distinct photograph" in w]
    assert len(few_photographs) == 1 and "2 distinct photograph(s)" in few_photographs[0] and "'cat'" in few_photographs[0]
    assert "2 distinct photograph(s)" in refs.description

    folder = tmp_path / "class"
    folder.mkdir()
    names = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right"]
    for name in names:
        shutil.copy(skimage_data_dir() / BUILTIN_SAMPLES[name], folder / BUILTIN_SAMPLES[name])
    shutil.copy(skimage_data_dir() / BUILTIN_SAMPLES["coffee"], folder / "copy-of-coffee.png")   # not a new photograph
    n2 = NeuronConfig(id="many", kind="class", layer="classifier", index=1, references=str(folder))
    full = references_for(n2, lite0, None, None, size=32, recipe=ReferenceRecipe("full", 50), seed=0)
    assert full.n_photographs == len(names) >= FEW_PHOTOGRAPHS
    # class 1 (goldfish) is in none of these photographs: the model recognises none of the references
    assert full.warnings == [f"neuron 'many': the model classifies 0 of its {len(names)} references as class 1; "
                             "the visualization matches their features and is then seldom recognised as the class "
                             "either; give photographs in which the model recognises the class"]
    assert full.images.shape == (len(names), 3, 32, 32)
    few = references_for(n2, lite0, None, None, size=32, recipe=ReferenceRecipe("full", 3), seed=0)
    assert few.images.shape[0] == 3 and few.n_photographs == 3 and few.warnings


def test_no_warning_when_the_model_recognises_the_references_as_the_class(lite0):
    n = NeuronConfig(id="coffee", kind="class", layer="classifier", index=967, references="builtin:samples/coffee")
    refs = references_for(n, lite0, None, None, size=224, recipe=ReferenceRecipe("crops", 8, candidates=4), seed=0)
    assert [w for w in refs.warnings if "distinct photograph" not in w] == []


def test_recognised_crops_are_the_candidates_the_model_gives_the_class_most(lite0, sample_images):
    """The kept references are exactly the top-n candidates by the model's logit of the class, best
    first; they are recognised as the class more than the crops they were drawn from; and a version
    that changes only another class's head row selects the same references."""
    import copy

    from audit.references import class_references, full_image_references, recognised_crops

    photos = [sample_images["coffee"]]
    lite0.train()
    try:
        kept, predicted = recognised_crops(lite0, photos, 967, size=96, n=6, candidates=4, seed=3)
        assert lite0.training                                                 # the caller's mode is kept
    finally:
        lite0.eval()
    pool = torch.cat([full_image_references(photos, 96, 24, 3), class_references(photos, 96, 24, 3)])
    with torch.no_grad():
        l_pool = lite0(pool)[:, 967]
        l_kept = lite0(kept)[:, 967]
    torch.testing.assert_close(l_kept, l_pool.sort(descending=True).values[:6])
    assert kept.shape == (6, 3, 96, 96) and l_kept.mean() > l_pool.mean()
    with torch.no_grad():
        assert torch.equal(predicted, lite0(kept).argmax(1))                 # the top-1 class of each kept crop
    other_row = copy.deepcopy(lite0)
    with torch.no_grad():
        other_row.classifier.weight[285].mul_(3.0)
    torch.testing.assert_close(recognised_crops(other_row, photos, 967, size=96, n=6, candidates=4, seed=3).images,
                               kept, rtol=0, atol=0)
    n = NeuronConfig(id="coffee", kind="class", layer="classifier", index=967, references="builtin:samples/coffee")
    refs = references_for(n, lite0, None, None, size=96, recipe=ReferenceRecipe("crops", 6, candidates=4), seed=3)
    torch.testing.assert_close(refs.images, kept)
    assert "best-recognised of 24 crops" in refs.description


def test_whole_photograph_form_is_the_authors_resize_and_centre_crop(sample_images):
    from audit.models import image_to_tensor
    from audit.references import full_image_references

    out = full_image_references([sample_images["coffee"]], size=48, n=50)
    expected = image_to_tensor(sample_images["coffee"], 48, crop_pct=224 / 256)    # Resize(256), CenterCrop(224)
    torch.testing.assert_close(out[0], expected)


def test_inner_whole_image_references_are_the_top_probe_images(lite0, probe64):
    from audit.references import channel_maps, inner_full_references

    peaks = channel_maps(lite0, "blocks.3", 11, probe64).flatten(1).amax(1)
    top = torch.argsort(peaks, descending=True)[:3]
    out = inner_full_references(lite0, "blocks.3", 11, probe64, k=3, size=64)
    torch.testing.assert_close(out, probe64[top])
    n = NeuronConfig(id="b3", kind="inner", layer="blocks.3", index=11)
    groups = [f"photo{i // 4}" for i in range(len(probe64))]
    refs = references_for(n, lite0, probe64, peaks.numpy(), size=64, recipe=ReferenceRecipe("full", 3), seed=0,
                          probe_groups=groups)
    torch.testing.assert_close(refs.images, probe64[top])
    assert refs.use_relevance and refs.n_photographs == len({groups[int(i)] for i in top})


def test_config_presets_and_references_keys():
    assert reference_recipe(_model_cfg(), "class") == ReferenceRecipe("crops", 16, candidates=4)
    assert reference_recipe(_model_cfg(preset="paper"), "class") == ReferenceRecipe("full", 50)
    assert reference_recipe(_model_cfg(preset="paper", n_references=8), "inner") == ReferenceRecipe("full", 8)
    assert reference_recipe(_model_cfg(reference_form="crops"), "inner").form == "crops"
    from audit.pipeline import vital_settings

    s = vital_settings(_model_cfg(preset="paper", steps=30))
    assert s.preset == "paper" and s.steps == 30 and s.lr == 1.0

    def cfg_with(**neuron):
        return {"models": [{"name": "m", "architecture": "efficientnet_lite0",
                            "versions": [{"version": "1", "source": "builtin:efficientnet_lite0"}],
                            "neurons": [{"id": "x", "kind": "class", "layer": "classifier", "index": 1, **neuron}]}]}

    ok = parse_config(cfg_with(references=["builtin:samples/chelsea", "./cats"]))
    assert ok.models[0].neurons[0].references_text == "builtin:samples/chelsea, ./cats"
    for bad, key in ((dict(references=[]), "models[0].neurons[0].references"),
                     (dict(references=["top-k", "./x"]), "models[0].neurons[0].references")):
        with pytest.raises(AuditInputError, match=key.replace("[", r"\[").replace("]", r"\]")):
            parse_config(cfg_with(**bad))
    bad = cfg_with()
    bad["models"][0]["visualization"] = {"preset": "quick"}
    with pytest.raises(AuditInputError, match=r"models\[0\]\.visualization\.preset"):
        parse_config(bad)


def test_rendered_class_image_is_recognised_by_its_model(lite0, sample_images):
    """Low resolution, few steps, a class Lite0 recognises (chelsea: Egyptian cat): the image's class
    is in the model's top 5. Tolerant, but a render that ignores its references fails it."""
    from audit.quality import predict_logits
    from audit.records import NeuronTarget
    from audit.references import class_references
    from audit.vital import VitalRequest, VitalSettings, render_vital

    refs = class_references([sample_images["chelsea"]], 96, 8, seed=0)
    s = VitalSettings.for_model(lite0, resolution=96, steps=60)
    (vis,) = render_vital(lite0, [VitalRequest(NeuronTarget("cat", "class", "classifier", 285), refs, False)], s, seed=0)
    logits = predict_logits(lite0, [vis.image], 96)[0]
    rank = int((logits > logits[285]).sum())
    assert rank < 5, f"Egyptian cat is ranked {rank + 1} on its own visualization"
    noise = predict_logits(lite0, [np.full_like(vis.image, 128)], 96)[0]
    assert int((noise > noise[285]).sum()) >= 5                 # the check can fail: a blank image is not a cat
