"""The MLflow mirror of the store: one MLflow run per model version, updated idempotently.

- One experiment per model (`neuron-audit/<model>`); in it one run per model version, tagged
  `neuron_audit.store` / `.model` / `.version` and found again by those tags (or by the ledger).
- A sync logs only what is new: every metric, tag, image and report logged is recorded in the store's ledger
  (`mlflow_logged`) with a digest of its content; an item whose digest is unchanged is never logged again. An
  unchanged version costs one read of the database and no MLflow call at all (MLflow is not even imported).
- Audits appear as metric steps: what an audit logs carries `step = audit run id`, so metric and image
  histories chart a version across audits. Outcomes are metrics and tags (storage/mlflow_content.py names
  them); the audit configuration is logged as params when the run is created and as `config.json` thereafter
  (MLflow params cannot change).
- The compare report is a JSON and an HTML artifact of the candidate's run; a registered model version (a
  `models:/` source) gets tags with the audit outcome.
- The whole-store static HTML report is NOT logged to MLflow (it covers every model and would be copied into
  each version's run); flows write it once per audit, when something changed, under the artifact store.

Only the MlflowClient API with explicit run ids is used (no fluent global state). Every call is retried with
backoff; when MLflow stays unreachable `TrackingUnavailableError` is raised, the audit run's row is marked
`pending`, and `log_pending(store)` (or any later sync of that version) logs what the ledger lacks.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from sources.mlflow_env import apply_mlflow_env, default_artifact_location
from sources.mlflow_index import run_exists

from .errors import TrackingUnavailableError
from .links import mlflow_experiment_url, mlflow_run_url, prefect_flow_run_url  # noqa: F401  (re-exported)
from .mlflow_content import (TAG, dashboard_page, digest, flatten_params, image_items, metric_key, name_part,
                             registered_version_tags, report_html, stable_report, version_metrics, version_tags)

apply_mlflow_env()

T = TypeVar("T")
_NOT_RETRYABLE = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                  "PERMISSION_DENIED", "UNAUTHENTICATED")


def experiment_name(model: str) -> str:
    return f"neuron-audit/{model}"


def _registered(source: str | None) -> tuple[str, str | None, str | None] | None:
    """(name, version, alias) of a models:/ source, else None."""
    if not source or not source.startswith("models:/"):
        return None
    from sources.mlflow_registry import parse_models_uri

    return parse_models_uri(source)


@dataclass
class SyncResult:
    """What one sync of a version did: the version's MLflow run, and the ledger keys it logged ([] = nothing new)."""
    mlflow_run_id: str | None
    experiment_id: str | None
    logged: list[str] = field(default_factory=list)
    created: bool = False


class MlflowTracker:
    def __init__(self, tracking_uri: str, artifact_location: str | None = None, *, registry_uri: str | None = None,
                 retries: int = 3, backoff_s: float = 0.5, mlflow_ui: str | None = None, dashboard_ui: str | None = None):
        """mlflow_ui / dashboard_ui: base URLs of the MLflow UI and the dashboard, for the links in the tags of
        registered versions (None: no link)."""
        self.tracking_uri = str(tracking_uri)
        self.mlflow_ui, self.dashboard_ui = mlflow_ui, dashboard_ui
        self.registry_uri = registry_uri or self.tracking_uri
        self.artifact_location = artifact_location or default_artifact_location(self.tracking_uri)
        self.retries, self.backoff_s = retries, backoff_s
        self._client = None
        self._experiments: dict[str, str] = {}

    @property
    def client(self):
        """The MlflowClient, created on first use (importing MLflow costs seconds: an unchanged sync never does)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    # ------------------------------------------------------------------ plumbing
    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        from mlflow.exceptions import MlflowException

        delay, last = self.backoff_s, None
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except MlflowException as exc:
                # a 4xx answer is not a connectivity problem: do not retry it
                if getattr(exc, "error_code", "") in _NOT_RETRYABLE and "connection" not in str(exc).lower():
                    raise
                last = exc
            except OSError as exc:   # connection errors (requests' errors are OSErrors too)
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

    def _live_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self._retry("get run", lambda: self.client.get_run(run_id))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return False
            raise
        return run.info.lifecycle_stage == "active"

    def _find_run(self, exp_id: str, store_id: str, model: str, version: str) -> str | None:
        flt = (f"tags.`{TAG}.store` = '{store_id}' and tags.`{TAG}.model` = '{model}' "
               f"and tags.`{TAG}.version` = '{version}'")
        runs = self._retry("search runs", lambda: self.client.search_runs([exp_id], filter_string=flt, max_results=50,
                                                                          order_by=["attributes.start_time ASC"]))
        return runs[0].info.run_id if runs else None

    def _ensure_run(self, store, model: str, version: str, content: Mapping, known: str | None) -> tuple[str, bool]:
        """(run id, created) of the version's run: the ledger's when it still exists, else the one its tags find,
        else a new one (a race with another process creating it too resolves to the oldest)."""
        exp_id = self.experiment_id(model)
        if known and self._live_run(known):
            return known, False
        store_id = store.store_id
        found = self._find_run(exp_id, store_id, model, version)
        if found:
            return found, False
        tags = {f"{TAG}.store": store_id, f"{TAG}.model": model, f"{TAG}.version": str(version),
                f"{TAG}.source": content.get("source") or "", "mlflow.runName": f"{model} v{version}"}
        reg = _registered(content.get("source"))
        if reg:
            tags[f"{TAG}.registered_model"] = reg[0]
            tags[f"{TAG}.registered_" + ("version" if reg[1] else "alias")] = reg[1] or reg[2]
        run = self._retry("create run", lambda: self.client.create_run(exp_id, tags=tags,
                                                                       run_name=tags["mlflow.runName"]))
        oldest = self._find_run(exp_id, store_id, model, version)
        if oldest and oldest != run.info.run_id:
            self._retry("delete duplicate run", lambda: self.client.delete_run(run.info.run_id))
            return oldest, False
        return run.info.run_id, True

    # ------------------------------------------------------------------ the sync
    def desired_items(self, content: Mapping, *, config: Mapping | None = None,
                      neuron_errors: Mapping[str, str] | None = None) -> dict[str, tuple[str, Any]]:
        """{ledger key: (digest, payload)} of everything the version's run should hold."""
        items: dict[str, tuple[str, Any]] = {}
        for k, v in version_metrics(content, neuron_errors).items():
            items[f"metric:{k}"] = (repr(v), v)
        for k, v in version_tags(content, neuron_errors).items():
            items[f"tag:{k}"] = (digest(v), v)
        for it in image_items(content):
            items[f"image:{it['key']}"] = (it["digest"], it)
        for base, path in content["reports"].items():
            report = json.loads(Path(path).read_text())
            stem = f"compare/{name_part(base)}_vs_{name_part(report.get('candidate', ''))}"
            items[f"report:{stem}"] = (digest(stable_report(report)), (stem, report))
        if config is not None:
            items["artifact:config.json"] = (digest(config), config)
            items[f"tag:{TAG}.config_sha256"] = (digest(config), digest(config))
            for k, v in flatten_params(config).items():
                items[f"param:{k}"] = (v, v)
        return items

    def sync_version(self, store, model: str, version: str, audit_run_id: int | None = None, *,
                     config: Mapping | None = None, neuron_errors: Mapping[str, str] | None = None) -> SyncResult:
        """Bring the MLflow run of (model, version) up to the store's content, logging only what the ledger says
        the run lacks (with step = audit_run_id). config: the model's audit configuration (params at creation,
        config.json after); neuron_errors: the neurons this audit could not audit (None: unknown, left as is).
        A ledger whose run is gone from MLflow (a deleted or replaced tracking store) is logged again in full."""
        content = store.mlflow_version_content(model, version)
        desired = self.desired_items(content, config=config, neuron_errors=neuron_errors)
        known_run, ledger = store.mlflow_ledger(model, version)
        todo = self._todo(desired, ledger)
        if known_run and not todo and run_exists(known_run, self.tracking_uri) is not False:
            return SyncResult(known_run, None, [])   # told without importing MLflow (sources.mlflow_index)
        run_id, created = self._ensure_run(store, model, version, content, known_run)
        if run_id != known_run:
            todo = self._todo(desired, self._params_already_in(store, model, version, run_id, created, audit_run_id))
        # The registered version's tags first: they are what a release waits on (registration-to-verdict,
        # docs/gate.md), and they are read from the store, not from what the run logs after them.
        reg = _registered(content.get("source"))
        logged = self._tag_registered_version(store, model, version, run_id, content, reg, ledger
                                              if run_id == known_run else {}, audit_run_id) if reg else []
        logged += self._log_items(store, model, version, run_id, todo, audit_run_id)
        return SyncResult(run_id, self.experiment_id(model), logged, created)

    def _params_already_in(self, store, model: str, version: str, run_id: str, created: bool,
                           audit_run_id: int | None) -> dict[str, str]:
        """Ledger entries for the params a run found by its tags already holds (MLflow refuses to log them
        again with another value); {} for a new run."""
        if created:
            return {}
        params = self._retry("get run", lambda: self.client.get_run(run_id)).data.params
        entries = {f"param:{k}": v for k, v in params.items()}
        store.record_mlflow_logged(model, version, run_id, entries, audit_run_id)
        return entries

    @staticmethod
    def _todo(desired: Mapping[str, tuple[str, Any]], ledger: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
        # a param is logged once per key: MLflow refuses to change a param's value
        return {k: v for k, v in desired.items()
                if (k not in ledger if k.startswith("param:") else ledger.get(k) != v[0])}

    def _log_items(self, store, model: str, version: str, rid: str, todo: Mapping[str, tuple[str, Any]],
                   step: int | None) -> list[str]:
        from mlflow.entities import Metric, Param, RunTag

        step = int(step or 0)
        now = int(time.time() * 1000)
        done: list[str] = []

        def record(keys: list[str]) -> None:
            store.record_mlflow_logged(model, version, rid, {k: todo[k][0] for k in keys}, step or None)
            done.extend(keys)

        def batch(kind: str, size: int, make: Callable[[str, Any], Any], arg: str) -> None:
            keys = sorted(k for k in todo if k.startswith(kind + ":"))
            for i in range(0, len(keys), size):
                chunk = keys[i:i + size]
                entities = [make(k.split(":", 1)[1], todo[k][1]) for k in chunk]
                self._retry(f"log {kind}s", lambda e=entities: self.client.log_batch(rid, **{arg: e}))
                record(chunk)

        batch("param", 100, lambda k, v: Param(k, str(v)), "params")
        batch("metric", 1000, lambda k, v: Metric(k, float(v), now, step), "metrics")
        batch("tag", 100, lambda k, v: RunTag(k, str(v)), "tags")
        images = sorted(k for k in todo if k.startswith("image:"))
        if images:
            from PIL import Image

            for k in images:
                it = todo[k][1]
                with Image.open(it["path"]) as img:
                    pil = img.convert("L" if it["mask"] else "RGB")
                self._retry("log image", lambda p=pil, key=it["key"]: self.client.log_image(rid, p, key=key, step=step,
                                                                                            synchronous=True))
            record(images)
            self._record_image_uris(store, rid, [todo[k][1] for k in images], step)
        for k in sorted(k for k in todo if k.startswith("report:")):
            stem, report = todo[k][1]
            clean = stable_report(report)
            self._retry("log report", lambda: self.client.log_dict(rid, clean, f"{stem}.json"))
            self._retry("log report", lambda: self.client.log_text(rid, report_html(clean), f"{stem}.html"))
            record([k])
        if "artifact:config.json" in todo:
            self._retry("log config", lambda: self.client.log_dict(rid, todo["artifact:config.json"][1], "config.json"))
            record(["artifact:config.json"])
        if done:
            self._retry("tag run", lambda: self.client.set_tag(rid, f"{TAG}.last_audit_run_id", str(step)))
            self._retry("finish run", lambda: self.client.set_terminated(rid, "FINISHED"))
        return done

    def _record_image_uris(self, store, rid: str, items: list[dict], step: int) -> None:
        """Point each visualization row at its image in the run (the newest file logged under its key)."""
        listing = self._retry("list images", lambda: self.client.list_artifacts(rid, "images"))
        base = self._retry("get run", lambda: self.client.get_run(rid)).info.artifact_uri.rstrip("/")
        for it in items:
            if it["mask"]:
                continue
            prefix = f"images/{it['key'].replace('/', '~')}+step+{step}+"
            files = [f.path for f in listing if f.path.startswith(prefix) and f.path.endswith(".png")]
            if files:
                store.set_visualization_uri(it["viz_id"], f"{base}/{sorted(files)[-1]}")

    def _tag_registered_version(self, store, model: str, version: str, rid: str, content: Mapping,
                                reg: tuple[str, str | None, str | None], ledger: Mapping[str, str],
                                step: int | None) -> list[str]:
        """Tag the registered model version with the audit outcome (only tags whose value changed). A registry
        that refuses (e.g. another store) leaves the run's own tags as the link."""
        from mlflow.exceptions import MlflowException

        name, number, alias = reg
        try:
            if number is None:
                number = str(self._retry("alias", lambda: self.client.get_model_version_by_alias(name, alias)).version)
            tags = registered_version_tags(
                content, rid, run_url=mlflow_run_url(self.mlflow_ui, self.experiment_id(model), rid),
                dashboard_url=dashboard_page(self.dashboard_ui, model, version, content))
            todo = {f"mvtag:{name}/{number}:{k}": v for k, v in tags.items()
                    if ledger.get(f"mvtag:{name}/{number}:{k}") != digest(v)}
            # the verdict last: whoever sees it (a CI job polling the version) sees the counts and links with it
            for key, value in sorted(todo.items(), key=lambda kv: kv[0].endswith(f"{TAG}.verdict")):
                tag = key.rsplit(":", 1)[1]
                self._retry("tag model version", lambda t=tag, v=value: self.client.set_model_version_tag(
                    name, number, t, v))
        except MlflowException:
            return []
        store.record_mlflow_logged(model, version, rid, {k: digest(v) for k, v in todo.items()}, step)
        return list(todo)

    def log_keyed_run(self, *, model: str, run_key: str, params: Mapping[str, Any], metrics: Mapping[str, float],
                      tags: Mapping[str, str], report: dict | None = None, report_name: str = "report.json") -> str:
        """One self-contained MLflow run in the model's experiment, found again by `run_key` (a content key):
        a FINISHED run with that key is returned as is, a half-logged one is deleted and logged again. Used for
        runs that are not a model version's (a watched production batch)."""
        from mlflow.entities import Metric, Param, RunTag

        exp_id = self.experiment_id(model)
        key_tag = f"{TAG}.run_key"

        def find_finished() -> str | None:
            runs = self.client.search_runs([exp_id], filter_string=f"tags.`{key_tag}` = '{run_key}'", max_results=10)
            for r in runs:
                if r.info.status == "FINISHED":
                    return r.info.run_id
                self.client.delete_run(r.info.run_id)
            return None

        found = self._retry("search runs", find_finished)
        if found:
            return found
        all_tags = {key_tag: run_key, f"{TAG}.model": model, **{k: str(v) for k, v in tags.items()}}
        run = self._retry("create run", lambda: self.client.create_run(exp_id, tags=all_tags))
        rid, now = run.info.run_id, int(time.time() * 1000)
        self._retry("log params", lambda: self.client.log_batch(
            rid, params=[Param(k, str(v)) for k, v in flatten_params(dict(params)).items()]))
        self._retry("log metrics", lambda: self.client.log_batch(
            rid, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag("mlflow.runName", all_tags.get("mlflow.runName", run_key))]))
        if report is not None:
            clean = json.loads(json.dumps(report, default=str))
            self._retry("log report", lambda: self.client.log_dict(rid, clean, report_name))
        self._retry("finish run", lambda: self.client.set_terminated(rid, "FINISHED"))
        return rid

    def log_pending(self, store, config_of: Callable[[str], Mapping | None] | None = None) -> list[str]:
        """Sync every version the store still marks 'pending'; returns their MLflow run ids. Raises
        TrackingUnavailableError (after retries) if MLflow is still unreachable."""
        out = []
        for p in store.pending_mlflow():
            result = self.sync_version(store, p["model"], p["version"], p["audit_run_id"],
                                       config=config_of(p["model"]) if config_of else None)
            store.mark_mlflow(p["audit_run_id"], p["model"], p["version"], mlflow_run_id=result.mlflow_run_id,
                              experiment_id=result.experiment_id or self.experiment_id(p["model"]))
            out.append(result.mlflow_run_id)
        return out


# ---------------------------------------------------------------------- one audited version, for flows/
def model_config_json(cfg, model: str) -> dict:
    """The model's audit configuration as MLflow sees it (params, config.json, config_sha256 tag)."""
    return cfg.model(model).model_dump(mode="json")


def tracker_for(cfg) -> MlflowTracker:
    """The tracker of a loaded config (`store.mlflow_tracking_uri`, with the UI links of `ui:`)."""
    uri = cfg.store.mlflow_tracking_uri
    mlflow_ui = cfg.ui.mlflow or (uri if uri.startswith(("http://", "https://")) else None)
    return MlflowTracker(uri, mlflow_ui=mlflow_ui, dashboard_ui=cfg.ui.dashboard)


def sync_audited_version(store, tracker: MlflowTracker, cfg, model: str, version: str, run_id: int | None,
                         neuron_errors: Mapping[str, str] | None = None) -> SyncResult:
    """Sync (model, version) from `store` (the caller's, opened once per process) and record it for audit run
    `run_id` ('logged' when anything was logged, 'pending' with the error when MLflow is unreachable, nothing
    when nothing was new). Then syncs versions left pending by earlier runs (best effort). `cfg`: the loaded
    audit config the versions' params come from."""
    try:
        result = tracker.sync_version(store, model, version, run_id, config=model_config_json(cfg, model),
                                      neuron_errors=neuron_errors)
    except TrackingUnavailableError as exc:
        if run_id is not None:
            store.mark_mlflow(run_id, model, version, error=str(exc))
        raise
    if run_id is not None and result.logged:
        store.mark_mlflow(run_id, model, version, mlflow_run_id=result.mlflow_run_id, experiment_id=result.experiment_id)
    if store.pending_mlflow():
        try:
            tracker.log_pending(store, config_of=lambda m: model_config_json(cfg, m) if _has_model(cfg, m) else None)
        except TrackingUnavailableError:
            pass
    return result


def _has_model(cfg, model: str) -> bool:
    return any(m.name == model for m in cfg.models)
