"""What the tasks of one process share: the config, the store, the MLflow tracker, loaded models
and probe sets, each built once per process (a Dask worker builds its own). storage/ is handed
the store and tracker opened here; it never opens its own.

torch and timm are imported only where a model or probe set is built, so that the preflight
and the recognition of unchanged versions stay cheap."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.config import AuditConfig, ModelConfig, VersionConfig, load_config
from audit.errors import AuditInputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from audit.probe import ProbeSet


@dataclass
class LoadedVersion:
    model: Any                       # nn.Module
    weights_sha256: str
    source: str
    registry: dict | None = None     # MLflow registry info for models:/ sources
    # What its outputs depend on (weights, module tree, architecture, model_args, num_classes;
    # audit.contentkeys.model_content_key): the key of its cached activations, nulls and statistics.
    model_key: str = ""


@functools.lru_cache(maxsize=4)
def config(path: str) -> AuditConfig:
    return load_config(path)


@functools.lru_cache(maxsize=4)
def store(path: str):
    from storage.repository import AuditStore

    from audit.stats import set_cache_dir

    cfg = config(path)
    s = AuditStore(cfg.store.database, str(cfg.resolve_path(cfg.store.artifacts)))
    if not s.schema_is_current():
        s.upgrade()
    s.sync_registry(cfg)
    # Probe activations keyed by (weights, probe set, layer): a re-run or a compare of
    # stored versions reads them instead of running the models again.
    set_cache_dir(cfg.resolve_path(cfg.store.artifacts) / "cache" / "activations")
    return s


@functools.lru_cache(maxsize=4)
def tracker(path: str):
    """The MLflow tracker of the config at `path` (MLflow itself is imported on its first call)."""
    from storage.tracking import tracker_for

    return tracker_for(config(path))


def read_store(path: str):
    """The store opened read-only (dashboard, report): no migration, no registry sync, no file created.
    A store that does not exist yet, or whose schema is behind, is bad input naming the key."""
    from storage.db import sqlite_path
    from storage.repository import AuditStore

    cfg = config(path)
    db = sqlite_path(cfg.store.database)
    if db is not None and not db.is_file():
        raise AuditInputError(f"store.database: there is no audit store at {db} yet "
                              "(run `neuron-audit run` or `neuron-audit demo` first)")
    s = AuditStore(cfg.store.database, str(cfg.resolve_path(cfg.store.artifacts)), read_only=True)
    if not s.schema_is_current():
        raise AuditInputError(f"store.database: the database {s.url} is at an older schema; "
                              f"run `neuron-audit db upgrade -c {path}` first (the dashboard and report never write)")
    return s


def device() -> "torch.device":
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=6)
def _load(path: str, model_name: str, version: str) -> LoadedVersion:
    from audit.contentkeys import model_content_key
    from audit.models import load_model, weights_sha256
    from sources import resolve

    cfg = config(path)
    mcfg = cfg.model(model_name)
    vcfg = version_config(cfg, mcfg, version)
    weights = resolve(vcfg.source, base_dir=cfg.base_dir, tracking_uri=cfg.store.mlflow_tracking_uri,
                      allow_pickle=mcfg.allow_pickle, model_key=f"models[{mcfg.name}]")
    model = load_model(mcfg.architecture, vcfg.source, state_dict=weights.state_dict, device=device(),
                       model_args=mcfg.model_args, num_classes=mcfg.num_classes)
    for p in model.parameters():
        p.requires_grad_(False)
    digest = weights_sha256(model)
    build = {"architecture": mcfg.architecture, "model_args": mcfg.model_args, "num_classes": mcfg.num_classes}
    return LoadedVersion(model, digest, vcfg.source, weights.info, model_content_key(model, digest, build))


def load_version(path: str, model_name: str, version: str) -> LoadedVersion:
    return _load(str(path), model_name, str(version))


def version_config(cfg: AuditConfig, mcfg: ModelConfig, version: str) -> VersionConfig:
    for v in registry_versions(cfg, mcfg):
        if v.version == str(version):
            return v
    return mcfg.version(version)


def registry_versions(cfg: AuditConfig, mcfg: ModelConfig) -> list[VersionConfig]:
    """The config's versions, plus the MLflow registry's for `mlflow_registered_model` models (every version, or
    those `mlflow_aliases` point to). Every version is read without MLflow where the store allows (see
    sources.mlflow_index); aliases are read through MLflow."""
    versions = list(mcfg.versions)
    if mcfg.mlflow_registered_model:
        from sources.mlflow_index import registered_versions

        listed = None
        if mcfg.mlflow_aliases is None:
            listed = registered_versions(mcfg.mlflow_registered_model, cfg.store.mlflow_tracking_uri)
        if listed is None:
            from sources.mlflow_registry import list_registry_versions

            listed = list_registry_versions(mcfg.mlflow_registered_model, cfg.store.mlflow_tracking_uri,
                                            mcfg.mlflow_aliases)
        known = {v.version for v in versions}
        for v in listed:
            if v not in known:
                versions.append(VersionConfig(version=v, source=f"models:/{mcfg.mlflow_registered_model}/{v}"))
    return versions


def probe_size(mcfg: ModelConfig, model: "nn.Module") -> int:
    from audit.models import model_input_size

    return mcfg.probe.resolution or model_input_size(model)


@functools.lru_cache(maxsize=4)
def _probe(spec: str, size: int, crops: int, base_dir: str) -> "ProbeSet":
    from audit.probe import build_probe_set

    return build_probe_set(spec, size=size, crops_per_image=crops, base_dir=Path(base_dir))


def probe_set(cfg: AuditConfig, mcfg: ModelConfig, model: "nn.Module") -> "ProbeSet":
    return _probe(mcfg.probe_set, probe_size(mcfg, model), mcfg.probe.crops_per_image, str(cfg.base_dir))
