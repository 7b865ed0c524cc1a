"""`models:/NAME/VERSION` and `models:/NAME@ALIAS` sources -> a state dict (weights only).

The model version's artifacts are downloaded and the first `.safetensors` file in them is loaded
(else a torch state dict `.pt/.pth/.bin/.ckpt`, loaded with weights_only=True).
`register_state_dict` registers such a version (for tests and the demo).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from audit.errors import AuditInputError  # noqa: E402

from .errors import TrackingUnavailableError  # noqa: E402

_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))/?$")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    m = _URI_RE.match(uri.strip())
    if not m:
        raise AuditInputError(f"{uri!r} is not a registry source; valid: models:/NAME/VERSION or models:/NAME@ALIAS")
    return m["name"], m["version"], m["alias"]


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _load_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AuditInputError(f"{path.name} in the model version's artifacts is not a state dict of tensors")
    return dict(obj)


def find_weight_file(root: Path) -> Path | None:
    files = sorted(p for p in Path(root).rglob("*") if p.is_file())
    for group in ((".safetensors",), _TORCH_SUFFIXES):
        cands = [p for p in files if p.suffix in group]
        if cands:
            return sorted(cands, key=lambda p: (len(p.relative_to(root).parts), p.name))[0]
    return None


def resolve_registry_source(uri: str, tracking_uri: str, dst_dir: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """(state_dict, info) for a registered model version. info: name, version, alias, source, run_id, file, uri."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_models_uri(uri)
    client = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise AuditInputError(f"{uri}: no such registered model version in {tracking_uri} ({exc.message})") from None
        raise TrackingUnavailableError(tracking_uri, str(exc)) from exc
    except Exception as exc:  # connection errors
        raise TrackingUnavailableError(tracking_uri, f"{type(exc).__name__}: {exc}") from exc
    from mlflow.artifacts import download_artifacts

    tmp = None
    if dst_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="neuron-audit-registry-")
        dst_dir = tmp.name
    try:
        local = None
        errors = []
        for src in (mv.source, getattr(mv, "storage_location", None), f"models:/{name}/{mv.version}"):
            if not src:
                continue
            try:
                local = Path(download_artifacts(artifact_uri=src, dst_path=str(dst_dir), tracking_uri=tracking_uri))
                break
            except Exception as exc:  # try the next form of the location
                errors.append(f"{src}: {exc}")
        if local is None:
            raise AuditInputError(f"{uri}: cannot download the model version's artifacts: {'; '.join(errors)}")
        weight = local if local.is_file() else find_weight_file(local)
        if weight is None:
            raise AuditInputError(f"{uri}: the model version's artifacts ({mv.source}) hold no .safetensors or torch "
                                  "state dict file")
        state = _load_weights(weight)
        info: dict[str, Any] = {"uri": uri, "name": name, "version": str(mv.version), "alias": alias,
                                "source": mv.source, "run_id": mv.run_id, "file": weight.name}
        return state, info
    finally:
        if tmp is not None:
            tmp.cleanup()


def list_registry_versions(name: str, tracking_uri: str) -> list[str]:
    """The versions of registered model `name`, ascending ([] when the model is not registered)."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise TrackingUnavailableError(tracking_uri, str(exc)) from exc
    except Exception as exc:  # connection errors
        raise TrackingUnavailableError(tracking_uri, f"{type(exc).__name__}: {exc}") from exc
    return sorted({str(v.version) for v in versions}, key=lambda v: (len(v), v))


def register_state_dict(tracking_uri: str, name: str, state_dict: Mapping, alias: str | None = None,
                        experiment: str = "neuron-audit/registry") -> str:
    """Log `state_dict` as `weights/model.safetensors` in a new run and register it as a new version of `name`
    (alias optional). Returns the version (string)."""
    from mlflow.exceptions import MlflowException
    from safetensors.torch import save_file

    client = _client(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        from .tracking import default_artifact_location

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
