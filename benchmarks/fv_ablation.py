"""Ablation of the fast preset against the authors' settings, one deviation at a time.

Rows (class neurons of Lite0, rendered from `audit.presets`):

* `paper`: the authors' settings exactly (`preset: paper`);
* `fast`: this project's default;
* `fast + paper X`: the fast preset with one of its deviations put back to the authors' value:
  steps + schedule (2,000 steps, 100-step warm-up), lr (1.0), flip (off), sort (every position),
  references (whole photographs instead of random crops), taps (the authors' stem conv + four
  stages, their weights);
* `fast - class term`: the fast preset without its class term (`class_weight` 0; fast weighs
  -log p(class) beside the sort matching); inner rows: `fast - activation term` (`inner_activation_weight`
  0; fast weighs the channel's own activation).

If a row that puts the authors' value back scores no better than `fast`, the deviation holds.
Inner neurons get the same treatment for their own deviations (`--inner N`): tap weights (0.1, 1,
1, 1, 0) and the reference form (receptive-field crops instead of whole probe images), scored with
`audit.quality.inner_neuron_quality`.

Scores (as `fv_quality.py`): self top-1 (Lite0), Lite1/Lite2 top-1 and top-5 and p(class), the
Fréchet distance to 32 crops of the class photograph in Lite0's penultimate features, seconds
per neuron (CPU time under whatever load the machine has: rerun on a quiet machine). Tune on the
four classes below only; `fv_quality.py` reports held-out classes.

    python benchmarks/fv_ablation.py --seeds 2                       # every row, tuned classes
    python benchmarks/fv_ablation.py --classes held-out --rows fast,"fast - crop selection (random crops)"
    python benchmarks/fv_ablation.py --rows fast,paper --seeds 1 --save-images DIR
    python benchmarks/fv_ablation.py --rows fast --set fast:lr=0.5,steps=200   # a tuning trial
    python benchmarks/fv_ablation.py --rows paper --repeat             # the paper preset, same bytes twice?
    python benchmarks/fv_ablation.py --audited lite1 --rows fast --set cw1:class_weight=1   # the tuning split
    python benchmarks/fv_ablation.py --audited lite1 --rows "" --inner 9 --inner-rows fast \
        --inner-set aw1:inner_activation_weight=1

Tuning split: `--audited lite1` (or lite2) renders with that model as the audited model on every class
it gives a built-in photograph (its own classes, not Lite0's held-out ones) and scores self top-1 on it.

Only built-in photographs are available: each class has one photograph, so "whole photographs"
means one reference image per class (the authors use 50 photographs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

TUNED = {"chelsea": 285, "coffee": 967, "rocket": 657, "camera": 872}

# name -> (VitalSettings overrides on the fast preset | {"preset": "paper"}, class reference recipe or None)
CLASS_ROWS: dict[str, dict] = {
    "paper": {"preset": "paper"},
    "fast": {},
    "fast + paper steps/schedule": {"steps": 2000, "warmup": 100, "plateau_patience": None},
    "fast + paper lr": {"lr": 1.0},
    "fast + paper flip (off)": {"flip": False},
    "fast + paper sort (all positions)": {"sort_samples": None},
    "fast + paper references (whole photographs)": {"references": ("full", 50, 1)},
    "fast + paper taps and weights": {"tap_set": "paper", "tap_weights": None, "final_tap_weight": 1.0},
    "fast - crop selection (random crops)": {"references": ("crops", None, 1)},
    "fast - final-map weight (1 per tap)": {"final_tap_weight": 1.0},
    "fast - class term (class_weight 0)": {"class_weight": 0.0},
}
INNER_ROWS: dict[str, dict] = {
    "paper": {"preset": "paper"},
    "fast": {},
    "fast + paper inner taps and weights": {"tap_set": "paper", "tap_weights": None,
                                                                      "inner_tap_weights": [0.1, 1, 1, 1, 0]},
    "fast + receptive-field crops (old form)": {"references": ("crops", None, 1)},
    "fast + paper lr": {"lr": 1.0},
    "fast - activation term (inner_activation_weight 0)": {"inner_activation_weight": 0.0},
}


def parse_value(v: str):
    if v.lower() in ("none", "null"):
        return None
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def row_settings(model, row: dict, resolution: int):
    """(resolved VitalSettings, ReferenceRecipe override or None) of one row."""
    from audit.vital import VitalSettings

    row = dict(row)
    refs = row.pop("references", None)
    preset = row.pop("preset", "fast")
    s = VitalSettings.for_model(model, preset=preset, resolution=resolution, **row).resolved(model)
    return s, refs


def class_recipe(preset_name: str, refs_override):
    from audit.presets import ReferenceRecipe, preset

    base = preset(preset_name).class_references
    if refs_override is None:
        return base
    form, count, candidates = refs_override
    return ReferenceRecipe(form, count or base.count, candidates)


def render_classes(model, row: dict, classes: dict[str, int], seeds: list[int], resolution: int,
                   photos: dict[str, list[str]] | None = None) -> dict:
    """Render the class neurons of one row for every seed (one batch per seed, through the product's
    own reference path); images keyed (class, seed), seconds per neuron."""
    from audit.config import NeuronConfig
    from audit.pipeline import references_for
    from audit.records import NeuronTarget
    from audit.vital import VitalRequest, render_vital

    settings, refs_override = row_settings(model, row, resolution)
    recipe = class_recipe(settings.preset, refs_override)
    images, seconds, steps_run = {}, [], []
    for seed in seeds:
        reqs = []
        for name, idx in classes.items():
            n = NeuronConfig(id=name, kind="class", layer="classifier", index=idx,
                             references=[f"builtin:samples/{p}" for p in (photos or {}).get(name, [name])])
            r = references_for(n, model, None, None, size=settings.resolution, recipe=recipe, seed=seed)
            reqs.append(VitalRequest(NeuronTarget(name, "class", "classifier", idx), r.images, use_relevance=False))
        t0 = time.perf_counter()
        out = render_vital(model, reqs, settings, seed=seed)
        seconds.append((time.perf_counter() - t0) / len(reqs))
        for name, v in zip(classes, out):
            images[(name, seed)] = v.image
            steps_run.append(v.settings["steps_run"])
    return {"images": images, "seconds_per_neuron": float(np.mean(seconds)), "steps_run": float(np.mean(steps_run)),
            "settings": settings.model_dump(mode="json"), "recipe": [recipe.form, recipe.count, recipe.candidates]}


def render_inner(model, row: dict, targets, probe, values_of, seeds: list[int], resolution: int) -> dict:
    from audit.config import NeuronConfig
    from audit.pipeline import references_for
    from audit.presets import ReferenceRecipe, preset
    from audit.records import NeuronTarget
    from audit.vital import VitalRequest, render_vital

    settings, refs_override = row_settings(model, row, resolution)
    base = preset(settings.preset).inner_references
    recipe = base if refs_override is None else ReferenceRecipe(refs_override[0], refs_override[1] or base.count,
                                                                refs_override[2])
    images, seconds = {}, []
    for seed in seeds:
        reqs = []
        for layer, idx in targets:
            n = NeuronConfig(id=f"{layer}-c{idx}", kind="inner", layer=layer, index=idx)
            r = references_for(n, model, probe.images, values_of(layer, idx), size=settings.resolution, recipe=recipe,
                               seed=seed, probe_groups=probe.groups)
            reqs.append(VitalRequest(NeuronTarget(n.id, "inner", layer, idx), r.images, use_relevance=True))
        t0 = time.perf_counter()
        out = render_vital(model, reqs, settings, seed=seed)
        seconds.append((time.perf_counter() - t0) / len(reqs))
        for (layer, idx), v in zip(targets, out):
            images[((layer, idx), seed)] = v.image
    return {"images": images, "seconds_per_neuron": float(np.mean(seconds))}


def ablation_classes(spec: str, audited: str = "lite0") -> tuple[dict[str, int], dict[str, list[str]]]:
    """(class name -> index, class name -> its photographs) for `--classes`. With another audited
    model than Lite0 (the tuning split): every class that model gives a built-in photograph."""
    if audited != "lite0":
        from fv_quality import class_name, photo_classes

        found = photo_classes(f"efficientnet_{audited}")
        return {class_name(p): c for c, p in found.items()}, {class_name(p): p for p in found.values()}
    if spec in ("tuned", "held-out"):
        from fv_quality import class_name, photo_classes

        found = {c: p for c, p in photo_classes().items() if (c in TUNED.values()) == (spec == "tuned")}
        return {class_name(p): c for c, p in found.items()}, {class_name(p): p for p in found.values()}
    names = [c.strip() for c in spec.split(",") if c.strip()]
    return {c: TUNED[c] for c in names}, {c: [c] for c in names}


def with_set_rows(rows: dict[str, dict], specs: list[str]) -> dict[str, dict]:
    """`rows` with each 'ROW:key=value,...' spec defining or changing a row."""
    rows = dict(rows)
    for spec in specs:
        name, _, kv = spec.partition(":")
        base = dict(rows.get(name, {}))
        for item in filter(None, kv.split(",")):
            k, _, v = item.partition("=")
            base[k.strip()] = parse_value(v.strip())
        rows[name] = base
    return rows


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(CLASS_ROWS), help="comma list of class rows (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="ROW:key=value,...",
                    help="define or change a row, e.g. 'fast:steps=200,lr=0.5' or 'try1:steps=150'")
    ap.add_argument("--classes", default="tuned",
                    help="tuned (the four the defaults were tuned on) | held-out (every other class Lite0 gives a "
                         "built-in photograph, as fv_quality.py) | a comma list of tuned photograph names")
    ap.add_argument("--seeds", default="1", help="a count N (seeds 0..N-1) or a comma list")
    ap.add_argument("--audited", default="lite0", choices=("lite0", "lite1", "lite2"),
                    help="the audited model. lite1/lite2: the tuning split (that model renders and scores self "
                         "top-1 on every class it gives a built-in photograph; --classes is ignored)")
    ap.add_argument("--resolution", type=int, default=None, help="image size (default: the audited model's)")
    ap.add_argument("--steps", type=int, default=None, help="override every row's steps (smoke runs only)")
    ap.add_argument("--inner", type=int, default=0, help="also ablate the inner-neuron rows on this many channels")
    ap.add_argument("--inner-rows", default=",".join(INNER_ROWS))
    ap.add_argument("--inner-set", action="append", default=[], metavar="ROW:key=value,...",
                    help="define or change an inner row, as --set does for class rows")
    ap.add_argument("--repeat", action="store_true",
                    help="render the first row's first class again (first seed) and compare the bytes")
    ap.add_argument("--save-images", type=Path, default=None, metavar="DIR")
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    seeds = (list(range(int(args.seeds))) if args.seeds.strip().isdigit() else
             [int(s) for s in args.seeds.split(",") if s.strip()])

    import torch

    torch.set_num_threads(args.threads)
    from sources import load_model
    from fv_quality import class_scores, frechet_to_crops, inner_targets, score_inner

    rows = with_set_rows(CLASS_ROWS, args.set)
    inner_rows = with_set_rows(INNER_ROWS, args.inner_set)
    chosen = [r.strip() for r in args.rows.split(",") if r.strip()] + [s.partition(":")[0] for s in args.set
                                                                       if s.partition(":")[0] not in args.rows]
    if args.steps:
        rows = {k: {**v, "steps": args.steps} for k, v in rows.items()}
        inner_rows = {k: {**v, "steps": args.steps} for k, v in inner_rows.items()}
    classes, photos = ablation_classes(args.classes, args.audited)
    audited = f"efficientnet_{args.audited}"
    model = load_model(audited, f"builtin:{audited}")
    if args.resolution is None:
        from audit.models import model_input_size

        args.resolution = model_input_size(model)
    table: dict[str, dict] = {}
    for name in dict.fromkeys(chosen):
        print(f"[fv_ablation] {name}: {rows[name]}", file=sys.stderr, flush=True)
        res = render_classes(model, rows[name], classes, seeds, args.resolution, photos)
        imgs = [res["images"][(c, s)] for c in classes for s in seeds]
        labels = [classes[c] for c in classes for s in seeds]
        row = class_scores(imgs, labels, audited)
        row["frechet"] = float(np.mean([frechet_to_crops([res["images"][(c, s)] for s in seeds], tuple(photos[c]))
                                        for c in classes]))
        row.update(seconds_per_neuron=res["seconds_per_neuron"], steps_run=res["steps_run"], recipe=res["recipe"])
        row["per_class_self_top1"] = {c: class_scores([res["images"][(c, s)] for s in seeds], classes[c],
                                                      audited)["self_top1"]
                                      for c in classes}
        table[name] = row
        print(f"[fv_ablation] {name}: {json.dumps({k: v for k, v in row.items() if k != 'per_class_self_top1'})}",
              file=sys.stderr, flush=True)
        if args.json:                   # after every row: a long run's finished rows are never lost
            args.json.write_text(json.dumps({"class": table, "seeds": seeds, "resolution": args.resolution},
                                            indent=2, default=str))
        if args.save_images:
            from PIL import Image

            args.save_images.mkdir(parents=True, exist_ok=True)
            for (c, s), img in res["images"].items():
                Image.fromarray(img).save(args.save_images / f"{name.replace(' ', '_').replace('/', '-')}_{c}_seed{s}.png")
        if args.repeat and name == chosen[0]:
            first = next(iter(classes))
            again = render_classes(model, rows[name], {first: classes[first]}, seeds[:1], args.resolution, photos)
            same = again["images"][(first, seeds[0])].tobytes() == res["images"][(first, seeds[0])].tobytes()
            row["reproduced_same_bytes"] = same
            print(f"[fv_ablation] {name} rendered again ({first}, seed {seeds[0]}): same bytes = {same}", file=sys.stderr)

    inner_table: dict[str, dict] = {}
    if args.inner:
        from audit.probe import build_probe_set
        from audit.stats import neuron_activations
        from audit.records import NeuronTarget

        probe = build_probe_set("builtin:samples", size=args.resolution, crops_per_image=12)
        targets = inner_targets(model, probe, args.inner)
        acts = neuron_activations(model, probe, [NeuronTarget(f"{l}-c{i}", "inner", l, i) for l, i in targets],
                                  use_cache=False)
        values_of = lambda layer, idx: acts[f"{layer}-c{idx}"].max  # noqa: E731
        names = [r.strip() for r in args.inner_rows.split(",") if r.strip()]
        for name in dict.fromkeys(names + [s.partition(":")[0] for s in args.inner_set]):
            print(f"[fv_ablation] inner {name} on {targets}", file=sys.stderr, flush=True)
            res = render_inner(model, inner_rows[name], targets, probe, values_of, seeds, args.resolution)
            inner_table[name] = {**score_inner(model, res["images"], targets, probe, seeds),
                                 "seconds_per_neuron": res["seconds_per_neuron"]}
            print(f"[fv_ablation] inner {name}: {json.dumps(inner_table[name])}", file=sys.stderr, flush=True)

    print(f"{args.audited} audited, {args.resolution} px, classes {', '.join(f'{c} ({i})' for c, i in classes.items())}, seeds {seeds}\n")
    print("| row | self top-1 | Lite1 top-1 / top-5 | Lite2 top-1 / top-5 | p(class) Lite1 / Lite2 | Fréchet | steps run | s / neuron |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in table.items():
        print(f"| {name} | {r['self_top1']:.2f} | {r['lite1_top1']:.2f} / {r['lite1_top5']:.2f} | "
              f"{r['lite2_top1']:.2f} / {r['lite2_top5']:.2f} | {r['lite1_p']:.3f} / {r['lite2_p']:.3f} | "
              f"{r['frechet']:.1f} | {r['steps_run']:.0f} | {r['seconds_per_neuron']:.1f} |")
    if inner_table:
        print(f"\nInner neurons ({args.inner} channels over blocks.2/4/5, seeded draw)\n")
        print("| row | activation percentile | specificity rank | patch distance ratio | s / neuron |")
        print("|---|---|---|---|---|")
        for name, r in inner_table.items():
            print(f"| {name} | {r['percentile']:.1f} | {r['specificity_rank']:.1f} | {r['patch_distance_ratio']:.2f} | "
                  f"{r['seconds_per_neuron']:.1f} |")
    out = {"class": table, "inner": inner_table, "seeds": seeds, "resolution": args.resolution}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
