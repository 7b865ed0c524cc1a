"""MLflow logging of audit results.

One experiment per model (`neuron-audit/<model>`), one MLflow run per (audit run, model version):
config as params, per-neuron statistics as metrics with stable keys (`<neuron_id>.mean`,
`<neuron_id>.q0.5`, `<neuron_id>.vs<baseline>.spearman`, ...), visualizations / masks / top-k grids
as image artifacts, the compare report as a JSON artifact, tags linking the database ids and the
registered model version (for `models:/` sources).

Only the MlflowClient API with explicit run ids is used (no fluent global state), so trackers are
safe to use from several threads. Every call is retried with exponential backoff; when MLflow stays
unreachable `TrackingUnavailableError` is raised and the database row stays `pending`, and
`log_pending(store)` logs it later from what the database holds.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# MLflow's own HTTP retries default to 7 with backoff factor 2 (minutes of waiting); we retry ourselves.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")   # an int
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402

from .errors import TrackingUnavailableError  # noqa: E402

T = TypeVar("T")
TAG = "neuron_audit"
_MAX_PARAM_LEN = 6000
_KEY_RE = re.compile(r"[^\w\-. /]")


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a local `sqlite:///DIR/mlflow.db` store: `file://DIR/mlartifacts` (MLflow's own default is ./mlruns
    in the current directory). None for servers, which choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def experiment_name(model: str) -> str:
    return f"neuron-audit/{model}"


def metric_key(key: str) -> str:
    """MLflow accepts letters, digits, _ - . space and /; anything else becomes _."""
    return _KEY_RE.sub("_", key)[:250]


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {'models.0.name': 'x', ...} with string values (truncated to MLflow's limit)."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, Mapping) for v in obj):
        for i, v in enumerate(obj):
            name = v.get("name") or v.get("id") or v.get("version") or i
            out.update(flatten_params(v, f"{prefix}{name}."))
    else:
        val = json.dumps(obj) if isinstance(obj, (list, tuple)) else ("" if obj is None else str(obj))
        out[metric_key(prefix.rstrip("."))] = val[:_MAX_PARAM_LEN]
    return out


def _parse_registered(source: str | None) -> dict[str, str]:
    """Tags naming the registered model version of a models:/ source."""
    if not source or not source.startswith("models:/"):
        return {}
    rest = source[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return {f"{TAG}.registered_model": name, f"{TAG}.registered_alias": alias}
    name, _, version = rest.partition("/")
    return {f"{TAG}.registered_model": name, f"{TAG}.registered_version": version}


class MlflowTracker:
    def __init__(self, tracking_uri: str, artifact_location: str | None = None, *, registry_uri: str | None = None,
                 retries: int = 3, backoff_s: float = 0.5):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = str(tracking_uri)
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.artifact_location = artifact_location or default_artifact_location(self.tracking_uri)
        self.retries, self.backoff_s = retries, backoff_s
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=registry_uri or self.tracking_uri)
        self._experiments: dict[str, str] = {}

    # ------------------------------------------------------------------ plumbing
    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        from mlflow.exceptions import MlflowException

        delay, last = self.backoff_s, None
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except MlflowException as exc:
                # a 4xx answer is not a connectivity problem: do not retry it
                code = getattr(exc, "error_code", "")
                if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                            "PERMISSION_DENIED", "UNAUTHENTICATED") and "connection" not in str(exc).lower():
                    raise
                last = exc
            except (OSError, ConnectionError) as exc:
                last = exc
            except Exception as exc:  # requests / urllib3 / sqlalchemy errors from the store
                if type(exc).__module__.split(".")[0] not in ("requests", "urllib3", "sqlalchemy"):
                    raise
                last = exc
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        reason = str(last).strip().splitlines()[0][:300] if last and str(last).strip() else type(last).__name__
        raise TrackingUnavailableError(self.tracking_uri, f"{what}: {reason} (after {self.retries + 1} attempts)") from last

    def experiment_id(self, model: str) -> str:
        """Id of the experiment `neuron-audit/<model>`, created when missing."""
        if model in self._experiments:
            return self._experiments[model]
        from mlflow.exceptions import MlflowException

        name = experiment_name(model)

        def get_or_create() -> str:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            try:
                return self.client.create_experiment(name, artifact_location=self.artifact_location,
                                                     tags={f"{TAG}.model": model})
            except MlflowException as exc:   # created by another process meanwhile
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise exc
                return exp.experiment_id

        self._experiments[model] = self._retry("experiment", get_or_create)
        return self._experiments[model]

    # ------------------------------------------------------------------ logging
    def log_run(self, *, model: str, version: str, audit_run_id: int, params: Mapping[str, Any] | None = None,
                metrics: Mapping[str, float] | None = None, visualizations: list[dict] = (),
                images: Mapping[str, np.ndarray | str | os.PathLike] | None = None, report: dict | None = None,
                tags: Mapping[str, str] | None = None, source: str | None = None,
                run_key: str | None = None) -> tuple[str, dict[int, str]]:
        """Log one (audit run, version) as an MLflow run; returns (mlflow run id, {visualization id: artifact uri}).

        visualizations: [dict(id, neuron_id, method, seed, image: path, mask: path|None)];
        images: extra images (e.g. top-k patch grids) {artifact name: uint8 array or PNG path}.
        An existing FINISHED run with the same run_key (default: audit run id + version) is returned as is.
        """
        from mlflow.entities import Metric, Param

        exp_id = self.experiment_id(model)
        run_key = run_key or f"{audit_run_id}-{version}"
        run_tags = {f"{TAG}.audit_run_id": str(audit_run_id), f"{TAG}.model": model, f"{TAG}.version": str(version),
                    f"{TAG}.run_key": run_key,
                    "mlflow.runName": f"{model} v{version} (audit run {audit_run_id})"}
        if source:
            run_tags[f"{TAG}.source"] = source
        run_tags.update(_parse_registered(source))
        run_tags.update({k: str(v) for k, v in (tags or {}).items()})

        def find_existing() -> str | None:
            runs = self.client.search_runs(
                [exp_id], filter_string=f"tags.`{TAG}.run_key` = '{run_key}'",
                max_results=10)
            for r in runs:
                if r.info.status == "FINISHED":
                    return r.info.run_id
                self.client.delete_run(r.info.run_id)   # a half-logged earlier attempt
            return None

        existing = self._retry("search runs", find_existing)
        if existing:
            return existing, {}
        run = self._retry("create run", lambda: self.client.create_run(exp_id, tags=run_tags,
                                                                       run_name=run_tags["mlflow.runName"]))
        rid, art_uri = run.info.run_id, run.info.artifact_uri.rstrip("/")
        now = int(time.time() * 1000)
        flat = flatten_params(params or {})
        plist = [Param(k, v) for k, v in sorted(flat.items())]
        mlist = [Metric(metric_key(k), float(v), now, 0) for k, v in sorted((metrics or {}).items())
                 if v is not None and np.isfinite(float(v))]
        for i in range(0, len(plist), 100):          # MLflow: at most 100 params per batch
            self._retry("log params", lambda p=plist[i:i + 100]: self.client.log_batch(rid, params=p))
        for i in range(0, len(mlist), 1000):         # and at most 1000 metrics
            self._retry("log metrics", lambda m=mlist[i:i + 1000]: self.client.log_batch(rid, metrics=m))

        uris: dict[int, str] = {}
        with tempfile.TemporaryDirectory(prefix="neuron-audit-mlflow-") as tmp:
            tmpd = Path(tmp) / "visualizations"
            tmpd.mkdir()
            for v in visualizations:
                base = metric_key(f"{v['neuron_id']}__{v['method']}_seed{v['seed']}").replace(" ", "_").replace("/", "_")
                shutil.copyfile(v["image"], tmpd / f"{base}.png")
                if v.get("mask"):
                    shutil.copyfile(v["mask"], tmpd / f"{base}__mask.png")
                if v.get("id") is not None:
                    uris[int(v["id"])] = f"{art_uri}/visualizations/{base}.png"
            for name, img in (images or {}).items():
                dest = tmpd / (re.sub(r"[^\w.-]+", "_", name) + ("" if str(name).endswith(".png") else ".png"))
                if isinstance(img, (str, os.PathLike)):
                    shutil.copyfile(img, dest)
                else:
                    from PIL import Image

                    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(dest)
            if any(tmpd.iterdir()):
                self._retry("log images", lambda: self.client.log_artifacts(rid, str(tmpd), "visualizations"))
        if report is not None:
            self._retry("log report", lambda: self.client.log_dict(rid, report, "compare_report.json"))
        self._retry("finish run", lambda: self.client.set_terminated(rid, "FINISHED"))
        self._tag_registered_version(source, rid)
        return rid, uris

    def _tag_registered_version(self, source: str | None, mlflow_run_id: str) -> None:
        """Best effort: tag the registered model version with the audit's MLflow run."""
        tags = _parse_registered(source)
        name = tags.get(f"{TAG}.registered_model")
        if not name:
            return
        try:
            version = tags.get(f"{TAG}.registered_version")
            if version is None:
                version = self.client.get_model_version_by_alias(name, tags[f"{TAG}.registered_alias"]).version
            self.client.set_model_version_tag(name, str(version), f"{TAG}.last_audit_mlflow_run", mlflow_run_id)
        except Exception:  # the registry may live elsewhere; the run's tags carry the link anyway
            pass

    def log_report(self, mlflow_run_id: str, report: dict, artifact_file: str = "compare_report.json") -> None:
        """Add the compare report (JSON) to an MLflow run."""
        self._retry("log report", lambda: self.client.log_dict(mlflow_run_id, report, artifact_file))

    def log_directory(self, mlflow_run_id: str, directory: str | Path, artifact_path: str) -> None:
        """Add a folder (e.g. the static HTML report) to an MLflow run."""
        self._retry("log directory", lambda: self.client.log_artifacts(mlflow_run_id, str(directory), artifact_path))

    def log_version(self, store, audit_run_id: int, model: str, version: str, params: Mapping[str, Any] | None = None,
                    report: dict | None = None, images: Mapping[str, np.ndarray | str] | None = None) -> str:
        """Log what the store holds for (audit run, version) and record the MLflow run id in the store.

        On TrackingUnavailableError the store's row stays 'pending' (with params and the report kept) and the
        error is raised; `log_pending(store)` retries it later.
        """
        report_path = None
        if report is not None:
            report_path = str(store.artifacts.put_json(report, kind="reports"))
        store.mark_mlflow(audit_run_id, model, version, params=params if params is not None else None,
                          report_path=report_path)
        return self._log_from_store(store, audit_run_id, model, version, images=images)

    def _log_from_store(self, store, audit_run_id: int, model: str, version: str, images=None) -> str:
        payload = store.mlflow_payload(audit_run_id, model, version)
        report = store.artifacts.get_json(payload["report_path"]) if payload["report_path"] else None
        try:
            rid, uris = self.log_run(model=model, version=version, audit_run_id=audit_run_id, params=payload["params"],
                                     metrics=payload["metrics"], visualizations=payload["visualizations"], images=images,
                                     report=report, source=payload["source"], run_key=payload["run_key"],
                                     tags={f"{TAG}.model_version_id": str(payload["model_version_id"]),
                                           f"{TAG}.weights_sha256": payload["weights_sha256"] or ""})
        except TrackingUnavailableError as exc:
            store.mark_mlflow(audit_run_id, model, version, error=str(exc))
            raise
        store.mark_mlflow(audit_run_id, model, version, mlflow_run_id=rid)
        for viz_id, uri in uris.items():
            store.set_visualization_uri(viz_id, uri)
        return rid

    def log_pending(self, store) -> list[str]:
        """Log every (audit run, version) the store still marks 'pending'; returns the new MLflow run ids.
        Raises TrackingUnavailableError (after retries) if MLflow is still unreachable."""
        return [self._log_from_store(store, p["audit_run_id"], p["model"], p["version"]) for p in store.pending_mlflow()]


# ---------------------------------------------------------------------- glue used by flows/ (config path based)
@functools.lru_cache(maxsize=8)
def _for_config(cfg_path: str):
    from audit.config import load_config

    from .repository import AuditStore

    cfg = load_config(cfg_path)
    store = AuditStore(cfg.store.database, str(cfg.resolve_path(cfg.store.artifacts)))
    return cfg, store, MlflowTracker(cfg.store.mlflow_tracking_uri)


def log_version_audit(cfg_path: str, model: str, version: str, run_id: int, outcome: Any = None) -> str:
    """Log (audit run `run_id`, `model` `version`) to MLflow from the store of the config at cfg_path:
    params = the model's config + config hash + package version (+ outcome counts), metrics/images from the store.
    Then logs results left pending by earlier runs (best effort). Raises TrackingUnavailableError (row stays pending)."""
    import audit

    cfg, store, tracker = _for_config(str(cfg_path))
    mcfg = cfg.model(model)
    params: dict[str, Any] = {"model": mcfg.model_dump(mode="json"), "config_sha256": cfg.sha256(),
                              "package_version": audit.__version__}
    if outcome is not None:
        for k in ("stats_computed", "stats_cached", "viz_rendered", "viz_reused", "neuron_errors"):
            v = getattr(outcome, k, None)
            if v is not None:
                params[f"outcome.{k}"] = len(v)
    rid = tracker.log_version(store, run_id, model, version, params=params)
    try:
        tracker.log_pending(store)
    except TrackingUnavailableError:
        pass
    return rid


def log_compare_report(cfg_path: str, model: str, run_id: int, report: dict) -> str:
    """Attach the compare report to the MLflow run of (audit run, candidate version): logged directly when that run
    exists, else the candidate's run is logged now with the report (pending on failure). Returns the MLflow run id."""
    cfg, store, tracker = _for_config(str(cfg_path))
    baseline, candidate = str(report["baseline"]), str(report["candidate"])
    row = store.mlflow_run(run_id, model, candidate)
    clean = {k: v for k, v in report.items() if k != "drift_ids"}
    if row and row["status"] == "logged" and row["mlflow_run_id"]:
        tracker.log_report(row["mlflow_run_id"], clean, f"compare_{baseline}_vs_{candidate}.json")
        return row["mlflow_run_id"]
    return tracker.log_version(store, run_id, model, candidate, report=clean)


def log_static_report(cfg_path: str, model: str, run_id: int, version: str, directory: str | Path) -> str | None:
    """Attach the static HTML report to the MLflow run of (audit run, version); None when that run was not logged."""
    cfg, store, tracker = _for_config(str(cfg_path))
    row = store.mlflow_run(run_id, model, version)
    if not row or row["status"] != "logged" or not row["mlflow_run_id"]:
        return None
    tracker.log_directory(row["mlflow_run_id"], directory, "static-report")
    return row["mlflow_run_id"]
