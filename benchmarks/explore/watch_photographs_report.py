# Exploration script of docs/benchmarks-watch.md (writes/reads /tmp/wexp/acts.npz); not part of the product.
import sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import numpy as np
from collections import Counter
from audit.config import WatchConfig
from audit.watch import ReferenceWindow, image_units, judge_batch
from audit.records import NeuronTarget
z = np.load("/tmp/wexp/acts.npz"); N = len(z["names"])
K, seed = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(seed)
INNER = ["blocks.1","blocks.2","blocks.3","blocks.4","blocks.5","conv_head"]
nrng = np.random.default_rng(2)
targets = [NeuronTarget(f"{l}-c{c}", "inner", l, int(c)) for l in INNER for c in sorted(nrng.choice(z[f"clean|{l}|max"].shape[1], 2, replace=False))]
logit = z["clean|classifier|mean"]
targets += [NeuronTarget(f"logit-{c}", "class", "classifier", int(c)) for c in sorted(set(logit.argmax(1)[-15:].tolist()))[:6]]
LAYERS = INNER + ["bn2"]
def vals(v, idx): return np.stack([z[f"{v}|{t.layer}|{'mean' if t.kind=='class' else 'max'}"][idx, t.index] for t in targets], 1)
tally = {v: Counter() for v in ["clean","blur4","swap","jpeg5"]}
t0 = time.time()
for k in range(K):
    o = rng.permutation(N); ref, held = o[:50], o[50:100]
    w = ReferenceWindow(vals("clean", ref), image_units(50), [str(i) for i in ref], "folder", layers={l: z[f"clean|{l}|mean"][ref] for l in LAYERS})
    for v, t in tally.items():
        jb = judge_batch(vals(v, held), w, targets, [str(i) for i in held], WatchConfig(seed=k), batch_layers={l: z[f"{v}|{l}|mean"][held] for l in LAYERS})
        nf = sum(n.verdict == "FAIL" for n in jb.neurons)
        t["batches"] += 1; t["nb"] += len(targets); t["nf"] += nf; t["bf"] += jb.verdict == "FAIL"
        t["anyn"] += nf > 0; t["joint"] += jb.joint["verdict"] == "FAIL"; t["layers"] += jb.layers["verdict"] == "FAIL"
        t["without"] += nf > 0 or jb.joint["verdict"] == "FAIL"
print(f"{N} photographs, {len(targets)} neurons, layers {LAYERS}, {K} splits seed {seed}, {time.time()-t0:.0f} s")
for v, t in tally.items(): print(v, dict(t))
