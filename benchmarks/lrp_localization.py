"""Does relevance land where the target channel fires? One figure per LRP conv rule.

For the built-in (ImageNet-trained) EfficientNet-Lite models: probe crops of the sample photographs
(2 per photograph at 96 px), the 6 channels of a target layer that fire most on them, and for each
channel and crop the correlation between the channel's own activation map and the relevance that
`audit.relevance.tap_relevance` assigns at a lower tap (summed over channels, pooled to the target's
grid). Higher is better: relevance that follows the evidence. Lite0 is the model the rules were
chosen on; Lite1/Lite2 are held out.

    .venv/bin/python benchmarks/lrp_localization.py [--models efficientnet_lite0,efficientnet_lite2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from audit.lrp_rules import CONV_RULES  # noqa: E402
from sources import load_model  # noqa: E402
from audit.probe import build_probe_set  # noqa: E402
from audit.relevance import tap_relevance  # noqa: E402
from audit.taps import capture  # noqa: E402

PAIRS = (("blocks.4", "blocks.2"), ("blocks.5", "blocks.3"), ("blocks.3", "blocks.1"))


def localization(model, x: torch.Tensor, target: str, tap: str, rule: str, channels: int = 6) -> float:
    with torch.no_grad(), capture(model, [target], detach=True) as acts:
        model(x)
    act = acts[target].clamp(min=0)
    top = torch.argsort(act.flatten(2).amax(-1).mean(0), descending=True)[:channels].tolist()
    corr = []
    for index in top:
        rel = tap_relevance(model, x, target, index, [tap], conv_rule=rule)[tap].sum(1, keepdim=True)
        r = F.adaptive_avg_pool2d(rel, act.shape[-2:]).flatten(1).numpy()
        a = act[:, index].flatten(1).numpy()
        corr += [np.corrcoef(r[i], a[i])[0, 1] for i in range(len(x)) if a[i].std() > 0 and r[i].std() > 0]
    return float(np.nanmean(corr))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args()
    x = build_probe_set("builtin:samples", size=args.size, crops_per_image=2).images
    print(f"| model | target <- tap | {' | '.join(CONV_RULES)} |")
    print("|---|---|" + "---|" * len(CONV_RULES))
    for name in args.models.split(","):
        model = load_model(name, f"builtin:{name}")
        for target, tap in PAIRS:
            row = [localization(model, x, target, tap, rule) for rule in CONV_RULES]
            print(f"| {name} | {target} <- {tap} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
