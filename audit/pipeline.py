"""Pure-library steps of one audit, wrapped by the Prefect flows: which neurons to
render, with which references and settings, and the content keys that make every
result reusable when nothing upstream of it changed (`audit.contentkeys` decides what
a render reads; this module applies it to configured neurons)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import ModelConfig, NeuronConfig
from .contentkeys import content_key, forward_trace, read_state_sha256, tensor_sha256
from .presets import FEW_PHOTOGRAPHS, ReferenceRecipe, preset
from .records import NeuronTarget
from .taps import output_layer_name

__all__ = ["TOPK_REFERENCES", "neuron_target", "uses_relevance", "vital_settings", "reference_recipe",
           "reference_specs", "upstream_weights_sha256", "tensor_sha256", "visualization_content_key",
           "NeuronReferences", "references_for", "class_layer_ok"]

TOPK_REFERENCES = "top-k"


def neuron_target(n: NeuronConfig) -> NeuronTarget:
    return NeuronTarget(n.id, n.kind, n.activation_layer, n.index)


def reference_specs(n: NeuronConfig) -> list[str]:
    """The photograph specs (folders, files, builtin:samples/NAME) of a paper-form class neuron; [] otherwise."""
    refs = n.references
    if refs is None or refs == TOPK_REFERENCES:
        return []
    return [refs] if isinstance(refs, str) else list(refs)


def uses_relevance(n: NeuronConfig) -> bool:
    """Inner neurons and data-driven class neurons weight the taps by relevance; the
    paper's class form (photographs as references) does not."""
    return n.kind in ("inner", "head") or not reference_specs(n)


def vital_settings(model_cfg: ModelConfig):
    """The VitalSettings of a model's config: its preset, the architecture's family values,
    then the keys the config sets. Resolve them against the model (`.resolved(model)`) before use."""
    from .vital import VitalSettings

    v = model_cfg.visualization
    overrides = {k: getattr(v, k) for k in ("resolution", "steps", "lr", "taps", "tap_weights", "class_weight",
                                            "inner_activation_weight")
                 if getattr(v, k) is not None}
    return VitalSettings.for_model(model_cfg.architecture, preset=v.preset, **overrides)


def reference_recipe(model_cfg: ModelConfig, kind: str) -> ReferenceRecipe:
    """How the references of a neuron of `kind` are built: the preset's recipe, with the config's
    `n_references` and `reference_form` when set."""
    v = model_cfg.visualization
    base = preset(v.preset).inner_references if kind in ("inner", "head") else preset(v.preset).class_references
    return ReferenceRecipe(form=v.reference_form or base.form, count=v.n_references or base.count,
                           candidates=base.candidates)


def upstream_weights_sha256(model: nn.Module, layers: list[str]) -> str:
    """Hash of the parameters and buffers the given layers' outputs can depend on
    (`audit.contentkeys.read_state_sha256`). A head-only fine-tune leaves it unchanged for
    taps below the head."""
    return read_state_sha256(model, layers, forward_trace(model))


def visualization_content_key(model: nn.Module, n: NeuronConfig, references: torch.Tensor, settings,
                              seed: int, method: str = "vital") -> str:
    """Content key of one visualization of neuron `n` (`audit.contentkeys.content_key`), from the
    resolved settings the render will use."""
    from .vital import resolve_target_layer

    resolved = settings.resolved(model)
    return content_key(model, resolve_target_layer(model, neuron_target(n)), n.index, uses_relevance(n), references,
                       resolved.model_dump(mode="json"), seed, method)


@dataclass
class NeuronReferences:
    images: torch.Tensor          # normalized [R, 3, S, S]
    description: str              # what they are, for the record and the dashboard
    use_relevance: bool
    n_photographs: int = 0        # distinct photographs the images come from
    warnings: list[str] = field(default_factory=list)


# Below this share of its references recognised as the class by the audited model, a class neuron's
# visualization (which matches their features) is seldom recognised either: Lite1's and Lite0's classes
# whose selected references fell under it (a fundus image, a deep field) are the ones their renders missed.
RECOGNISED_REFERENCES = 0.5


def _unrecognised_references_warning(n: NeuronConfig, predicted: torch.Tensor) -> list[str]:
    """A warning when the audited model classifies fewer than RECOGNISED_REFERENCES of a class neuron's
    references as its class (`predicted`: its top-1 class of each): the visualization describes those
    images, not what the model calls the class."""
    recognised = int((predicted == n.index).sum())
    if recognised >= RECOGNISED_REFERENCES * predicted.shape[0]:
        return []
    return [f"neuron {n.id!r}: the model classifies {recognised} of its {predicted.shape[0]} references as class "
            f"{n.index}; the visualization matches their features and is then seldom recognised as the class "
            f"either; give photographs in which the model recognises the class"]


def _few_photographs_warning(n: NeuronConfig, count: int) -> list[str]:
    if count >= FEW_PHOTOGRAPHS:
        return []
    return [f"neuron {n.id!r}: its references come from {count} distinct photograph(s), fewer than "
            f"{FEW_PHOTOGRAPHS}: the visualization then describes those photographs more than the class; "
            f"list more photographs or folders under `references`"]


def references_for(n: NeuronConfig, model: nn.Module, probe_images: torch.Tensor, probe_values: np.ndarray | None,
                   size: int, recipe: ReferenceRecipe, seed: int, base_dir: Path | None = None,
                   probe_groups: list[str] | None = None) -> NeuronReferences:
    """Reference images of one neuron for VITAL.

    - class neuron, `references:` photographs (a folder, a file, builtin:samples/NAME, or a list of
      them): the paper's form; recipe "full" uses each photograph whole (resized, centre-cropped),
      recipe "crops" random resized crops of them (with `candidates` > 1: those the model recognises
      best as the class, `audit.references.recognised_crops`). Warns under FEW_PHOTOGRAPHS distinct photographs,
      and when the model recognises fewer than RECOGNISED_REFERENCES of the references as the class;
    - class neuron, `references: top-k` (or none): the neuron's top-activating probe images, per version;
    - inner neuron: recipe "full" (the authors' form) the probe images where the channel peaks highest,
      whole; recipe "crops" receptive-field patches around the peak, resized to `size`.
    `probe_groups` (the source photograph of each probe image) lets the description count photographs.
    `probe_values`: the neuron's stored per-image values (spatial max; class: logit), taken as they are (an
    all-zero channel included). Inner neurons without them compute their peaks from the model; a `top-k` class
    neuron without them is an error: there is no default order of the probe images to fall back on.
    """
    from . import references as refs

    def photographs_of(selected: np.ndarray | None) -> int:
        if probe_groups is None or selected is None:
            return 0
        return len({probe_groups[int(i)] for i in selected})

    if n.kind in ("inner", "head"):
        peaks = probe_values
        if recipe.form == "crops":
            imgs = refs.inner_patch_references(model, n.activation_layer, n.index, probe_images, k=recipe.count, size=size,
                                               peak_values=peaks)
            what = "receptive-field patches"
        else:
            imgs = refs.inner_full_references(model, n.activation_layer, n.index, probe_images, k=recipe.count, size=size,
                                              peak_values=peaks)
            what = "whole probe images"
        order = refs.top_indices(peaks, recipe.count) if peaks is not None else None
        k = photographs_of(order)
        return NeuronReferences(imgs, f"top-{imgs.shape[0]} {what} of {n.activation_layer}[{n.index}]"
                                + (f" from {k} photographs" if k else ""), True, k)
    specs = reference_specs(n)
    if not specs:
        if probe_values is None:
            raise ValueError(f"neuron {n.id!r}: its top-k references need its statistics on the probe set, "
                             "and there are none")
        order = refs.top_indices(probe_values, recipe.count)
        imgs = refs.topk_image_references(probe_images, probe_values, k=recipe.count)
        if imgs.shape[-1] != size:
            imgs = torch.nn.functional.interpolate(imgs, size=(size, size), mode="bilinear", antialias=True,
                                                   align_corners=False)
        k = photographs_of(order)
        return NeuronReferences(imgs, f"top-{imgs.shape[0]} probe images of the logit"
                                + (f" from {k} photographs" if k else ""), True, k)
    photos = refs.load_photographs(specs, base_dir)
    predicted = None
    if recipe.form == "full":
        imgs = refs.full_image_references(photos, size=size, n=recipe.count, seed=seed)
        what = f"{imgs.shape[0]} whole photographs"
    elif recipe.candidates > 1:
        imgs, predicted = refs.recognised_crops(model, photos, n.index, size=size, n=recipe.count,
                                                candidates=recipe.candidates, seed=seed)
        what = f"{imgs.shape[0]} best-recognised of {recipe.count * recipe.candidates} crops and the whole photographs"
    else:
        imgs = refs.class_references(photos, size=size, n=recipe.count, seed=seed)
        what = f"{imgs.shape[0]} crops"
    used = min(len(photos), imgs.shape[0])
    if predicted is None:
        from .quality import predict_logits

        predicted = predict_logits(model, imgs, imgs.shape[-1]).argmax(1)
    return NeuronReferences(imgs, f"{what} of {used} distinct photograph(s) from {', '.join(specs)}", False, used,
                            _few_photographs_warning(n, used) + _unrecognised_references_warning(n, predicted))


def class_layer_ok(model: nn.Module, n: NeuronConfig) -> str | None:
    if n.kind == "class" and n.layer != output_layer_name(model):
        return (f"neuron {n.id!r} is a class neuron but layer {n.layer!r} is not the model's head "
                f"({output_layer_name(model)!r})")
    return None
