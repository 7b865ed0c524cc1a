"""Registration-to-verdict time (docs/gate.md): a version registered in a real MLflow server (SQLite backend)
until its verdict tags are on the version, with `neuron-audit listen`'s receiver on 127.0.0.1 receiving the
webhook. The model: the demo's Lite0 with its 6 registered neurons at the demo's quick settings; the baseline
(version 1, the champion) audited beforehand by the flow the receiver runs (so it is recognised unchanged), and
its benign null cached by a gate run on another candidate (an fp16 round trip of Lite0), so the measured audit
computes only the new version and the comparison.

    python benchmarks/registration_to_verdict.py --dir /tmp/r2v

Prints three figures: registration call to tags (what a user waits for), webhook arrival to tags (the target's
figure: the receiver's part, tags polled every 0.5 s) and arrival to the end of the receiver's audit (the static
report and the Prefect summary are written after the tags). Nothing here is asserted; report the figures with `date` and `uptime`."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
             "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
    os.environ.setdefault(k, v)

SECRET = "benchmark-secret"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(d: Path) -> tuple[subprocess.Popen, str]:
    from cryptography.fernet import Fernet

    from flows.deploy import api_healthy

    port = free_port()
    env = dict(os.environ, MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https", MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
               MLFLOW_WEBHOOK_CACHE_TTL="1", MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode())
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{d}/mlflow.db",
                             "--default-artifact-root", (d / "mlartifacts").as_uri()],
                            stdout=open(d / "mlflow-server.log", "wb"), stderr=subprocess.STDOUT, env=env, cwd=d,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while not api_healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, 15)
            raise RuntimeError("mlflow server did not start: " + (d / "mlflow-server.log").read_text()[-1500:])
        time.sleep(0.5)
    return proc, url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="work folder (created)")
    ap.add_argument("--tiny", action="store_true",
                    help="the tests' 0.36 M-parameter EfficientNet (test_efficientnet) with 6 neurons instead of Lite0")
    args = ap.parse_args()
    d = args.dir.resolve()
    d.mkdir(parents=True, exist_ok=True)

    import yaml
    from safetensors.torch import load_file, save_file

    from sources import load_model
    from flows.demo import build_planted_version, demo_config
    from flows.prefect_api import TemporaryApi
    from sources.mlflow_registry import register_state_dict

    import tempfile

    # a fresh registry each run (version 2 is the measured one); the store and its caches persist in --dir
    proc, url = start_mlflow(Path(tempfile.mkdtemp(prefix="r2v-mlflow-", dir=d)))
    api = TemporaryApi.start()
    try:
        os.environ["PREFECT_API_URL"] = api.wait()
        name = "lite0-r2v"
        if args.tiny:
            from tests.storage._registry_testlib import ARCH, tiny_model

            base, changed = tiny_model(3), tiny_model(3, negate_row=7)
            planted = d / "tiny-planted.safetensors"
            save_file({k: v.contiguous() for k, v in changed.state_dict().items()}, str(planted))
            name = "tiny-r2v"
        else:
            base = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
            planted = d / "planted.safetensors"
            if not planted.exists():
                build_planted_version(planted)
        register_state_dict(url, name, base.state_dict(), alias="champion")
        clean = d / ("tiny-fp16.safetensors" if args.tiny else "fp16.safetensors")
        save_file({k: (v.half().float() if v.is_floating_point() else v).contiguous()
                   for k, v in base.state_dict().items()}, str(clean))

        cfg = demo_config(quick=True)
        model = cfg["models"][0]
        model.pop("versions")
        model.update(mlflow_registered_model=name, champion="1")
        if args.tiny:
            model.update(name="tiny-r2v", architecture=ARCH, probe={"crops_per_image": 3, "resolution": 64},
                         visualization={"resolution": 32, "steps": 2, "seeds": [0, 1], "n_references": 2},
                         neurons=[{"id": f"c{i}", "kind": "class", "layer": "classifier", "index": i,
                                   "references": "top-k"} for i in (3, 7, 11, 19)]
                         + [{"id": "b3-c5", "kind": "inner", "layer": "blocks.3", "index": 5},
                            {"id": "b2-c4", "kind": "inner", "layer": "blocks.2", "index": 4}])
        cfg["store"] = {"database": "sqlite:///./store/audit.db", "mlflow_tracking_uri": url,
                        "artifacts": "./store/artifacts"}
        cfg["registry_webhooks"] = {"port": free_port()}
        path = d / "neuron-audit.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))

        from flows.audit_flow import run_audit
        from flows.gate import plan_gate, run_gate
        from flows.preflight import ensure_preflight

        # The baseline as a deployment has it when a new version arrives: version 1 audited by the flow the
        # receiver runs (its statistics, visualizations, MLflow run and fingerprint recorded, so the measured
        # audit recognises it unchanged), then its benign null built by a gate run on another candidate.
        t = time.monotonic()
        run_audit(str(path), model=model["name"], version="1")
        print(f"baseline v1 audited by the nightly flow: {time.monotonic() - t:.1f} s", flush=True)
        t = time.monotonic()
        _, target = plan_gate(str(path), model["name"], str(clean))
        warm = run_gate(str(path), target, preflight=lambda p, m, vs: ensure_preflight(p, model=m, version=vs))
        print(f"baseline cached by a gate run on {target.candidate}: exit {warm.code}, "
              f"{time.monotonic() - t:.1f} s", flush=True)

        from mlflow.tracking import MlflowClient

        from flows.listen import Listener

        client = MlflowClient(url)
        with Listener(str(path), SECRET, "127.0.0.1", cfg["registry_webhooks"]["port"]) as listener:
            client.create_webhook(name="neuron-audit", url=listener.url, events=["model_version.created"],
                                  secret=SECRET)
            t0 = time.monotonic()
            version = register_state_dict(url, name, load_file(str(planted)))
            registered = time.monotonic() - t0
            # `none` first (the version's own audit), then its verdict once compared with the champion
            while client.get_model_version(name, version).tags.get("neuron_audit.verdict") not in ("PASS", "WARN",
                                                                                                    "FAIL"):
                if time.monotonic() - t0 > 1800:
                    raise RuntimeError(f"no verdict tags after 30 min; receiver: {listener.receiver.done}")
                time.sleep(0.5)              # each look is a call the MLflow server answers on the same CPU
            tagged = time.monotonic()
            total = tagged - t0
            tags = client.get_model_version(name, version).tags
            print(f"registration call to verdict tags: {total:.1f} s", flush=True)
            while not any(e["version"] == version for e in listener.receiver.done):   # the worker's record follows
                time.sleep(0.2)
            entry = next(e for e in listener.receiver.done if e["version"] == version)
        # arrival -> tags: the receiver's arrival time and the tags' first sight share this process's clock
        print(f"registered v{version} in {registered:.1f} s; verdict {tags['neuron_audit.verdict']} "
              f"(failed: {tags['neuron_audit.failed_neurons']}); registration call to tags {total:.1f} s; "
              f"webhook arrival to verdict tags {tagged - entry['arrived']:.1f} s; "
              f"arrival to the audit's end (static report included) {entry['seconds']:.1f} s")
    finally:
        api.stop()
        os.killpg(proc.pid, 15)          # the server and its workers
        proc.wait(timeout=120)


if __name__ == "__main__":
    main()
