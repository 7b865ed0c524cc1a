"""Registered MLflow model versions -> weights: `models:/NAME/VERSION`, `models:/NAME@ALIAS` and the versions of
`mlflow_registered_model: NAME` (all of them, or those carrying given aliases).

Every lookup goes through one MlflowClient whose registry URI is the configured tracking URI. MLflow's own
`download_artifacts("models:/...")` resolves registry URIs against the process-wide default registry
(`mlflow.get_registry_uri()`, i.e. `./mlflow.db` in the current directory), not against the tracking URI it is
given: that is why `models:/my-resnet/1` used to fail with "Registered Model with name=my-resnet not found"
(and left a stray mlflow.db behind). Here the registry answers with the version's download location, and only
that plain artifact location is handed to an artifact repository.

What a version may hold (sources/mlflow_layout.py): the pt2 archive `mlflow.pytorch.log_model` writes by
default (weights read without unpickling), a state dict (.safetensors or weights_only torch file), or a pickled
module, which is loaded only with the model's `allow_pickle: true`. Registered as the `models:/` source scheme.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from audit.errors import AuditInputError

from .errors import SourceError, SourceFormatError, SourceNotFoundError, TrackingUnavailableError
from .mlflow_env import apply_mlflow_env, default_artifact_location
from .mlflow_layout import describe_layout, pickle_refusal, pickled_model_state_dict, read_mlmodel
from .registry import SourceContext, SourceWeights, register_source
from .state_dicts import read_state_dict

apply_mlflow_env()

_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))/?$")
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
_MAX_LISTING_DEPTH = 3


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
    m = _URI_RE.match(uri.strip())
    if not m:
        raise SourceError(f"{uri!r} is not a registry source; valid: models:/NAME/VERSION or models:/NAME@ALIAS",
                          value=uri)
    return m["name"], m["version"], m["alias"]


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _unavailable(tracking_uri: str, exc: BaseException) -> TrackingUnavailableError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return TrackingUnavailableError(tracking_uri, f"cannot read the model registry: {type(exc).__name__}: {first}")


def _is_missing(exc: BaseException) -> bool:
    return getattr(exc, "error_code", "") in _MISSING


def registered_version(client, uri: str, tracking_uri: str):
    """The ModelVersion a models:/ URI names. AuditInputError when the name, version or alias does not exist
    (the message lists what does); TrackingUnavailableError when the registry cannot be read."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_models_uri(uri)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise _unavailable(tracking_uri, exc) from exc
    except OSError as exc:  # requests' connection errors are OSErrors
        raise _unavailable(tracking_uri, exc) from exc
    raise SourceNotFoundError(f"{uri}: {_what_exists(client, name, tracking_uri)}", value=uri)


def _what_exists(client, name: str, tracking_uri: str) -> str:
    """A sentence on what the registry holds under `name`, for error messages."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
        versions = sorted({str(v.version) for v in client.search_model_versions(f"name = '{name}'")}, key=_numeric)
    except MlflowException as exc:
        if _is_missing(exc):
            return f"no registered model named {name!r} in the registry at {tracking_uri}"
        raise _unavailable(tracking_uri, exc) from exc
    except OSError as exc:
        raise _unavailable(tracking_uri, exc) from exc
    aliases = sorted((getattr(model, "aliases", None) or {}).keys())
    return (f"no such version or alias of registered model {name!r}; it has versions "
            f"{', '.join(versions) or 'none'} and aliases {', '.join('@' + a for a in aliases) or 'none'}")


def _numeric(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (1 << 62, v)


class _VersionFiles:
    """The artifact files of one model version, listed and downloaded through an artifact repository built for
    the registry's download location (never through the global registry URI)."""

    def __init__(self, client, name: str, version: str, tracking_uri: str):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        self.root = client.get_model_version_download_uri(name, version)
        self.repo = get_artifact_repository(self.root, tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def files(self) -> list[str]:
        out: list[str] = []

        def walk(path: str | None, depth: int) -> None:
            for info in self.repo.list_artifacts(path):
                if info.is_dir:
                    if depth < _MAX_LISTING_DEPTH:
                        walk(info.path, depth + 1)
                else:
                    out.append(info.path)
        walk(None, 0)
        return sorted(out)

    def download(self, rel: str | None, dst: str | Path) -> Path:
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.repo.download_artifacts(rel or "", str(dst)))

    def layout(self, files: list[str], tmp: str | Path) -> tuple[str, str | None]:
        mlmodel = read_mlmodel(self.download("MLmodel", tmp)) if "MLmodel" in files else {}
        return describe_layout(files, mlmodel)


def _layout_problem(uri: str, kind: str, files: list[str], allow_pickle: bool, model_key: str | None) -> str | None:
    if kind == "pickle" and not allow_pickle:
        return pickle_refusal(uri, model_key)
    if kind == "unknown":
        shown = ", ".join(files[:8]) + (" ..." if len(files) > 8 else "")
        return (f"{uri}: the model version's files ({shown or 'none'}) hold no weights neuron-audit can read: "
                "log the model with mlflow.pytorch.log_model (pt2, the default) or log a state dict")
    return None


def _read_weights(uri: str, files_of: _VersionFiles, kind: str, rel: str | None, work: Path) -> dict:
    """The state dict in a version's files (downloaded under `work`); a format error names the URI."""
    try:
        if kind == "pickle":
            return pickled_model_state_dict(files_of.download(None, work / "model"))
        local = files_of.download(rel, work)
        return read_state_dict(local, shown=local.name)
    except SourceFormatError as exc:
        raise SourceFormatError(f"{uri}: {exc}", value=uri) from None


def resolve_registry_source(uri: str, tracking_uri: str, dst_dir: str | Path | None = None, *,
                            allow_pickle: bool = False, model_key: str | None = None) -> tuple[dict, dict]:
    """(state_dict, info) of a registered model version. info: uri, name, version, alias, source, run_id, file,
    format ("pt2" | "state_dict" | "pickle"), download_uri. AuditInputError for a missing name/version/alias, for
    files that hold no readable weights, and for a pickled module without `allow_pickle`; TrackingUnavailableError
    when the registry or its artifacts cannot be read."""
    from mlflow.exceptions import MlflowException

    name, _, alias = parse_models_uri(uri)
    client = _client(tracking_uri)
    mv = registered_version(client, uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="neuron-audit-registry-") as tmp:
        work = Path(dst_dir) if dst_dir is not None else Path(tmp)
        try:
            files_of = _VersionFiles(client, name, str(mv.version), tracking_uri)
            files = files_of.files()
            kind, rel = files_of.layout(files, work)
            problem = _layout_problem(uri, kind, files, allow_pickle, model_key)
            if problem:
                raise SourceError(problem, value=uri)
            state = _read_weights(uri, files_of, kind, rel, work)
        except (MlflowException, OSError) as exc:
            raise _unavailable(tracking_uri, exc) from exc
    info: dict[str, Any] = {"uri": uri, "name": name, "version": str(mv.version), "alias": alias,
                            "source": mv.source, "run_id": mv.run_id, "file": Path(rel or "model").name,
                            "format": kind, "download_uri": files_of.root}
    return state, info


def check_registry_source(uri: str, tracking_uri: str, allow_pickle: bool = False,
                          model_key: str | None = None) -> str | None:
    """For the preflight: None when `uri` names a registered version whose files neuron-audit can read, else the
    problem in one sentence (a bad URI, a missing name/version/alias with what exists instead, an unreadable
    registry, files without readable weights, a pickled module without opt-in). Reads the listing and the small
    MLmodel file only; no weights are downloaded."""
    from mlflow.exceptions import MlflowException

    try:
        name, _, _ = parse_models_uri(uri)
        client = _client(tracking_uri)
        mv = registered_version(client, uri, tracking_uri)
        with tempfile.TemporaryDirectory(prefix="neuron-audit-check-") as tmp:
            files_of = _VersionFiles(client, name, str(mv.version), tracking_uri)
            files = files_of.files()
            kind, _ = files_of.layout(files, tmp)
        return _layout_problem(uri, kind, files, allow_pickle, model_key)
    except AuditInputError as exc:
        return str(exc)
    except TrackingUnavailableError as exc:
        return f"{uri}: {exc.reason} ({tracking_uri})"
    except (MlflowException, OSError) as exc:
        return f"{uri}: {_unavailable(tracking_uri, exc).reason} ({tracking_uri})"


def list_registry_versions(name: str, tracking_uri: str, aliases: Iterable[str] | None = None) -> list[str]:
    """The versions of registered model `name` in ascending order: all of them, or those `aliases` point to.
    AuditInputError when the model is not registered or an alias does not exist; TrackingUnavailableError when
    the registry cannot be read."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        model = client.get_registered_model(name)
        if aliases is None:
            versions = {str(v.version) for v in client.search_model_versions(f"name = '{name}'")}
        else:
            known = {str(k): str(v) for k, v in (getattr(model, "aliases", None) or {}).items()}
            missing = [a for a in aliases if a not in known]
            if missing:
                raise SourceNotFoundError(f"registered model {name!r} has no alias {', '.join('@' + a for a in missing)}; "
                                          f"its aliases: {', '.join('@' + a for a in sorted(known)) or 'none'}",
                                          value=name)
            versions = {known[a] for a in aliases}
    except MlflowException as exc:
        if _is_missing(exc):
            raise SourceNotFoundError(f"mlflow_registered_model: no registered model named {name!r} in the registry "
                                      f"at {tracking_uri}", value=name) from None
        raise _unavailable(tracking_uri, exc) from exc
    except OSError as exc:
        raise _unavailable(tracking_uri, exc) from exc
    return sorted(versions, key=_numeric)


def check_registered_model(name: str, tracking_uri: str, aliases: Iterable[str] | None = None,
                           allow_pickle: bool = False, model_key: str | None = None) -> list[str]:
    """For the preflight of `mlflow_registered_model`: every problem with the model and each version it selects
    (missing name or alias, no versions, unreadable files, pickle without opt-in); [] when all can be audited."""
    try:
        versions = list_registry_versions(name, tracking_uri, aliases)
    except AuditInputError as exc:
        return [str(exc)]
    except TrackingUnavailableError as exc:
        return [f"mlflow_registered_model {name!r}: {exc.reason} ({tracking_uri})"]
    if not versions:
        return [f"mlflow_registered_model {name!r}: the registered model has no versions"]
    problems = [check_registry_source(f"models:/{name}/{v}", tracking_uri, allow_pickle, model_key) for v in versions]
    return [p for p in problems if p]


def register_state_dict(tracking_uri: str, name: str, state_dict: Mapping, alias: str | None = None,
                        experiment: str = "neuron-audit/registry") -> str:
    """Log `state_dict` as `weights/model.safetensors` in a new run and register it as a new version of `name`
    (alias optional). Returns the version (string). For tests and scripts; users register with
    `mlflow.pytorch.log_model` (README)."""
    from mlflow.exceptions import MlflowException
    from safetensors.torch import save_file

    client = _client(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = client.create_experiment(experiment, artifact_location=default_artifact_location(tracking_uri))
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, tags={"neuron_audit.registered_model": name}, run_name=f"register {name}")
    with tempfile.TemporaryDirectory(prefix="neuron-audit-register-") as tmp:
        d = Path(tmp) / "weights"
        d.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(d / "model.safetensors"))
        client.log_artifacts(run.info.run_id, str(d), "weights")
    client.set_terminated(run.info.run_id, "FINISHED")
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri.rstrip('/')}/weights", run_id=run.info.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def read_registered(rest: str, context: SourceContext) -> SourceWeights:
    """The `models:/` scheme: a registered version from the MLflow store `context.tracking_uri`."""
    uri = "models:/" + rest
    if not context.tracking_uri:
        raise SourceError(f"{uri}: a models:/ source needs the MLflow store it is registered in "
                          "(store.mlflow_tracking_uri)", value=uri)
    state, info = resolve_registry_source(uri, context.tracking_uri, allow_pickle=context.allow_pickle,
                                          model_key=context.model_key)
    return SourceWeights(uri, state, info)


register_source("models", "models:/", read_registered, syntax=("models:/NAME/VERSION", "models:/NAME@ALIAS"),
                description="a registered MLflow model version (pt2, state dict, or pickled with allow_pickle)")
