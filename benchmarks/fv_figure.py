"""A labelled grid of feature visualizations (rows: methods, columns: classes) from the images
`fv_quality.py --save-images DIR` writes (DIR/<method>_<class>_seed<S>.png).

    .venv/bin/python benchmarks/fv_figure.py DIR docs/fv-methods-lite0.png [--seed 0] [--size 200] \
        [--classes coffee,chelsea,rocket,camera]

Columns are named by the class's first photograph (fv_quality.py names its images so), e.g.
`--classes moon,motorcycle_left` for held-out classes.

Several DIRs may be given (the first that has an image wins), e.g. a VITAL-only run next to a
run of the baselines.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

METHODS = ("vital", "fourier", "maco", "deepinversion")
CLASSES = ("coffee", "chelsea", "rocket", "camera")


def find(dirs: list[Path], method: str, cls: str, seed: int) -> Path | None:
    return next((d / f"{method}_{cls}_seed{seed}.png" for d in dirs if (d / f"{method}_{cls}_seed{seed}.png").is_file()),
                None)


def compose(dirs: list[Path], out: Path, seed: int = 0, size: int = 200, label_w: int = 70, label_h: int = 18,
            classes: tuple[str, ...] = CLASSES) -> None:
    rows = [m for m in METHODS if any(find(dirs, m, c, seed) for c in classes)]
    if not rows:
        raise SystemExit(f"no images <method>_<class>_seed{seed}.png in {', '.join(map(str, dirs))}")
    grid = Image.new("RGB", (label_w + size * len(classes), label_h + size * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for j, c in enumerate(classes):
        draw.text((label_w + j * size + 4, 3), c, fill="black")
    for i, m in enumerate(rows):
        draw.text((6, label_h + i * size + size // 2 - 6), m, fill="black")
        for j, c in enumerate(classes):
            path = find(dirs, m, c, seed)
            if path is not None:
                img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
                grid.paste(img, (label_w + j * size, label_h + i * size))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"wrote {out} ({', '.join(rows)} x {', '.join(classes)}, seed {seed})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="image folders, then the output PNG last")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--classes", default=",".join(CLASSES), help="columns: class photograph names")
    args = ap.parse_args()
    if len(args.dirs) < 2:
        ap.error("give at least one image folder and the output PNG")
    compose(args.dirs[:-1], args.dirs[-1], seed=args.seed, size=args.size,
            classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()))


if __name__ == "__main__":
    main()
