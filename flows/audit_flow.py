"""The nightly audit as a Prefect flow: small named tasks, so that the Prefect UI
tells the story; heavy tasks run one at a time per worker, I/O tasks retry."""
from __future__ import annotations

from flows.env import apply_offline_env

apply_offline_env()

import os  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.context import get_run_context  # noqa: E402

import audit  # noqa: E402

from . import logs, runtime, unchanged, work  # noqa: E402
from .alerts import WebhookBreaker, alert_payload, post_json  # noqa: E402
from .prefect_names import (RENDER_BATCH_SIZE, artifact_key, compare_task_name, flow_run_name,  # noqa: E402
                            model_markdown, neuron_batches, render_task_name, verdict_state,
                            version_task_name)
from .termination import raise_if_stop_requested  # noqa: E402

IO_RETRIES = dict(retries=3, retry_delay_seconds=[1, 4, 10])
log = logs.get_logger("audit")


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
    from .mlflow_sync import sync_version_audit

    with logs.stage("MLflow sync", f"{model} v{version}", log) as st:
        result = sync_version_audit(cfg_path, model, version, run_id, neuron_errors=outcome.neuron_errors)
        st.count(logged=len(result.logged))
    return {"mlflow_run_id": result.mlflow_run_id, "logged": len(result.logged)}


@task(name="compare-versions", task_run_name=compare_task_name, tags=["neuron-audit-heavy"])
def compare_task(cfg_path: str, model: str, baseline: str, candidate: str, run_id: int,
                 with_visuals: bool = True) -> dict:
    return work.compare_pair(cfg_path, model, baseline, candidate, run_id, with_visuals)


@task(name="log-report-to-mlflow", task_run_name=compare_task_name, **IO_RETRIES)
def log_report_task(cfg_path: str, model: str, run_id: int, report: dict) -> dict:
    """Sync the candidate's MLflow run: drift metrics, verdict tags, the compare report as JSON and HTML."""
    from .mlflow_sync import sync_version_audit

    with logs.stage("MLflow sync", f"{model} v{report['baseline']} -> v{report['candidate']} report", log) as st:
        result = sync_version_audit(cfg_path, model, str(report["candidate"]), run_id)
        st.count(logged=len(result.logged))
    return {"mlflow_run_id": result.mlflow_run_id, "logged": len(result.logged)}


@task(name="static-report", **IO_RETRIES)
def static_report_task(cfg_path: str, run_id: int, changed: bool = True) -> str:
    """The dashboard's views as static HTML under the artifact store (`static-report/index.html`), written once
    per audit and only when something changed (or it is missing). It covers every model, so it is not logged
    into the MLflow runs of single versions."""
    from dashboards.export import export_static
    from dashboards.ui_links import ui_urls

    cfg = runtime.config(cfg_path)
    out_dir = cfg.resolve_path(cfg.store.artifacts) / "static-report"
    index = out_dir / "index.html"
    if not changed and index.is_file():
        return str(index)
    mlflow_ui, prefect_ui = ui_urls(cfg)      # links to the MLflow and Prefect UIs when they are known
    with logs.stage("static report", str(index), log):
        return str(export_static(runtime.store(cfg_path), str(cfg.resolve_path(cfg.store.artifacts)), out_dir,
                                 mlflow_ui_url=mlflow_ui, prefect_ui_url=prefect_ui))


@task(name="send-alerts", **IO_RETRIES)
def send_alerts_task(cfg_path: str, report: dict, flow_run_url: str | None) -> list[dict]:
    """One POST per FAIL that is new for this neuron and version pair; failed deliveries
    stay open and are retried by the next run."""
    with logs.stage("alerts", f"{report['model']} v{report['baseline']} -> v{report['candidate']}", log) as st:
        sent = _send_alerts(cfg_path, report, flow_run_url)
        st.count(new=len(sent), delivered=sum(1 for a in sent if a["delivered"]))
    return sent


def _send_alerts(cfg_path: str, report: dict, flow_run_url: str | None) -> list[dict]:
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
                raise_if_stop_requested(exc)
                summary["not_audited"].append({"model": mcfg.name, "version": v, "neuron": None,
                                               "reason": f"{exc.__class__.__name__}: {exc}"})
        return outcomes
    store = runtime.store(cfg_path)
    for v in todo:
        t1 = time.perf_counter()
        try:
            register_version_task(cfg_path, mcfg.name, v)
            out = probe_statistics_task(cfg_path, mcfg.name, v)
            out = render_in_batches(cfg_path, mcfg.name, v, run_id, out)
        except work.AUDIT_FAULTS as exc:
            raise_if_stop_requested(exc)
            summary["not_audited"].append({"model": mcfg.name, "version": v, "neuron": None,
                                           "reason": f"{exc.__class__.__name__}: {exc}"})
            continue
        finally:
            store.heartbeat(run_id)
        out.seconds = time.perf_counter() - t1
        outcomes.append(out)
    return outcomes


@flow(name="nightly-audit", flow_run_name=flow_run_name, log_prints=True)
def nightly_audit(config_path: str, model: str | None = None, version: str | None = None,
                  with_visuals: bool = True) -> dict:
    """Audit the registered neurons of every enabled model (or one model / one version):
    preflight, then register, probe statistics, visualizations, MLflow, compare with predecessor
    and champion, alerts. A version whose fingerprint matches its recorded check is skipped, and so
    is a comparison of two such versions; any other stored result is reused by content key."""
    from .preflight import ensure_preflight

    logs.configure_from_env()            # a flow run a scheduler started: stage lines as the environment says
    logger = get_run_logger()
    cfg_path = str(config_path)
    checked = ensure_preflight(cfg_path, model=model, version=version)   # bad input: no row, no MLflow run
    with WebhookBreaker():
        return _nightly_audit(cfg_path, checked, logger, model, version, with_visuals)


def _nightly_audit(cfg_path: str, checked, logger, model: str | None, version: str | None,
                   with_visuals: bool) -> dict:
    """The run, step by step: plan it, then per model audit the versions and compare them (a FAIL alerts
    as soon as its report exists), write the static report, alert about what could not be audited, and
    finish the run's row. The stop rules (flows/termination.py) hold around every step after the plan."""
    from .outcome import not_audited
    from .termination import stoppable_run

    run = _plan_run(cfg_path, checked, logger, model, version, with_visuals)
    with stoppable_run(lambda status, text: run.store.finish_run(run.run_id, status, text)):
        for mcfg in ([run.cfg.model(model)] if model else [m for m in run.cfg.models if m.enabled]):
            versions = [v.version for v in runtime.registry_versions(run.cfg, mcfg)]
            complete = _audit_model_versions(run, mcfg, versions)
            _compare_model_versions(run, mcfg, versions, complete)
        _write_static_report(run)
        raise_if_stop_requested()    # a stop whose exception some library swallowed is still a stop
        items = not_audited(run.summary)
        _alert_not_audited(run, items)
        _finish_run(run, items)
    run.summary["seconds"] = time.perf_counter() - run.t0
    _publish_summary(cfg_path, run.summary)
    return verdict_state(run.summary)


@dataclass
class _NightlyRun:
    """What the steps of one nightly run share: its inputs and plan, its row in the store, the summary it
    builds, and whether it did or changed anything (which decides whether the static report is written)."""
    cfg_path: str
    cfg: Any
    store: Any
    plan: unchanged.AuditPlan
    logger: Any
    version: str | None              # the one version asked for, else None (all registered versions)
    with_visuals: bool
    run_id: int
    flow_run_url: str | None
    summary: dict
    tracking_faults: tuple[type[BaseException], ...]
    t0: float
    changed: bool = False            # computed or logged anything new (else the static report stands)
    worked: bool = False             # audited a version or compared a pair, whatever came of it

    def selected(self, versions: list[str]) -> list[str]:
        """The versions this run is asked to audit among a model's registered `versions`."""
        return [str(self.version)] if self.version else versions

    def not_audited(self, model: str, version: str, reason: str) -> None:
        self.summary["not_audited"].append({"model": model, "version": version, "neuron": None, "reason": reason})


def _plan_run(cfg_path: str, checked, logger, model: str | None, version: str | None,
              with_visuals: bool) -> _NightlyRun:
    """Plan: mark the runs whose process is gone as interrupted, find which versions and comparisons are
    unchanged since their recorded check (those are skipped, not recomputed), and start this run's row.
    A failure while planning leaves no run row behind (the row is started last)."""
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
    return _NightlyRun(cfg_path, cfg, store, plan, logger, version, with_visuals, run_id, flow_run_url, summary,
                       _tracking_faults(), t0)


def _audit_model_versions(run: _NightlyRun, mcfg, versions: list[str]) -> set[str]:
    """Audit versions: the selected versions of one model that are not unchanged are registered, get their
    probe statistics and visualizations, and are logged to MLflow; a version audited in full has its check
    recorded, so that the next run skips it. Returns the versions complete for this run (skipped as
    unchanged, or audited with no neuron left out and logged), which decide whether a comparison may be
    recorded as checked."""
    todo = run.selected(versions)
    skip = [v for v in todo if run.plan.version(mcfg.name, v) and run.plan.version(mcfg.name, v).unchanged]
    for v in skip:
        run.summary["versions"].append(unchanged.skipped_outcome(mcfg.name, v))
    outcomes = _audit_versions(run.cfg_path, mcfg, [v for v in todo if v not in skip], run.run_id, run.summary,
                               run.cfg.executor.dask is not None)
    complete = set(skip)
    for out in outcomes:
        run.worked = True
        run.summary["versions"].append(vars(out))
        for nid, err in out.neuron_errors.items():
            run.logger.warning("neuron %s of %s v%s not audited: %s", nid, out.model, out.version, err)
        run.changed = run.changed or bool(out.stats_computed or out.viz_rendered)
        logged = _log_version(run, out)
        if logged is not None and not out.neuron_errors:
            unchanged.record_version(run.store, run.cfg, run.plan.version(out.model, out.version), run.run_id,
                                     logged["mlflow_run_id"])
            complete.add(out.version)
    return complete


def _log_version(run: _NightlyRun, out: work.VersionOutcome) -> dict | None:
    """Log an audited version to MLflow; None when MLflow could not be reached (a warning: the results wait
    in the database and the next run logs them, so the version is not complete)."""
    try:
        logged = log_mlflow_task(run.cfg_path, out.model, out.version, run.run_id, out)
    except run.tracking_faults as exc:
        run.changed = True
        run.summary["warnings"].append(f"MLflow logging of {out.model} v{out.version} is pending: {exc}")
        return None
    run.changed = run.changed or bool(logged["logged"])
    return logged


def _compare_model_versions(run: _NightlyRun, mcfg, versions: list[str], complete: set[str]) -> None:
    """Compare: each pair of one model (a version with its predecessor and the champion) is compared, its
    report stored, its new FAILs alerted at once and the report logged to MLflow. The alerts go out before
    the pair is recorded as checked, so that no stop between the two loses them (a checked pair is skipped
    by the next run, alerts and all). An unchanged pair reuses its stored report; a pair with a version that
    could not be audited is listed as not compared."""
    failed_versions = {d["version"] for d in run.summary["not_audited"] if d["model"] == mcfg.name}
    todo = run.selected(versions)
    for baseline, candidate in work.comparison_pairs(versions, mcfg.champion, only=run.version):
        pp = run.plan.pair(mcfg.name, baseline, candidate)
        if pp is not None and pp.unchanged:
            run.summary["reports"].append(unchanged.stored_report(run.store, pp.report_path))
            continue
        if failed_versions & {baseline, candidate}:
            run.not_audited(mcfg.name, f"{baseline}->{candidate}", "not compared: a version could not be audited")
            continue
        run.worked = True
        report = _compare_pair(run, mcfg, baseline, candidate)
        if report is None:
            continue
        run.summary["reports"].append(report)
        send_alerts_task(run.cfg_path, report, run.flow_run_url)
        _log_report(run, mcfg, baseline, candidate, report)
        if pp is not None and not report.get("errors") and all(v in complete or v not in todo
                                                                for v in (baseline, candidate)):
            unchanged.record_pair(run.store, pp, report, run.run_id)


def _compare_pair(run: _NightlyRun, mcfg, baseline: str, candidate: str) -> dict | None:
    """The report of one comparison; None when it could not be made (listed as not audited, the other pairs
    go on; after a stop, the error is the interruption)."""
    try:
        return compare_task(run.cfg_path, mcfg.name, baseline, candidate, run.run_id, run.with_visuals)
    except work.AUDIT_FAULTS as exc:
        raise_if_stop_requested(exc)
        run.not_audited(mcfg.name, f"{baseline}->{candidate}", f"compare: {exc.__class__.__name__}: {exc}")
        return None
    finally:
        run.store.heartbeat(run.run_id)


def _log_report(run: _NightlyRun, mcfg, baseline: str, candidate: str, report: dict) -> None:
    """Log a comparison's report to MLflow; when MLflow cannot be reached, a warning (logged by a later run)."""
    try:
        run.changed = bool(log_report_task(run.cfg_path, mcfg.name, run.run_id, report)["logged"]) or run.changed
    except run.tracking_faults as exc:
        run.changed = True
        run.summary["warnings"].append(f"MLflow report logging of {mcfg.name} {baseline}->{candidate}: {exc}")


def _write_static_report(run: _NightlyRun) -> None:
    """The static HTML report, when this run audited or compared anything (rewritten only when something
    changed or it is missing); a failure to write it is a warning, never a failed audit."""
    if not (run.worked or run.changed):
        return
    try:
        run.summary["static_report"] = static_report_task(run.cfg_path, run.run_id, run.changed)
    except (OSError,) + run.tracking_faults as exc:
        run.summary["warnings"].append(f"static report: {exc}")


def _alert_not_audited(run: _NightlyRun, items: list[dict]) -> None:
    """Alert: one webhook POST that lists what could not be audited (a nightly job that quietly audited
    less than it was asked is the failure to avoid); an undelivered one is a warning. The FAILs were
    alerted as their reports were made (`_compare_model_versions`)."""
    from .outcome import incomplete_payload

    if items and run.cfg.alerts.webhook:
        ok, err = post_json(run.cfg.alerts.webhook, incomplete_payload(run.summary, items),
                            timeout_s=run.cfg.alerts.timeout_s)
        if not ok:
            run.summary["warnings"].append(f"the alert about neurons not audited was not delivered: {err}")


def _finish_run(run: _NightlyRun, items: list[dict]) -> None:
    """Finish: the run's row ends `completed`, or `completed_with_errors` naming every item not audited,
    with the warnings, notes and the versions skipped as unchanged."""
    summary = run.summary
    status = "completed" if not items else "completed_with_errors"
    error = ("not audited: " + "; ".join(f"{d['model']} v{d['version']}"
                                          + (f" {d['neuron']}" if d.get("neuron") else "") + f": {d['reason']}"
                                          for d in items)) if items else None
    run.store.finish_run(run.run_id, status, error, {"not_audited": items, "warnings": summary["warnings"],
                                                     "notes": summary["notes"],
                                                     "unchanged": [f"{v['model']} v{v['version']}"
                                                                   for v in summary["versions"] if v.get("skipped")]})


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
