"""What the tasks of one process share: the config, the store, loaded models and
probe sets, each built once per process (a Dask worker builds its own)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from audit.config import AuditConfig, ModelConfig, VersionConfig, load_config
from audit.models import load_model, model_input_size, weights_sha256
from audit.probe import ProbeSet, build_probe_set


@dataclass
class LoadedVersion:
    model: nn.Module
    weights_sha256: str
    source: str
    registry: dict | None = None     # MLflow registry info for models:/ sources


@functools.lru_cache(maxsize=4)
def config(path: str) -> AuditConfig:
    return load_config(path)


@functools.lru_cache(maxsize=4)
def store(path: str):
    from storage.repository import AuditStore

    from audit.stats import set_cache_dir

    cfg = config(path)
    s = AuditStore(cfg.store.database, str(cfg.resolve_path(cfg.store.artifacts)))
    s.upgrade()
    s.sync_registry(cfg)
    # Probe activations keyed by (weights, probe set, layer): a re-run or a compare of
    # stored versions reads them instead of running the models again.
    set_cache_dir(cfg.resolve_path(cfg.store.artifacts) / "cache" / "activations")
    return s


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=6)
def _load(path: str, model_name: str, version: str) -> LoadedVersion:
    cfg = config(path)
    mcfg = cfg.model(model_name)
    vcfg = version_config(cfg, mcfg, version)
    registry = None
    if vcfg.source.startswith("models:/"):
        from storage.resolve import resolve_registry_source

        state, registry = resolve_registry_source(vcfg.source, cfg.store.mlflow_tracking_uri)
        model = load_model(mcfg.architecture, state_dict=state, device=device(), model_args=mcfg.model_args,
                           num_classes=mcfg.num_classes)
    else:
        model = load_model(mcfg.architecture, vcfg.source, device=device(), base_dir=cfg.base_dir,
                           model_args=mcfg.model_args, num_classes=mcfg.num_classes)
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedVersion(model, weights_sha256(model), vcfg.source, registry)


def load_version(path: str, model_name: str, version: str) -> LoadedVersion:
    return _load(str(path), model_name, str(version))


def version_config(cfg: AuditConfig, mcfg: ModelConfig, version: str) -> VersionConfig:
    for v in registry_versions(cfg, mcfg):
        if v.version == str(version):
            return v
    return mcfg.version(version)


def registry_versions(cfg: AuditConfig, mcfg: ModelConfig) -> list[VersionConfig]:
    """The config's versions, plus the MLflow registry's for `mlflow_registered_model` models."""
    versions = list(mcfg.versions)
    if mcfg.mlflow_registered_model:
        from storage.resolve import list_registry_versions

        known = {v.version for v in versions}
        for v in list_registry_versions(mcfg.mlflow_registered_model, cfg.store.mlflow_tracking_uri):
            if v not in known:
                versions.append(VersionConfig(version=v, source=f"models:/{mcfg.mlflow_registered_model}/{v}"))
    return versions


def probe_size(mcfg: ModelConfig, model: nn.Module) -> int:
    return mcfg.probe.resolution or model_input_size(model)


@functools.lru_cache(maxsize=4)
def _probe(spec: str, size: int, crops: int, base_dir: str) -> ProbeSet:
    return build_probe_set(spec, size=size, crops_per_image=crops, base_dir=Path(base_dir))


def probe_set(cfg: AuditConfig, mcfg: ModelConfig, model: nn.Module) -> ProbeSet:
    return _probe(mcfg.probe_set, probe_size(mcfg, model), mcfg.probe.crops_per_image, str(cfg.base_dir))
