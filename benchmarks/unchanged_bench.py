"""What an unchanged re-run costs, and how fast a run stops on SIGTERM (issue 14 item 1, issue 16).

Measures, each as a real `neuron-audit` process from a cold start:
  1. the quick demo's first run, then its unchanged re-run: wall seconds and their ratio
     (target <= 0.1x), new MLflow runs and bytes written by the re-run (target 0 and 0);
  2. `neuron-audit run --version 2` of an unchanged version: wall seconds (target < 3 s), new
     MLflow runs, new artifact and MLflow bytes, whether torch/Prefect/MLflow were imported;
  3. SIGTERM: a fresh audit of the same config is sent SIGTERM once its first results are stored;
     seconds until the process exits, its exit code, the run's stored status.

Seconds depend on the machine's load: say how loaded it was when reporting them (`uptime`).

    python benchmarks/unchanged_bench.py [--dir /tmp/unchanged-bench] [--full]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
       "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def mlflow_runs(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        return con.execute("select count(*) from runs").fetchone()[0]
    finally:
        con.close()


def store_snapshot(store: Path) -> dict:
    return {"mlflow_runs": mlflow_runs(store / "mlflow.db"), "artifact_bytes": tree_bytes(store / "artifacts"),
            "mlflow_artifact_bytes": tree_bytes(store / "mlartifacts")}


def timed(args: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env or ENV, cwd=REPO)
    return time.perf_counter() - t0, r


IMPORT_PROBE = ("import sys\nfrom flows.cli import main\ncode = 0\ntry:\n    main(sys.argv[1:])\n"
                "except SystemExit as e:\n    code = e.code\n"
                "print('HEAVY=' + ','.join(m for m in ('torch', 'timm', 'prefect', 'mlflow') if m in sys.modules),"
                " file=sys.stderr)\nsys.exit(code)\n")


def sigterm_latency(config: Path, work: Path) -> dict:
    """A fresh audit of `config`'s models in a copy, SIGTERM after its first stored statistics."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    text = config.read_text().replace("./store/", f"{work}/store/").replace("./checkpoints/", f"{config.parent}/checkpoints/")
    cfg = work / "neuron-audit.yaml"
    cfg.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "audit", "run", "-c", str(cfg)], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    db = work / "store" / "audit.db"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if db.exists() and sqlite3.connect(db).execute("select count(*) from activation_stats").fetchone()[0]:
                break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    if proc.poll() is not None:
        return {"error": f"the run ended before it could be stopped (code {proc.returncode})"}
    t0 = time.perf_counter()
    os.killpg(proc.pid, signal.SIGTERM)          # the whole group, as systemd and `docker stop` of a shell do
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return {"error": "did not stop within 120 s"}
    stopped = time.perf_counter() - t0
    status = sqlite3.connect(db).execute("select status from audit_runs order by id desc").fetchone()[0]
    return {"seconds_to_exit": round(stopped, 2), "exit_code": proc.returncode, "run_status": status}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/neuron-audit-unchanged-bench"))
    ap.add_argument("--full", action="store_true", help="the full demo instead of --quick")
    ap.add_argument("--skip-sigterm", action="store_true")
    a = ap.parse_args()
    if a.dir.exists():
        shutil.rmtree(a.dir)
    demo_dir = a.dir / "demo"
    demo = ["-m", "audit", "demo", "--dir", str(demo_dir), "--no-progress"] + ([] if a.full else ["--quick"])
    load = os.getloadavg()
    first_s, r1 = timed(demo)
    if r1.returncode not in (0, 1):
        sys.exit(f"first demo run failed ({r1.returncode}): {r1.stderr[-2000:]}")
    store = demo_dir / "store"
    before = store_snapshot(store)
    again_s, r2 = timed(demo)
    after = store_snapshot(store)
    cfg = demo_dir / "neuron-audit.yaml"
    env = {k: v for k, v in ENV.items() if k != "PREFECT_API_URL"}
    version_s, r3 = timed(["-c", IMPORT_PROBE, "run", "-c", str(cfg), "--version", "2"], env=env)
    after3 = store_snapshot(store)
    heavy = next((line.split("=", 1)[1] for line in r3.stderr.splitlines() if line.startswith("HEAVY=")), "?")
    result = {
        "load_average_at_start": [round(x, 2) for x in load],
        "demo": "full" if a.full else "quick",
        "demo_first_run_s": round(first_s, 2), "demo_first_exit": r1.returncode,
        "demo_unchanged_rerun_s": round(again_s, 2), "demo_rerun_exit": r2.returncode,
        "rerun_ratio": round(again_s / first_s, 3),
        "rerun_new_mlflow_runs": after["mlflow_runs"] - before["mlflow_runs"],
        "rerun_new_artifact_bytes": after["artifact_bytes"] - before["artifact_bytes"],
        "rerun_new_mlflow_artifact_bytes": after["mlflow_artifact_bytes"] - before["mlflow_artifact_bytes"],
        "unchanged_version_run_s": round(version_s, 2), "unchanged_version_exit": r3.returncode,
        "unchanged_version_new_mlflow_runs": after3["mlflow_runs"] - after["mlflow_runs"],
        "unchanged_version_new_bytes": (after3["artifact_bytes"] + after3["mlflow_artifact_bytes"]
                                        - after["artifact_bytes"] - after["mlflow_artifact_bytes"]),
        "unchanged_version_heavy_imports": heavy or "none",
    }
    if not a.skip_sigterm:
        result["sigterm"] = sigterm_latency(cfg, a.dir / "sigterm")
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    print(f"\nquick demo re-run: {again_s:.1f} s of {first_s:.1f} s ({again_s / first_s:.2f}x; target <= 0.1x); "
          f"unchanged version: {version_s:.2f} s (target < 3 s), {result['unchanged_version_new_mlflow_runs']} new "
          f"MLflow runs, {result['unchanged_version_new_bytes']} new bytes")


if __name__ == "__main__":
    main()
