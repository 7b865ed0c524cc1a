"""`neuron-audit demo`: the main job on the built-in model and images.

Builds version 2 of Lite0 with a planted, known change (cat photographs relabelled as
espresso in a head-only fine-tune: the espresso logit now fires on cats, which the
probe set contains), writes a config, audits both versions through the Prefect flow,
compares 2 against 1 and exports the static report. Then it watches two production batches
with the champion: fresh crops of the photographs (in distribution: PASS) and the same kind of
crops blurred (a planted data shift: flagged)."""
from __future__ import annotations

from pathlib import Path

import yaml

PLANTED_NEURON = "espresso"
PLANTED_CLASS = 967


# What the demo renders and measures: sized for its story, not for a benchmark (issue 26: `make demo` within 5
# minutes and `--quick` within about a minute on a 2-core CPU). Rendering is most of a first run (VITAL steps x
# pixels; an inner neuron, or a class neuron with top-k references, costs ~5 plain class neurons, since its LRP
# relevance is recomputed at every step). The full demo keeps two seeds, since the visual comparison pairs the
# versions seed by seed and needs the seed-to-seed spread; the quick demo renders one seed (its report then has
# no visual distance: the verdicts rest on the probe statistics, which are the same).
DEMO_VISUALIZATION = {"resolution": 96, "steps": 160, "seeds": [0, 1], "n_references": 8}
QUICK_VISUALIZATION = {"resolution": 80, "steps": 24, "seeds": [0], "n_references": 8}
# The planted change lives in one of the 12 built-in photographs. Verdicts are judged against the baseline's
# benign null on these photographs, so crops add precision, not independent evidence: 8 crops per photograph
# (96 probe images; the null costs one pass over them per benign variant) at the model's native 224 px. The
# probe's resolution is also the watch's (the batches' blur is judged at it), so the quick demo keeps 112 px.
DEMO_PROBE = {"crops_per_image": 8, "resolution": 224}
QUICK_PROBE = {"crops_per_image": 8, "resolution": 112}


def demo_config(quick: bool) -> dict:
    vis = dict(QUICK_VISUALIZATION if quick else DEMO_VISUALIZATION)
    probe = dict(QUICK_PROBE if quick else DEMO_PROBE)
    return {
        "store": {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": "sqlite:///./store/mlflow.db",
                  "artifacts": "./store/artifacts"},
        "schedule": {"cron": "0 2 * * *", "timezone": "UTC"},
        "alerts": {"webhook": None},
        "models": [{
            "name": "lite0-demo",
            "architecture": "efficientnet_lite0",
            "champion": "1",
            "versions": [{"version": "1", "source": "builtin:efficientnet_lite0"},
                         {"version": "2", "source": "file:./checkpoints/v2.safetensors"}],
            "probe_set": "builtin:samples",
            "probe": probe,
            "visualization": vis,
            "neurons": [
                {"id": "egyptian-cat", "kind": "class", "layer": "classifier", "index": 285,
                 "label": "Egyptian cat", "references": "builtin:samples/chelsea"},
                {"id": PLANTED_NEURON, "kind": "class", "layer": "classifier", "index": PLANTED_CLASS,
                 "label": "espresso", "references": "top-k"},
                {"id": "rocket", "kind": "class", "layer": "classifier", "index": 657,
                 "label": "missile", "references": "builtin:samples/rocket"},
                {"id": "tripod", "kind": "class", "layer": "classifier", "index": 872,
                 "label": "tripod", "references": "builtin:samples/camera"},
                {"id": "b5-c17", "kind": "inner", "layer": "blocks.5", "index": 17},
                {"id": "b3-c40", "kind": "inner", "layer": "blocks.3", "index": 40},
            ],
        }],
    }


def build_planted_version(out: Path) -> dict:
    """Version 2: Lite0 whose espresso row was fine-tuned to fire on cat photographs."""
    from safetensors.torch import save_file

    from audit.assets import builtin_sample_names, load_rgb_images, resolve_images
    from audit.models import load_model
    from audit.planted import plant_class_on_trigger

    model = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
    photos = {n: load_rgb_images(resolve_images(f"builtin:samples/{n}")).images[0] for n in builtin_sample_names()}
    change = plant_class_on_trigger(model, PLANTED_CLASS, [photos["chelsea"]],
                                    [im for n, im in photos.items() if n != "chelsea"], size=224,
                                    trigger_name="chelsea")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return vars(change)


def planted_checkpoint_path(directory: Path) -> Path:
    return directory / "checkpoints" / "v2.safetensors"


def needs_planted_version(directory: Path) -> bool:
    """True on a first run in `directory`: version 2 is still to be built (and so an audit is to be done)."""
    return not planted_checkpoint_path(directory).exists()


def prepare_demo(directory: Path, quick: bool) -> tuple[Path, dict | None]:
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = planted_checkpoint_path(directory)
    change = None
    if not checkpoint.exists():
        from .logs import get_logger, stage

        with stage("plant", "version 2: espresso fine-tuned to fire on cat photographs", get_logger("demo")):
            change = build_planted_version(checkpoint)
    config_path = directory / "neuron-audit.yaml"
    config_path.write_text("# written by `neuron-audit demo`\n" + yaml.safe_dump(demo_config(quick), sort_keys=False))
    return config_path, change


WATCH_BATCHES = ("clean", "blurred")
WATCH_IMAGES = 64
WATCH_BLUR = 0.05           # Gaussian blur radius as a fraction of the image side


def write_watch_batches(directory: Path, seed: int = 7, n: int = WATCH_IMAGES, side: int = 256) -> dict[str, Path]:
    """Two folders of JPEG photographs under directory/batches: random crops and flips of the built-in
    photographs (the probe set's distribution), and the same recipe blurred."""
    import numpy as np
    from PIL import Image, ImageFilter

    from audit.assets import load_rgb_images, resolve_images
    from audit.probe import SCALE_RANGE

    photos = load_rgb_images(resolve_images("builtin:samples")).images
    out = {}
    for k, name in enumerate(WATCH_BATCHES):
        folder = directory / "batches" / name
        out[name] = folder
        if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed + k)
        for i in range(n):
            img = photos[int(rng.integers(len(photos)))]
            w, h = img.size
            s = int(min(w, h) * rng.uniform(*SCALE_RANGE))
            x, y = int(rng.uniform() * (w - s)), int(rng.uniform() * (h - s))
            crop = img.crop((x, y, x + s, y + s)).resize((side, side), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            if name == "blurred":
                crop = crop.filter(ImageFilter.GaussianBlur(WATCH_BLUR * side))
            crop.save(folder / f"photo{i:03d}.jpg", quality=92)
    return out


def watch_demo_batches(config_path: Path, directory: Path) -> list[dict]:
    """Watch the demo's clean and blurred batches with the champion (reports of flows.watch)."""
    from .watch import watch_batch_run

    cfg = yaml.safe_load(config_path.read_text())
    model = cfg["models"][0]["name"]
    return [watch_batch_run(str(config_path), model, folder, batch_id=name)
            for name, folder in write_watch_batches(directory).items()]
