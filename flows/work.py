"""The units of work of an audit, as plain functions of (config path, model, version):
serialisable arguments, so that Prefect can run them in-process or on Dask workers.
Each neuron's results are stored in their own transaction; one broken neuron is
recorded and never stops the others.

A stored result is reused only when its artifacts are intact (the hash in each file's name):
a deleted or corrupt image, mask, activation file or thumbnail is computed again and rewritten."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from audit.config import check_neurons_against_model
from audit.pipeline import (class_layer_ok, neuron_target, reference_recipe, references_for,
                            visualization_content_key)

from . import runtime
from .logs import stage
from .termination import raise_if_stop_requested
from .unchanged import comparison_pairs  # noqa: F401  (re-exported: flows used to import it from here)

log = logging.getLogger("neuron_audit.audit")

# What computing one neuron (or one version, or one comparison) can fail with and still leave the others
# to finish: torch runtime errors (out of memory, shapes), bad values met late (AuditInputError is a
# ValueError), numerical errors, I/O (reference images, registry downloads). TypeError, AttributeError,
# KeyError and the like are bugs: they stop the audit and surface as internal errors (exit 4).
AUDIT_FAULTS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, IndexError, ArithmeticError, OSError)


@dataclass
class VersionOutcome:
    model: str
    version: str
    weights_sha256: str = ""
    stats_computed: list[str] = field(default_factory=list)
    stats_cached: list[str] = field(default_factory=list)
    viz_rendered: list[str] = field(default_factory=list)
    viz_reused: list[str] = field(default_factory=list)
    neuron_errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def probe_thumbnails(store, probe, size: int = 96) -> list[str]:
    """Small PNGs of the probe images (content-addressed, so written once), for the
    dashboard's top-activating examples."""
    from PIL import Image

    from audit.models import to_uint8_image

    out = []
    for x in probe.images:
        img = Image.fromarray(to_uint8_image(x))
        if img.width > size:
            img = img.resize((size, size), Image.BICUBIC)
        out.append(store.artifacts.put_image(np.asarray(img)))
    return out


def valid_neurons(cfg_path: str, model_name: str, version: str, outcome: VersionOutcome):
    cfg = runtime.config(cfg_path)
    mcfg = cfg.model(model_name)
    loaded = runtime.load_version(cfg_path, model_name, version)
    problems = check_neurons_against_model(mcfg, loaded.model)
    for n in mcfg.neurons:
        msg = problems.get(n.id) or class_layer_ok(loaded.model, n)
        if msg:
            outcome.neuron_errors[n.id] = msg
    return [n for n in mcfg.neurons if n.id not in outcome.neuron_errors]


def register_version(cfg_path: str, model_name: str, version: str) -> str:
    with stage("register", f"{model_name} v{version}", log) as st:
        loaded = runtime.load_version(cfg_path, model_name, version)
        runtime.store(cfg_path).upsert_model_version(model_name, version, loaded.source, loaded.weights_sha256)
        st.count(weights=loaded.weights_sha256[:12])
    return loaded.weights_sha256


def record_probe_set(store, mcfg, probe) -> None:
    """The probe set's row (spec, size, names, thumbnails), written when absent or when a thumbnail is lost."""
    stored = store.probe_set_meta(probe.sha256)
    thumbs = (stored or {}).get("thumbnails") or []
    if not (stored and len(thumbs) == len(probe.names) and all(store.artifacts.intact(t) for t in thumbs)):
        store.upsert_probe_set(probe.sha256, mcfg.probe_set, len(probe.names),
                               {"size": int(probe.images.shape[-1]), "crops_per_image": mcfg.probe.crops_per_image,
                                "names": probe.names, "skipped": probe.skipped,
                                "thumbnails": probe_thumbnails(store, probe)})


def statistics_key(loaded: runtime.LoadedVersion, n, probe) -> str:
    """What a neuron's statistics on `probe` are produced by (`audit.contentkeys.statistics_content_key`): the
    loaded model's content key (weights, architecture, model_args), the neuron's definition, the probe's content
    and the statistics version. The version label is not part of it."""
    from audit.contentkeys import statistics_content_key

    return statistics_content_key(loaded.model_key, neuron_target(n), probe.sha256)


def stored_probe_values(store, model_name: str, version: str, n, loaded: runtime.LoadedVersion,
                        probe) -> np.ndarray | None:
    """A neuron's per-image values on the probe set (spatial max; class: logit) as stored under its statistics
    key; None when never computed, stale (made by something else behind the same labels) or the values file
    is gone or corrupt."""
    stored = store.load_stats(model_name, version, n.id, probe.sha256, statistics_key(loaded, n, probe))
    values = stored[1].get("max") if stored else None
    return values if values is not None and len(values) == len(probe.names) else None


def compute_statistics(store, mcfg, version: str, neurons: list, loaded: runtime.LoadedVersion,
                       probe, outcome: VersionOutcome) -> dict[str, np.ndarray]:
    """Compute and store the statistics of `neurons` (one pass over the probe set per layer not yet in the
    activation cache). A neuron that fails is named in `outcome.neuron_errors` and left out; the others'
    per-image values are returned by neuron id. The caller has recorded the probe set (`record_probe_set`)."""
    from audit.stats import neuron_activations, summarize

    model_name = mcfg.name
    acts = neuron_activations(loaded.model, probe, [neuron_target(n) for n in neurons], weights_key=loaded.model_key)
    out = {}
    for n in neurons:
        try:
            a = acts[n.id]
            store.save_stats(model_name, version, n.id, probe.sha256, summarize(n.id, a),
                             {"max": a.max, "mean": a.mean}, content_key=statistics_key(loaded, n, probe))
            outcome.stats_computed.append(n.id)
            out[n.id] = a.max
        except AUDIT_FAULTS as exc:  # one neuron never stops the others
            raise_if_stop_requested(exc)
            outcome.neuron_errors[n.id] = f"statistics: {exc.__class__.__name__}: {exc}"
    return out


def probe_values(store, mcfg, version: str, n, loaded: runtime.LoadedVersion, probe,
                 outcome: VersionOutcome) -> np.ndarray | None:
    """A neuron's per-image values for its references: the stored ones under its statistics key, else computed
    (and stored) now. None only when computing failed, and then `outcome.neuron_errors` names the problem:
    missing statistics are never replaced by a default."""
    values = stored_probe_values(store, mcfg.name, version, n, loaded, probe)
    if values is None:
        record_probe_set(store, mcfg, probe)
        values = compute_statistics(store, mcfg, version, [n], loaded, probe, outcome).get(n.id)
    return values


def probe_statistics(cfg_path: str, model_name: str, version: str, outcome: VersionOutcome) -> VersionOutcome:
    with stage("probe statistics", f"{model_name} v{version}", log) as st:
        _probe_statistics(cfg_path, model_name, version, outcome)
        st.count(computed=len(outcome.stats_computed), reused=len(outcome.stats_cached),
                 **({"not audited": len(outcome.neuron_errors)} if outcome.neuron_errors else {}))
    return outcome


def _probe_statistics(cfg_path: str, model_name: str, version: str, outcome: VersionOutcome) -> VersionOutcome:
    """Statistics of the registered neurons on the probe set: reused where stored under the same statistics key
    (`statistics_key`), computed and stored otherwise (a changed index, checkpoint or model_args behind the same
    version label included)."""
    cfg = runtime.config(cfg_path)
    mcfg = cfg.model(model_name)
    store = runtime.store(cfg_path)
    loaded = runtime.load_version(cfg_path, model_name, version)
    probe = runtime.probe_set(cfg, mcfg, loaded.model)
    record_probe_set(store, mcfg, probe)
    todo = []
    for n in valid_neurons(cfg_path, model_name, version, outcome):
        if stored_probe_values(store, model_name, version, n, loaded, probe) is None:
            todo.append(n)
        else:
            outcome.stats_cached.append(n.id)
    if todo:
        compute_statistics(store, mcfg, version, todo, loaded, probe, outcome)
    return outcome


def visualization_settings(cfg_path: str, model_name: str, model=None):
    """The VITAL settings of a model's config (preset, family values, config keys); resolved
    against `model` when given: exactly what the render and the content key read."""
    from audit.pipeline import vital_settings

    settings = vital_settings(runtime.config(cfg_path).model(model_name))
    return settings.resolved(model) if model is not None else settings


def render_visualizations(cfg_path: str, model_name: str, version: str, run_id: int | None,
                          outcome: VersionOutcome, neuron_ids: list[str] | None = None) -> VersionOutcome:
    """VITAL images of the registered neurons (or of `neuron_ids` only), batched per seed; reuses any stored
    visualization with the same content key (what the render reads: the parameters up to its last read layer,
    references, resolved settings, seed; `audit.contentkeys`)."""
    mcfg = runtime.config(cfg_path).model(model_name)
    n_neurons = len(neuron_ids) if neuron_ids is not None else len(mcfg.neurons)
    before = len(outcome.viz_rendered), len(outcome.viz_reused), len(outcome.neuron_errors)
    with stage("render", f"{n_neurons * len(mcfg.visualization.seeds)} visualizations of {model_name} v{version}",
               log) as st:
        _render_visualizations(cfg_path, model_name, version, run_id, outcome, neuron_ids)
        st.count(**{"re-rendered": len(outcome.viz_rendered) - before[0], "reused": len(outcome.viz_reused) - before[1]},
                 **({"not audited": len(outcome.neuron_errors) - before[2]}
                    if len(outcome.neuron_errors) > before[2] else {}))
    return outcome


def _render_visualizations(cfg_path: str, model_name: str, version: str, run_id: int | None,
                           outcome: VersionOutcome, neuron_ids: list[str] | None = None) -> VersionOutcome:
    from audit.vital import VitalRequest, render_vital

    cfg = runtime.config(cfg_path)
    mcfg = cfg.model(model_name)
    store = runtime.store(cfg_path)
    loaded = runtime.load_version(cfg_path, model_name, version)
    model = loaded.model
    probe = runtime.probe_set(cfg, mcfg, model)
    settings = visualization_settings(cfg_path, model_name, model)
    wanted = None if neuron_ids is None else set(neuron_ids)
    for seed in mcfg.visualization.seeds:
        requests, keys, pending = [], [], []
        for n in valid_neurons(cfg_path, model_name, version, outcome):
            if wanted is not None and n.id not in wanted:
                continue
            try:
                values = probe_values(store, mcfg, version, n, loaded, probe, outcome)
                if values is None:          # its statistics failed: outcome.neuron_errors names the problem
                    continue
                refs = references_for(n, model, probe.images, values, size=settings.resolution,
                                      recipe=reference_recipe(mcfg, n.kind), seed=seed, base_dir=cfg.base_dir,
                                      probe_groups=probe.groups)
                for warning in refs.warnings:
                    log.warning(warning)
                key = visualization_content_key(model, n, refs.images, settings, seed)
                existing = store.find_visualization(model_name, n.id, key)
                repair_id = None
                if existing is not None:
                    if store.artifacts.intact(existing["image_path"]) and (
                            not existing["mask_path"] or store.artifacts.intact(existing["mask_path"])):
                        store.link_visualization(model_name, version, n.id, existing["id"])
                        outcome.viz_reused.append(f"{n.id}#{seed}")
                        continue
                    repair_id = existing["id"]          # its image or mask is missing or corrupt: render again
                requests.append(VitalRequest(target=neuron_target(n), references=refs.images,
                                             use_relevance=refs.use_relevance))
                keys.append((n, key, refs, repair_id))
            except AUDIT_FAULTS as exc:
                raise_if_stop_requested(exc)
                outcome.neuron_errors[n.id] = f"references: {exc.__class__.__name__}: {exc}"
        if not requests:
            continue
        try:
            vizs = render_vital(model, requests, settings, seed=seed)
            pending = list(zip(keys, vizs))
        except AUDIT_FAULTS as exc:  # isolate the broken neuron: render the batch one by one
            raise_if_stop_requested(exc)
            log.warning("batched render failed (%s); rendering neurons one at a time", exc)
            for entry, req in zip(keys, requests):
                try:
                    pending.append((entry, render_vital(model, [req], settings, seed=seed)[0]))
                except AUDIT_FAULTS as one_exc:
                    raise_if_stop_requested(one_exc)
                    outcome.neuron_errors[entry[0].id] = f"visualization: {one_exc.__class__.__name__}: {one_exc}"
        for (n, key, refs, repair_id), viz in pending:
            viz.settings = {**viz.settings, "references": refs.description, "n_photographs": refs.n_photographs,
                            "reference_warnings": refs.warnings}
            if repair_id is not None:
                store.repair_visualization(repair_id, viz)
                store.link_visualization(model_name, version, n.id, repair_id)
            else:
                store.save_visualization(model_name, version, n.id, key, viz, run_id)
            outcome.viz_rendered.append(f"{n.id}#{seed}")
    return outcome


def stored_visualizations(store, model_name: str, neuron_id: str, versions: list[str]) -> dict[str, dict[int, np.ndarray]]:
    """The stored VITAL images of one neuron in each of `versions`: version -> seed -> image (the
    newest per seed), from one read of the neuron's history."""
    from PIL import Image

    history = store.neuron_history(model_name, neuron_id) or {}
    out: dict[str, dict[int, np.ndarray]] = {str(v): {} for v in versions}
    for v in history.get("versions", []):
        if str(v["version"]) in out:
            by_seed = {int(z["seed"]): z for z in v["visualizations"]      # ordered by seed, then id
                       if z.get("method", "vital") == "vital" and z.get("image_path")}
            out[str(v["version"])] = {seed: np.asarray(Image.open(store.artifacts.path(z["image_path"])).convert("RGB"))
                                      for seed, z in sorted(by_seed.items())}
    return out


def compare_pair(cfg_path: str, model_name: str, baseline: str, candidate: str, run_id: int | None,
                 with_visuals: bool = True) -> dict:
    """Drift of every registered neuron from `baseline` to `candidate`; stores the results
    and the report, returns the report (docs/compare-report.md)."""
    with stage("compare", f"{model_name} v{baseline} -> v{candidate}", log) as st:
        report = _compare_pair(cfg_path, model_name, baseline, candidate, run_id, with_visuals)
        verdicts = [n["verdict"] for n in report["neurons"]]
        st.count(neurons=len(verdicts), **{v: verdicts.count(v) for v in ("FAIL", "WARN", "PASS") if v in verdicts})
        null = report.get("benign_null") or {}
        if null:
            seconds = null.get("build_seconds") or 0
            st.count(null=f"built in {seconds:.1f} s" if seconds else "reused")
    return report


def _compare_pair(cfg_path: str, model_name: str, baseline: str, candidate: str, run_id: int | None,
                  with_visuals: bool = True) -> dict:
    from audit.drift import compare_versions, visual_features
    from audit.report import build_report
    from audit.stats import neuron_activations
    from audit.probe import ProbeSet
    from audit.models import preprocess
    from PIL import Image

    cfg = runtime.config(cfg_path)
    mcfg = cfg.model(model_name)
    store = runtime.store(cfg_path)
    a = runtime.load_version(cfg_path, model_name, baseline)
    b = runtime.load_version(cfg_path, model_name, candidate)
    probe = runtime.probe_set(cfg, mcfg, a.model)
    errors_a, errors_b = VersionOutcome(model_name, baseline), VersionOutcome(model_name, candidate)
    neurons_a = {n.id for n in valid_neurons(cfg_path, model_name, baseline, errors_a)}
    neurons = [n for n in valid_neurons(cfg_path, model_name, candidate, errors_b) if n.id in neurons_a]
    targets = [neuron_target(n) for n in neurons]
    feats_a = feats_b = viz_acts = None
    paired: set[str] = set()
    if with_visuals:
        feature_model = _feature_model()
        size = runtime.probe_size(mcfg, a.model)
        feats_a, feats_b, viz_acts = {}, {}, {}
        for n in neurons:
            stored = stored_visualizations(store, model_name, n.id, [baseline, candidate])
            by_seed_a, by_seed_b = stored[str(baseline)], stored[str(candidate)]
            if not by_seed_a or not by_seed_b:
                continue
            common = sorted(set(by_seed_a) & set(by_seed_b))
            if len(common) >= 2:            # same seeds in both versions: compare image with image
                ia, ib = [by_seed_a[s] for s in common], [by_seed_b[s] for s in common]
                paired.add(n.id)
            else:
                ia, ib = list(by_seed_a.values()), list(by_seed_b.values())
            feats_a[n.id] = visual_features(ia, feature_model)
            feats_b[n.id] = visual_features(ib, feature_model)
            xa = preprocess([Image.fromarray(i) for i in ia[:1]], size)
            xb = preprocess([Image.fromarray(i) for i in ib[:1]], size)
            vp = ProbeSet(images=torch.cat([xa, xb]), names=["viz_a", "viz_b"], sha256="viz", skipped={})
            t = [neuron_target(n)]
            on_a = neuron_activations(a.model, vp, t, use_cache=False)[n.id].max
            on_b = neuron_activations(b.model, vp, t, use_cache=False)[n.id].max
            # (A's image under A, A's image under B, B's image under B, B's image under A)
            viz_acts[n.id] = (float(on_a[0]), float(on_b[0]), float(on_b[1]), float(on_a[1]))
    # The baseline's benign null is kept next to the probe activations, keyed by the baseline's content key
    # (weights, architecture, model_args) and the probe set.
    null_dir = cfg.resolve_path(cfg.store.artifacts) / "cache" / "nulls"
    class_names = {n.index: n.label or n.id for n in neurons if n.kind == "class"}
    results = compare_versions(a.model, b.model, probe, targets, mcfg.thresholds,
                               visual_features_a=feats_a, visual_features_b=feats_b, viz_acts=viz_acts,
                               probe_cache_key=(a.model_key, b.model_key), visual_paired=paired,
                               null_cache_dir=null_dir, class_names=class_names)
    report = build_report(model_name, baseline, candidate, probe.sha256, results)
    report["errors"] = {**errors_a.neuron_errors, **errors_b.neuron_errors}
    drift_ids = {}
    for r in results:     # the typed evidence is in the saved report (store.load_report), for the neuron page
        drift_ids[r.neuron_id] = store.save_drift(model_name, baseline, candidate, probe.sha256, r, run_id)
    report["report_path"] = str(store.save_report(model_name, baseline, candidate, report))
    report["drift_ids"] = drift_ids
    return report


@runtime.functools.lru_cache(maxsize=1)
def _feature_model():
    from sources import load_model

    return load_model("efficientnet_lite0", "builtin:efficientnet_lite0", device=runtime.device())
