"""VITAL speed on this machine, measured in one run.

1. Seconds per VITAL step (paper form, one image) against a bare forward+backward of
   the same model at the same resolution, with the exact sort and with the default
   sub-sampled quantile matching (`sort_samples`).
2. The whole `render_vital` step (augmentations, priors, mask, Adam, clipping), from the
   loop time a real render reports (`Visualization.loop_seconds`), against the same bare step;
   the one-off reference preparation (forward and sort of the references) is reported apart.
3. Neurons per minute as the batch of neurons grows (1, 2, 4, 8): real `render_vital`
   calls of `--steps` steps, extrapolated to a full run of `--full-steps` steps.
4. A whole class neuron with each preset (`--presets`, default fast): one real `render_vital`
   of the Egyptian-cat neuron (chelsea crops, the preset's reference recipe) at `--resolution`,
   wall seconds from references to image, steps run (early stopping included), against the
   target of <= 8 s for the default preset at 224 px on a 2-core CPU; then `--inner` inner
   neurons (fv_quality.py's channels, top probe images as references, relevance form) against
   <= 20 s. Timings on a shared machine are inflated: rerun quietly.

    .venv/bin/python benchmarks/fv_speed.py [--resolution 224] [--steps 12] [--full-steps 600] [--presets fast,paper]

4. `--families`: class and LRP step cost against a bare step for each architecture family of the
   issue-17 matrix (benchmarks/family_speed.py), in one process:

    .venv/bin/python benchmarks/fv_speed.py --families [--family-list resnet18,vit] [--family-resolution 128]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from audit.assets import load_rgb_images, resolve_images  # noqa: E402
from sources import load_model  # noqa: E402
from audit.records import NeuronTarget  # noqa: E402
from audit.references import class_references  # noqa: E402
from audit.vital import VitalRequest, VitalSettings, benchmark_step, render_vital  # noqa: E402

CLASSES = {"chelsea": 285, "coffee": 967, "rocket": 657, "camera": 872}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--steps", type=int, default=30, help="steps per timed render_vital call")
    ap.add_argument("--full-steps", type=int, default=600, help="steps of a full-quality run, for neurons/minute")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--presets", default="fast", help="presets timed as a whole class neuron ('' to skip)")
    ap.add_argument("--inner", type=int, default=3, help="inner neurons timed per preset (0 to skip)")
    ap.add_argument("--families", action="store_true", help="the per-family step table (benchmarks/family_speed.py)")
    ap.add_argument("--family-list", default=None, help="comma list of family keys (tests/archs/families.py)")
    ap.add_argument("--family-resolution", type=int, default=128, help="CNN input side for --families")
    ap.add_argument("--token-resolution", type=int, default=224, help="img_size of the token models for --families")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds for --families")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.families:
        from family_speed import families_table

        families_table(args.family_list.split(",") if args.family_list else None, args.family_resolution,
                       args.token_resolution, args.rounds)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, f"builtin:{args.model}", device=device)
    print(f"# VITAL speed: {args.model} at {args.resolution} px on {device} ({torch.get_num_threads()} threads)\n")

    rows = []
    for label, samples in (("loss step, exact sort (all positions)", None), ("loss step, sort_samples=4096 (default)", 4096)):
        r = benchmark_step(model, resolution=args.resolution, sort_samples=samples, repeats=args.repeats)
        rows.append((label, r["bare"], r["vital"]))
    bare = min(r[1] for r in rows)

    photos = {n: load_rgb_images(resolve_images(f"builtin:samples/{n}")).images for n in CLASSES}
    names = list(CLASSES)
    settings = VitalSettings.for_model(args.model, resolution=args.resolution, steps=args.steps)
    batch_rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        reqs = []
        for i in range(b):
            name = names[i % len(names)]
            refs = class_references(photos[name], size=args.resolution, n=16, seed=i)
            reqs.append(VitalRequest(NeuronTarget(f"{name}-{i}", "class", "classifier", CLASSES[name]), refs, False))
        render_vital(model, reqs, settings.model_copy(update={"steps": 2}), seed=0, device=device)  # warm-up
        viz = render_vital(model, reqs, settings, seed=0, device=device)[0]
        batch_rows.append((b, viz.seconds - viz.loop_seconds, viz.loop_seconds / args.steps))
    loop1 = batch_rows[0][2] if batch_rows and batch_rows[0][0] == 1 else None
    if loop1 is not None:
        rows.append(("whole render_vital step, batch 1 (jitter, flip, priors, mask, Adam, clip)", bare, loop1))

    print("| variant | bare fwd+bwd (ms) | VITAL step (ms) | ratio |")
    print("|---|---|---|---|")
    for label, b_s, v_s in rows:
        print(f"| {label} | {b_s * 1e3:.1f} | {v_s * 1e3:.1f} | {v_s / b_s:.2f}x |")

    print(f"\n| batch (neurons) | reference setup (s, once) | s/step | s/neuron/step | "
          f"s/neuron at {args.full_steps} steps | neurons per minute |")
    print("|---|---|---|---|---|---|")
    for b, setup, per_step in batch_rows:
        per_neuron = (setup + per_step * args.full_steps) / b
        print(f"| {b} | {setup:.2f} | {per_step:.3f} | {per_step / b:.3f} | {per_neuron:.1f} | {60 / per_neuron:.2f} |")

    presets = [p for p in args.presets.split(",") if p.strip()]
    if presets:
        print(f"\n| preset | class neuron at {args.resolution} px: seconds (setup + loop) | steps run | "
              f"s / step | target |")
        print("|---|---|---|---|---|")
        for name in presets:
            secs, loop, steps = class_neuron_seconds(model, args.resolution, name, photos["chelsea"])
            target = "<= 8 s (224 px, 2-core CPU)" if name == "fast" else "-"
            print(f"| {name} | {secs:.1f} ({secs - loop:.1f} + {loop:.1f}) | {steps} | {loop / max(steps, 1):.3f} | {target} |")
        if args.inner:
            print(f"\n| preset | inner neuron at {args.resolution} px | seconds (setup + loop) | steps run | s / step | target |")
            print("|---|---|---|---|---|---|")
            for name in presets:
                for neuron, secs, loop, steps in inner_neuron_seconds(model, args.resolution, name, args.inner):
                    target = "<= 20 s (224 px, 2-core CPU)" if name == "fast" else "-"
                    print(f"| {name} | {neuron} | {secs:.1f} ({secs - loop:.1f} + {loop:.1f}) | {steps} | "
                          f"{loop / max(steps, 1):.3f} | {target} |")


def class_neuron_seconds(model, resolution: int, preset: str, photos) -> tuple[float, float, int]:
    """One class neuron (Egyptian cat) rendered with a preset, as the product does it: (wall seconds
    including the references, loop seconds, steps run)."""
    from audit.pipeline import references_for
    from audit.config import NeuronConfig
    from audit.presets import preset as get_preset

    settings = VitalSettings.for_model(model, preset=preset, resolution=resolution).resolved(model)
    n = NeuronConfig(id="egyptian-cat", kind="class", layer="classifier", index=285, references="builtin:samples/chelsea")
    t0 = time.perf_counter()
    refs = references_for(n, model, None, None, size=resolution, recipe=get_preset(preset).class_references, seed=0)
    viz = render_vital(model, [VitalRequest(NeuronTarget(n.id, "class", "classifier", 285), refs.images, False)],
                       settings, seed=0)[0]
    return time.perf_counter() - t0, viz.loop_seconds, int(viz.settings["steps_run"])


def inner_neuron_seconds(model, resolution: int, preset: str, count: int) -> list[tuple[str, float, float, int]]:
    """Inner neurons rendered with a preset as the product does it: the channels fv_quality.py draws
    (seed 0, blocks.2/4/5), each timed from its references (the top probe images, from the probe
    statistics the flow stores once per version, so not timed) to its image: (neuron, wall seconds,
    loop seconds, steps run)."""
    from audit.config import NeuronConfig
    from audit.pipeline import references_for
    from audit.presets import preset as get_preset
    from audit.probe import build_probe_set
    from audit.stats import neuron_activations
    from fv_quality import inner_targets

    settings = VitalSettings.for_model(model, preset=preset, resolution=resolution).resolved(model)
    probe = build_probe_set("builtin:samples", size=resolution, crops_per_image=12)
    out = []
    for layer, index in inner_targets(model, probe, count, seed=0):
        target = NeuronTarget(f"{layer}-c{index}", "inner", layer, index)
        values = neuron_activations(model, probe, [target], use_cache=False)[target.neuron_id].max
        n = NeuronConfig(id=target.neuron_id, kind="inner", layer=layer, index=index)
        t0 = time.perf_counter()
        refs = references_for(n, model, probe.images, values, size=resolution,
                              recipe=get_preset(preset).inner_references, seed=0, probe_groups=probe.groups)
        viz = render_vital(model, [VitalRequest(target, refs.images, True)], settings, seed=0)[0]
        out.append((target.neuron_id, time.perf_counter() - t0, viz.loop_seconds, int(viz.settings["steps_run"])))
    return out


if __name__ == "__main__":
    main()
