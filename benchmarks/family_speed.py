"""Step cost per architecture family against a bare forward+backward, in one process
(`benchmarks/fv_speed.py --families`).

For each family of the issue-17 matrix (tests/archs/families.py: random init, 10 classes), at one
resolution, with VITAL's default taps:

* bare      - forward + backward of the model on one image (input gradient only, weights frozen);
* class     - a VITAL paper-form loss step: the taps captured, the forward stopped after the deepest
              tap, sort-matching against reference quantiles (4096 positions), backward;
* LRP       - a VITAL relevance-form loss step with `audit.relevance.relevance_pass`: one forward
              (to the target), the LRP backward to the taps, the taps weighted by min-max relevance,
              the sort-matching loss and its backward. For a class target (the data-driven class
              form) and an inner target (a channel of the middle default tap);
* 2-pass    - the same step as `audit.vital` ran it before: `tap_relevance` (its own forward and
              backward) and then a separate paper-form step;
* LRP eps   - the LRP step (class target) with the epsilon rule on convolutions instead of z+.

Each cost is the median over interleaved rounds (every variant once per round), so that load on
the machine hits all variants alike; the ratios are what to read.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "archs"))

from families import FAMILIES, build_model  # noqa: E402

from audit.layouts import channels_first  # noqa: E402
from audit.relevance import relevance_pass, tap_relevance  # noqa: E402
from audit.sortmatch import resample_sorted, sort_matching_loss, sorted_reference  # noqa: E402
from audit.taps import capture, default_taps, describe_layers, layer_channels, output_layer_name  # noqa: E402

try:
    from audit.contentkeys import vital_default_taps  # noqa: E402
except ImportError:
    from audit.vital import vital_default_taps  # noqa: E402


class _Stop(Exception):
    pass


def _forward(model, x, stop: str | None) -> None:
    handle = model.get_submodule(stop.split(":")[0]).register_forward_hook(_raise) if stop else None
    try:
        model(x)
    except _Stop:
        pass
    finally:
        if handle is not None:
            handle.remove()


def _raise(*_):
    raise _Stop


def _minmax(t: torch.Tensor) -> torch.Tensor:
    t = t - t.amin(-1, keepdim=True)
    return t / (t.amax(-1, keepdim=True) + 1e-6)


def family_steps(key: str, resolution: int, rounds: int, samples: int = 4096) -> dict[str, float]:
    """Median seconds of each step variant for one family."""
    fam = FAMILIES[key]
    if "img_size" in fam.model_args:
        fam = type(fam)(fam.key, fam.architecture, {**fam.model_args, "img_size": resolution}, resolution, fam.slow)
    model = build_model(fam, None)
    for p in model.parameters():
        p.requires_grad_(False)
    taps = vital_default_taps(model)
    head = output_layer_name(model)
    middle = default_taps(model)[len(default_taps(model)) // 2]
    inner_index = layer_channels(model, middle) // 2
    order = {n: i for i, n in enumerate(describe_layers(model))}
    deepest_tap = max(taps, key=lambda t: order.get(t, -1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, resolution, resolution, generator=g).requires_grad_(True)
    with torch.no_grad(), capture(model, taps, detach=True) as acts:
        model(torch.randn(4, 3, resolution, resolution, generator=g))
    refs = {t: resample_sorted(sorted_reference(channels_first(acts[t]).float()).unsqueeze(0),
                               min(samples, channels_first(acts[t]).shape[-1])) for t in taps}

    def loss_of(feats, rel=None):
        total = 0
        for t in taps:
            a = channels_first(feats[t]).float()
            if rel is not None:
                a = a * _minmax(channels_first(rel[t]).float())
            total = total + sort_matching_loss(a, refs[t], n_samples=samples, generator=g)
        return total.sum()

    def bare():
        model(x).sum().backward()

    def class_step():
        with capture(model, taps) as a:
            _forward(model, x, deepest_tap)
        loss_of(a).backward()

    def lrp_step(target, index, conv_rule="zplus"):
        stop = max([target] + taps, key=lambda t: order.get(t.split(":")[0], -1))

        def step():
            with relevance_pass(model, taps, [target], conv_rule=conv_rule) as rp:
                _forward(model, x, None if target == head else stop)
                rel = rp.relevance([target], [index])
                loss_of(rp.activations, rel).backward()
        return step

    def two_pass():
        rel = tap_relevance(model, x.detach(), head, 3, taps)
        with capture(model, taps) as a:
            _forward(model, x, deepest_tap)
        loss_of(a, rel).backward()

    variants = [("bare", bare), ("class", class_step), ("lrp_class", lrp_step(head, 3)),
                ("lrp_inner", lrp_step(middle, inner_index)), ("two_pass", two_pass),
                ("lrp_eps", lrp_step(head, 3, "epsilon"))]
    for _, fn in variants:          # warm-up (rule plans, layouts, allocator)
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(rounds):
        for name, fn in variants:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out = {name: statistics.median(v) for name, v in times.items()}
    out["middle"] = middle           # type: ignore[assignment]
    return out


def families_table(keys: list[str] | None, resolution: int, token_resolution: int, rounds: int) -> None:
    keys = keys or list(FAMILIES)
    print(f"# step cost per family, {torch.get_num_threads()} threads, median of {rounds} interleaved rounds; "
          f"CNNs at {resolution} px, token models built with img_size={token_resolution}\n")
    print("| family | px | bare fwd+bwd (ms) | class step | LRP step, class target | LRP step, inner target "
          "| 2-pass LRP (before) | LRP step, epsilon convs |")
    print("|---|---|---|---|---|---|---|---|")
    for key in keys:
        fam = FAMILIES[key]
        res = token_resolution if "img_size" in fam.model_args else resolution
        r = family_steps(key, res, rounds)
        b = r["bare"]
        print(f"| {fam.architecture} | {res} | {b * 1e3:.1f} | {r['class'] / b:.2f}x | {r['lrp_class'] / b:.2f}x | "
              f"{r['lrp_inner'] / b:.2f}x ({r['middle']}) | {r['two_pass'] / b:.2f}x | {r['lrp_eps'] / b:.2f}x |",
              flush=True)
