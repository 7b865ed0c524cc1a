"""The nightly audit as a Prefect flow: small named tasks, so that the Prefect UI
tells the story; heavy tasks run one at a time per worker, I/O tasks retry."""
from __future__ import annotations

from flows.env import apply_offline_env

apply_offline_env()

import os  # noqa: E402
import time  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.context import get_run_context  # noqa: E402

import audit  # noqa: E402

from . import runtime, work  # noqa: E402
from .alerts import alert_payload, post_json  # noqa: E402

IO_RETRIES = dict(retries=3, retry_delay_seconds=[1, 4, 10])


@task(name="register-version", **IO_RETRIES)
def register_version_task(cfg_path: str, model: str, version: str) -> str:
    return work.register_version(cfg_path, model, version)


@task(name="probe-statistics", tags=["neuron-audit-heavy"])
def probe_statistics_task(cfg_path: str, model: str, version: str) -> work.VersionOutcome:
    return work.probe_statistics(cfg_path, model, version, work.VersionOutcome(model, version))


@task(name="render-visualizations", tags=["neuron-audit-heavy"])
def render_task(cfg_path: str, model: str, version: str, run_id: int,
                outcome: work.VersionOutcome) -> work.VersionOutcome:
    return work.render_visualizations(cfg_path, model, version, run_id, outcome)


@task(name="audit-version", tags=["neuron-audit-heavy"])
def audit_version_task(cfg_path: str, model: str, version: str, run_id: int) -> work.VersionOutcome:
    """One version end to end (used on Dask workers, where one submission per version scales out)."""
    t0 = time.perf_counter()
    out = work.VersionOutcome(model, version, weights_sha256=work.register_version(cfg_path, model, version))
    work.probe_statistics(cfg_path, model, version, out)
    work.render_visualizations(cfg_path, model, version, run_id, out)
    out.seconds = time.perf_counter() - t0
    return out


@task(name="log-to-mlflow", **IO_RETRIES)
def log_mlflow_task(cfg_path: str, model: str, version: str, run_id: int, outcome: work.VersionOutcome) -> str:
    from storage.tracking import log_version_audit

    return log_version_audit(cfg_path, model, version, run_id, outcome)


@task(name="compare-versions", tags=["neuron-audit-heavy"])
def compare_task(cfg_path: str, model: str, baseline: str, candidate: str, run_id: int,
                 with_visuals: bool = True) -> dict:
    return work.compare_pair(cfg_path, model, baseline, candidate, run_id, with_visuals)


@task(name="log-report-to-mlflow", **IO_RETRIES)
def log_report_task(cfg_path: str, model: str, run_id: int, report: dict) -> None:
    from storage.tracking import log_compare_report

    log_compare_report(cfg_path, model, run_id, report)


@task(name="static-report", **IO_RETRIES)
def static_report_task(cfg_path: str, run_id: int, versions: list[tuple[str, str]]) -> str:
    """The dashboard's views as static HTML under the artifact store, logged to the MLflow
    run of each audited version."""
    from dashboards.export import export_static
    from storage.tracking import log_static_report

    cfg = runtime.config(cfg_path)
    out_dir = cfg.resolve_path(cfg.store.artifacts) / "static-report"
    index = export_static(runtime.store(cfg_path), str(cfg.resolve_path(cfg.store.artifacts)), out_dir)
    for model, version in versions:
        log_static_report(cfg_path, model, run_id, version, out_dir)
    return str(index)


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


@flow(name="nightly-audit", log_prints=True)
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
                    out = render_task(cfg_path, mcfg.name, v, run_id, out)
                    out.seconds = time.perf_counter() - t1
                    outcomes.append(out)
            for out in outcomes:
                summary["versions"].append(vars(out))
                for nid, err in out.neuron_errors.items():
                    logger.warning("neuron %s of %s v%s skipped: %s", nid, out.model, out.version, err)
                try:
                    log_mlflow_task(cfg_path, out.model, out.version, run_id, out)
                except Exception as exc:
                    summary["errors"].append(f"MLflow logging of {out.model} v{out.version}: {exc}")
            for baseline, candidate in work.comparison_pairs(versions, mcfg.champion, only=version):
                report = compare_task(cfg_path, mcfg.name, baseline, candidate, run_id, with_visuals)
                summary["reports"].append(report)
                try:
                    send_alerts_task(cfg_path, report, flow_run_url)
                except Exception as exc:
                    summary["errors"].append(f"alerts: {exc}")
                try:
                    log_report_task(cfg_path, mcfg.name, run_id, report)
                except Exception as exc:
                    summary["errors"].append(f"MLflow report logging: {exc}")
        try:
            summary["static_report"] = static_report_task(
                cfg_path, run_id, [(v["model"], v["version"]) for v in summary["versions"]])
        except Exception as exc:
            summary["errors"].append(f"static report: {exc}")
        status = "completed" if not summary["errors"] else "completed_with_errors"
        store.finish_run(run_id, status, "; ".join(summary["errors"]) or None)
    except BaseException as exc:
        store.finish_run(run_id, "failed", f"{exc.__class__.__name__}: {exc}")
        raise
    summary["seconds"] = time.perf_counter() - t0
    _publish_summary(summary)
    if summary["errors"]:
        # Finished results stay stored; the run is marked failed with the reason.
        raise RuntimeError("; ".join(summary["errors"]))
    return summary


def _publish_summary(summary: dict) -> None:
    lines = [f"# neuron-audit run {summary['run_id']}", "", "| model | baseline | candidate | PASS | WARN | FAIL |",
             "|---|---|---|---|---|---|"]
    for r in summary["reports"]:
        s = r["summary"]
        lines.append(f"| {r['model']} | {r['baseline']} | {r['candidate']} | {s['PASS']} | {s['WARN']} | {s['FAIL']} |")
    fails = [(r, n) for r in summary["reports"] for n in r["neurons"] if n["verdict"] == "FAIL"]
    if fails:
        lines += ["", "## FAIL"] + [f"- **{r['model']}** {r['baseline']}→{r['candidate']} `{n['id']}`: {n['reason']} "
                                    f"(report: `{r.get('report_path')}`)" for r, n in fails]
    try:
        create_markdown_artifact(markdown="\n".join(lines), key=f"neuron-audit-run-{summary['run_id']}",
                                 description="neuron-audit verdicts")
    except Exception:
        pass


def run_audit(config_path: str, model: str | None = None, version: str | None = None,
              with_visuals: bool = True) -> dict:
    """Run the flow once now, with the task runner the config asks for."""
    runner = _task_runner(config_path)
    f = nightly_audit.with_options(task_runner=runner) if runner is not None else nightly_audit
    return f(config_path, model=model, version=version, with_visuals=with_visuals)
