"""Folders and a config for timing one `neuron-audit watch` call on new photographs
(docs/benchmarks-watch.md): 50 reference and 50 batch photographs of the data_drift_bench
photograph set (needs Debian's tuxpaint-stamps-default), Lite0 at its input size (224 px).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/watch_call_setup.py /tmp/wtime
    /usr/bin/time -f "wall %e s" .venv/bin/neuron-audit watch -c /tmp/wtime/cfg/neuron-audit.yaml \\
        --model lite0 --images /tmp/wtime/batch --batch-id t1 --json /tmp/wtime/r1.json
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "watch"))

from watch_testlib import write_config  # noqa: E402


def main(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location("data_drift_bench", ROOT / "benchmarks" / "data_drift_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    photos, _ = bench.real_photographs()
    order = np.random.default_rng(3).permutation(len(photos))
    for name, idx in (("reference", order[:50]), ("batch", order[50:100])):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in idx:
            bench.centre_square(photos[i], 320).save(root / name / f"p{i:03d}.jpg", quality=92)
    cfg = write_config(root / "cfg", watch={"reference": str(root / "reference")})
    c = yaml.safe_load(cfg.read_text())
    c["models"][0]["probe"]["resolution"] = None          # the model's input size
    cfg.write_text(yaml.safe_dump(c, sort_keys=False))
    return cfg


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/wtime")))
