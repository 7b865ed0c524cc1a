"""Evidently's embedding drift on the splits of `data_drift_bench.py --stream photographs`: the anchor
its table puts next to `watch`.

Runs in its own interpreter (Evidently's pins conflict with the project's): `make bench-deps` builds
`.venv-evidently` with the pinned Evidently. It never imports the project: it reads an npz the
benchmark wrote from the same forward pass `watch` judged (the model's pooled embedding, i.e. the
spatial mean of the final feature layer, for every photograph and every shift) and the split indices,
and writes a json of flags per method, shift and split:

    .venv-evidently/bin/python benchmarks/evidently_anchor.py EMBEDDINGS.npz OUT.json

Methods (Evidently 0.7, `evidently.legacy.metrics.data_drift.embedding_drift_methods`):
  model   EmbeddingsDriftMetric's default: `model(bootstrap=n_reference < 1000)`, a domain
          classifier between reference and batch (bootstrap: its ROC AUC against the 95% quantile of
          the AUCs under shuffled labels);
  mmd     `mmd()` with its defaults as a user would pass it (no bootstrap: drift when MMD² > 0.015).

npz keys: `variants` (names), `emb|<variant>` [photographs, dim], `reference` and `held_out`
[splits, n] photograph indices.
"""
from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

from evidently.legacy.metrics.data_drift.embedding_drift_methods import mmd, model  # noqa: E402


def main(npz_path: str, out_path: str) -> None:
    z = np.load(npz_path)
    variants = [str(v) for v in z["variants"]]
    reference, held_out = z["reference"], z["held_out"]
    clean = z["emb|clean"]
    cols = [f"e{i}" for i in range(clean.shape[1])]
    out = {"methods": {"model": "model(bootstrap=n_reference < 1000) (EmbeddingsDriftMetric default)",
                       "mmd": "mmd() defaults (threshold 0.015, no bootstrap)"},
           "flags": {m: {v: [] for v in variants} for m in ("model", "mmd")}}
    t0 = time.perf_counter()
    for k in range(len(reference)):
        ref = pd.DataFrame(clean[reference[k]], columns=cols)
        for v in variants:
            cur = pd.DataFrame(z[f"emb|{v}"][held_out[k]], columns=cols)
            for name, method in (("model", model(bootstrap=len(ref) < 1000)), ("mmd", mmd())):
                _score, drift, _ = method(cur, ref)
                out["flags"][name][v].append(bool(drift))
        if (k + 1) % 10 == 0:
            print(f"  evidently: {k + 1}/{len(reference)} splits, {time.perf_counter() - t0:.0f} s", flush=True)
    import evidently

    out["evidently_version"] = evidently.__version__
    out["seconds"] = time.perf_counter() - t0
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
