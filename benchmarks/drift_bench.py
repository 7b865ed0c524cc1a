"""Drift-verdict benchmark: planted changes drawn from a seed on the built-in Lite0, scored.

From each seed the generator draws the registered neurons (classes: half among those the probe
photographs make top-1, half at random; inner channels: random stages and indices) and fresh
candidate versions with a known answer:

Benign (every neuron must not FAIL; non-PASS is reported too):
  resaved     the weights written to a file and loaded again
  fp16, bf16  every floating tensor rounded to float16 / bfloat16 and back
  int8        conv/linear weights quantized per output channel (symmetric, 127 levels)
  noise       Gaussian weight noise of r x each tensor's std, r ~ U(0.003, 0.012) (the null's noise is
              per output channel at the int8 step: another parametrization)
  bn          batch-norm statistics re-estimated on n ~ log-U(4096, 16384) images, simulated with the
              probe images standing for the distribution, layer after layer in one batch (the null's
              BN draws move all layers at once from the original network's moments)
  permuted    a random stage's channels permuted with every consumer (same function); its
              registered channels must be reported at their new index (moved-channel accuracy)
Benign outside the null's recipe (none built by audit/drift/benign.py, the functions the null uses):
  retrain     a few SGD steps (3-10, lr 1e-6..1e-5, momentum 0.9, batch 16) towards the model's own
              top-1 labels on crops of held-out photographs (not the probe's), BN frozen
  prune1%     magnitude pruning: the 0.1-1 % smallest |weights| of each conv/linear tensor zeroed
  int8head    per-tensor (not per-channel) symmetric int8 on the classifier's weight
  export      torch.export of the model, saved as .pt2 and read back through the product's own
              loader (sources.pt2.pt2_state_dict + audit.models.load_model)
  bnother     BN running statistics re-estimated on a different set: 8 batches of 32 crops of the held-out
              photographs in train mode at momentum 0.001-0.01 (the stored statistics keep 92-99 %; a
              re-estimate from scratch on these photographs is not benign: on seed 0 mean probe correlation
              0.37 and the top-1 kept on 1 of 72 probe images)
  Each pair's ground truth is CHECKED, not assumed: a pair counts as benign only when the neuron's
  probe values (spatial max) correlate >= 0.995 with the baseline's and the model's top-1 class is
  the same on >= 99 % of probe images. The others are reported apart ("not benign by activations").
Shown, not scored:
  bn n=1024   a BN re-estimate on 1024 images: fewer than the null's 4096, so a change by its definition
Functional (the labelled neurons must FAIL):
  class-mix   4 registered classes' rows mixed with random partner rows at fraction f
              (half f ~ U(0.02, 0.25) for the detection curve, half f ~ U(0.25, 0.7))
  channel-mix one registered inner channel mixed with a random channel of its layer at fraction f
              (every writer of the stage, batch norm folded), 4 per seed
  reinit      one registered inner channel's filters redrawn at the same norm, 2 per seed
  top-swap    a registered neuron's top m probe images (m ~ U{3..k}) swapped with random images of
              its lower half, at the level of activations (marginal distribution kept), 2 per seed
  finetune    a head-only fine-tune of one registered class on the crops of one random photograph
              relabelled as that class (audit.planted)
  prune       60-90 % of the weights of a random stage (2-5) zeroed: its registered channels and
              every registered neuron downstream are changed
Neurons downstream of an edited inner channel are not scored (no ground truth).

Reports recall with a Wilson 95 % interval (all functional pairs, and those of fraction >= 0.3 or
without a fraction), false-alarm rates (FAIL and non-PASS) over benign neuron pairs, moved-channel
accuracy, the detection curve against mix fraction (binned, and the 50 % / 95 % points of a
logistic fit), compare seconds (the baseline's null cached) and what building the null cost. Seconds
measured while other jobs share the CPU are inflated: rerun on a quiet machine.

Develop on seeds 0-9 only; report on seeds drawn fresh once at the end (docs/benchmarks-drift.md).
--only-benign skips the functional changes (for tuning the out-of-recipe kinds).

    timeout 7200 .venv/bin/python benchmarks/drift_bench.py --seeds 0-9 [--size 96] [--crops 8] [--json OUT]
    .venv/bin/python benchmarks/drift_bench.py --aggregate OUT1 OUT2 ...     # one report of earlier runs
    .venv/bin/python benchmarks/drift_bench.py --timing --size 224 --crops 34  # null and compare seconds
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.config import ThresholdsConfig  # noqa: E402
from audit.drift import compare_activations, compare_versions, wilson_interval  # noqa: E402
from audit.drift.benign import batchnorm_layers, int8_per_channel, round_trip  # noqa: E402
from audit.drift.null import build_benign_null, content_features, head_layer  # noqa: E402
from audit.drift.statistics import effective_k  # noqa: E402
from audit.models import weights_sha256  # noqa: E402
from sources import load_model  # noqa: E402
from audit.probe import build_probe_set  # noqa: E402
from audit.records import NeuronTarget  # noqa: E402
from audit.stats import LayerActivations, layer_activations_full  # noqa: E402
from benchmarks.edits import mix_channel, mix_class_rows, permute_stage_output, prune_stage, reinit_channel  # noqa: E402
from audit.taps import final_feature_layer  # noqa: E402

INNER_LAYERS = ["blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "bn2"]
DEPTH = {"blocks.1": 1, "blocks.2": 2, "blocks.3": 3, "blocks.4": 4, "blocks.5": 5, "blocks.6": 6, "bn2": 7,
         "classifier": 8}
CURVE_BINS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7]


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


# ------------------------------------------------------------------ benign versions of the bench
def resaved(model, tmp: Path):
    path = tmp / "resaved.pt"
    torch.save(model.state_dict(), path)
    return load_model("efficientnet_lite0", f"file:{path}")


def tensor_noise(model, rel: float, seed: int):
    """Gaussian noise of rel x each conv/linear weight tensor's std."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                w = mod.weight
                w.add_(torch.randn(w.shape, generator=g) * rel * w.std())
    return m


@torch.no_grad()
def bn_sequential(model, images: torch.Tensor, n_images: int, seed: int):
    """BN statistics re-estimated layer after layer on a sample of n_images probe images drawn with
    replacement, the whole probe set in one batch: each layer's statistics move by the sample's
    deviation from the original network's moments on the probe (shift rescaled to the stored spread)."""
    base_bns = batchnorm_layers(model)
    ref = {}

    def record(i):
        def hook(_m, inputs):
            x = inputs[0].double()
            ref[i] = (x.mean((2, 3)), (x * x).mean((2, 3)))
        return hook

    handles = []
    try:
        handles.extend(bn.register_forward_pre_hook(record(i)) for i, bn in enumerate(base_bns))
        model.eval()
        model(images)
    finally:
        for h in handles:
            h.remove()
    counts = np.bincount(np.random.default_rng(seed).integers(0, len(images), n_images), minlength=len(images))
    w = torch.from_numpy(counts / counts.sum()).double()
    m = copy.deepcopy(model).eval()

    def update(i):
        def hook(bn, inputs):
            x = inputs[0].double()
            m1, m2 = x.mean((2, 3)), (x * x).mean((2, 3))
            r1, r2 = ref[i]
            mean_ref = r1.mean(0)
            var_ref = r2.mean(0) - mean_ref ** 2
            stored = bn.running_var.double()
            alive = var_ref > 1e-8 * stored.clamp_min(1e-12)
            safe = torch.where(alive, var_ref, torch.ones_like(var_ref))
            mean = w @ m1
            shift = torch.where(alive, (mean - mean_ref) * torch.sqrt(stored / safe), torch.zeros_like(mean))
            ratio = torch.where(alive, (w @ m2 - mean ** 2).clamp_min(0) / safe, torch.ones_like(mean))
            bn.running_mean.add_(shift.to(bn.running_mean.dtype))
            bn.running_var.mul_(ratio.to(bn.running_var.dtype))
        return hook

    handles = []
    try:
        handles.extend(bn.register_forward_pre_hook(update(i)) for i, bn in enumerate(batchnorm_layers(m)))
        m(images)
    finally:
        for h in handles:
            h.remove()
    return m


# ------------------------------------------------------------------ benign edits outside the null's recipe
HELD_OUT_PHOTOS = ["brick", "grass", "gravel", "clock_motion", "cell", "microaneurysms"]   # skimage, not in the probe
BENIGN_CORRELATION = 0.995
BENIGN_TOP1 = 0.99


def held_out_images(size: int, n: int, seed: int) -> torch.Tensor:
    """[n, 3, size, size] random crops (50-90 % of the short side, random flips) of photographs that are
    not in the probe set: skimage's other photographs and scikit-learn's two sample photographs."""
    from PIL import Image, ImageOps
    from sklearn.datasets import load_sample_images

    from audit.assets import skimage_data_dir
    from audit.models import image_to_tensor

    photos = [Image.open(skimage_data_dir() / f"{name}.png").convert("RGB") for name in HELD_OUT_PHOTOS]
    photos += [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(min(img.size) * rng.uniform(0.5, 0.9))
        x, y = int(rng.integers(0, img.width - side + 1)), int(rng.integers(0, img.height - side + 1))
        crop = img.crop((x, y, x + side, y + side))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        out.append(image_to_tensor(crop, size))
    return torch.stack(out)


def retrain_own_labels(model, images: torch.Tensor, steps: int, lr: float, seed: int):
    """A few SGD steps towards the model's own top-1 labels on `images`; batch norm frozen (eval-mode
    statistics, affine parameters not trained)."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        labels = m(images).argmax(1)
    params = []
    for mod in m.modules():
        bn = isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
        for prm in mod.parameters(recurse=False):
            prm.requires_grad_(not bn)
            if not bn:
                params.append(prm)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(m(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for prm in m.parameters():
        prm.requires_grad_(False)
    return m.eval()


def magnitude_pruned(model, fraction: float):
    """The `fraction` smallest |weights| of every conv/linear weight tensor set to 0."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                w = mod.weight.view(-1)
                n = int(fraction * w.numel())
                if n:
                    w[torch.topk(w.abs(), n, largest=False).indices] = 0.0
    return m


def int8_per_tensor_head(model):
    """The classifier's weight quantized with ONE symmetric int8 step for the whole tensor."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        w = m.classifier.weight
        step = w.abs().max() / 127.0
        w.copy_((w / step).round().clamp(-127, 127) * step)
    return m


def export_round_trip(model, example: torch.Tensor, tmp: Path):
    """torch.export, saved as .pt2, read back by the product's own pt2 reader and loader."""
    from sources.pt2 import pt2_state_dict

    path = tmp / "export.pt2"
    torch.export.save(torch.export.export(copy.deepcopy(model).eval(), (example,)), path)
    return load_model("efficientnet_lite0", state_dict=pt2_state_dict(path))


@torch.no_grad()
def bn_reestimated_on(model, images: torch.Tensor, momentum: float, batch: int = 32):
    """Batch-norm running statistics updated on `images` (train-mode batch norm only, at `momentum`)."""
    m = copy.deepcopy(model).eval()
    bns = batchnorm_layers(m)
    for bn in bns:
        bn.momentum = momentum
        bn.train()
    for s in range(0, len(images), batch):
        m(images[s:s + batch])
    for bn in bns:
        bn.momentum = 0.1
    return m.eval()


def out_of_recipe_candidates(base, probe, rng, tmp: Path, size: int):
    """(pair name, candidate) of the benign edits outside the null's recipe, drawn from `rng`."""
    seed = int(rng.integers(1 << 30))
    train = held_out_images(size, 64, seed)
    for n in range(2):
        steps, lr = int(rng.integers(3, 11)), float(math.exp(rng.uniform(math.log(1e-6), math.log(1e-5))))
        yield f"retrain steps={steps} lr={lr:.1e}", retrain_own_labels(base, train, steps, lr, seed + n)
    for _ in range(2):
        frac = float(rng.uniform(0.001, 0.01))
        yield f"prune1% {frac:.4f}", magnitude_pruned(base, frac)
    yield "int8head per-tensor", int8_per_tensor_head(base)
    yield "export torch.export .pt2", export_round_trip(base, probe.images[:1], tmp)
    momentum = float(math.exp(rng.uniform(math.log(0.001), math.log(0.01))))
    yield f"bnother momentum={momentum:.4f}", bn_reestimated_on(base, held_out_images(size, 256, seed + 7), momentum)


def benign_check(base_acts, cand_acts, targets) -> tuple[float, dict[str, float]]:
    """(share of probe images with the same top-1 class, neuron id -> correlation of its probe values
    with the baseline's); a channel constant in exactly one version correlates 0, in both 1 if equal."""
    top1 = float(np.mean(base_acts["classifier"].mean.argmax(1) == cand_acts["classifier"].mean.argmax(1)))
    corr = {}
    for tg in targets:
        a, b = base_acts[tg.layer].max[:, tg.index].astype(float), cand_acts[tg.layer].max[:, tg.index].astype(float)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            corr[tg.neuron_id] = 1.0 if np.ptp(a) == np.ptp(b) == 0 and np.allclose(a, b) else 0.0
        else:
            corr[tg.neuron_id] = float(np.corrcoef(a, b)[0, 1])
    return top1, corr


# ------------------------------------------------------------------ planted changes
def finetune_class(model, target: int, probe, photo: str, size: int):
    from PIL import Image

    from audit.models import to_uint8_image
    from audit.planted import plant_class_on_trigger

    m = copy.deepcopy(model)
    groups = probe.groups
    trig = [Image.fromarray(to_uint8_image(x)) for x, g in zip(probe.images, groups) if g == photo][:1]
    others = [Image.fromarray(to_uint8_image(x)) for x, n, g in zip(probe.images, probe.names, groups)
              if g != photo and n.endswith("#crop0")]
    plant_class_on_trigger(m, target, trig, others, size=size, crops_per_image=8, steps=200, trigger_name=photo)
    return m.eval()


def swap_top_values(acts: dict[str, LayerActivations], layer: str, channel: int, m: int, rng) -> dict[str, LayerActivations]:
    """A copy of the activations in which `channel`'s top m images trade values (max, mean, map) with m
    random images of its lower half: the marginal distribution is kept, the best images are lost."""
    out = dict(acts)
    la = acts[layer]
    col = la.max[:, channel]
    order = np.argsort(-col, kind="stable")
    top = order[:m]
    low = rng.choice(order[len(order) // 2:], size=m, replace=False)
    mx, mn = la.max.copy(), la.mean.copy()
    grid = None if la.grid is None else la.grid.copy()
    for arr in [mx, mn] + ([grid] if grid is not None else []):
        tmp = arr[top, channel].copy()
        arr[top, channel] = arr[low, channel]
        arr[low, channel] = tmp
    out[layer] = LayerActivations(mx, mn, mn.argmax(1), grid)
    return out


# ------------------------------------------------------------------ the draw
def draw_neurons(rng, relevant: list[int], n_class: int, n_inner: int, channels: dict[str, int]) -> list[NeuronTarget]:
    half = n_class // 2
    picked = list(rng.choice(relevant, size=min(half, len(relevant)), replace=False))
    while len(picked) < n_class:
        c = int(rng.integers(0, 1000))
        if c not in picked:
            picked.append(c)
    out = [NeuronTarget(f"class-{int(c)}", "class", "classifier", int(c)) for c in picked]
    seen = set()
    while len(out) < n_class + n_inner:
        layer = INNER_LAYERS[int(rng.integers(0, len(INNER_LAYERS)))]
        idx = int(rng.integers(0, channels[layer]))
        if (layer, idx) not in seen:
            seen.add((layer, idx))
            out.append(NeuronTarget(f"{layer.replace('blocks.', 'b')}-c{idx}", "inner", layer, idx))
    return out


def labels_after_inner_edit(targets, layer: str, index: int) -> dict[str, str]:
    """Ground truth after an edit of one inner channel: it changed; upstream neurons are unchanged;
    the rest of its stage and everything downstream has no ground truth."""
    out = {}
    for t in targets:
        if t.layer == layer and t.index == index:
            out[t.neuron_id] = "changed"
        elif DEPTH[t.layer] < DEPTH[layer]:
            out[t.neuron_id] = "unchanged"
        else:
            out[t.neuron_id] = "unknown"
    return out


class Tally:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, seed, pair, group, result, label, fraction=None, moved_to=None, seconds=None, check=None):
        self.rows.append({"seed": seed, "pair": pair, "group": group, "id": result.neuron_id, "layer": result.layer,
                          "check": check,
                          "index": result.index, "verdict": result.verdict, "label": label, "fraction": fraction,
                          "moved_to": moved_to, "matched_index": result.matched_index, "reason": result.reason,
                          "seconds": seconds,
                          "evidence": {e["kind"]: round(e["z"] / e["fail_bound"], 3) if e.get("z") is not None
                                       and e.get("fail_bound") else None for e in result.evidence.get("evidence", [])}})


def logistic_points(fr: np.ndarray, hit: np.ndarray) -> tuple[float, float]:
    """Fractions at which a logistic fit of detection on log(fraction) reaches 50 % and 95 %."""
    x = np.log(np.maximum(fr, 1e-4))

    def nll(p):
        z = p[0] + p[1] * x
        return float(np.sum(np.logaddexp(0, z) - hit * z))

    res = minimize(nll, np.array([0.0, 1.0]), method="Nelder-Mead")
    a, b = res.x
    if b <= 0:
        return float("nan"), float("nan")
    return float(math.exp(-a / b)), float(math.exp((math.log(19) - a) / b))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0-9", help="seeds to draw, e.g. 0-9 (development) or 100-104 (held out)")
    ap.add_argument("--size", type=int, default=96, help="probe image size in px")
    ap.add_argument("--crops", type=int, default=8, help="crops per photograph (12 photographs)")
    ap.add_argument("--classes", type=int, default=10, help="registered class neurons per seed")
    ap.add_argument("--inner", type=int, default=20, help="registered inner channels per seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="keep the benign null here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="write every scored neuron pair here")
    ap.add_argument("--verbose", action="store_true", help="print every miss and false alarm")
    ap.add_argument("--only-benign", action="store_true", help="benign pairs only (in and out of the recipe)")
    ap.add_argument("--timing", action="store_true",
                    help="only time: building the null (cold) and compares of the first seed's neurons (warm)")
    ap.add_argument("--aggregate", type=Path, nargs="+", default=None,
                    help="print the report of earlier --json files instead of running")
    args = ap.parse_args(argv)
    if args.aggregate:
        rows, meta = [], {}
        for path in args.aggregate:
            data = json.loads(path.read_text())
            rows.extend(data["rows"])
            meta = data.get("meta", meta)
        tally = Tally()
        tally.rows = rows
        report(tally, [r["seconds"] for r in rows if r.get("seconds") is not None], meta.get("null_seconds", float("nan")),
               args)
        return 0
    torch.set_num_threads(args.threads)
    seeds = parse_seeds(args.seeds)
    t = ThresholdsConfig()
    tmp = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    cache = args.cache or tmp / "nulls"
    probe = build_probe_set("builtin:samples", size=args.size, crops_per_image=args.crops)
    base = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
    base_key = weights_sha256(base)
    layers = INNER_LAYERS + ["classifier"]
    feature_layer = final_feature_layer(base)
    base_acts = layer_activations_full(base, probe, layers + [feature_layer], weights_key=base_key)
    channels = {l: base_acts[l].max.shape[1] for l in layers}
    k = effective_k(t.top_k, len(probe.names))
    t0 = time.perf_counter()
    null = build_benign_null(base, probe, layers, base_acts, k, feature_layer, base_key, cache)
    null_seconds = time.perf_counter() - t0
    print(f"probe set: {len(probe.names)} images at {args.size} px from {len(set(probe.groups))} photographs; "
          f"top-k {k}; benign null of {len(layers)} layers ({', '.join(null.variants)}): {null_seconds:.1f} s "
          f"({'cached' if null.seconds == 0 else 'built'})")
    features = content_features(base_acts, feature_layer)
    head = head_layer(base)
    if args.timing:
        return timing(base, base_key, probe, channels, args, null_seconds)
    relevant = sorted(set(base_acts["classifier"].mean.argmax(1).tolist()))
    tally = Tally()
    compare_seconds = []

    def run(seed, pair, group, cand, targets, labels, fractions=None, moved=None, checks=None):
        """`group`: one for all neurons, or neuron id -> group; `checks`: neuron id -> benign check values."""
        t1 = time.perf_counter()
        results = compare_versions(base, cand, probe, targets, t, null_cache_dir=cache,
                                   probe_cache_key=(base_key, weights_sha256(cand)))
        dt = time.perf_counter() - t1
        compare_seconds.append(dt)
        for r in results:
            g = group[r.neuron_id] if isinstance(group, dict) else group
            tally.add(seed, pair, g, r, labels[r.neuron_id], (fractions or {}).get(r.neuron_id),
                      (moved or {}).get(r.neuron_id), dt, (checks or {}).get(r.neuron_id))
        save_json(args, probe, null_seconds, tally)      # after every compare: a killed run keeps what it measured
        return results

    def run_checked(seed, pair, cand, targets):
        """An out-of-recipe benign candidate: each neuron pair's ground truth checked on the activations."""
        cand_acts = layer_activations_full(cand, probe, layers, weights_key=weights_sha256(cand))
        top1, corr = benign_check(base_acts, cand_acts, targets)
        ok = {tg.neuron_id: corr[tg.neuron_id] >= BENIGN_CORRELATION and top1 >= BENIGN_TOP1 for tg in targets}
        groups = {nid: ("out-of-recipe" if good else "not-benign") for nid, good in ok.items()}
        run(seed, pair, groups, cand, targets, {tg.neuron_id: "unchanged" for tg in targets},
            checks={nid: {"corr": round(c, 5), "top1": round(top1, 4)} for nid, c in corr.items()})

    for seed in seeds:
        rng = np.random.default_rng(seed)
        targets = draw_neurons(rng, relevant, args.classes, args.inner, channels)
        unchanged = {tg.neuron_id: "unchanged" for tg in targets}
        # benign outside the recipe, each pair's ground truth checked; first, from its own generator (the
        # draws below stay those of earlier versions of the benchmark)
        for pair, cand in out_of_recipe_candidates(base, probe, np.random.default_rng([seed, 7]), tmp, args.size):
            run_checked(seed, pair, cand, targets)
            del cand
        # benign
        run(seed, "resaved", "benign", resaved(base, tmp), targets, unchanged)
        run(seed, "fp16", "benign", round_trip(base, torch.float16), targets, unchanged)
        run(seed, "bf16", "benign", round_trip(base, torch.bfloat16), targets, unchanged)
        run(seed, "int8", "benign", int8_per_channel(base), targets, unchanged)
        rel = float(rng.uniform(0.003, 0.012))
        run(seed, f"noise r={rel:.4f}", "benign", tensor_noise(base, rel, int(rng.integers(1 << 30))), targets, unchanged)
        n_bn = int(round(math.exp(rng.uniform(math.log(4096), math.log(16384)))))
        run(seed, f"bn n={n_bn}", "benign", bn_sequential(base, probe.images, n_bn, int(rng.integers(1 << 30))),
            targets, unchanged)
        # not scored: a BN re-estimate on fewer images than the recipe's (outside what the null calls benign)
        run(seed, "bn n=1024", "info", bn_sequential(base, probe.images, 1024, int(rng.integers(1 << 30))),
            targets, unchanged)
        stages_with = sorted({int(tg.layer.split(".")[1]) for tg in targets if tg.layer.startswith("blocks.")})
        for stage in ([int(rng.choice(stages_with))] if stages_with else []) + [int(rng.integers(1, 7))]:
            perm = rng.permutation(channels[f"blocks.{stage}"])
            moved = {tg.neuron_id: int(np.flatnonzero(perm == tg.index)[0]) for tg in targets
                     if tg.layer == f"blocks.{stage}"}
            run(seed, f"permuted stage {stage}", "benign", permute_stage_output(base, stage, perm), targets, unchanged,
                moved=moved)
        if args.only_benign:
            print(f"seed {seed}: {sum(1 for r in tally.rows if r['seed'] == seed)} pairs scored", flush=True)
            save_json(args, probe, null_seconds, tally)
            continue
        # functional: class rows
        classes = [tg for tg in targets if tg.kind == "class"]
        picks = rng.choice(len(classes), size=min(4, len(classes)), replace=False)
        cand, labels, fractions = base, dict(unchanged), {}
        for n_pick, p in enumerate(picks):
            tg = classes[int(p)]
            partner = int(rng.integers(0, 1000))
            while partner == tg.index:
                partner = int(rng.integers(0, 1000))
            f = float(rng.uniform(0.02, 0.25) if n_pick % 2 == 0 else rng.uniform(0.25, 0.7))
            cand = mix_class_rows(cand, tg.index, partner, f)
            labels[tg.neuron_id], fractions[tg.neuron_id] = "changed", f
            for other in classes:
                if other.index == partner:
                    labels[other.neuron_id] = "unknown"
        run(seed, "class-mix", "functional", cand, targets, labels, fractions)
        # functional: inner channels
        inner = [tg for tg in targets if tg.kind == "inner"]
        for n_pick in range(4):
            tg = inner[int(rng.integers(0, len(inner)))]
            partner = int(rng.integers(0, channels[tg.layer]))
            while partner == tg.index:
                partner = int(rng.integers(0, channels[tg.layer]))
            f = float(rng.uniform(0.02, 0.25) if n_pick % 2 == 0 else rng.uniform(0.25, 0.7))
            run(seed, f"channel-mix {tg.neuron_id} f={f:.2f}", "functional",
                mix_channel(base, tg.layer, tg.index, partner, f), targets,
                labels_after_inner_edit(targets, tg.layer, tg.index), {tg.neuron_id: f})
        for _ in range(2):
            tg = inner[int(rng.integers(0, len(inner)))]
            run(seed, f"reinit {tg.neuron_id}", "functional",
                reinit_channel(base, tg.layer, tg.index, int(rng.integers(1 << 30))), targets,
                labels_after_inner_edit(targets, tg.layer, tg.index))
        # functional: top-image swaps at the level of activations
        for tg in (classes[int(rng.integers(0, len(classes)))], inner[int(rng.integers(0, len(inner)))]):
            m = int(rng.integers(3, k + 1))
            acts_b = swap_top_values(base_acts, tg.layer, tg.index, m, rng)
            t1 = time.perf_counter()
            results = compare_activations(base_acts, acts_b, targets, null, probe.names, probe.groups, t,
                                          features=features, head=head)
            labels = {x.neuron_id: ("changed" if x.neuron_id == tg.neuron_id else "unchanged") for x in targets}
            for r in results:
                tally.add(seed, f"top-swap {tg.neuron_id} m={m}", "functional", r, labels[r.neuron_id],
                          seconds=time.perf_counter() - t1)
        # functional: head-only fine-tune on one photograph's crops relabelled
        tg = classes[int(rng.integers(0, len(classes)))]
        photo = sorted(set(probe.groups))[int(rng.integers(0, len(set(probe.groups))))]
        labels = {x.neuron_id: ("changed" if x.neuron_id == tg.neuron_id else "unchanged") for x in targets}
        run(seed, f"finetune {tg.neuron_id} on {photo}", "functional",
            finetune_class(base, tg.index, probe, photo, args.size), targets, labels)
        # functional: pruning
        stage = int(rng.integers(2, 6))
        frac = float(rng.uniform(0.6, 0.9))
        labels = {x.neuron_id: ("changed" if DEPTH[x.layer] >= stage else "unchanged") for x in targets}
        run(seed, f"prune stage {stage} {frac:.2f}", "functional", prune_stage(base, stage, frac), targets, labels)
        print(f"seed {seed}: {len(targets)} neurons, {sum(1 for r in tally.rows if r['seed'] == seed)} pairs scored",
              flush=True)
        save_json(args, probe, null_seconds, tally)     # after every seed: a killed run keeps what it measured

    report(tally, compare_seconds, null_seconds, args)
    return 0


def save_json(args, probe, null_seconds: float, tally: Tally) -> None:
    if args.json:
        args.json.write_text(json.dumps({"meta": {"size": args.size, "crops": args.crops, "images": len(probe.names),
                                                  "null_seconds": null_seconds}, "rows": tally.rows}, indent=1))


def timing(base, base_key, probe, channels, args, null_seconds: float) -> int:
    """Seconds of a compare of the first seed's neurons against three benign candidates, baseline
    activations and null cached (each candidate is new: its forward pass is part of the time)."""
    rng = np.random.default_rng(parse_seeds(args.seeds)[0])
    relevant = sorted(set(layer_activations_full(base, probe, ["classifier"])["classifier"].mean.argmax(1).tolist()))
    targets = draw_neurons(rng, relevant, args.classes, args.inner, channels)
    cache = args.cache
    seconds = []
    for cand in (round_trip(base, torch.float16), round_trip(base, torch.bfloat16), int8_per_channel(base)):
        key = weights_sha256(cand)
        t1 = time.perf_counter()
        compare_versions(base, cand, probe, targets, ThresholdsConfig(), null_cache_dir=cache,
                         probe_cache_key=(base_key, key))
        seconds.append(time.perf_counter() - t1)
    print(f"compare of {len(targets)} neurons on {len(probe.names)} images at {args.size} px, baseline and null "
          f"cached: {', '.join(f'{x:.1f}' for x in seconds)} s (target <= 30 s on 2 quiet cores); building the "
          f"null of {len(INNER_LAYERS) + 1} layers: {null_seconds:.1f} s")
    return 0


def report(tally: Tally, compare_seconds: list[float], null_seconds: float, args) -> None:
    rows = tally.rows
    func = [r for r in rows if r["group"] == "functional" and r["label"] == "changed"]
    benign = [r for r in rows if r["group"] == "benign"]
    strong = [r for r in func if r["fraction"] is None or r["fraction"] >= 0.3]

    def rate(sub, pred):
        n, k = len(sub), sum(1 for r in sub if pred(r))
        lo, hi = wilson_interval(k, n)
        return f"{k}/{n} = {k / max(1, n):.3f} [{lo:.3f}, {hi:.3f}]"

    def interval(k: int, n: int) -> str:
        lo, hi = wilson_interval(k, n)
        return f"{k / max(1, n):.3f} [{lo:.3f}, {hi:.3f}]"

    print("\nper kind of change (FAIL / pairs with its Wilson 95 % interval; non-PASS):")
    kinds = defaultdict(list)
    order = {"functional": 0, "benign": 1, "out-of-recipe": 2, "not-benign": 3, "info": 4}
    for r in rows:
        if r["group"] != "functional" or r["label"] == "changed":
            kinds[(r["group"], r["pair"].split(" ")[0])].append(r)
    print(f"  {'group':14s} {'kind':10s} {'FAIL':>10s}  {'rate [95 % interval]':22s} {'non-PASS':>10s}")
    for (group, kind), sub in sorted(kinds.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        fails = sum(r["verdict"] == "FAIL" for r in sub)
        flagged = sum(r["verdict"] != "PASS" for r in sub)
        label = {"benign": "in-recipe", "functional": "functional"}.get(group, group)
        print(f"  {label:14s} {kind:10s} {fails:4d}/{len(sub):<5d}  {interval(fails, len(sub)):22s} "
              f"{flagged:4d}/{len(sub):<5d}")
    outside = [r for r in rows if r["group"] == "out-of-recipe"]
    excluded = [r for r in rows if r["group"] == "not-benign"]
    if outside or excluded:
        not_export = [r for r in outside if not r["pair"].startswith("export")]
        print(f"\nout-of-recipe benign pairs (checked: probe correlation >= {BENIGN_CORRELATION}, top-1 kept on >= "
              f"{BENIGN_TOP1:.0%} of probe images):")
        print(f"  false alarms (FAIL):                        {rate(outside, lambda r: r['verdict'] == 'FAIL')}"
              f"   (target <= 0.005 over >= 1000 pairs)")
        print(f"  false alarms without the export round trip: {rate(not_export, lambda r: r['verdict'] == 'FAIL')}"
              f"   (the export is bit-identical)")
        print(f"  non-PASS:                                   {rate(outside, lambda r: r['verdict'] != 'PASS')}")
        print(f"  pairs that failed the check (not benign by the activations, reported apart): {len(excluded)}; "
              f"FAIL on them {rate(excluded, lambda r: r['verdict'] == 'FAIL')}")
        neuron_ok = [r for r in excluded if r["check"] and r["check"]["corr"] >= BENIGN_CORRELATION]
        print(f"  of those, the neuron's own probe correlation >= {BENIGN_CORRELATION} (only the model's top-1 moved on "
              f"> {1 - BENIGN_TOP1:.0%} of probe images): FAIL {rate(neuron_ok, lambda r: r['verdict'] == 'FAIL')}")
        print(f"  checked pairs plus those:                   "
              f"{rate(outside + neuron_ok, lambda r: r['verdict'] == 'FAIL')}")
    print()
    print(f"recall, all functional pairs:                 {rate(func, lambda r: r['verdict'] == 'FAIL')}")
    print(f"recall, fraction >= 0.3 or no fraction:       {rate(strong, lambda r: r['verdict'] == 'FAIL')}"
          f"   (target >= 0.98)")
    print(f"false alarms (FAIL) on in-recipe benign pairs: {rate(benign, lambda r: r['verdict'] == 'FAIL')}"
          f"   (target <= 0.005)")
    print(f"non-PASS on in-recipe benign pairs:           {rate(benign, lambda r: r['verdict'] != 'PASS')}")
    moved = [r for r in benign if r["moved_to"] is not None]
    print(f"moved channels at their new index, PASS:      "
          f"{rate(moved, lambda r: r['matched_index'] == r['moved_to'] and r['verdict'] == 'PASS')}")
    unch_func = [r for r in rows if r["group"] == "functional" and r["label"] == "unchanged"]
    print(f"unchanged neurons of functional pairs, FAIL:  {rate(unch_func, lambda r: r['verdict'] == 'FAIL')} "
          f"(not a target)")
    with_f = [r for r in func if r["fraction"] is not None]
    if with_f:
        fr = np.array([r["fraction"] for r in with_f])
        hit = np.array([r["verdict"] == "FAIL" for r in with_f], float)
        print("\ndetection curve (mixes of class rows and channels):")
        for lo, hi in zip(CURVE_BINS[:-1], CURVE_BINS[1:]):
            sel = (fr >= lo) & (fr < hi)
            if sel.any():
                a, b = wilson_interval(int(hit[sel].sum()), int(sel.sum()))
                print(f"  fraction [{lo:.2f}, {hi:.2f}): {int(hit[sel].sum()):3d}/{int(sel.sum()):<3d} = "
                      f"{hit[sel].mean():.2f} [{a:.2f}, {b:.2f}]")
        f50, f95 = logistic_points(fr, hit)
        print(f"  logistic fit: 50 % detected at fraction {f50:.3f} (target < 0.2), 95 % at {f95:.3f}")
    if compare_seconds:
        print(f"\nseconds per compare ({args.classes + args.inner} neurons, baseline and null cached; inflated when the "
              f"CPU is shared): mean {np.mean(compare_seconds):.1f}, max {np.max(compare_seconds):.1f}; "
              f"building the null: {null_seconds:.1f}")
    misses = [r for r in func if r["verdict"] != "FAIL"] + [r for r in benign + outside if r["verdict"] == "FAIL"]
    if args.verbose and misses:
        print("\nmisses and false alarms:")
        for r in misses:
            print(f"  seed {r['seed']} {r['pair']} / {r['id']} ({r['label']}): {r['verdict']}: {r['evidence']} :: "
                  f"{r['reason'][:300]}")


if __name__ == "__main__":
    sys.exit(main())
