"""Quality of feature visualizations on Lite0: VITAL (default config) vs Fourier (Lucid), MACO and
DeepInversion, on the classes it was tuned on and on held-out classes.

Protocol (issue 13):

* classes: every class that Lite0 itself gives as top-1 for a built-in photograph (whole image,
  224 px); the photographs of a class are those it gives that class for. The benchmark computes
  the list. The four classes the defaults were tuned on (chelsea 285, coffee 967, rocket 657,
  camera 872) are reported apart from the held-out rest. Only ~12 built-in photographs exist:
  a class has one or two photographs, and its references and Fréchet reference crops are crops
  of those (the authors use 50 photographs per class);
* VITAL from the DEFAULT config (`audit.pipeline.vital_settings` of a config that sets nothing:
  the fast preset, its reference recipe), 3 seeds; Fourier 512 steps, MACO 256 steps (their
  usual budgets), DeepInversion 400 steps (`audit.deepinversion`: no references; the authors run
  2-3k on a GPU), same seeds;
* figures: self top-1 (Lite0 at 224), Lite1 (240) and Lite2 (260) top-1 / top-5 / p(class), the
  Fréchet distance per class to 32 random crops of the class photographs in Lite0's penultimate
  features (Ledoit-Wolf shrinkage; `audit.quality.frechet_distance`), seconds per neuron (wall
  time of a method's batched render over the batch size: inflated when the machine is shared),
  peak memory (each method in its own spawned process: RSS high-water growth on CPU,
  `max_memory_allocated` on CUDA);
* inner neurons (`--inner N`, default 9): N channels over blocks.2, blocks.4 and blocks.5 drawn with
  a fixed seed among the channels that fire on the probe set, scored with
  `audit.quality.inner_neuron_quality` (activation percentile among the probe images,
  specificity rank in the layer, feature distance to the top real patches);
* a "real crops" row: the same scores for the Fréchet reference crops, and a "real photographs" row:
  the whole photographs, as the classes were found. These are the ceiling a visualization that
  describes the photographs can be expected to reach: Lite1 and Lite2 do not give every held-out
  photograph Lite0's class, and a faithful visualization of a photograph that another model calls
  something else is not recognised by that model either. So Lite1/Lite2 top-1 is also reported on
  the "transferable" classes: those whose every photograph that model itself classifies top-1.

Targets: held-out self top-1 >= 0.99, Lite1/Lite2 top-1 >= 0.95 (on every held-out class, and on
the transferable ones), VITAL's Fréchet the lowest of the three methods on every class; the script
prints whether each holds.

    python benchmarks/fv_quality.py                                   # the full protocol (long)
    python benchmarks/fv_quality.py --seeds 1 --methods vital --inner 0 --classes tuned
    python benchmarks/fv_quality.py --resolution 96 --steps-scale 0.05 --seeds 1 --inner 3   # a smoke run

`--save-images DIR` writes DIR/<method>_<photo>_seed<S>.png (the first photograph names the class),
which `fv_figure.py` composes; `--reuse-images DIR` scores such images again without rendering
them (a long run can be split over several invocations).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TUNED_PHOTOS = {"chelsea": 285, "coffee": 967, "rocket": 657, "camera": 872}
METHODS = ("vital", "fourier", "maco", "deepinversion")
BASELINE_STEPS = {"fourier": 512, "maco": 256, "deepinversion": 400}
N_EVAL_CROPS = 32
EVAL_REFERENCE_SEED = 10_000        # the Fréchet reference crops differ from VITAL's own references
INNER_LAYERS = ("blocks.2", "blocks.4", "blocks.5")


# ----------------------------------------------------------------------------------------- classes


def photo_classes(model_name: str = "efficientnet_lite0") -> dict[int, list[str]]:
    """The model's top-1 class of each built-in photograph (whole image at its input size; Lite0: 224 px):
    class -> photographs."""
    import torch

    from audit.assets import builtin_sample_names
    from audit.models import model_input_size, preprocess
    from audit.quality import builtin_model

    net = builtin_model(model_name)
    size = model_input_size(net)
    out: dict[int, list[str]] = {}
    for name in builtin_sample_names():
        with torch.no_grad():
            top = int(net(preprocess([_photo(name)], size)).argmax(1))
        out.setdefault(top, []).append(name)
    return dict(sorted(out.items()))


@lru_cache(maxsize=None)
def _photo(name: str):
    from audit.assets import load_rgb_images, resolve_images

    return load_rgb_images(resolve_images(f"builtin:samples/{name}")).images[0]


def class_name(photos: list[str]) -> str:
    return photos[0]


# ------------------------------------------------------------------------------------------ scoring


def class_scores(images, labels, audited: str = "efficientnet_lite0") -> dict:
    """Self top-1 on the audited model (Lite0 unless told), top-1 / top-5 / p(class) on Lite1 and Lite2
    (each at its native size)."""
    from audit.models import model_input_size
    from audit.quality import builtin_model, class_probability, transfer_topk

    net = builtin_model(audited)
    row = {"self_top1": transfer_topk(net, images, labels, model_input_size(net), k=(1,))["top1"]}
    for short in ("lite1", "lite2"):
        net = builtin_model(f"efficientnet_{short}")
        tk = transfer_topk(net, images, labels, model_input_size(net), k=(1, 5))
        row[f"{short}_top1"], row[f"{short}_top5"] = tk["top1"], tk["top5"]
        row[f"{short}_p"] = class_probability(net, images, labels, model_input_size(net))
    return row


@lru_cache(maxsize=None)
def eval_crops(photos: tuple[str, ...] | str):
    """The Fréchet reference crops of a class: N_EVAL_CROPS random crops of its photographs at 224 px."""
    from audit.references import class_references

    photos = (photos,) if isinstance(photos, str) else photos
    return class_references([_photo(p) for p in photos], size=224, n=N_EVAL_CROPS, seed=EVAL_REFERENCE_SEED)


@lru_cache(maxsize=None)
def real_photographs(photos: tuple[str, ...] | str):
    """A class's whole photographs at 224 px, preprocessed as `photo_classes` found the classes."""
    from audit.models import preprocess

    photos = (photos,) if isinstance(photos, str) else photos
    return preprocess([_photo(p) for p in photos], 224)


def transferable(per_class: dict, classes: list[int], short: str) -> list[int]:
    """The classes whose every photograph `short` (lite1, lite2) itself classifies top-1."""
    return [c for c in classes if per_class[c]["real photographs"][f"{short}_top1"] >= 1.0]


@lru_cache(maxsize=None)
def _crop_features(photos: tuple[str, ...] | str):
    from audit.quality import builtin_model, penultimate_features

    return penultimate_features(builtin_model("efficientnet_lite0"), eval_crops(photos), 224)


def frechet_to_crops(images, photos) -> float:
    """Fréchet distance of the images to the class's reference crops in Lite0's penultimate features."""
    from audit.quality import builtin_model, frechet_distance, penultimate_features

    key = photos if isinstance(photos, str) else tuple(photos)
    return frechet_distance(penultimate_features(builtin_model("efficientnet_lite0"), images, 224), _crop_features(key))


def inner_targets(model, probe, n: int, seed: int = 0) -> list[tuple[str, int]]:
    """n channels over INNER_LAYERS, drawn with `seed` among each layer's channels that fire on the
    probe set (spatial max, max over images, above the layer's median)."""
    from audit.quality import channel_peaks

    rng = np.random.default_rng(seed)
    out = []
    for k, layer in enumerate(INNER_LAYERS):
        peaks, _ = channel_peaks(model, layer, 0, probe.images)
        strength = peaks.amax(0).numpy()
        live = np.flatnonzero(strength > np.median(strength))
        take = n // len(INNER_LAYERS) + (1 if k < n % len(INNER_LAYERS) else 0)
        out += [(layer, int(c)) for c in rng.choice(live, size=min(take, len(live)), replace=False)]
    return out


def score_inner(model, images: dict, targets, probe, seeds) -> dict:
    """Mean `inner_neuron_quality` over the targets (images keyed ((layer, index), seed))."""
    from audit.quality import inner_neuron_quality

    rows = [inner_neuron_quality(model, layer, idx, [images[((layer, idx), s)] for s in seeds], probe.images)
            for layer, idx in targets]
    keys = ("percentile", "specificity_rank", "specificity", "patch_distance", "patch_distance_ratio")
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


# ----------------------------------------------------------------------------------------- rendering


def _default_model_config(preset: str = "fast"):
    from audit.config import ModelConfig

    return ModelConfig(name="lite0", architecture="efficientnet_lite0",
                       versions=[{"version": "1", "source": "builtin:efficientnet_lite0"}],
                       neurons=[{"id": "x", "kind": "class", "layer": "classifier", "index": 0}],
                       visualization={"preset": preset})


def image_name(key) -> str:
    """File stem part of a class (its first photograph) or an inner target (layer-cINDEX)."""
    return f"{key[0]}-c{key[1]}" if isinstance(key, tuple) else str(key)


def load_saved(method: str, directory: Path | None, classes: dict[int, list[str]], seeds: list[int],
               inner: list[tuple[str, int]], inner_seeds: list[int]) -> dict:
    """Images a previous run saved (`--save-images`), keyed as `run_method` keys them, and its timings."""
    from PIL import Image

    if directory is None:
        return {"images": {}, "timing": {}}
    images = {}
    keys = [(c, s) for c in classes for s in seeds] + [(t, s) for t in inner for s in inner_seeds]
    for key, s in keys:
        name = class_name(classes[key]) if not isinstance(key, tuple) else image_name(key)
        path = directory / f"{method}_{name}_seed{s}.png"
        if path.is_file():
            images[(key, s)] = np.asarray(Image.open(path).convert("RGB"))
    timing_path = directory / f"{method}_timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    return {"images": images, "timing": timing}


def run_method(method: str, classes: dict[int, list[str]], seeds: list[int], resolution: int | None,
               steps_scale: float, threads: int, device: str | None, inner: list[tuple[str, int]],
               inner_seeds: list[int], saved: Path | None = None, preset: str = "fast") -> dict:
    """Render every class (and inner target) for every seed with one method in this process; a render
    job whose images `saved` (a `--save-images` folder of an earlier run) already holds is skipped."""
    import torch

    torch.set_num_threads(threads)
    from audit.config import NeuronConfig
    from sources import load_model
    from audit.pipeline import reference_recipe, references_for, vital_settings
    from audit.probe import build_probe_set
    from audit.records import NeuronTarget
    from audit.stats import neuron_activations

    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model("efficientnet_lite0", "builtin:efficientnet_lite0", device=dev)
    mcfg = _default_model_config(preset)
    settings = vital_settings(mcfg)
    settings = settings.model_copy(update={"steps": max(1, round(settings.steps * steps_scale)),
                                           **({"resolution": resolution} if resolution else {})}).resolved(model)
    size = settings.resolution
    steps = settings.steps if method == "vital" else max(1, round(BASELINE_STEPS[method] * steps_scale))
    neurons = {c: NeuronConfig(id=class_name(p), kind="class", layer="classifier", index=c,
                               references=[f"builtin:samples/{x}" for x in p]) for c, p in classes.items()}
    probe = build_probe_set("builtin:samples", size=size, crops_per_image=12) if inner or method == "maco" else None
    inner_values = {}
    if inner:
        acts = neuron_activations(model, probe, [NeuronTarget(f"{l}-c{i}", "inner", l, i) for l, i in inner],
                                  use_cache=False)
        inner_values = {(l, i): acts[f"{l}-c{i}"].max for l, i in inner}

    def class_refs(seed: int):
        return [references_for(n, model, None, None, size=size, recipe=reference_recipe(mcfg, "class"), seed=seed)
                for n in neurons.values()]

    refs = {s: class_refs(s) for s in seeds}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB
    images: dict = {}
    seconds: list[float] = []
    class_targets = [NeuronTarget(n.id, "class", "classifier", c) for c, n in neurons.items()]
    inner_t = [NeuronTarget(f"{l}-c{i}", "inner", l, i) for l, i in inner]
    jobs = [(s, class_targets, "class") for s in seeds] + ([(s, inner_t, "inner") for s in inner_seeds] if inner else [])
    inner_seconds: list[float] = []
    previous = load_saved(method, saved, classes, seeds, inner, inner_seeds)
    images.update(previous["images"])
    for kind, secs in (("class", seconds), ("inner", inner_seconds)):
        if previous["timing"].get(kind) is not None:
            secs.append(previous["timing"][kind])
    for seed, targets, kind in jobs:
        targets = [t for t in targets if ((t.index if kind == "class" else (t.layer, t.index)), seed) not in images]
        if not targets:
            continue
        t0 = time.perf_counter()
        if method == "vital":
            from audit.vital import VitalRequest, render_vital

            if kind == "class":
                by_index = dict(zip(neurons, refs[seed]))
                reqs = [VitalRequest(t, by_index[t.index].images, use_relevance=False) for t in targets]
            else:
                reqs = []
                for t in targets:
                    n = NeuronConfig(id=t.neuron_id, kind="inner", layer=t.layer, index=t.index)
                    r = references_for(n, model, probe.images, inner_values[(t.layer, t.index)], size=size,
                                       recipe=reference_recipe(mcfg, "inner"), seed=seed, probe_groups=probe.groups)
                    reqs.append(VitalRequest(t, r.images, use_relevance=True))
            out = render_vital(model, reqs, settings, seed=seed)
        elif method == "fourier":
            from audit.baselines import render_fourier

            out = render_fourier(model, targets, size=size, steps=steps, seed=seed)
        elif method == "maco":
            from audit.baselines import render_maco

            by_index = dict(zip(neurons, refs[seed]))
            magnitudes = [by_index[t.index].images for t in targets] if kind == "class" else probe.images
            out = render_maco(model, targets, magnitudes, size=size, steps=steps, seed=seed)
        elif method == "deepinversion":
            from audit.deepinversion import render_deepinversion

            out = render_deepinversion(model, targets, size=size, steps=steps, seed=seed)
        else:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        if dev.type == "cuda":
            torch.cuda.synchronize()
        (seconds if kind == "class" else inner_seconds).append((time.perf_counter() - t0) / len(targets))
        for t, v in zip(targets, out):
            key = t.index if kind == "class" else (t.layer, t.index)
            images[(key, seed)] = v.image
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"images": images, "seconds_per_neuron": float(np.mean(seconds)) if seconds else None,
            "inner_seconds_per_neuron": float(np.mean(inner_seconds)) if inner_seconds else None,
            "peak_bytes": int(peak), "device": str(dev), "steps": steps, "resolution": size,
            "settings": settings.model_dump(mode="json") if method == "vital" else None}


# ------------------------------------------------------------------------------------------- report


def evaluate(results: dict[str, dict], classes: dict[int, list[str]], seeds: list[int], inner, inner_seeds) -> dict:
    tuned = {c for c in classes if c in TUNED_PHOTOS.values()}
    splits = {"tuned": [c for c in classes if c in tuned], "held-out": [c for c in classes if c not in tuned]}
    table: dict = {"splits": {}, "per_class": {}, "inner": {}}
    for split, cs in splits.items():
        if not cs:
            continue
        rows = {}
        for method, res in results.items():
            imgs = [res["images"][(c, s)] for c in cs for s in seeds]
            row = class_scores(imgs, [c for c in cs for s in seeds])
            row["frechet"] = float(np.mean([frechet_to_crops([res["images"][(c, s)] for s in seeds], classes[c])
                                            for c in cs]))
            row["seconds_per_neuron"] = res["seconds_per_neuron"]
            row["peak_mib"] = res["peak_bytes"] / 2 ** 20
            rows[method] = row
        crops = [eval_crops(tuple(classes[c])) for c in cs]
        import torch

        real = class_scores(torch.cat(crops), [c for c, x in zip(cs, crops) for _ in range(x.shape[0])])
        rows["real crops"] = {**real, "frechet": None, "seconds_per_neuron": None, "peak_mib": None}
        photos = [real_photographs(tuple(classes[c])) for c in cs]
        real = class_scores(torch.cat(photos), [c for c, x in zip(cs, photos) for _ in range(x.shape[0])])
        rows["real photographs"] = {**real, "frechet": None, "seconds_per_neuron": None, "peak_mib": None}
        table["splits"][split] = rows
    for c in classes:
        entry = {"photos": classes[c], "split": "tuned" if c in tuned else "held-out"}
        for method, res in results.items():
            ci = [res["images"][(c, s)] for s in seeds]
            entry[method] = {**class_scores(ci, c), "frechet": frechet_to_crops(ci, classes[c])}
        entry["real crops"] = class_scores(eval_crops(tuple(classes[c])), c)
        entry["real photographs"] = class_scores(real_photographs(tuple(classes[c])), c)
        table["per_class"][c] = entry
    table["transferable"] = {}
    for split in table["splits"]:
        cs = [c for c, e in table["per_class"].items() if e["split"] == split]
        table["transferable"][split] = {}
        for short in ("lite1", "lite2"):
            ok = transferable(table["per_class"], cs, short)
            entry: dict = {"classes": ok}
            for m in results:
                entry[m] = float(np.mean([table["per_class"][c][m][f"{short}_top1"] for c in ok])) if ok else None
            table["transferable"][split][short] = entry
    if inner:
        from sources import load_model
        from audit.probe import build_probe_set

        model = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
        res0 = next(iter(results.values()))
        probe = build_probe_set("builtin:samples", size=res0["resolution"], crops_per_image=12)
        for method, res in results.items():
            table["inner"][method] = {**score_inner(model, res["images"], inner, probe, inner_seeds),
                                      "seconds_per_neuron": res["inner_seconds_per_neuron"]}
    return table


def _num(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def markdown(table: dict, classes: dict[int, list[str]], results: dict, args, inner) -> str:
    res0 = next(iter(results.values()))
    lines = [f"Lite0, {res0['resolution']} px, seeds {args.seed_list}, device {res0['device']}, "
             f"VITAL preset {getattr(args, 'preset', 'fast')}; steps: "
             + ", ".join(f"{m} {r['steps']}" for m, r in results.items()), ""]
    for split, rows in table["splits"].items():
        cs = [c for c, e in table["per_class"].items() if e["split"] == split]
        lines += [f"**{split}** classes: " + ", ".join(f"{c} ({'/'.join(classes[c])})" for c in cs), "",
                  "| method | self top-1 | Lite1 top-1 / top-5 | Lite2 top-1 / top-5 | p(class) Lite1 / Lite2 | "
                  "Fréchet | s / neuron | peak MiB |", "|---|---|---|---|---|---|---|---|"]
        for m, r in rows.items():
            lines.append(f"| {m} | {r['self_top1']:.2f} | {r['lite1_top1']:.2f} / {r['lite1_top5']:.2f} | "
                         f"{r['lite2_top1']:.2f} / {r['lite2_top5']:.2f} | {r['lite1_p']:.3f} / {r['lite2_p']:.3f} | "
                         f"{_num(r['frechet'], '.1f')} | {_num(r['seconds_per_neuron'], '.1f')} | "
                         f"{_num(r['peak_mib'], '.0f')} |")
        lines.append("")
    methods = list(results)
    lines += ["Per class: self top-1 / Lite1 top-1 / Lite2 top-1 / Fréchet (real crops and photographs: the ceiling)",
              "", "| class | split | " + " | ".join(methods) + " | real crops | real photographs |",
              "|---|---|" + "---|" * (len(methods) + 2)]
    for c, e in table["per_class"].items():
        cells = [f"{e[m]['self_top1']:.2f} / {e[m]['lite1_top1']:.2f} / {e[m]['lite2_top1']:.2f} / {e[m]['frechet']:.0f}"
                 for m in methods]
        rc, rp = e["real crops"], e["real photographs"]
        lines.append(f"| {c} {'/'.join(e['photos'])} | {e['split']} | " + " | ".join(cells) +
                     f" | {rc['self_top1']:.2f} / {rc['lite1_top1']:.2f} / {rc['lite2_top1']:.2f}"
                     f" | {rp['self_top1']:.2f} / {rp['lite1_top1']:.2f} / {rp['lite2_top1']:.2f} |")
    for split, per_model in table.get("transferable", {}).items():
        lines += ["", f"{split}: Lite1/Lite2 top-1 on the classes whose every photograph that model itself "
                      "classifies top-1"]
        for short, entry in per_model.items():
            figures = ", ".join(f"{m} {_num(entry[m], '.2f')}" for m in methods)
            lines.append(f"- {short}: {len(entry['classes'])} of "
                         f"{sum(e['split'] == split for e in table['per_class'].values())} classes "
                         f"({', '.join(map(str, entry['classes'])) or 'none'}): {figures}")
    if table["inner"]:
        lines += ["", f"Inner neurons: {len(inner)} channels ({', '.join(f'{l}[{i}]' for l, i in inner)}), "
                  f"seeds {args.inner_seed_list}", "",
                  "| method | activation percentile | specificity rank | patch distance ratio | s / neuron |",
                  "|---|---|---|---|---|"]
        for m, r in table["inner"].items():
            lines.append(f"| {m} | {r['percentile']:.1f} | {r['specificity_rank']:.1f} | {r['patch_distance_ratio']:.2f} | "
                         f"{_num(r['seconds_per_neuron'], '.1f')} |")
    if "vital" in results:
        held = table["splits"].get("held-out", {}).get("vital")
        lines += [""]
        if held:
            lines.append(f"target held-out self top-1 >= 0.99: {held['self_top1']:.2f} "
                         f"({'met' if held['self_top1'] >= 0.99 else 'NOT met'})")
            for short in ("lite1", "lite2"):
                lines.append(f"target held-out {short} top-1 >= 0.95: {held[f'{short}_top1']:.2f} "
                             f"({'met' if held[f'{short}_top1'] >= 0.95 else 'NOT met'})")
                on = table["transferable"]["held-out"][short]
                if on["vital"] is not None:
                    lines.append(f"target held-out {short} top-1 >= 0.95 on its {len(on['classes'])} transferable "
                                 f"classes: {on['vital']:.2f} ({'met' if on['vital'] >= 0.95 else 'NOT met'})")
        if len(results) > 1:
            lowest = [c for c, e in table["per_class"].items()
                      if all(e["vital"]["frechet"] <= e[m]["frechet"] for m in methods)]
            lines.append(f"target VITAL Fréchet lowest on every class: {len(lowest)}/{len(table['per_class'])} "
                         f"({'met' if len(lowest) == len(table['per_class']) else 'NOT met'})")
    return "\n".join(lines)


def save_images(results: dict[str, dict], classes: dict[int, list[str]], out_dir: Path) -> None:
    """Every image as DIR/<method>_<name>_seed<S>.png, and DIR/<method>_timing.json (seconds per neuron)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    for method, res in results.items():
        for (key, s), img in res["images"].items():
            name = class_name(classes[key]) if not isinstance(key, tuple) else image_name(key)
            Image.fromarray(img).save(out_dir / f"{method}_{name}_seed{s}.png")
        (out_dir / f"{method}_timing.json").write_text(json.dumps(
            {"class": res["seconds_per_neuron"], "inner": res["inner_seconds_per_neuron"]}))


def _seed_list(text: str) -> list[int]:
    return list(range(int(text))) if text.strip().isdigit() else [int(s) for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fast", choices=("fast", "paper"),
                   help="VITAL preset (audit/presets.py): the default `fast`, or the authors' `paper` settings")
    p.add_argument("--resolution", type=int, default=None, help="image size in px (default: the model's, 224)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply every method's step count (VITAL: the preset's; Fourier 512; MACO 256; "
                        "DeepInversion 400)")
    p.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a comma list of seeds (default 3)")
    p.add_argument("--classes", default="all", help="all | tuned | held-out | none | a comma list of class indices")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of vital, fourier, maco, deepinversion")
    p.add_argument("--inner", type=int, default=9, help="inner channels to score (0: none)")
    p.add_argument("--inner-seeds", default="1", help="seeds of the inner renders (count or list)")
    p.add_argument("--inner-draw", type=int, default=0,
                   help="seed of the draw of the inner channels (0: the 9 channels of the README's table; "
                        "another seed draws other channels, e.g. issue 25's second set of 9)")
    p.add_argument("--save-images", type=Path, default=None, metavar="DIR")
    p.add_argument("--reuse-images", type=Path, default=None, metavar="DIR",
                   help="skip renders whose images a previous --save-images run left in DIR (timings read back too)")
    p.add_argument("--json", type=Path, default=None, help="write the tables as JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch threads per method process")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--in-process", action="store_true", help="run the methods in this process")
    args = p.parse_args(argv)
    args.seed_list = _seed_list(args.seeds)
    args.inner_seed_list = _seed_list(args.inner_seeds)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.seed_list or not args.method_list or any(m not in METHODS for m in args.method_list):
        p.error(f"bad --seeds/--methods (methods: {', '.join(METHODS)})")
    return args


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    every = photo_classes()
    tuned = set(TUNED_PHOTOS.values())
    if args.classes == "all":
        classes = every
    elif args.classes == "none":            # inner neurons only
        classes = {}
    elif args.classes in ("tuned", "held-out"):
        classes = {c: p for c, p in every.items() if (c in tuned) == (args.classes == "tuned")}
    else:
        wanted = [int(c) for c in args.classes.split(",")]
        classes = {c: every.get(c, []) for c in wanted}
        if any(not p for p in classes.values()):
            raise SystemExit(f"classes {wanted}: Lite0 gives none of the built-in photographs some of them; "
                             f"its classes are {every}")
    print(f"[fv_quality] classes (Lite0 top-1 of each built-in photograph): {classes}", file=sys.stderr, flush=True)
    inner: list[tuple[str, int]] = []
    if args.inner:
        from sources import load_model
        from audit.probe import build_probe_set

        model = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
        inner = inner_targets(model, build_probe_set("builtin:samples", size=args.resolution or 224, crops_per_image=12),
                              args.inner, seed=args.inner_draw)
        print(f"[fv_quality] inner channels: {inner}", file=sys.stderr, flush=True)
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    for m in args.method_list:
        call = (m, classes, args.seed_list, args.resolution, args.steps_scale, args.threads, args.device, inner,
                args.inner_seed_list, args.reuse_images, args.preset)
        print(f"[fv_quality] {m}: {len(classes)} classes x {len(args.seed_list)} seeds ...", file=sys.stderr, flush=True)
        if args.in_process:
            results[m] = run_method(*call)
        else:
            # a fresh process per method: its own RSS high-water mark, no allocator state from the others
            with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
                results[m] = pool.submit(run_method, *call).result()
        print(f"[fv_quality] {m}: {_num(results[m]['seconds_per_neuron'], '.1f')} s/neuron", file=sys.stderr, flush=True)
        if args.save_images:        # saved before scoring: a scoring error never loses a long render
            save_images({m: results[m]}, classes, args.save_images)
        # scored after every method: a long run's finished methods are never lost
        table = evaluate(results, classes, args.seed_list, inner, args.inner_seed_list)
        if args.json:
            args.json.write_text(json.dumps({"classes": classes, "inner": inner, "table": table,
                                             "vital_settings": results.get("vital", {}).get("settings"),
                                             "markdown": markdown(table, classes, results, args, inner)},
                                            indent=2, default=str))
    print(markdown(table, classes, results, args, inner))
    print(f"\n(total {time.perf_counter() - t_all:.0f} s)", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
