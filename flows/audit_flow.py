"""The nightly audit as a Prefect flow: small named tasks, so that the Prefect UI
tells the story; heavy tasks run one at a time per worker, I/O tasks retry."""
from __future__ import annotations

from flows.env import apply_offline_env

apply_offline_env()

import os  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.context import get_run_context  # noqa: E402

import audit  # noqa: E402

from . import runtime, work  # noqa: E402
from .alerts import alert_payload, post_json  # noqa: E402
from .prefect_names import (RENDER_BATCH_SIZE, artifact_key, compare_task_name, flow_run_name,  # noqa: E402
                            model_markdown, neuron_batches, render_task_name, verdict_state,
                            version_task_name)

IO_RETRIES = dict(retries=3, retry_delay_seconds=[1, 4, 10])


@task(name="register-version", task_run_name=version_task_name("register"), **IO_RETRIES)
def register_version_task(cfg_path: str, model: str, version: str) -> str:
    return work.register_version(cfg_path, model, version)


@task(name="probe-statistics", task_run_name=version_task_name("probe statistics"), tags=["neuron-audit-heavy"])
def probe_statistics_task(cfg_path: str, model: str, version: str) -> work.VersionOutcome:
    return work.probe_statistics(cfg_path, model, version, work.VersionOutcome(model, version))


@task(name="render-visualizations", task_run_name=render_task_name, tags=["neuron-audit-heavy"])
def render_task(cfg_path: str, model: str, version: str, run_id: int,
                outcome: work.VersionOutcome, neuron_ids: list[str] | None = None) -> work.VersionOutcome:
    return work.render_visualizations(cfg_path, model, version, run_id, outcome, neuron_ids=neuron_ids)


def render_in_batches(cfg_path: str, model: str, version: str, run_id: int,
                      outcome: work.VersionOutcome) -> work.VersionOutcome:
    """One render task per batch of RENDER_BATCH_SIZE registered neurons, so that the Prefect UI shows (and
    retries) the rendering of a model version batch by batch."""
    neuron_ids = [n.id for n in runtime.config(cfg_path).model(model).neurons]
    for batch in neuron_batches(neuron_ids, RENDER_BATCH_SIZE):
        outcome = render_task(cfg_path, model, version, run_id, outcome, neuron_ids=batch)
    return outcome


@task(name="audit-version", task_run_name=version_task_name("audit"), tags=["neuron-audit-heavy"])
def audit_version_task(cfg_path: str, model: str, version: str, run_id: int) -> work.VersionOutcome:
    """One version end to end (used on Dask workers, where one submission per version scales out)."""
    t0 = time.perf_counter()
    out = work.VersionOutcome(model, version, weights_sha256=work.register_version(cfg_path, model, version))
    work.probe_statistics(cfg_path, model, version, out)
    work.render_visualizations(cfg_path, model, version, run_id, out)
    out.seconds = time.perf_counter() - t0
    return out


@task(name="log-to-mlflow", task_run_name=version_task_name("log to MLflow"), **IO_RETRIES)
def log_mlflow_task(cfg_path: str, model: str, version: str, run_id: int, outcome: work.VersionOutcome) -> dict:
    """Sync the version's MLflow run (only what is new); {"mlflow_run_id", "logged": number of items logged}."""
    from storage.tracking import sync_version_audit

    result = sync_version_audit(cfg_path, model, version, run_id, neuron_errors=outcome.neuron_errors)
    return {"mlflow_run_id": result.mlflow_run_id, "logged": len(result.logged)}


@task(name="compare-versions", task_run_name=compare_task_name, tags=["neuron-audit-heavy"])
def compare_task(cfg_path: str, model: str, baseline: str, candidate: str, run_id: int,
                 with_visuals: bool = True) -> dict:
    return work.compare_pair(cfg_path, model, baseline, candidate, run_id, with_visuals)


@task(name="log-report-to-mlflow", task_run_name=compare_task_name, **IO_RETRIES)
def log_report_task(cfg_path: str, model: str, run_id: int, report: dict) -> dict:
    """Sync the candidate's MLflow run: drift metrics, verdict tags, the compare report as JSON and HTML."""
    from storage.tracking import sync_version_audit

    result = sync_version_audit(cfg_path, model, str(report["candidate"]), run_id)
    return {"mlflow_run_id": result.mlflow_run_id, "logged": len(result.logged)}


@task(name="static-report", **IO_RETRIES)
def static_report_task(cfg_path: str, run_id: int, changed: bool = True) -> str:
    """The dashboard's views as static HTML under the artifact store (`static-report/index.html`), written once
    per audit and only when something changed (or it is missing). It covers every model, so it is not logged
    into the MLflow runs of single versions."""
    from dashboards.export import export_static

    cfg = runtime.config(cfg_path)
    out_dir = cfg.resolve_path(cfg.store.artifacts) / "static-report"
    index = out_dir / "index.html"
    if not changed and index.is_file():
        return str(index)
    return str(export_static(runtime.store(cfg_path), str(cfg.resolve_path(cfg.store.artifacts)), out_dir))


@task(name="send-alerts", **IO_RETRIES)
def send_alerts_task(cfg_path: str, report: dict, flow_run_url: str | None) -> list[dict]:
    """One POST per FAIL that is new for this neuron and version pair; failed deliveries
    stay open and are retried by the next run."""
    cfg = runtime.config(cfg_path)
    store = runtime.store(cfg_path)
    sent = []
    for n in report["neurons"]:
        if n["verdict"] != "FAIL":
            continue
        alert_id = store.create_alert_if_new(report["drift_ids"][n["id"]], "webhook")
        if alert_id is None or not cfg.alerts.webhook:
            continue
        links = {"report": report.get("report_path"), "flow_run": flow_run_url}
        ok, err = post_json(cfg.alerts.webhook, alert_payload(report["model"], report["baseline"],
                                                               report["candidate"], n, links))
        store.mark_alert(alert_id, ok, err)
        sent.append({"alert_id": alert_id, "neuron": n["id"], "delivered": ok, "error": err})
    if cfg.alerts.webhook:
        attempted = {s["alert_id"] for s in sent}
        for alert in store.undelivered_alerts():
            if alert["id"] in attempted:
                continue
            ok, err = post_json(cfg.alerts.webhook, alert["payload"])
            store.mark_alert(alert["id"], ok, err)
    return sent


def _task_runner(cfg_path: str):
    cfg = runtime.config(cfg_path)
    if cfg.executor.dask is None:
        return None
    from prefect_dask import DaskTaskRunner

    d = cfg.executor.dask
    if d.address:
        return DaskTaskRunner(address=d.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": d.n_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def _flow_run_info() -> tuple[str | None, str | None]:
    try:
        ctx = get_run_context()
        fr = ctx.flow_run
        ui = os.environ.get("PREFECT_UI_URL")
        return str(fr.id), (f"{ui}/runs/flow-run/{fr.id}" if ui else None)
    except Exception:
        return None, None


@flow(name="nightly-audit", flow_run_name=flow_run_name, log_prints=True)
def nightly_audit(config_path: str, model: str | None = None, version: str | None = None,
                  with_visuals: bool = True) -> dict:
    """Audit the registered neurons of every enabled model (or one model / one version):
    register, probe statistics, visualizations, MLflow, compare with predecessor and
    champion, alerts. Work whose content key is stored already is skipped."""
    logger = get_run_logger()
    cfg_path = str(config_path)
    cfg = runtime.config(cfg_path)
    store = runtime.store(cfg_path)
    store.sync_registry(cfg)
    flow_run_id, flow_run_url = _flow_run_info()
    run_id = store.start_run(flow_run_id, cfg.sha256(), audit.__version__)
    summary: dict = {"run_id": run_id, "flow_run_id": flow_run_id, "versions": [], "reports": [], "errors": []}
    t0 = time.perf_counter()
    changed = False          # did this audit compute or log anything new? (else the static report stands)
    dask = cfg.executor.dask is not None
    try:
        models = [cfg.model(model)] if model else [m for m in cfg.models if m.enabled]
        for mcfg in models:
            versions = [v.version for v in runtime.registry_versions(cfg, mcfg)]
            todo = [version] if version else versions
            for v in todo:
                if v not in versions:
                    mcfg.version(v)  # raises with the valid versions named
            if dask:
                futures = [audit_version_task.submit(cfg_path, mcfg.name, v, run_id) for v in todo]
                outcomes = [f.result() for f in futures]
            else:
                outcomes = []
                for v in todo:
                    t1 = time.perf_counter()
                    register_version_task(cfg_path, mcfg.name, v)
                    out = probe_statistics_task(cfg_path, mcfg.name, v)
                    out = render_in_batches(cfg_path, mcfg.name, v, run_id, out)
                    out.seconds = time.perf_counter() - t1
                    outcomes.append(out)
            for out in outcomes:
                summary["versions"].append(vars(out))
                for nid, err in out.neuron_errors.items():
                    logger.warning("neuron %s of %s v%s skipped: %s", nid, out.model, out.version, err)
                changed = changed or bool(out.stats_computed or out.viz_rendered)
                try:
                    changed = bool(log_mlflow_task(cfg_path, out.model, out.version, run_id, out)["logged"]) or changed
                except Exception as exc:
                    changed = True
                    summary["errors"].append(f"MLflow logging of {out.model} v{out.version}: {exc}")
            for baseline, candidate in work.comparison_pairs(versions, mcfg.champion, only=version):
                report = compare_task(cfg_path, mcfg.name, baseline, candidate, run_id, with_visuals)
                summary["reports"].append(report)
                try:
                    send_alerts_task(cfg_path, report, flow_run_url)
                except Exception as exc:
                    summary["errors"].append(f"alerts: {exc}")
                try:
                    changed = bool(log_report_task(cfg_path, mcfg.name, run_id, report)["logged"]) or changed
                except Exception as exc:
                    changed = True
                    summary["errors"].append(f"MLflow report logging: {exc}")
        try:
            summary["static_report"] = static_report_task(cfg_path, run_id, changed)
        except Exception as exc:
            summary["errors"].append(f"static report: {exc}")
        status = "completed" if not summary["errors"] else "completed_with_errors"
        store.finish_run(run_id, status, "; ".join(summary["errors"]) or None)
    except BaseException as exc:
        store.finish_run(run_id, "failed", f"{exc.__class__.__name__}: {exc}")
        raise
    summary["seconds"] = time.perf_counter() - t0
    _publish_summary(cfg_path, summary)
    if summary["errors"]:
        # Finished results stay stored; the run is marked failed with the reason.
        raise RuntimeError("; ".join(summary["errors"]))
    return verdict_state(summary)


def _publish_summary(cfg_path: str, summary: dict) -> None:
    """One markdown artifact per audited model (its verdicts and work done), under a key unique to this store
    and model: Prefect keeps each key's history across runs."""
    store_id = runtime.store(cfg_path).store_id
    models = dict.fromkeys([v["model"] for v in summary["versions"]] + [r["model"] for r in summary["reports"]])
    for model in models:
        try:
            create_markdown_artifact(markdown=model_markdown(summary, model), key=artifact_key(store_id, model),
                                     description=f"neuron-audit verdicts of {model}")
        except httpx.HTTPError:  # the artifact is a convenience: never fail the audit for it
            pass


def run_audit(config_path: str, model: str | None = None, version: str | None = None,
              with_visuals: bool = True) -> dict:
    """Run the flow once now, with the task runner the config asks for."""
    runner = _task_runner(config_path)
    f = nightly_audit.with_options(task_runner=runner) if runner is not None else nightly_audit
    return f(config_path, model=model, version=version, with_visuals=with_visuals)
