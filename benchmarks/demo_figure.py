"""The README's figure of the demo: each neuron's VITAL visualization (seed 0) in every version,
side by side, read from the store of an audited config.

    .venv/bin/python benchmarks/demo_figure.py neuron-audit-demo/neuron-audit.yaml docs/demo-visualizations.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.runtime import config, store  # noqa: E402


def compose(config_path: str, out: Path, size: int = 160, per_row: int = 3, label_h: int = 16) -> None:
    cfg = config(config_path)
    st = store(config_path)
    tiles: list[tuple[str, Image.Image]] = []
    for model in cfg.models:
        for neuron in model.neurons:
            history = st.neuron_history(model.name, neuron.id)
            for v in (history or {}).get("versions", []):
                viz = next((z for z in v["visualizations"] if z["method"] == "vital" and z["seed"] == 0), None)
                if viz is not None:
                    img = Image.open(st.artifact_path(viz["image_path"])).convert("RGB").resize((size, size))
                    tiles.append((f"{neuron.id} v{v['version']}", img))
    if not tiles:
        raise SystemExit(f"no stored VITAL visualizations for the models of {config_path}; run the audit first")
    versions = max(1, len({t.rsplit(' v', 1)[1] for t, _ in tiles}))
    cols = per_row * versions
    rows = -(-len(tiles) // cols)
    grid = Image.new("RGB", (cols * size, rows * (size + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for k, (label, img) in enumerate(tiles):
        x, y = (k % cols) * size, (k // cols) * (size + label_h)
        draw.text((x + 3, y + 2), label, fill="black")
        grid.paste(img, (x, y + label_h))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"wrote {out} ({len(tiles)} images)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=160)
    args = ap.parse_args()
    compose(args.config, args.out, size=args.size)


if __name__ == "__main__":
    main()
