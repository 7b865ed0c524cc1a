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

from . import runtime, unchanged, work  # noqa: E402
from .alerts import WebhookBreaker, alert_payload, post_json  # noqa: E402

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
                                                               report["candidate"], n, links),
                            timeout_s=cfg.alerts.timeout_s)
        store.mark_alert(alert_id, ok, err)
        sent.append({"alert_id": alert_id, "neuron": n["id"], "delivered": ok, "error": err})
    if cfg.alerts.webhook:
        attempted = {s["alert_id"] for s in sent}
        for alert in store.undelivered_alerts():
            if alert["id"] in attempted:
                continue
            ok, err = post_json(cfg.alerts.webhook, alert["payload"], timeout_s=cfg.alerts.timeout_s)
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
    from prefect.exceptions import MissingContextError

    try:
        ctx = get_run_context()
    except MissingContextError:
        return None, None
    fr = getattr(ctx, "flow_run", None)
    if fr is None:
        return None, None
    ui = os.environ.get("PREFECT_UI_URL")
    return str(fr.id), (f"{ui}/runs/flow-run/{fr.id}" if ui else None)


def _tracking_faults() -> tuple[type[BaseException], ...]:
    """What logging to MLflow can fail with and leave the results pending in the database for a later run."""
    from mlflow.exceptions import MlflowException

    return (RuntimeError, OSError, MlflowException)


def _audit_versions(cfg_path: str, mcfg, todo: list[str], run_id: int, summary: dict, dask: bool) -> list:
    """Register, probe statistics and render each version in `todo`; a version that fails is listed as not
    audited and the others go on."""
    outcomes = []
    if dask:
        futures = [(v, audit_version_task.submit(cfg_path, mcfg.name, v, run_id)) for v in todo]
        for v, f in futures:
            try:
                outcomes.append(f.result())
            except work.AUDIT_FAULTS as exc:
                summary["not_audited"].append({"model": mcfg.name, "version": v, "neuron": None,
                                               "reason": f"{exc.__class__.__name__}: {exc}"})
        return outcomes
    store = runtime.store(cfg_path)
    for v in todo:
        t1 = time.perf_counter()
        try:
            register_version_task(cfg_path, mcfg.name, v)
            out = probe_statistics_task(cfg_path, mcfg.name, v)
            out = render_task(cfg_path, mcfg.name, v, run_id, out)
        except work.AUDIT_FAULTS as exc:
            summary["not_audited"].append({"model": mcfg.name, "version": v, "neuron": None,
                                           "reason": f"{exc.__class__.__name__}: {exc}"})
            continue
        finally:
            store.heartbeat(run_id)
        out.seconds = time.perf_counter() - t1
        outcomes.append(out)
    return outcomes


@flow(name="nightly-audit", log_prints=True)
def nightly_audit(config_path: str, model: str | None = None, version: str | None = None,
                  with_visuals: bool = True) -> dict:
    """Audit the registered neurons of every enabled model (or one model / one version):
    preflight, then register, probe statistics, visualizations, MLflow, compare with predecessor
    and champion, alerts. A version whose fingerprint matches its recorded check is skipped, and so
    is a comparison of two such versions; any other stored result is reused by content key."""
    from .preflight import ensure_preflight

    logger = get_run_logger()
    cfg_path = str(config_path)
    checked = ensure_preflight(cfg_path, model=model, version=version)   # bad input: no row, no MLflow run
    with WebhookBreaker():
        return _nightly_audit(cfg_path, checked, logger, model, version, with_visuals)


def _nightly_audit(cfg_path: str, checked, logger, model: str | None, version: str | None,
                   with_visuals: bool) -> dict:
    from .outcome import incomplete_payload, not_audited
    from .termination import EXIT_SIGTERM, arm_watchdog, is_interruption, on_forced_exit, remove_forced_exit

    cfg = runtime.config(cfg_path)
    store = runtime.store(cfg_path)
    for rid in store.mark_interrupted_runs():
        logger.warning("audit run %s was interrupted (its process is gone): marked interrupted", rid)
    plan = unchanged.plan_audit(cfg, checked.context, checked.identities, store, model=model, version=version,
                                with_visuals=with_visuals)
    flow_run_id, flow_run_url = _flow_run_info()
    run_id = store.start_run(flow_run_id, cfg.sha256(), audit.__version__)
    summary: dict = {"run_id": run_id, "flow_run_id": flow_run_id, "versions": [], "reports": [], "errors": [],
                     "warnings": [], "notes": list(checked.notes), "not_audited": []}
    t0 = time.perf_counter()
    dask = cfg.executor.dask is not None
    tracking_faults = _tracking_faults()
    changed_anything = False
    mark_interrupted = on_forced_exit(lambda: store.finish_run(run_id, "interrupted", "interrupted by SIGTERM; "
                                                                                      "finished results are kept"))
    try:
        models = [cfg.model(model)] if model else [m for m in cfg.models if m.enabled]
        for mcfg in models:
            versions = [v.version for v in runtime.registry_versions(cfg, mcfg)]
            todo = [str(version)] if version else versions
            skip = [v for v in todo if plan.version(mcfg.name, v) and plan.version(mcfg.name, v).unchanged]
            for v in skip:
                summary["versions"].append(unchanged.skipped_outcome(mcfg.name, v))
            outcomes = _audit_versions(cfg_path, mcfg, [v for v in todo if v not in skip], run_id, summary, dask)
            complete = set(skip)
            for out in outcomes:
                changed_anything = True
                summary["versions"].append(vars(out))
                for nid, err in out.neuron_errors.items():
                    logger.warning("neuron %s of %s v%s not audited: %s", nid, out.model, out.version, err)
                try:
                    logged = log_mlflow_task(cfg_path, out.model, out.version, run_id, out)
                    mlflow_run_id = logged.get("mlflow_run_id") if isinstance(logged, dict) else logged
                except tracking_faults as exc:
                    summary["warnings"].append(f"MLflow logging of {out.model} v{out.version} is pending: {exc}")
                    continue
                if not out.neuron_errors:
                    unchanged.record_version(store, cfg, plan.version(out.model, out.version), run_id, mlflow_run_id)
                    complete.add(out.version)
            failed_versions = {d["version"] for d in summary["not_audited"] if d["model"] == mcfg.name}
            for baseline, candidate in work.comparison_pairs(versions, mcfg.champion, only=version):
                pp = plan.pair(mcfg.name, baseline, candidate)
                if pp is not None and pp.unchanged:
                    summary["reports"].append(unchanged.stored_report(store, pp.report_path))
                    continue
                if failed_versions & {baseline, candidate}:
                    summary["not_audited"].append({"model": mcfg.name, "version": f"{baseline}->{candidate}",
                                                   "neuron": None, "reason": "not compared: a version could not "
                                                                             "be audited"})
                    continue
                changed_anything = True
                try:
                    report = compare_task(cfg_path, mcfg.name, baseline, candidate, run_id, with_visuals)
                except work.AUDIT_FAULTS as exc:
                    summary["not_audited"].append({"model": mcfg.name, "version": f"{baseline}->{candidate}",
                                                   "neuron": None, "reason": f"compare: {exc.__class__.__name__}: {exc}"})
                    continue
                finally:
                    store.heartbeat(run_id)
                summary["reports"].append(report)
                send_alerts_task(cfg_path, report, flow_run_url)
                try:
                    log_report_task(cfg_path, mcfg.name, run_id, report)
                except tracking_faults as exc:
                    summary["warnings"].append(f"MLflow report logging of {mcfg.name} {baseline}->{candidate}: {exc}")
                if pp is not None and not report.get("errors") and all(v in complete or v not in todo
                                                                        for v in (baseline, candidate)):
                    unchanged.record_pair(store, pp, report, run_id)
        if changed_anything:
            try:
                summary["static_report"] = static_report_task(
                    cfg_path, run_id, [(v["model"], v["version"]) for v in summary["versions"] if not v.get("skipped")])
            except (OSError,) + tracking_faults as exc:
                summary["warnings"].append(f"static report: {exc}")
        items = not_audited(summary)
        if items and cfg.alerts.webhook:
            ok, err = post_json(cfg.alerts.webhook, incomplete_payload(summary, items), timeout_s=cfg.alerts.timeout_s)
            if not ok:
                summary["warnings"].append(f"the alert about neurons not audited was not delivered: {err}")
        status = "completed" if not items else "completed_with_errors"
        error = ("not audited: " + "; ".join(f"{d['model']} v{d['version']}"
                                              + (f" {d['neuron']}" if d.get("neuron") else "") + f": {d['reason']}"
                                              for d in items)) if items else None
        store.finish_run(run_id, status, error, {"not_audited": items, "warnings": summary["warnings"],
                                                 "notes": summary["notes"],
                                                 "unchanged": [f"{v['model']} v{v['version']}" for v in summary["versions"]
                                                               if v.get("skipped")]})
    except BaseException as exc:
        if is_interruption(exc):
            arm_watchdog(EXIT_SIGTERM)          # the rest of the way out is bounded
            status, text = "interrupted", f"interrupted ({exc.__class__.__name__}); finished results are kept"
        else:
            status, text = "failed", f"{exc.__class__.__name__}: {exc}"
        store.finish_run(run_id, status, text)
        raise
    finally:
        remove_forced_exit(mark_interrupted)
    summary["seconds"] = time.perf_counter() - t0
    _publish_summary(summary)
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
    """Run the audit once now: when every selected version and comparison is unchanged, only record the
    check (no flow, no Prefect server); otherwise the flow, with the task runner the config asks for."""
    from .preflight import ensure_preflight

    checked = ensure_preflight(config_path, model=model, version=version)
    store = unchanged.open_store_for_plan(checked.cfg)
    if store is not None:
        plan = unchanged.plan_audit(checked.cfg, checked.context, checked.identities, store, model=model,
                                    version=version, with_visuals=with_visuals)
        if plan.all_unchanged:
            return unchanged.run_unchanged(checked.cfg, store, plan)
    runner = _task_runner(config_path)
    f = nightly_audit.with_options(task_runner=runner) if runner is not None else nightly_audit
    return f(config_path, model=model, version=version, with_visuals=with_visuals)
