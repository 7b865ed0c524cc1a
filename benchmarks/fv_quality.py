"""Quality of class visualizations: VITAL vs the Fourier (Lucid) and MACO baselines on Lite0.

For each method, the built-in sample classes (chelsea 285, coffee 967, rocket 657, camera
872; the references of each class are random crops of that one photo) are rendered together
(one batch per method and seed) for each seed, then scored:

* self top-1: Lite0 (the visualized model) at its native 224 px;
* transfer top-1 / top-5: Lite1 at 240 px and Lite2 at 260 px (the images are resized), and
  the mean softmax probability of the class there (graded: it separates methods that tie on
  top-5 with 4 classes);
* a "real crops" row: the same scores for 32 crops of each class photograph (the Fréchet
  reference crops), the ceiling a visualization can be expected to reach;
* Fréchet distance: per class, the class's visualizations (one per seed) against 32 random
  crops of its photo, in Lite0's penultimate (pre-logit, 1280-D) features at 224 px, with
  Ledoit-Wolf-shrunk covariances (`audit.quality.frechet_distance`; few samples, so only
  comparable between runs with the same seed count); averaged over classes;
* seconds per neuron: wall time of a method's batched render divided by the batch size,
  averaged over seeds;
* peak memory: each method runs in its own fresh (spawned) process. On CPU the number is the
  growth of that process's resident-set high-water mark (`resource.getrusage(RUSAGE_SELF)
  .ru_maxrss`) from after the model and references are loaded to after the last seed:
  what the method itself needed on top of the model. `tracemalloc` cannot be used: it
  sees only Python-heap allocations, not torch's native tensor memory. On CUDA it is
  `torch.cuda.max_memory_allocated()` minus the memory allocated before the renders.

Defaults are the full quality settings (224 px; VITAL 600 steps, lr 0.25, jitter 30 px,
taps bn1 + blocks 0,1,2,4,6 + bn2, 32 references; Fourier 512 steps; MACO 256 steps). Cheaper:

    python benchmarks/fv_quality.py --resolution 96 --steps-scale 0.05 --seeds 1 --classes coffee,chelsea

Prints a markdown table (plus a per-class table); `--save-images DIR` writes every image as
DIR/<method>_<class>_seed<S>.png (MACO's transparency mask as ..._mask.png).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLASSES = {"chelsea": 285, "coffee": 967, "rocket": 657, "camera": 872}
METHODS = ("vital", "fourier", "maco")
FULL_STEPS = {"vital": 600, "fourier": 512, "maco": 256}
VITAL_TAPS = None        # audit.vital.vital_default_taps: bn1, blocks 0, 1, 2, 4, 6 and bn2 on Lite0
N_REFERENCES = 32
EVAL_REFERENCE_SEED = 10_000        # the Fréchet reference crops differ from VITAL's own references


def _photo(name: str):
    from audit.assets import load_rgb_images, resolve_images

    return load_rgb_images(resolve_images(f"builtin:samples/{name}")).images[0]


def _references(name: str, size: int, seed: int):
    from audit.references import class_references

    return class_references([_photo(name)], size=size, n=N_REFERENCES, seed=seed)


def run_method(method: str, classes: list[str], seeds: list[int], resolution: int, steps: int, threads: int,
               device: str | None, vital_taps: list[str] | None = None) -> dict:
    """Render every class for every seed with one method (in the calling process); returns the images,
    seconds per neuron and the peak memory growth in bytes."""
    import torch

    torch.set_num_threads(threads)
    from audit.models import load_model
    from audit.records import NeuronTarget

    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model("efficientnet_lite0", "builtin:efficientnet_lite0", device=dev)
    targets = [NeuronTarget(c, "class", "classifier", CLASSES[c]) for c in classes]
    refs = {s: [_references(c, resolution, seed=s) for c in classes] for s in seeds}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB
    images: dict[tuple[str, int], np.ndarray] = {}
    masks: dict[tuple[str, int], np.ndarray] = {}
    seconds: list[float] = []
    for s in seeds:
        t0 = time.perf_counter()
        if method == "vital":
            from audit.vital import VitalRequest, VitalSettings, render_vital

            settings = VitalSettings.for_model(model, resolution=resolution, steps=steps, lr=0.25,
                                               jitter=round(30 * resolution / 224), taps=vital_taps or VITAL_TAPS)
            out = render_vital(model, [VitalRequest(t, r, use_relevance=False) for t, r in zip(targets, refs[s])],
                               settings, seed=s, device=dev)
        elif method == "fourier":
            from audit.baselines import render_fourier

            out = render_fourier(model, targets, size=resolution, steps=steps, seed=s, device=dev)
        elif method == "maco":
            from audit.baselines import render_maco

            out = render_maco(model, targets, refs[s], size=resolution, steps=steps, seed=s, device=dev)
        else:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds.append((time.perf_counter() - t0) / len(targets))
        for c, v in zip(classes, out):
            images[(c, s)] = v.image
            if v.mask is not None:
                masks[(c, s)] = v.mask
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"images": images, "masks": masks, "seconds_per_neuron": float(np.mean(seconds)), "peak_bytes": int(peak),
            "device": str(dev)}


def _scores(images, labels, lite0, others) -> dict:
    from audit.models import model_input_size
    from audit.quality import class_probability, transfer_topk

    row = {"self_top1": transfer_topk(lite0, images, labels, model_input_size(lite0), k=(1,))["top1"]}
    for name, net in others.items():
        tk = transfer_topk(net, images, labels, model_input_size(net), k=(1, 5))
        row[f"{name}_top1"], row[f"{name}_top5"] = tk["top1"], tk["top5"]
        row[f"{name}_p"] = class_probability(net, images, labels, model_input_size(net))
    return row


def evaluate(results: dict[str, dict], classes: list[str], seeds: list[int]) -> dict[str, dict]:
    import torch

    from audit.quality import builtin_model, frechet_distance, penultimate_features

    lite0 = builtin_model("efficientnet_lite0")
    others = {n: builtin_model(f"efficientnet_{n}") for n in ("lite1", "lite2")}
    ref_crops = {c: _references(c, 224, EVAL_REFERENCE_SEED) for c in classes}
    ref_feats = {c: penultimate_features(lite0, ref_crops[c], 224) for c in classes}
    table: dict[str, dict] = {}
    for method, res in results.items():
        imgs = [res["images"][(c, s)] for c in classes for s in seeds]
        labels = [CLASSES[c] for c in classes for s in seeds]
        row = _scores(imgs, labels, lite0, others)
        per_class = {}
        for c in classes:
            ci = [res["images"][(c, s)] for s in seeds]
            per_class[c] = {**_scores(ci, CLASSES[c], lite0, others),
                            "frechet": frechet_distance(penultimate_features(lite0, ci, 224), ref_feats[c])}
        row["frechet"] = float(np.mean([v["frechet"] for v in per_class.values()]))
        row["per_class"] = per_class
        row["seconds_per_neuron"] = res["seconds_per_neuron"]
        row["peak_mib"] = res["peak_bytes"] / 2 ** 20
        row["device"] = res["device"]
        table[method] = row
    crops = torch.cat([ref_crops[c] for c in classes])
    labels = [CLASSES[c] for c in classes for _ in range(ref_crops[c].shape[0])]
    real = _scores(crops, labels, lite0, others)
    real["per_class"] = {c: _scores(ref_crops[c], CLASSES[c], lite0, others) for c in classes}
    table["real crops"] = {**real, "frechet": None, "seconds_per_neuron": None, "peak_mib": None,
                           "device": next(iter(results.values()))["device"] if results else "?"}
    return table


def _num(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def markdown(table: dict[str, dict], classes: list[str], args, steps: dict[str, int]) -> str:
    methods = [m for m in table if m in steps]
    lines = [f"Lite0, {args.resolution} px, classes {', '.join(f'{c} ({CLASSES[c]})' for c in classes)}, "
             f"{len(args.seed_list)} seed(s); steps: " + ", ".join(f"{m} {steps[m]}" for m in methods) +
             f"; device {next(iter(table.values()))['device'] if table else '?'}",
             "",
             "| method | self top-1 (Lite0) | Lite1 top-1 | Lite1 top-5 | Lite1 p(class) | Lite2 top-1 | Lite2 top-5 | "
             "Lite2 p(class) | Fréchet (Lite0 feats) | s / neuron | peak mem (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in table.items():
        lines.append(f"| {m} | {r['self_top1']:.2f} | {r['lite1_top1']:.2f} | {r['lite1_top5']:.2f} | "
                     f"{r['lite1_p']:.3f} | {r['lite2_top1']:.2f} | {r['lite2_top5']:.2f} | {r['lite2_p']:.3f} | "
                     f"{_num(r['frechet'], '.1f')} | {_num(r['seconds_per_neuron'], '.1f')} | {_num(r['peak_mib'], '.0f')} |")
    lines += ["", "Per class: self top-1 / Lite1 top-5 / Lite2 top-5 / Fréchet", "",
              "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for m, r in table.items():
        cells = []
        for c in classes:
            pc = r["per_class"][c]
            cells.append(f"{pc['self_top1']:.2f} / {pc['lite1_top5']:.2f} / {pc['lite2_top5']:.2f} / "
                         f"{_num(pc.get('frechet'), '.1f')}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_images(results: dict[str, dict], out_dir: Path) -> None:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    for method, res in results.items():
        for (c, s), img in res["images"].items():
            Image.fromarray(img).save(out_dir / f"{method}_{c}_seed{s}.png")
        for (c, s), m in res["masks"].items():
            Image.fromarray((np.clip(m, 0, 1) * 255 + 0.5).astype(np.uint8)).save(out_dir / f"{method}_{c}_seed{s}_mask.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=224, help="image size in px (default 224)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply every method's step count (VITAL 600, Fourier 512, MACO 256)")
    p.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a comma list of seeds (default 3)")
    p.add_argument("--classes", default=",".join(CLASSES), help=f"comma list of {', '.join(CLASSES)}")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of vital, fourier, maco")
    p.add_argument("--vital-taps", type=lambda v: [t.strip() for t in v.split(",") if t.strip()], default=None,
                   help="comma list of VITAL's taps (default: vital_default_taps, on Lite0 bn1,blocks.0,blocks.1,"
                        "blocks.2,blocks.4,blocks.6,bn2)")
    p.add_argument("--save-images", type=Path, default=None, metavar="DIR", help="save every image (and MACO masks) here")
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="torch threads")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--in-process", action="store_true",
                   help="run the methods in this process (peak memory is then not per method)")
    args = p.parse_args(argv)
    args.seed_list = (list(range(int(args.seeds))) if "," not in args.seeds and args.seeds.strip().isdigit()
                      else [int(s) for s in args.seeds.split(",") if s.strip()])
    args.class_list = [c.strip() for c in args.classes.split(",") if c.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [c for c in args.class_list if c not in CLASSES] + [m for m in args.method_list if m not in METHODS]
    if bad or not args.class_list or not args.method_list or not args.seed_list:
        p.error(f"unknown or empty classes/methods/seeds: {bad}")
    return args


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    steps = {m: max(1, round(FULL_STEPS[m] * args.steps_scale)) for m in args.method_list}
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    for m in args.method_list:
        call = (m, args.class_list, args.seed_list, args.resolution, steps[m], args.threads, args.device, args.vital_taps)
        print(f"[fv_quality] {m}: {len(args.class_list)} classes x {len(args.seed_list)} seeds, {steps[m]} steps ...",
              file=sys.stderr, flush=True)
        if args.in_process:
            results[m] = run_method(*call)
        else:
            # a fresh process per method: its own RSS high-water mark, no allocator state from the others
            with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
                results[m] = pool.submit(run_method, *call).result()
        print(f"[fv_quality] {m}: {results[m]['seconds_per_neuron']:.1f} s/neuron", file=sys.stderr, flush=True)
    import torch

    torch.set_num_threads(args.threads)
    table = evaluate(results, args.class_list, args.seed_list)
    if args.save_images:
        save_images(results, args.save_images)
    print(markdown(table, args.class_list, args, steps))
    print(f"\n(total {time.perf_counter() - t_all:.0f} s)", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
