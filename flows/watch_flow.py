"""Prefect flows of production-batch watching: `watch_batch` (one folder, the command's work as
named tasks) and `watch_inbox` (every new sub-folder of each model's `watch.inbox`, each a batch
watched once), which a deployment can schedule like the nightly audit."""
from __future__ import annotations

from flows.env import apply_offline_env

apply_offline_env()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from audit.errors import AuditInputError  # noqa: E402

from . import runtime, watch  # noqa: E402

# Task inputs hold image tensors: never hashed for caching.
IO_RETRIES = dict(retries=3, retry_delay_seconds=[1, 4, 10], cache_policy=NO_CACHE)


@task(name="watch-validate", cache_policy=NO_CACHE)
def validate_task(cfg_path: str, model: str, images: str, version: str | None, batch_id: str | None):
    return watch.validate_inputs(cfg_path, model, images, version, batch_id)


@task(name="watch-statistics", tags=["neuron-audit-heavy"], cache_policy=NO_CACHE)
def statistics_task(inputs: watch.WatchInputs):
    values, _reference, verdict = watch.compute(inputs)
    return values, verdict


@task(name="watch-store", **IO_RETRIES)
def store_task(inputs: watch.WatchInputs, values, verdict) -> dict:
    pk = watch.store_batch(inputs, values, verdict)
    return watch.build_report(inputs, verdict, pk)


@task(name="watch-alerts", **IO_RETRIES)
def alerts_task(cfg_path: str, report: dict) -> list[dict]:
    return watch.send_alerts(cfg_path, report)


@task(name="watch-mlflow", **IO_RETRIES)
def mlflow_task(cfg_path: str, report: dict) -> str:
    return watch.log_mlflow(cfg_path, report)


@flow(name="watch-batch", log_prints=True)
def watch_batch(config_path: str, model: str, images: str, version: str | None = None,
                batch_id: str | None = None) -> dict:
    """Watch one folder of production images: statistics of every registered neuron against the
    reference window, verdicts stored (a batch id seen before is updated in place), one alert per new
    FAIL, an MLflow run. Bad input fails the flow before anything is stored."""
    cfg_path = str(config_path)
    inputs = validate_task(cfg_path, model, str(images), version, batch_id)
    values, verdict = statistics_task(inputs)
    report = store_task(inputs, values, verdict)
    problems = []
    try:
        report["alerts"] = alerts_task(cfg_path, report)
    except OSError as exc:
        problems.append(f"alerts: {exc}")
    from mlflow.exceptions import MlflowException

    from storage.errors import TrackingUnavailableError

    try:
        report["mlflow_run_id"] = mlflow_task(cfg_path, report)
    except (TrackingUnavailableError, MlflowException, OSError) as exc:   # after retries; the stored result stands
        problems.append(f"MLflow: {exc.__class__.__name__}: {exc}")
    report["problems"] = problems
    if report["reference"].get("limits"):
        get_run_logger().warning("batch %s: %s", report["batch_id"], report["reference"]["limits"])
    get_run_logger().info("batch %s of %s: %s (%s)", report["batch_id"], model, report["verdict"], report["summary"])
    return report


@flow(name="watch-inbox", log_prints=True)
def watch_inbox(config_path: str, model: str | None = None) -> dict:
    """Watch every new sub-folder of the inbox of each enabled model (or one model). A folder already
    stored as a batch is skipped; a rejected folder (bad input) is reported and retried next run."""
    logger = get_run_logger()
    cfg_path = str(config_path)
    cfg = runtime.config(cfg_path)
    models = [cfg.model(model)] if model else [m for m in cfg.models if m.enabled and m.watch.inbox]
    summary: dict = {"batches": [], "rejected": {}}
    for mcfg in models:
        for folder in watch.inbox_folders(cfg_path, mcfg.name):
            try:
                report = watch_batch(cfg_path, mcfg.name, str(folder), batch_id=folder.name)
            except AuditInputError as exc:
                logger.warning("inbox folder %s rejected: %s", folder, exc)
                summary["rejected"][str(folder)] = str(exc)
                continue
            summary["batches"].append({k: report[k] for k in ("model", "batch_id", "verdict", "n_images", "counts")})
    if summary["rejected"]:
        raise RuntimeError(f"{len(summary['rejected'])} inbox folder(s) rejected: "
                           + "; ".join(f"{k}: {v}" for k, v in summary["rejected"].items()))
    return summary
