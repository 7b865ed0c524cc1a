"""Dashboard speed at fleet size, and the cost of re-auditing an unchanged version.

1. Generates a fleet store through the repository API (benchmarks/fleet_store.py: 20 models x 30
   versions x 30 neurons, each new version compared with its predecessor and with the champion, 983
   open alerts), and the same fleet with 10 versions. Both are cached under benchmarks/.cache/ (keyed
   by the sizes, the seed and the generator's version; newer migrations are applied to a cached fleet);
   --rebuild makes them anew.
2. Times every dashboard page in-process (FastAPI TestClient, no network): cold (the first request
   of a fresh app over a fresh store object) and warm (median of --repeat requests; wall time, and the
   process's CPU time, which a loaded machine inflates less), and counts the
   SQL statements each page sends (SQLAlchemy `before_cursor_execute` listener), at 10 and at 30
   versions: a page whose count grows with history has an N+1 query.
3. Times `neuron-audit run` on an unchanged version (a real audit of the built-in Lite0 at low
   resolution in a temporary folder, run twice: the second run finds everything stored), with the
   MLflow run count and artifact bytes before and after. --skip-run leaves it out.

    OMP_NUM_THREADS=1 timeout 3000 .venv/bin/python benchmarks/fleet_bench.py [--repeat 7] [--skip-run]

Seconds depend on the machine and its load; query counts and page sizes do not.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fleet_store import GENERATOR_VERSION, build_fleet  # noqa: E402


# --------------------------------------------------------------------------- the fleet store (cached)
def fleet_store(cache: Path, models: int, versions: int, neurons: int, alerts: int, seed: int,
                rebuild: bool) -> tuple[Path, dict]:
    """The folder of a generated fleet (audit.db + artifacts/) and what the generation wrote and took."""
    from storage.repository import AuditStore

    key = hashlib.sha256(json.dumps([models, versions, neurons, alerts, seed, GENERATOR_VERSION]).encode()).hexdigest()[:12]
    folder = cache / f"fleet-{models}x{versions}x{neurons}-{key}"
    stamp = folder / "generated.json"
    if stamp.is_file() and not rebuild:
        AuditStore(f"sqlite:///{folder / 'audit.db'}", folder / "artifacts", upgrade=True).close()  # newer migrations
        return folder, json.loads(stamp.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    store = AuditStore(f"sqlite:///{folder / 'audit.db'}", folder / "artifacts", upgrade=True)
    t0 = time.perf_counter()
    done = build_fleet(store, models, versions, neurons, open_alerts=alerts, seed=seed,
                       progress=lambda v, n: print(f"  night {v}/{n}  {time.perf_counter() - t0:6.0f} s",
                                                   file=sys.stderr, flush=True))
    info = {**done.__dict__, "seconds": round(time.perf_counter() - t0, 1), "rows": store.counts()}
    store.close()
    stamp.write_text(json.dumps(info, indent=1))
    return folder, info


# --------------------------------------------------------------------------- page timings
@contextmanager
def counting_queries(engine):
    """A list that receives one entry per SQL statement sent on `engine` inside the block."""
    from sqlalchemy import event

    seen: list[str] = []

    def on_execute(conn, cursor, statement, params, context, executemany):
        if not statement.lstrip().upper().startswith(("BEGIN", "PRAGMA", "COMMIT", "ROLLBACK")):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


def bench_pages(folder: Path, pages: dict[str, str], repeat: int) -> dict[str, dict]:
    """Per page: cold and warm seconds, SQL statements per request, response bytes, status."""
    from fastapi.testclient import TestClient

    from dashboards.app import create_app
    from storage.repository import AuditStore

    out: dict[str, dict] = {}
    for name, url in pages.items():
        store = AuditStore(f"sqlite:///{folder / 'audit.db'}", folder / "artifacts")
        with TestClient(create_app(store, folder / "artifacts")) as client, counting_queries(store.engine) as q:
            t0 = time.perf_counter()
            r = client.get(url)
            cold = time.perf_counter() - t0
            n_queries = len(q)
            warm, cpu = [], []
            for _ in range(repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                r = client.get(url)
                warm.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        store.close()
        out[name] = {"url": url, "status": r.status_code, "cold_s": cold, "warm_s": statistics.median(warm),
                     "cpu_s": statistics.median(cpu), "queries": n_queries, "kb": len(r.content) / 1024}
    return out


def page_urls(folder: Path) -> dict[str, str]:
    """The pages to time: one model with an open alert, its neuron, its latest and champion compares."""
    from storage.repository import AuditStore

    store = AuditStore(f"sqlite:///{folder / 'audit.db'}", folder / "artifacts")
    try:
        alert = store.open_alerts()[0]
        model, nid = alert["model"], alert["neuron_id"]
        versions = [v["version"] for v in store.list_versions(model)]
    finally:
        store.close()
    last, prev = versions[-1], versions[-2]
    return {
        "overview": "/",
        "overview, alerts page 2": "/?alerts_page=2",
        "model": f"/models/{model}",
        "model, only FAIL": f"/models/{model}?verdict=FAIL",
        "neuron": f"/models/{model}/neurons/{nid}",
        "compare (latest)": f"/models/{model}/compare/{prev}/{last}",
        "compare (vs champion)": f"/models/{model}/compare/1/{last}",
        "compare (picked A/B)": f"/models/{model}/compare/{versions[len(versions) // 2]}/{last}",
    }


# --------------------------------------------------------------------------- an unchanged version's audit
UNCHANGED_CONFIG = """\
store:
  database: sqlite:///./store/audit.db
  mlflow_tracking_uri: sqlite:///./store/mlflow.db
  artifacts: ./store/artifacts
models:
  - name: lite0-fleet
    architecture: efficientnet_lite0
    champion: "1"
    versions:
      - {version: "1", source: "builtin:efficientnet_lite0"}
    probe_set: builtin:samples
    probe: {crops_per_image: 2, resolution: 64}
    visualization: {resolution: 64, steps: 4, seeds: [0]}
    neurons:
      - {id: espresso, kind: class, layer: classifier, index: 967, references: top-k}
      - {id: b5-c17, kind: inner, layer: blocks.5, index: 17}
"""


def _mlflow_state(folder: Path) -> tuple[int, int, int]:
    """(MLflow runs, bytes in the MLflow runs' artifact folders, bytes of the audit store's files) of the
    benchmark folder; database files are not counted (rows are not "logged bytes")."""
    import sqlite3
    from urllib.parse import unquote, urlsplit

    db = folder / "store" / "mlflow.db"
    runs, roots = 0, set()
    if db.is_file():
        with sqlite3.connect(db) as c:
            uris = [u for (u,) in c.execute("SELECT artifact_uri FROM runs").fetchall() if u]
        runs = len(uris)
        for u in uris:
            path = Path(unquote(urlsplit(u).path)) if u.startswith("file:") else Path(u)
            roots.add(path if path.is_absolute() else folder / path)

    def size(root: Path) -> int:
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0

    resolved = [r.resolve() for r in roots]
    store = sum(p.stat().st_size for p in (folder / "store").rglob("*")
                if p.is_file() and not p.name.endswith((".db", ".db-wal", ".db-shm"))
                and not any(p.resolve().is_relative_to(r) for r in resolved))
    return runs, sum(size(r) for r in roots), store


def bench_unchanged_run(timeout: float) -> dict:
    """Seconds of the first `neuron-audit run` and of an immediate re-run; the MLflow runs, MLflow artifact bytes
    and audit-store bytes each added."""
    folder = Path(tempfile.mkdtemp(prefix="fleet-bench-run-"))
    (folder / "neuron-audit.yaml").write_text(UNCHANGED_CONFIG)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "audit", "run", "-c", str(folder / "neuron-audit.yaml")]
    out = {}
    try:
        for name in ("first", "unchanged"):
            before = _mlflow_state(folder)
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
            seconds = time.perf_counter() - t0
            after = _mlflow_state(folder)
            out[name] = {"exit": r.returncode, "seconds": seconds, "new_mlflow_runs": after[0] - before[0],
                         "bytes_logged": after[1] - before[1], "store_bytes": after[2] - before[2],
                         "tail": (r.stdout + r.stderr).strip().splitlines()[-1:] if r.returncode not in (0, 1) else []}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--versions", type=int, default=30)
    ap.add_argument("--short-versions", type=int, default=10, help="the shorter history the query counts compare with")
    ap.add_argument("--neurons", type=int, default=30)
    ap.add_argument("--alerts", type=int, default=983)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cache", type=Path, default=HERE / ".cache")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--skip-run", action="store_true", help="leave out the unchanged-version audit")
    ap.add_argument("--run-timeout", type=float, default=900)
    args = ap.parse_args()

    results = {}
    for versions in (args.short_versions, args.versions):
        alerts = round(args.alerts * (versions - 1) / (args.versions - 1))
        folder, info = fleet_store(args.cache, args.models, versions, args.neurons, alerts, args.seed, args.rebuild)
        print(f"fleet {args.models} models x {versions} versions x {args.neurons} neurons: "
              f"{info['drift_rows']} comparisons of a neuron, {info['alerts']} open alerts, "
              f"generated in {info['seconds']:.0f} s ({folder.name})")
        results[versions] = bench_pages(folder, page_urls(folder), args.repeat)

    short, full = results[args.short_versions], results[args.versions]
    print(f"\n| page | cold s | warm s | warm CPU s | KB | SQL statements at {args.short_versions} / {args.versions} versions |")
    print("|---|---|---|---|---|---|")
    for name, r in full.items():
        s = short.get(name, {})
        flag = "" if s.get("queries") == r["queries"] else "  (grows)"
        status = "" if r["status"] == 200 else f" (HTTP {r['status']})"
        print(f"| {name}{status} | {r['cold_s']:.3f} | {r['warm_s']:.3f} | {r['cpu_s']:.3f} | {r['kb']:.0f} | "
              f"{s.get('queries', '?')} / {r['queries']}{flag} |")
    worst = max(full.values(), key=lambda r: r["warm_s"])
    print(f"\nslowest warm page: {worst['url']} {worst['warm_s'] * 1000:.0f} ms wall, {worst['cpu_s'] * 1000:.0f} ms CPU "
          "(target <= 200 ms)")

    if not args.skip_run:
        print("\nneuron-audit run on an unchanged version (Lite0, 2 neurons, 64 px):")
        runs = bench_unchanged_run(args.run_timeout)
        for name, r in runs.items():
            print(f"  {name:9s} exit {r['exit']}  {r['seconds']:6.1f} s  new MLflow runs {r['new_mlflow_runs']}  "
                  f"MLflow artifact bytes {r['bytes_logged']}  store bytes {r['store_bytes']}"
                  + (f"  {r['tail'][0]}" if r["tail"] else ""))
        if "first" in runs and "unchanged" in runs:
            print(f"  unchanged / first: {runs['unchanged']['seconds'] / runs['first']['seconds']:.2f}x "
                  "(target: < 3 s, 0 bytes, 0 new MLflow runs)")


if __name__ == "__main__":
    main()
