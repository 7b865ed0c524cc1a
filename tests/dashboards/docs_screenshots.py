"""Retake the README's dashboard screenshots (docs/screenshots/*.png) from a store, in headless Chromium.

    neuron-audit demo                                   # or any audited config
    PYTHONPATH=. .venv/bin/python tests/dashboards/docs_screenshots.py \\
        -c neuron-audit-demo/neuron-audit.yaml --out docs/screenshots

Serves the dashboard of the config on a free loopback port (read-only, no UI links unless given) and
saves model-page.png (the first model), neuron-page.png (its first FAIL neuron, else its first neuron)
and inner-neuron-page.png (its first inner neuron). The pages' footer names the store by its file name
only, so no machine path ends up in the docs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import Chromium, find_chromium, running_server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", required=True, help="neuron-audit.yaml of an audited store")
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    ap.add_argument("--model", help="the model to show (default: the first)")
    args = ap.parse_args()

    from audit.config import load_config
    from dashboards.app import create_app
    from storage.repository import AuditStore

    cfg = load_config(args.config)
    store = AuditStore(cfg.store.database, str(cfg.resolve_path(cfg.store.artifacts)))
    model = args.model or store.list_models()[0]["name"]
    rows = store.neuron_verdicts(model)
    fail = next((r for r in rows if r.get("verdict") == "FAIL"), rows[0])
    inner = next((r for r in rows if r.get("kind") == "inner"), rows[-1])
    pages = {"model-page": f"/models/{model}", "neuron-page": f"/models/{model}/neurons/{fail['neuron_id']}",
             "inner-neuron-page": f"/models/{model}/neurons/{inner['neuron_id']}"}
    chromium = find_chromium()
    if not chromium:
        sys.exit("chromium is not installed (`make system-deps`)")
    app = create_app(store, cfg.resolve_path(cfg.store.artifacts))
    with running_server(app) as base, Chromium(chromium) as browser:
        for name, path in pages.items():
            r = browser.check(base + path, args.out / f"{name}.png")
            if r["status"] != 200 or r["broken_images"]:
                sys.exit(f"{path}: HTTP {r['status']}, broken images {r['broken']}")
            print(f"{args.out / (name + '.png')}  ({path})")
    store.close()


if __name__ == "__main__":
    main()
