"""Drift-verdict benchmark: pairs of EfficientNet-Lite0 versions with a known ground truth.

Benign pairs (every neuron must PASS):
  resaved     the same weights written to a file and loaded again
  fp16        weights rounded to float16 and back
  noise       Gaussian noise of `--noise` x each weight tensor's std on conv/linear weights
  bn-recal    batch-norm statistics re-estimated on `--bn-images` (1024) images of the training
              distribution. ImageNet is not on this machine, so the re-estimate is simulated
              with its real source of error, the sample: `--bn-images` probe images are drawn
              with replacement, BN layers are re-estimated one after the other on that sample
              (as a real re-estimate runs), and each layer's stored statistics move by the
              sample's deviation from the original network's moments on the probe set.
  permuted    stage blocks.5's output channels permuted together with every consumer's
              inputs (same function; registered blocks.5 channels must report their new index)
Not scored (shown for information; real changes of function, which the audit should flag):
  bn-probe    batch-norm running statistics recalibrated on the 15 probe photographs as
              train-mode BN does (momentum 0.1 per batch of 64, one pass): more than half of
              the ImageNet statistics are replaced by those of 15 unrelated photographs
  bn-full     batch-norm statistics estimated from scratch on the probe images only
Functional changes (labelled neurons must FAIL):
  reinit      the filters of two registered channels (blocks.4[60], blocks.6[200]) redrawn at
              the same norm. changed: those two; unchanged: neurons upstream of blocks.4;
              other neurons are downstream of a modified channel: no ground truth, not scored.
  swap        classifier rows 285 and 967 swapped. changed: those two logits; unchanged: the rest.
  shortcut    head row of class 417 fine-tuned (audit.planted) to fire on a checkerboard
              patch pasted into 3 of the probe photographs. changed: logit 417; unchanged: the rest.
  prune       90 % of the weights (smallest magnitude) of every conv in stage blocks.4 zeroed.
              changed: blocks.4 and everything downstream; unchanged: upstream neurons.

Prints, per pair, the verdict counts and timing, then recall on functional changes,
false-alarm rate on benign neuron pairs (any non-PASS counts; FAIL-only also shown), and
seconds per compare.

    timeout 900 .venv/bin/python benchmarks/drift_bench.py [--size 224] [--crops 34]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.assets import builtin_sample_names, load_rgb_images, resolve_images  # noqa: E402
from audit.config import ThresholdsConfig  # noqa: E402
from audit.drift import compare_versions  # noqa: E402
from audit.models import load_model  # noqa: E402
from audit.probe import build_probe_set  # noqa: E402
from audit.records import NeuronTarget
from audit.surgery import permute_stage_output, swap_class_rows  # noqa: E402
from audit.stats import activation_cache  # noqa: E402

CLASSES = {"egyptian-cat": 285, "tabby": 281, "tiger-cat": 282, "espresso": 967, "coffee-mug": 504,
           "balloon": 417, "space-shuttle": 812, "scooter": 670, "moped": 665, "missile": 657}
INNER = {"blocks.1": [4, 20], "blocks.2": [3, 17, 30], "blocks.3": [5, 40, 71], "blocks.4": [11, 60, 100],
         "blocks.5": [17, 90, 150, 180], "blocks.6": [7, 100, 200, 310], "bn2": [500]}
DEPTH = {"blocks.1": 1, "blocks.2": 2, "blocks.3": 3, "blocks.4": 4, "blocks.5": 5, "blocks.6": 6, "bn2": 7,
         "classifier": 8}
PATCHED = ("rocket", "motorcycle_left", "astronaut")
SHORTCUT_CLASS = 417


def targets() -> list[NeuronTarget]:
    out = [NeuronTarget(k, "class", "classifier", v) for k, v in CLASSES.items()]
    for layer, idx in INNER.items():
        out += [NeuronTarget(f"{layer.replace('blocks.', 'b')}-c{i}", "inner", layer, i) for i in idx]
    return out


# ------------------------------------------------------------------ probe images
def checkerboard(side: int, cells: int = 6) -> Image.Image:
    y, x = np.indices((side, side)) * cells // side
    board = ((x + y) % 2).astype(bool)
    arr = np.zeros((side, side, 3), np.uint8)
    arr[board] = (255, 0, 255)
    arr[~board] = (0, 255, 0)
    return Image.fromarray(arr)


def with_patch(img: Image.Image) -> Image.Image:
    img = img.copy()
    side = int(0.4 * min(img.size))
    img.paste(checkerboard(side), ((img.width - side) // 2, (img.height - side) // 2))
    return img


def probe_folder(root: Path) -> tuple[Path, list[Image.Image], list[Image.Image]]:
    """The built-in photographs plus copies of three of them with the shortcut patch."""
    folder = root / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    clean, patched = [], []
    for name in builtin_sample_names():
        img = load_rgb_images(resolve_images(f"builtin:samples/{name}")).images[0]
        img.save(folder / f"{name}.png")
        clean.append(img)
        if name in PATCHED:
            p = with_patch(img)
            p.save(folder / f"{name}_patched.png")
            patched.append(p)
    return folder, clean, patched


# ------------------------------------------------------------------ version builders
def resaved(model, tmp: Path):
    path = tmp / "resaved.pt"
    torch.save(model.state_dict(), path)
    return load_model("efficientnet_lite0", f"file:{path}")


def fp16(model):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for t in m.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return m


def weight_noise(model, rel: float, seed: int = 1):
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                w = mod.weight
                w.add_(torch.randn(w.shape, generator=g) * rel * w.std())
    return m


def bn_reestimated(model, images: torch.Tensor, batch: int = 64, momentum: float | None = 0.1, passes: int = 1):
    """Batch-norm running statistics updated on the probe images as train-mode BN does
    (momentum 0.1 per batch: PyTorch's default recalibration). momentum=None: estimated from
    scratch as a cumulative average over the probe images only."""
    m = copy.deepcopy(model)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        if momentum is None:
            bn.reset_running_stats()
        bn.momentum = momentum
    m.eval()
    for bn in bns:
        bn.train()
    with torch.no_grad():
        for _ in range(passes):
            for i in range(0, len(images), batch):
                m(images[i:i + batch])
    return m.eval()


def _bn_moments(model, images: torch.Tensor, batch: int | None, on_input=None) -> dict:
    """Per-image first and second moments [images, C] at the input of every BN layer; `on_input(bn,
    m1, m2)` may update that layer's statistics before it normalizes (sequential re-estimation)."""
    bns = [mod for mod in model.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    out = {bn: ([], []) for bn in bns}

    def hook(bn, inputs):
        x = inputs[0]
        m1, m2 = x.mean((2, 3)).double(), (x * x).mean((2, 3)).double()
        out[bn][0].append(m1)
        out[bn][1].append(m2)
        if on_input is not None:
            on_input(bn, m1, m2)

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    try:
        with torch.no_grad():
            step = batch or len(images)
            for i in range(0, len(images), step):
                model(images[i:i + step])
    finally:
        for h in handles:
            h.remove()
    return {bn: (torch.cat(a), torch.cat(b)) for bn, (a, b) in out.items()}


def bn_resampled(model, images: torch.Tensor, n_images: int = 1024, seed: int = 3):
    """Batch-norm statistics as a re-estimate on `n_images` training images would give them.

    The sample is `n_images` draws with replacement from `images` (which stand in for the
    training distribution's image-to-image variation). The re-estimate runs layer by layer, as a
    real one does: each BN layer measures its input on the partly re-estimated network over the
    whole sample, and its stored statistics move by the sample's deviation from what the
    original network shows on `images` (mean: shift; variance: ratio). With every image drawn
    equally often the model is unchanged; what remains is the sampling error."""
    m = copy.deepcopy(model).eval()
    orig = _bn_moments(model.eval(), images, batch=64)
    reference = {}
    for bn_new, (m1, m2) in zip([b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)],
                                orig.values()):
        mean = m1.mean(0)
        reference[bn_new] = (mean, m2.mean(0) - mean ** 2)
    counts = np.bincount(np.random.default_rng(seed).integers(0, len(images), n_images), minlength=len(images))
    w = torch.from_numpy(counts / counts.sum()).double()

    def reestimate(bn, m1, m2):
        mean_ref, var_ref = reference[bn]
        mean = w @ m1
        var = w @ m2 - mean ** 2
        bn.running_mean.add_((mean - mean_ref).to(bn.running_mean.dtype))
        bn.running_var.mul_((var / var_ref.clamp_min(1e-12)).to(bn.running_var.dtype))

    _bn_moments(m, images, batch=None, on_input=reestimate)     # whole sample in one batch: layer by layer
    return m


def reinit_channels(model, chans: list[tuple[int, int]], seed: int = 2):
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for stage, c in chans:
            for blk in m.blocks[stage]:           # every block writing the channel of the stage's stream
                row = blk.conv_pwl.weight[c]
                new = torch.randn(row.shape, generator=g)
                row.copy_(new * row.norm() / new.norm())
    return m


def shortcut(model, clean, patched, size: int):
    from audit.planted import plant_class_on_trigger

    m = copy.deepcopy(model)
    info = plant_class_on_trigger(m, SHORTCUT_CLASS, patched, clean, size=size, crops_per_image=12, steps=300,
                                  trigger_name="checkerboard")
    return m.eval(), info


def prune_stage(model, stage: int, fraction: float):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in m.blocks[stage].modules():
            if isinstance(mod, torch.nn.Conv2d):
                w = mod.weight
                k = int(fraction * w.numel())
                thr = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= thr] = 0.0
    return m


# ------------------------------------------------------------------ scoring
def labels_for(pair: str, tg: list[NeuronTarget]) -> dict[str, str]:
    """neuron_id -> 'changed' | 'unchanged' | 'unknown' for one pair."""
    out = {}
    for t in tg:
        d = DEPTH[t.layer]
        if pair in ("resaved", "fp16", "noise", "bn-recal", "permuted"):
            lab = "unchanged"
        elif pair in ("bn-probe", "bn-full"):
            lab = "unknown"       # statistics of 15 photographs replace ImageNet's: a real change, not scored
        elif pair == "reinit":
            lab = "changed" if (t.layer, t.index) in (("blocks.4", 60), ("blocks.6", 200)) else \
                ("unchanged" if d < DEPTH["blocks.4"] else "unknown")
        elif pair == "swap":
            lab = "changed" if t.kind == "class" and t.index in (285, 967) else "unchanged"
        elif pair == "shortcut":
            lab = "changed" if t.kind == "class" and t.index == SHORTCUT_CLASS else "unchanged"
        elif pair == "prune":
            lab = "changed" if d >= DEPTH["blocks.4"] else "unchanged"
        else:
            raise ValueError(pair)
        out[t.neuron_id] = lab
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224, help="probe image size in px (default 224, Lite0's input)")
    ap.add_argument("--crops", type=int, default=34, help="crops per photograph (15 photographs; 34 -> 510 images)")
    ap.add_argument("--noise", type=float, default=0.01, help="benign weight noise, relative to each tensor's std")
    ap.add_argument("--prune", type=float, default=0.9, help="fraction of stage blocks.4's conv weights zeroed")
    ap.add_argument("--bn-images", type=int, default=1024,
                    help="size of the simulated training sample the bn-recal pair re-estimates BN on")
    ap.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default: ThresholdsConfig)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the per-neuron results here")
    ap.add_argument("--verbose", action="store_true", help="print every non-PASS and every scored miss")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    thresholds = ThresholdsConfig() if args.bootstrap is None else ThresholdsConfig(bootstrap=args.bootstrap)
    tg = targets()
    tmp = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    folder, clean, patched = probe_folder(tmp)
    t0 = time.perf_counter()
    probe = build_probe_set(str(folder), size=args.size, crops_per_image=args.crops)
    print(f"probe set: {len(probe.names)} images at {args.size} px from {len(set(probe.groups))} photographs "
          f"({time.perf_counter() - t0:.1f} s); {len(tg)} neurons "
          f"({sum(t.kind == 'class' for t in tg)} class, {sum(t.kind == 'inner' for t in tg)} inner)")
    base = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
    perm = np.random.default_rng(5).permutation(192)

    builders = [
        ("resaved", "benign", lambda: resaved(base, tmp)),
        ("fp16", "benign", lambda: fp16(base)),
        ("noise", "benign", lambda: weight_noise(base, args.noise)),
        ("bn-recal", "benign", lambda: bn_resampled(base, probe.images, n_images=args.bn_images)),
        ("bn-probe", "info", lambda: bn_reestimated(base, probe.images, momentum=0.1)),
        ("bn-full", "info", lambda: bn_reestimated(base, probe.images, momentum=None)),
        ("permuted", "benign", lambda: permute_stage_output(base, 5, perm)),
        ("reinit", "functional", lambda: reinit_channels(base, [(4, 60), (6, 200)])),
        ("swap", "functional", lambda: swap_class_rows(base, 285, 967)),
        ("shortcut", "functional", lambda: shortcut(base, clean, patched, args.size)[0]),
        ("prune", "functional", lambda: prune_stage(base, 4, args.prune)),
    ]
    rows, all_results, times = [], {}, []
    tp = fn = fa = fa_fail = n_benign = fa_func = n_unch_func = 0
    perm_ok = perm_total = 0
    misses: list[str] = []
    activation_cache().clear()
    for name, group, build in builders:
        cand = build()
        t1 = time.perf_counter()
        results = compare_versions(base, cand, probe, tg, thresholds)
        dt = time.perf_counter() - t1
        times.append(dt)
        labels = labels_for(name, tg)
        counts = {"PASS": 0, "WARN": 0, "FAIL": 0}
        for r in results:
            counts[r.verdict] += 1
            lab = labels[r.neuron_id]
            if lab == "changed":
                if r.verdict == "FAIL":
                    tp += 1
                else:
                    fn += 1
                    misses.append(f"{name}/{r.neuron_id}: {r.verdict}: {r.reason}")
            elif lab == "unchanged":
                if group == "benign":
                    n_benign += 1
                    fa += r.verdict != "PASS"
                    fa_fail += r.verdict == "FAIL"
                else:
                    n_unch_func += 1
                    fa_func += r.verdict != "PASS"
                if r.verdict != "PASS":
                    misses.append(f"{name}/{r.neuron_id} (unchanged): {r.verdict}: {r.reason}")
            if name == "permuted" and r.layer == "blocks.5":
                perm_total += 1
                perm_ok += r.matched_index == int(np.flatnonzero(perm == r.index)[0]) and r.verdict == "PASS"
        n_changed = sum(v == "changed" for v in labels.values())
        n_unknown = sum(v == "unknown" for v in labels.values())
        det = sum(1 for r in results if labels[r.neuron_id] == "changed" and r.verdict == "FAIL")
        rho = [r.statistics.get("spearman") for r in results]
        med = float(np.median([v for v in rho if v is not None])) if any(v is not None for v in rho) else float("nan")
        rows.append((name, group, counts, f"{det}/{n_changed}" if n_changed else "-", n_unknown, med, dt))
        all_results[name] = [{"id": r.neuron_id, "verdict": r.verdict, "label": labels[r.neuron_id],
                              "matched_index": r.matched_index, "reason": r.reason,
                              "statistics": {k: v for k, v in r.statistics.items()
                                             if k in ("spearman", "topk_jaccard", "wasserstein_norm")}}
                             for r in results]
        if args.verbose:
            for r in results:
                if r.verdict != "PASS" or labels[r.neuron_id] == "changed":
                    print(f"    {name:9s} {r.neuron_id:14s} {labels[r.neuron_id]:9s} {r.verdict}: {r.reason}")
        del cand

    # a cold compare: both versions' activations computed (no cache), 30 neurons
    activation_cache().clear()
    cold_b = fp16(base)
    t2 = time.perf_counter()
    compare_versions(base, cold_b, probe, tg, thresholds)
    cold = time.perf_counter() - t2

    print()
    print(f"{'pair':10s} {'kind':11s} {'PASS':>5s} {'WARN':>5s} {'FAIL':>5s} {'detected':>9s} {'unscored':>9s} {'median rho':>11s} {'s/compare':>10s}")
    for name, group, c, det, unk, med, dt in rows:
        print(f"{name:10s} {group:11s} {c['PASS']:5d} {c['WARN']:5d} {c['FAIL']:5d} {det:>9s} {unk:9d} {med:11.3f} "
              f"{dt:10.1f}")
    recall = tp / max(1, tp + fn)
    print()
    print(f"recall on functional changes:        {tp}/{tp + fn} = {recall:.3f}   (target >= 0.95)")
    print(f"false alarms on benign neuron pairs: {fa}/{n_benign} = {fa / max(1, n_benign):.3%} non-PASS, "
          f"{fa_fail}/{n_benign} FAIL   (target <= 1%)")
    print(f"false alarms on unchanged neurons of functional pairs: {fa_func}/{n_unch_func}")
    print(f"permuted channels re-identified (matched_index right, PASS): {perm_ok}/{perm_total}")
    print(f"seconds per compare: mean {np.mean(times):.1f} (baseline cached), cold {cold:.1f} "
          f"({len(tg)} neurons, {len(probe.names)} images; target < 120)")
    if misses:
        print("\nmisses and false alarms:")
        for m in misses:
            print("  " + m)
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=1))
    ok = recall >= 0.95 and fa / max(1, n_benign) <= 0.01 and cold < 120 and perm_ok == perm_total
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
