"""The `neuron-audit.yaml` file: schema, loading and validation.

Errors name the key (as a dotted path, e.g. `models[0].neurons[1].layer`) and the problem.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import AuditInputError

_SOURCE_RE = re.compile(r"^(builtin:[\w.-]+|file:.+|models:/[^/@]+(/\d+|@[\w-]+))$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreConfig(_Strict):
    database: str = "sqlite:///./.neuron-audit/audit.db"
    mlflow_tracking_uri: str = "sqlite:///./.neuron-audit/mlflow.db"
    artifacts: str = "./.neuron-audit/artifacts"


class ScheduleConfig(_Strict):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"{v!r} is not a 5-field cron expression (e.g. '0 2 * * *')")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r} (an IANA name such as 'UTC' or 'Europe/Berlin')") from None
        return v


class AlertsConfig(_Strict):
    webhook: str | None = None

    @field_validator("webhook")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v


class DaskConfig(_Strict):
    address: str | None = None          # None: a local cluster
    n_workers: int = 2


class ExecutorConfig(_Strict):
    dask: DaskConfig | None = None


class VersionConfig(_Strict):
    version: str
    source: str

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> str:
        return str(v)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if not _SOURCE_RE.match(v):
            raise ValueError(f"{v!r} is not a model source; valid: builtin:NAME, file:PATH, "
                             "models:/NAME/VERSION, models:/NAME@ALIAS")
        return v


class NeuronConfig(_Strict):
    id: str
    kind: Literal["class", "inner"]
    layer: str
    index: int = Field(ge=0)
    label: str | None = None
    references: str | None = None       # folder | builtin:samples/NAME | top-k ; inner: mined from the probe set
    critical: bool = True

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][\w.-]*$", v):
            raise ValueError(f"{v!r} is not a valid neuron id (letters, digits, '.', '_', '-')")
        return v


class VisualizationConfig(_Strict):
    method: Literal["vital", "fourier", "maco"] = "vital"
    resolution: int | None = Field(default=None, ge=32, le=1024)   # None: the model's input size
    steps: int = Field(default=400, ge=1, le=20000)
    seeds: list[int] = Field(default_factory=lambda: [0])
    lr: float | None = Field(default=None, gt=0)
    taps: list[str] | None = None                                  # None: derived from the model
    tap_weights: list[float] | None = None
    n_references: int = Field(default=16, ge=1, le=512)


class ProbeConfig(_Strict):
    crops_per_image: int = Field(default=12, ge=1, le=256)
    resolution: int | None = Field(default=None, ge=32, le=1024)


class ThresholdsConfig(_Strict):
    """How drift verdicts are reached (audit/drift/). A FAIL means: the neuron responds further from
    the baseline than benign re-saves of the baseline move it (fp16/bf16 round trips, int8
    per-channel weights, int8-scale weight noise, BN statistics re-estimated on 4096 images), at
    `false_alarm_rate` per neuron. The null is built from the baseline itself for every channel of
    each registered layer, cached per baseline weights + probe set, and needs no large probe set.

    Rates are per neuron and per compare: there is no correction over the registered neurons, so
    registering more neurons does not make a FAIL harder; a compare of M unchanged neurons has on
    average M x false_alarm_rate false FAILs. Within a neuron the rate is split evenly over the
    kinds of evidence measured (Bonferroni: 5 kinds for inner and class neurons).
    """
    false_alarm_rate: float = Field(default=0.001, gt=0, lt=0.5, description=(
        "FAIL when some evidence about the neuron's own response lies beyond the benign null's "
        "(1 - rate) quantile: the chance that a benign re-save of the recipe's kinds FAILs a neuron"))
    warn_rate: float = Field(default=0.01, gt=0, lt=0.5, description=(
        "WARN when evidence lies beyond the benign null's (1 - rate) quantile but not beyond the FAIL one"))
    # Effect sizes, in the units a person reads. Each crossing FAILs (or WARNs) only when some evidence is
    # also beyond the benign null at `warn_rate`, so a neuron whose benign re-saves already scatter this much
    # is not failed by it. Their meaning does not depend on the probe count, but their noise does: the
    # report gives intervals over photographs.
    spearman_fail: float = Field(default=0.80, description="FAIL below this rank correlation of the two versions' probe values")
    spearman_warn: float = Field(default=0.95, description="WARN below this rank correlation")
    topk_jaccard_fail: float = Field(default=0.30, description=(
        "FAIL below this Jaccard overlap of the two versions' top-k probe images (k: see top_k)"))
    topk_jaccard_warn: float = Field(default=0.60, description="WARN below this top-k Jaccard overlap")
    wasserstein_fail: float = Field(default=1.0, description=(
        "FAIL above this Wasserstein-1 distance of the value distributions, in units of the baseline's std"))
    wasserstein_warn: float = Field(default=0.35, description="WARN above this normalized Wasserstein distance")
    visual_distance_warn: float = Field(default=2.0, description=(
        "WARN when the two versions' visualizations are further apart than this many seed-to-seed spreads"))
    top_k: int = Field(default=20, ge=2, description=(
        "Size of the top-activating set; the effective k is min(top_k, 10 % of the probe images) (a quarter "
        "below 20 images), so it changes with the probe count; every top-k statistic is calibrated against "
        "the benign null at the same k"))
    alpha: float = Field(default=0.05, gt=0, lt=1, description=(
        "Level of the intervals over photographs (1 - alpha) and of the photograph-level power statement"))
    bootstrap: int = Field(default=500, ge=50, le=100000, description="Photograph bootstrap resamples for the intervals")
    cross_activation_warn: float = Field(default=0.5, ge=0, le=1, description=(
        "WARN when a version's visualization falls below this percentile of the other version's probe "
        "values while each excites its own version at least as much"))
    cross_activation_fail: float = Field(default=0.05, ge=0, le=1, description=(
        "FAIL (strong visual evidence) when a version's visualization falls to this percentile of the other "
        "version's probe values while each excites its own version at least to percentile 0.9"))
    identity_match_spearman: float = Field(default=0.90, ge=0, le=1, description=(
        "A channel found at another index counts as moved only if both photograph folds choose it and its "
        "Spearman on the held-out photographs is at least this (then it is judged against the null as usual)"))
    bootstrap_seed: int = Field(default=0, description="Seed of the bootstrap and permutation draws")
    cluster_bootstrap: bool = Field(default=True, description=(
        "Intervals resample whole source photographs (all their crops), the independent unit; false: "
        "single probe images (only right when every probe image is its own photograph)"))
    detect_fraction: float = Field(default=0.1, gt=0, le=1, description=(
        "The share of images a change may touch that the probe set should be able to show beyond its "
        "own photographs; the compare warns (in words, with the photographs needed) when it has too few"))


class ModelConfig(_Strict):
    name: str
    architecture: str
    champion: str | None = None
    versions: list[VersionConfig] = Field(default_factory=list)
    mlflow_registered_model: str | None = None
    probe_set: str = "builtin:samples"
    neurons: list[NeuronConfig]
    enabled: bool = True
    visualization: VisualizationConfig = Field(default_factory=VisualizationConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)

    @field_validator("champion", mode="before")
    @classmethod
    def _champion_str(cls, v: Any) -> str | None:
        return None if v is None else str(v)

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        if not self.versions and not self.mlflow_registered_model:
            raise ValueError("give `versions` or `mlflow_registered_model`")
        names = [v.version for v in self.versions]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"version {sorted(dup)[0]!r} is listed twice in `versions`")
        if self.champion is not None and self.versions and not self.mlflow_registered_model and self.champion not in names:
            raise ValueError(f"champion {self.champion!r} is not one of the versions {names}")
        ids = [n.id for n in self.neurons]
        dup = {n for n in ids if ids.count(n) > 1}
        if dup:
            raise ValueError(f"neuron id {sorted(dup)[0]!r} is used twice")
        if not self.neurons:
            raise ValueError("register at least one neuron under `neurons`")
        return self

    def neuron(self, neuron_id: str) -> NeuronConfig:
        for n in self.neurons:
            if n.id == neuron_id:
                return n
        raise AuditInputError(f"unknown neuron {neuron_id!r} for model {self.name!r}; valid: {', '.join(n.id for n in self.neurons)}")

    def version(self, version: str) -> VersionConfig:
        for v in self.versions:
            if v.version == str(version):
                return v
        raise AuditInputError(f"unknown version {version!r} of model {self.name!r}; valid: {', '.join(v.version for v in self.versions)}")


class AuditConfig(_Strict):
    store: StoreConfig = Field(default_factory=StoreConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    models: list[ModelConfig]
    # Directory the relative paths of the file are resolved against (not part of the YAML).
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _unique_models(self) -> "AuditConfig":
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"model name {sorted(dup)[0]!r} is used twice")
        return self

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise AuditInputError(f"unknown model {name!r}; valid: {', '.join(m.name for m in self.models)}")

    def resolve_path(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else (self.base_dir / path)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def parse_config(data: Any, base_dir: Path = Path("."), origin: str = "config") -> AuditConfig:
    if not isinstance(data, dict):
        raise AuditInputError(f"{origin}: the top level must be a mapping with at least `models:`")
    try:
        cfg = AuditConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            lines.append(f"{origin}: {_key_path(err['loc'])}: {msg}")
        raise AuditInputError("\n".join(lines)) from None
    cfg.base_dir = base_dir
    cfg.store.database = resolve_sqlite_url(cfg.store.database, base_dir)
    cfg.store.mlflow_tracking_uri = resolve_sqlite_url(cfg.store.mlflow_tracking_uri, base_dir)
    return cfg


def resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """`sqlite:///./x.db` (relative) is read against the config file's folder, like every
    other relative path of the file; other URLs are returned unchanged."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/") or url == prefix + ":memory:":
        return url
    return prefix + str((base_dir / url[len(prefix):]).resolve())


def load_config(path: str | Path) -> AuditConfig:
    path = Path(path)
    if not path.is_file():
        raise AuditInputError(f"config file {str(path)!r} does not exist (give one with -c, or run `neuron-audit demo`)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AuditInputError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, base_dir=path.resolve().parent, origin=str(path))


def check_neurons_against_model(model_cfg: ModelConfig, model: Any) -> dict[str, str]:
    """Problems per neuron id: unknown layer (valid names listed) or index out of range (layer size given).

    Returns {} when every neuron fits; the flows audit the others and report these.
    """
    from .taps import get_layer, layer_channels

    problems: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for i, n in enumerate(model_cfg.neurons):
        key = f"models[{model_cfg.name}].neurons[{i}] ({n.id})"
        try:
            get_layer(model, n.layer)
            if n.layer not in sizes:
                sizes[n.layer] = layer_channels(model, n.layer)
        except AuditInputError as exc:
            problems[n.id] = f"{key}.layer: {exc}"
            continue
        if n.index >= sizes[n.layer]:
            problems[n.id] = (f"{key}.index: {n.index} is out of range: layer {n.layer!r} has "
                              f"{sizes[n.layer]} channels (valid 0..{sizes[n.layer] - 1})")
    return problems
