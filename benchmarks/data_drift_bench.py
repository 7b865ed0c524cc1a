"""Data-drift benchmark of `neuron-audit watch` on the built-in Lite0 and sample photographs,
with Evidently's embedding-drift default on the very same batches as the anchor.

Reference window: the probe set of the 12 built-in photographs (`--crops` recipe crops each, at
`--resolution` px), as the product uses it. Registered neurons, drawn from `--seed`: the top-1
logit of each photograph, and `--per-layer` random channels of each of blocks.1-5 and conv_head.

Batches of `--batch-size` images, drawn from `--seed`:
  in-distribution  fresh random crops and flips of the probe photographs (the recipe's
                   distribution: the whole image with probability 1/crops, else a square of
                   side U(0.35, 0.9) of the shorter side at a uniform position; mirrored with
                   probability 1/2), each photograph equally likely. These must not alarm.
                   To afford >= 200 batches on 2 cores, `--pool` such crops are drawn and run
                   once, and each batch is `--batch-size` distinct crops of that pool (batches
                   overlap when pool < in-dist x batch-size; the pool's own deviation from the
                   distribution is n/pool of a batch's variance).
  shifted          the same, then at three severities each:
                   blur        Gaussian blur of radius 0.6 / 1.2 / 2.4 px (at the model resolution)
                   noise       Gaussian pixel noise of sigma 6 / 12 / 24 (of 255)
                   jpeg        JPEG quality 40 / 15 / 5
                   bright      brightness x(1+s), contrast x(1-s), s = 0.1 / 0.25 / 0.5
                   swap        RGB -> BGR on 25% / 50% / 100% of the batch (broken preprocessing)
                   prior       25% / 50% / 100% of the batch from one photograph (one class)
Reported:
  - false alarms per neuron-batch (FAIL) on the in-distribution batches, with a Wilson 95%
    interval; batch-level false alarms (any FAIL, or the joint test) for watch and Evidently;
    the same statistics with every reference image treated as independent ("images as units"),
    to show what the design-based variance (recipe slots as units) changes;
  - detection rate (batch FAIL) against severity for each shift, watch vs Evidently, and the
    neurons flagged most often per shift;
  - seconds to watch one batch of `--timing-images` photographs at the model's input size
    (224 px), from JPEG files on disk to verdicts (reference cached, as in production).

Stream "photographs" (`--stream photographs`, the default): NEW photographs, not crops. A set of
real photographs nobody in the product uses -- the photographic stamps of Debian's
`tuxpaint-stamps-default` (cut-out photographs of animals, food, plants, vehicles, composited on
white; clip-art is left out by a colour-count rule), plus scikit-image's sample photographs -- is
split at random `--splits` times into a reference of `--reference-size` photographs and
`--batch-size` held-out photographs. Each split's reference is a folder-style window (every
photograph its own unit, whole-layer rows included); the held-out photographs are watched as
they are (in distribution: must not alarm) and with a shift applied to each (Gaussian blur of
radius 4 and 2, an R/B channel swap, JPEG quality 5 and 15; applied at the model's input size,
224 px). Each photograph and shift is run through the model once; the splits re-use those rows.
Tune on one `--split-seed`, report on a fresh one run once. The photographs are installed by a
documented step, never downloaded by this code:

    apt-get update && apt-get install -y tuxpaint-stamps-default
    make bench-deps        # Evidently in its own venv, .venv-evidently (the anchor)
    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/data_drift_bench.py --stream photographs \\
        --splits 200 --split-seed 1

The anchor: Evidently's embedding drift on the same splits, from the same forward pass (the pooled
embedding `watch`'s whole-layer test reads, i.e. the spatial mean of the final feature layer, of the
reference and held-out photographs), exported to an npz next to `--out` and run by
benchmarks/evidently_anchor.py in `.venv-evidently` (or `--evidently-python`): its default (a domain
classifier) and its MMD. Without that interpreter the anchor's columns are left out.

Stream "crops" (`--stream crops`): the earlier benchmark below, batches of crops of the probe
photographs against the probe set.

Evidently runs in its own interpreter (`--evidently-python`, e.g. `make bench-deps`'s
.venv-evidently/bin/python): the default of its `EmbeddingsDriftMetric`, i.e.
`model(bootstrap=n_reference < 1000)` (a domain classifier on the embeddings), on the model's
penultimate-layer embeddings (global_pool, 1280-d).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/data_drift_bench.py --seed 2 \\
        --evidently-python .venv-evidently/bin/python [--in-dist 200] [--shift-batches 8]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.assets import load_rgb_images, resolve_images  # noqa: E402
from audit.models import load_model, normalize  # noqa: E402
from audit.probe import SCALE_RANGE, ProbeSet, build_probe_set  # noqa: E402
from audit.records import NeuronTarget  # noqa: E402
from audit.stats import layer_activations_full  # noqa: E402
from audit.config import WatchConfig  # noqa: E402
from audit.watch import (ReferenceWindow, image_units, judge_batch, load_batch, neuron_values,  # noqa: E402
                         probe_units)

INNER_LAYERS = ("blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "conv_head")
EMBEDDING_LAYER = "global_pool"
SHIFTS = {
    "blur": (0.6, 1.2, 2.4),
    "noise": (6, 12, 24),
    "jpeg": (40, 15, 5),
    "bright": (0.1, 0.25, 0.5),
    "swap": (0.25, 0.5, 1.0),
    "prior": (0.25, 0.5, 1.0),
}


# ---------------------------------------------------------------- images
def random_crop(img: Image.Image, rng: np.random.Generator, size: int, crops: int) -> Image.Image:
    """One crop from the probe recipe's distribution, resized to size x size."""
    if rng.random() < 1 / crops:
        w, h = img.size
        side = min(w, h)
        crop = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    else:
        w, h = img.size
        side = max(8, int(round(rng.uniform(*SCALE_RANGE) * min(w, h))))
        x0, y0 = int(round(rng.uniform() * (w - side))), int(round(rng.uniform() * (h - side)))
        crop = img.crop((x0, y0, x0 + side, y0 + side))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return crop.resize((size, size), Image.BICUBIC)


def apply_shift(img: Image.Image, shift: str, severity: float, rng: np.random.Generator) -> Image.Image:
    if shift == "blur":
        return img.filter(ImageFilter.GaussianBlur(severity))
    if shift == "noise":
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, severity, (img.height, img.width, 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if shift == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(severity))
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    if shift == "bright":
        return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1 + severity)).enhance(1 - severity)
    if shift == "swap":
        return Image.fromarray(np.ascontiguousarray(np.asarray(img)[..., ::-1]))
    raise ValueError(shift)


def make_batch(photos, rng, n, size, crops, shift=None, severity=None) -> list[Image.Image]:
    """n images of the in-distribution or a shifted batch."""
    k = len(photos)
    if shift == "prior":
        one = int(rng.integers(k))
        picks = np.where(rng.random(n) < severity, one, rng.integers(0, k, n))
    else:
        picks = rng.integers(0, k, n)
    images = [random_crop(photos[g], rng, size, crops) for g in picks]
    if shift in ("blur", "noise", "jpeg", "bright"):
        images = [apply_shift(im, shift, severity, rng) for im in images]
    elif shift == "swap":
        chosen = rng.random(n) < severity
        images = [apply_shift(im, "swap", 0, rng) if c else im for im, c in zip(images, chosen)]
    return images


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([normalize(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
                        for im in images])


# ---------------------------------------------------------------- model values
def forward_values(model, x: torch.Tensor, targets: list[NeuronTarget]) -> tuple[np.ndarray, np.ndarray]:
    """([n, p] neuron values, [n, 1280] penultimate embeddings) in one pass."""
    layers = sorted({t.layer for t in targets} | {EMBEDDING_LAYER})
    acts = layer_activations_full(model, ProbeSet(images=x, names=[str(i) for i in range(len(x))], sha256="bench"),
                                  layers, use_cache=False)
    cols = [acts[t.layer].mean[:, t.index] if t.kind == "class" else acts[t.layer].max[:, t.index] for t in targets]
    return np.stack(cols, 1).astype(np.float64), acts[EMBEDDING_LAYER].mean.astype(np.float32)


def choose_neurons(model, photos_probe: ProbeSet, rng, per_layer: int) -> list[NeuronTarget]:
    from audit.taps import layer_channels

    whole = [i for i, n in enumerate(photos_probe.names) if n.endswith("#crop0")]
    logits = layer_activations_full(model, ProbeSet(photos_probe.images[whole], [photos_probe.names[i] for i in whole],
                                                    "whole"), ["classifier"], use_cache=False)["classifier"].mean
    targets = [NeuronTarget(f"logit-{c}", "class", "classifier", int(c)) for c in sorted(set(logits.argmax(1).tolist()))]
    for layer in INNER_LAYERS:
        for c in sorted(rng.choice(layer_channels(model, layer), per_layer, replace=False)):
            targets.append(NeuronTarget(f"{layer}-c{c}", "inner", layer, int(c)))
    return targets


# ---------------------------------------------------------------- statistics
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def run_evidently(python: str, reference: np.ndarray, batches: list[np.ndarray]) -> list[dict]:
    """Evidently's EmbeddingsDriftMetric default on each batch, in its own interpreter."""
    script = r'''
import json, sys, warnings
import numpy as np, pandas as pd
warnings.filterwarnings("ignore")
from evidently.legacy.metrics.data_drift.embedding_drift_methods import model
z = np.load(sys.argv[1])
ref = z["reference"]; cols = [f"e{i}" for i in range(ref.shape[1])]
out = []
for i in range(int(z["n_batches"])):
    cur = z[f"b{i}"]
    method = model(bootstrap=ref.shape[0] < 1000)      # EmbeddingsDriftMetric.calculate's default
    score, drift, _ = method(pd.DataFrame(cur, columns=cols), pd.DataFrame(ref, columns=cols))
    out.append({"score": float(score), "drift": bool(drift)})
json.dump(out, open(sys.argv[2], "w"))
'''
    with tempfile.TemporaryDirectory() as tmp:
        npz, res, py = Path(tmp) / "emb.npz", Path(tmp) / "out.json", Path(tmp) / "ev.py"
        np.savez(npz, reference=reference, n_batches=len(batches), **{f"b{i}": b for i, b in enumerate(batches)})
        py.write_text(script)
        subprocess.run([python, str(py), str(npz), str(res)], check=True)
        return json.loads(res.read_text())


def timing(model, targets, photos, seed: int, n: int, crops: int) -> dict:
    """Seconds to watch n photographs from JPEG files at 224 px (reference computed beforehand)."""
    rng = np.random.default_rng(seed)
    probe = build_probe_set("builtin:samples", 224, crops)
    ref_values = neuron_values(model, probe, targets, use_cache=False)
    reference = ReferenceWindow(ref_values, probe_units(probe.names), probe.names, "probe")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            random_crop(photos[int(rng.integers(len(photos)))], rng, 320, crops).save(Path(tmp) / f"p{i:04d}.jpg",
                                                                                    quality=90)
        t0 = time.perf_counter()
        batch = load_batch(tmp, 224, min_images=2)
        t1 = time.perf_counter()
        values = neuron_values(model, batch, targets, use_cache=False)
        t2 = time.perf_counter()
        judge_batch(values, reference, targets, batch.names)
        t3 = time.perf_counter()
    return {"images": n, "load_s": t1 - t0, "forward_s": t2 - t1, "statistics_s": t3 - t2, "total_s": t3 - t0}


# ---------------------------------------------------------------- stream of new photographs
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "hubble_deep_field.jpg",
                  "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
                  "brick.png", "grass.png", "gravel.png")
PHOTO_SHIFTS = {"blur r4": ("blur", 4.0), "blur r2": ("blur", 2.0), "R/B swap": ("swap", 1.0),
                "JPEG q5": ("jpeg", 5), "JPEG q15": ("jpeg", 15)}


def stamp_photograph(path: Path) -> Image.Image | None:
    """A Tux Paint stamp as a photograph on white, or None for clip-art (fewer than 1,500 distinct
    colours among its opaque pixels), tiny (< 120 px) or mostly transparent stamps."""
    im = Image.open(path).convert("RGBA")
    if min(im.size) < 120:
        return None
    a = np.asarray(im)
    opaque = a[..., 3] > 200
    if opaque.mean() < 0.15:
        return None
    rgb = a[..., :3][opaque][::5].astype(np.int64)
    if len(np.unique(rgb @ np.array([65536, 256, 1]))) < 1500:
        return None
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    bg.alpha_composite(im)
    return bg.convert("RGB").crop(im.getchannel("A").point(lambda v: 255 if v > 200 else 0).getbbox())


def real_photographs() -> tuple[list[Image.Image], list[str]]:
    """The stream's photographs (module docstring); the Tux Paint package must be installed."""
    from audit.assets import skimage_data_dir

    if not TUXPAINT_STAMPS.is_dir():
        raise SystemExit("the photographs stream needs Debian's tuxpaint-stamps-default: "
                         "apt-get update && apt-get install -y tuxpaint-stamps-default")
    files = sorted(f for f in TUXPAINT_STAMPS.rglob("*.png")
                   if "symbols" not in f.parts and "cartoon" not in f.parts and "_mirror" not in f.name)
    photos, names = [], []
    for f in files:
        p = stamp_photograph(f)
        if p is not None:
            photos.append(p)
            names.append(f"tuxpaint/{f.relative_to(TUXPAINT_STAMPS)}")
    for n in SKIMAGE_PHOTOS:
        photos.append(Image.open(skimage_data_dir() / n).convert("RGB"))
        names.append(f"skimage/{n}")
    return photos, names


def centre_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, centre crop (written here, not taken from the product)."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def photograph_rows(model, targets, photos, size: int, cache: Path | None, shifts: list[str]):
    """{variant: (values [N, p], {layer: [N, C]})} for the clean photographs and each shift."""
    from audit.watch import batch_features, tested_layers

    layers = tested_layers(model, targets)
    if cache is not None and cache.is_file():
        z = np.load(cache)
        return {v: (z[f"{v}|values"], {l: z[f"{v}|{l}"] for l in layers}) for v in ["clean", *shifts]}, layers
    base = [centre_square(p, size) for p in photos]
    rng = np.random.default_rng(0)
    out = {}
    for variant in ["clean", *shifts]:
        t0 = time.perf_counter()
        kind, sev = PHOTO_SHIFTS.get(variant, (None, None))
        images = base if kind is None else [apply_shift(im, kind, sev, rng) for im in base]
        x = to_tensor(images)
        values, means = batch_features(model, ProbeSet(x, [str(i) for i in range(len(x))], variant), targets, layers)
        out[variant] = (values, means)
        print(f"  {variant}: {len(x)} photographs, {time.perf_counter() - t0:.0f} s", flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **{f"{v}|values": vals for v, (vals, _) in out.items()},
                 **{f"{v}|{l}": m[l] for v, (_, m) in out.items() for l in layers})
    return out, layers


def photographs_stream(args) -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    model = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
    photos, names = real_photographs()
    n_photos = len(photos)
    if n_photos < args.reference_size + args.batch_size:
        raise SystemExit(f"{n_photos} photographs: fewer than --reference-size + --batch-size")
    probe = build_probe_set("builtin:samples", args.resolution, args.crops)
    targets = choose_neurons(model, probe, np.random.default_rng(args.seed), args.per_layer)
    print(f"{n_photos} photographs, {len(targets)} neurons, reference {args.reference_size} / batch "
          f"{args.batch_size} photographs, {args.splits} splits (split seed {args.split_seed})", flush=True)
    shifts = [x.strip() for x in args.shifts.split(",")] if args.shifts else list(PHOTO_SHIFTS)
    unknown = sorted(set(shifts) - set(PHOTO_SHIFTS))
    if unknown:
        raise SystemExit(f"--shifts: unknown {unknown}; valid: {', '.join(PHOTO_SHIFTS)}")
    rows, layers = photograph_rows(model, targets, photos, 224, args.features_cache, shifts)
    rng = np.random.default_rng(args.split_seed)
    variants = ["clean", *shifts]
    tally = {v: Counter() for v in variants}
    clean_values, clean_layers = rows["clean"]
    splits = []
    t_splits = time.perf_counter()
    for k in range(args.splits):
        order = rng.permutation(n_photos)
        ref, held = order[:args.reference_size], order[args.reference_size:args.reference_size + args.batch_size]
        splits.append((ref, held))
        window = ReferenceWindow(clean_values[ref], image_units(len(ref)), [names[i] for i in ref], "folder",
                                 layers={l: clean_layers[l][ref] for l in layers})
        for v in variants:
            values, means = rows[v]
            verdict = judge_batch(values[held], window, targets, [names[i] for i in held],
                                  WatchConfig(seed=k),
                                  batch_layers={l: means[l][held] for l in layers})
            nf = sum(n.verdict == "FAIL" for n in verdict.neurons)
            t = tally[v]
            t["batches"] += 1
            t["neuron_batches"] += len(targets)
            t["neuron_fail"] += nf
            t["batch_fail"] += verdict.verdict == "FAIL"
            t["any_neuron"] += nf > 0
            t["joint"] += verdict.joint["verdict"] == "FAIL"
            t["layers"] += verdict.layers.get("verdict") == "FAIL"
            t["without_layers"] += nf > 0 or verdict.joint["verdict"] == "FAIL"
        if (k + 1) % 25 == 0:
            print(f"  {k + 1}/{args.splits} splits, {time.perf_counter() - t0:.0f} s", flush=True)
    split_seconds = (time.perf_counter() - t_splits) / max(1, args.splits)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "photographs": n_photos,
              "neurons": [t.neuron_id for t in targets], "layers": layers,
              "tally": {v: dict(t) for v, t in tally.items()}, "seconds_per_split": split_seconds}
    python = evidently_python(args)
    if python:
        result["evidently"] = evidently_anchor(python, {v: rows[v][1][layers[-1]] for v in variants}, splits,
                                               args.out.with_suffix(".embeddings.npz"))
    result["bench_seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print_photograph_tables(result)


EVIDENTLY_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv-evidently" / "bin" / "python"


def evidently_python(args) -> str | None:
    """The interpreter with Evidently (`--evidently-python`, else `make bench-deps`'s .venv-evidently when
    built); None (with a note) when there is none: the anchor's columns are left out."""
    if args.no_anchor:
        return None
    if args.evidently_python:
        return args.evidently_python
    if EVIDENTLY_VENV_PYTHON.is_file():
        return str(EVIDENTLY_VENV_PYTHON)
    print("no Evidently interpreter (`make bench-deps` builds .venv-evidently): the anchor is left out", flush=True)
    return None


def evidently_anchor(python: str, embeddings: dict[str, np.ndarray], splits, npz: Path) -> dict:
    """Evidently's embedding drift (benchmarks/evidently_anchor.py, in its own interpreter) on the same splits
    and the same pooled embeddings `watch` judged (the spatial mean of the final feature layer)."""
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, variants=np.array(list(embeddings)), reference=np.stack([r for r, _ in splits]),
             held_out=np.stack([h for _, h in splits]), **{f"emb|{v}": e for v, e in embeddings.items()})
    out = npz.with_suffix(".evidently.json")
    t0 = time.perf_counter()
    subprocess.run([python, str(Path(__file__).with_name("evidently_anchor.py")), str(npz), str(out)], check=True)
    res = json.loads(out.read_text())
    res["wall_seconds"] = time.perf_counter() - t0
    return res


def print_photograph_tables(res: dict) -> None:
    t = res["tally"]
    c = t["clean"]
    print(f"\nNew photographs: {res['photographs']} photographs, {c['batches']} random splits, "
          f"{len(res['neurons'])} neurons, whole-layer test on {', '.join(res['layers'])}\n")
    ev = res.get("evidently")
    ev_head = " Evidently default (domain classifier) [95% Wilson] | Evidently MMD [95% Wilson] |" if ev else ""
    print("| batch | batches FAIL [95% Wilson] | any neuron FAIL | joint test FAIL | whole-layer FAIL | "
          "FAIL without the whole-layer test |" + ev_head)
    print("|---|---|---|---|---|---|" + ("---|---|" if ev else ""))
    for v, d in t.items():
        n = d["batches"]
        w = wilson(d["batch_fail"], n)
        cells = ""
        if ev:
            for method in ("model", "mmd"):
                flags = ev["flags"][method][v]
                cells += f" {_pct(sum(flags) / len(flags))} {_ci(wilson(sum(flags), len(flags)))} |"
        print(f"| {'in distribution' if v == 'clean' else v} | {_pct(d['batch_fail'] / n)} {_ci(w)} | "
              f"{_pct(d['any_neuron'] / n)} | {_pct(d['joint'] / n)} | {_pct(d['layers'] / n)} | "
              f"{_pct(d['without_layers'] / n)} |" + cells)
    if ev:
        print(f"\nEvidently {ev.get('evidently_version')} on the same splits and pooled embeddings: "
              f"{ev['wall_seconds']:.0f} s")
    c_any = c["batch_fail"]
    print(f"in distribution, batches with any FAIL: {c_any}/{c['batches']} = {_pct(c_any / c['batches'])} "
          f"{_ci(wilson(c_any, c['batches']))}")
    print(f"\nin distribution, FAIL per neuron-batch: {c['neuron_fail']}/{c['neuron_batches']} = "
          f"{_pct(c['neuron_fail'] / c['neuron_batches'])} {_ci(wilson(c['neuron_fail'], c['neuron_batches']))}")
    print(f"judging one split (in distribution and every shift): {res['seconds_per_split']:.1f} s; "
          f"benchmark wall time {res['bench_seconds']:.0f} s")


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stream", choices=("photographs", "crops"), default="photographs")
    ap.add_argument("--splits", type=int, default=200, help="photographs: random reference/held-out splits")
    ap.add_argument("--split-seed", type=int, default=1, help="photographs: seed of the splits (tune on one, report on another)")
    ap.add_argument("--reference-size", type=int, default=50, help="photographs: reference photographs per split")
    ap.add_argument("--shifts", default=None, help=f"photographs: comma list of {', '.join(PHOTO_SHIFTS)} (default all)")
    ap.add_argument("--features-cache", type=Path, default=None,
                    help="photographs: .npz of the model's rows, reused when present (tuning runs)")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--crops", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 50 (photographs), 64 (crops)")
    ap.add_argument("--in-dist", type=int, default=200)
    ap.add_argument("--pool", type=int, default=3200, help="fresh in-distribution crops the batches are drawn from")
    ap.add_argument("--shift-batches", type=int, default=4)
    ap.add_argument("--per-layer", type=int, default=4)
    ap.add_argument("--timing-images", type=int, default=256, help="0 skips the timing")
    ap.add_argument("--evidently-python", default=None, help="an interpreter with Evidently (default: .venv-evidently when built by `make bench-deps`)")
    ap.add_argument("--no-anchor", action="store_true", help="photographs: leave Evidently out (more splits in the time)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/data_drift.json"))
    args = ap.parse_args()
    if args.stream == "photographs":
        args.batch_size = args.batch_size or 50
        if args.out == Path("benchmarks/results/data_drift.json"):
            args.out = Path("benchmarks/results/data_drift_photographs.json")
        return photographs_stream(args)
    args.batch_size = args.batch_size or 64
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rng = np.random.default_rng(args.seed)
    model = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
    photos = load_rgb_images(resolve_images("builtin:samples")).images
    probe = build_probe_set("builtin:samples", args.resolution, args.crops)
    targets = choose_neurons(model, probe, rng, args.per_layer)
    p = len(targets)
    t0 = time.perf_counter()
    ref_values, ref_emb = forward_values(model, probe.images, targets)
    reference = ReferenceWindow(ref_values, probe_units(probe.names), probe.names, "probe")
    naive = ReferenceWindow(ref_values, image_units(len(probe.names)), probe.names, "probe")
    settings = WatchConfig()
    print(f"{p} neurons, reference {len(probe.names)} crops ({args.crops} slots), batches of {args.batch_size} "
          f"at {args.resolution} px", flush=True)

    pool_values, pool_emb = [], []
    for start in range(0, args.pool, 256):
        images = make_batch(photos, rng, min(256, args.pool - start), args.resolution, args.crops)
        v, e = forward_values(model, to_tensor(images), targets)
        pool_values.append(v)
        pool_emb.append(e)
    pool_values, pool_emb = np.concatenate(pool_values), np.concatenate(pool_emb)
    print(f"  pool of {args.pool} in-distribution crops: {time.perf_counter() - t0:.0f} s", flush=True)

    plan = [("in-dist", None, None)] * args.in_dist
    plan += [(s, s, sev) for s, sevs in SHIFTS.items() for sev in sevs for _ in range(args.shift_batches)]
    rows, embeddings = [], []
    for i, (label, shift, sev) in enumerate(plan):
        if shift is None:
            idx = rng.choice(args.pool, args.batch_size, replace=False)
            values, emb = pool_values[idx], pool_emb[idx]
        else:
            images = make_batch(photos, rng, args.batch_size, args.resolution, args.crops, shift, sev)
            values, emb = forward_values(model, to_tensor(images), targets)
        names = [f"img{j}" for j in range(len(values))]
        v = judge_batch(values, reference, targets, names, settings)
        row = {"label": label, "shift": shift, "severity": sev, "verdict": v.verdict, "joint": v.joint["verdict"],
               "fail": [n.neuron_id for n in v.neurons if n.verdict == "FAIL"],
               "warn": [n.neuron_id for n in v.neurons if n.verdict == "WARN"], "summary": v.summary}
        if shift is None:
            vn = judge_batch(values, naive, targets, names, settings)
            row["naive_fail"] = [n.neuron_id for n in vn.neurons if n.verdict == "FAIL"]
            row["naive_verdict"] = vn.verdict
        rows.append(row)
        embeddings.append(emb)
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{len(plan)} batches, {time.perf_counter() - t0:.0f} s", flush=True)
    evid = run_evidently(args.evidently_python, ref_emb, embeddings) if args.evidently_python else None
    if evid:
        for r, e in zip(rows, evid):
            r["evidently"] = e["drift"]
            r["evidently_score"] = e["score"]

    ind = [r for r in rows if r["shift"] is None]
    nb = len(ind)
    k_fail = sum(len(r["fail"]) for r in ind)
    k_warn = sum(len(r["warn"]) for r in ind)
    k_naive = sum(len(r["naive_fail"]) for r in ind)
    b_fail = sum(r["verdict"] == "FAIL" for r in ind)
    b_naive = sum(r["naive_verdict"] == "FAIL" for r in ind)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "neurons": [t.neuron_id for t in targets],
              "in_distribution": {
                  "batches": nb, "neuron_batches": nb * p,
                  "neuron_fail_rate": k_fail / (nb * p), "neuron_fail_wilson": wilson(k_fail, nb * p),
                  "neuron_warn_rate": k_warn / (nb * p), "neuron_warn_wilson": wilson(k_warn, nb * p),
                  "batch_fail_rate": b_fail / nb, "batch_fail_wilson": wilson(b_fail, nb),
                  "naive_neuron_fail_rate": k_naive / (nb * p), "naive_neuron_fail_wilson": wilson(k_naive, nb * p),
                  "naive_batch_fail_rate": b_naive / nb, "naive_batch_fail_wilson": wilson(b_naive, nb)}}
    if evid:
        b_ev = sum(r["evidently"] for r in ind)
        result["in_distribution"].update(evidently_batch_rate=b_ev / nb, evidently_batch_wilson=wilson(b_ev, nb))
    detection = {}
    for s, sevs in SHIFTS.items():
        for sev in sevs:
            rs = [r for r in rows if r["shift"] == s and r["severity"] == sev]
            nrs = max(1, len(rs))
            d = {"batches": len(rs), "watch": sum(r["verdict"] == "FAIL" for r in rs) / nrs,
                 "joint": sum(r["joint"] == "FAIL" for r in rs) / nrs}
            if evid:
                d["evidently"] = sum(r["evidently"] for r in rs) / nrs
            detection[f"{s}@{sev}"] = d
        flagged = Counter(n for r in rows if r["shift"] == s for n in r["fail"])
        detection[f"{s}:neurons"] = flagged.most_common(4)
        detection[f"{s}:summary"] = next((r["summary"] for r in rows if r["shift"] == s and r["severity"] == sevs[-1]), "")
    result["detection"] = detection
    shifted = [r for r in rows if r["shift"] is not None]
    result["shifted_flagged"] = {"watch": sum(r["verdict"] == "FAIL" for r in shifted), "batches": len(shifted)}
    if evid:
        result["shifted_flagged"]["evidently"] = sum(r["evidently"] for r in shifted)
    result["bench_seconds"] = time.perf_counter() - t0
    if args.timing_images:
        result["timing"] = timing(model, targets, photos, args.seed, args.timing_images, args.crops)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print_tables(result, bool(evid))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(w) -> str:
    return f"[{100 * w[0]:.2f}, {100 * w[1]:.2f}]%"


def print_tables(res: dict, with_evidently: bool) -> None:
    ind = res["in_distribution"]
    print(f"\nIn-distribution: {ind['batches']} batches x {len(res['neurons'])} neurons "
          f"(batches of {res['args']['batch_size']} from a pool of {res['args']['pool']} fresh crops)\n")
    print("| method | FAIL per neuron-batch [95% Wilson] | batches flagged [95% Wilson] |")
    print("|---|---|---|")
    print(f"| watch (reference units: recipe slots) | {_pct(ind['neuron_fail_rate'])} {_ci(ind['neuron_fail_wilson'])} "
          f"| {_pct(ind['batch_fail_rate'])} {_ci(ind['batch_fail_wilson'])} |")
    print(f"| watch, every reference image independent | {_pct(ind['naive_neuron_fail_rate'])} "
          f"{_ci(ind['naive_neuron_fail_wilson'])} | {_pct(ind['naive_batch_fail_rate'])} "
          f"{_ci(ind['naive_batch_fail_wilson'])} |")
    if with_evidently:
        print(f"| Evidently embedding drift (default) | – | {_pct(ind['evidently_batch_rate'])} "
              f"{_ci(ind['evidently_batch_wilson'])} |")
    print(f"\nWARN per neuron-batch: {_pct(ind['neuron_warn_rate'])} {_ci(ind['neuron_warn_wilson'])}\n")
    det = res["detection"]
    print("| shift | severity | watch | (joint test alone) | Evidently | neurons flagged most |")
    print("|---|---|---|---|---|---|")
    for s, sevs in SHIFTS.items():
        for k, sev in enumerate(sevs):
            d = det[f"{s}@{sev}"]
            names = ", ".join(f"{n} ({c})" for n, c in det[f"{s}:neurons"]) if k == len(sevs) - 1 else ""
            ev = _pct(d["evidently"]) if with_evidently else "–"
            print(f"| {s} | {sev} | {_pct(d['watch'])} | {_pct(d['joint'])} | {ev} | {names} |")
    sf = res["shifted_flagged"]
    print(f"\nshifted batches flagged: watch {sf['watch']}/{sf['batches']}"
          + (f", Evidently {sf['evidently']}/{sf['batches']}" if with_evidently else ""))
    for s in SHIFTS:
        print(f"  {s} (strongest): {det[f'{s}:summary']}")
    if "timing" in res:
        t = res["timing"]
        print(f"\n{t['images']} photographs at 224 px: {t['total_s']:.1f} s (load {t['load_s']:.1f}, forward "
              f"{t['forward_s']:.1f}, statistics {t['statistics_s']:.2f})")
    print(f"benchmark wall time {res['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()
