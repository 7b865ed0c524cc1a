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
    kind: Literal["class", "inner", "head"]
    layer: str
    index: int = Field(ge=0)
    label: str | None = None
    references: str | None = None       # folder | builtin:samples/NAME | top-k ; inner: mined from the probe set
    critical: bool = True
    tokens: Literal["patches", "all", "class"] = Field(default="patches", description=(
        "Token models (ViT, DeiT, hybrids, Mixer), `inner` and `head` neurons: the tokens a value is pooled over. "
        "`patches`: the patch tokens (class/register tokens left out); `all`: every token; `class`: the "
        "class/register tokens only."))

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][\w.-]*$", v):
            raise ValueError(f"{v!r} is not a valid neuron id (letters, digits, '.', '_', '-')")
        return v

    @model_validator(mode="after")
    def _kind_fits(self) -> "NeuronConfig":
        if ":" in self.layer:
            raise ValueError(f"layer {self.layer!r}: give the module name only; heads are `kind: head`, "
                             "tokens are `tokens:`")
        if self.kind == "class" and self.tokens != "patches":
            raise ValueError("`tokens` applies to inner and head neurons, not to class neurons")
        return self

    @property
    def activation_layer(self) -> str:
        """The layer address the neuron's values are read from (`audit.layouts.LayerName`): the
        module, `:heads` for a head neuron, `:all`/`:class` for other token selections."""
        return self.layer + (":heads" if self.kind == "head" else "") + \
            ("" if self.tokens == "patches" else f":{self.tokens}")


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
    spearman_fail: float = 0.80
    spearman_warn: float = 0.95
    topk_jaccard_fail: float = 0.30
    topk_jaccard_warn: float = 0.60
    wasserstein_fail: float = 1.0
    wasserstein_warn: float = 0.35
    visual_distance_warn: float = 2.0     # in units of the seed-to-seed spread
    top_k: int = Field(default=20, ge=2)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    bootstrap: int = Field(default=500, ge=50, le=100000)
    # Added for audit/drift.py (see its module docstring for how each is used).
    cross_activation_warn: float = Field(default=0.5, ge=0, le=1)   # percentile of a version's visualization in the other's probe distribution
    identity_match_spearman: float = Field(default=0.90, ge=0, le=1)  # a moved channel counts as "the same" above this
    bootstrap_seed: int = 0
    # The bootstrap unit. False (default): single probe images. The audit asks whether the neuron's function on
    # this fixed probe set changed, and a change confined to one source photograph must still be able to FAIL;
    # resampling whole photographs can never make a one-photograph effect significant (~37% of resamples omit it).
    # True: whole source photographs (all their crops), for claims about images beyond the probe set.
    cluster_bootstrap: bool = False


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
    num_classes: int | None = Field(default=None, ge=0, description=(
        "Size of the classifier head; null: read from each checkpoint (a model fine-tuned for 10 classes loads "
        "as one). 0: a headless backbone."))
    model_args: dict[str, Any] = Field(default_factory=dict, description=(
        "Further `timm.create_model` arguments the versions were trained with (e.g. `img_size: 384`, "
        "`drop_path_rate: 0.1`, `global_pool: avg`)."))
    labels: list[str] | str | None = Field(default=None, description=(
        "Names of the classes, by index: a list, or the path of a text file with one name per line. Reports and "
        "pages then speak of `defect`, not `class 3`; their number must match the head."))

    @field_validator("model_args")
    @classmethod
    def _model_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if not re.match(r"^[A-Za-z_]\w*$", str(key)):
                raise ValueError(f"{key!r} is not a timm.create_model argument name")
            if key in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "features_only"):
                raise ValueError(f"{key!r} is not allowed here: the weights come from `versions`")
            if key == "num_classes":
                raise ValueError("give the head size as the model's `num_classes`, not in model_args")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | str | None) -> list[str] | str | None:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list; give one name per class, or leave `labels` out")
            bad = [i for i, x in enumerate(v) if not str(x).strip()]
            if bad:
                raise ValueError(f"label {bad[0]} is empty")
        elif isinstance(v, str) and not v.strip():
            raise ValueError("an empty path")
        return v

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
    """Problems per neuron id: unknown layer (valid names listed), a head neuron on a module without
    heads, a token selection on a layer without tokens, or index out of range (layer size given).

    Sizes are read at the model's own input size (`audit.taps.describe_layers`). Returns {} when
    every neuron fits; the flows audit the others and report these.
    """
    from .taps import layer_channels

    problems: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for i, n in enumerate(model_cfg.neurons):
        key = f"models[{model_cfg.name}].neurons[{i}] ({n.id})"
        name = n.activation_layer
        try:
            if name not in sizes:
                sizes[name] = layer_channels(model, name)
        except AuditInputError as exc:
            problems[n.id] = f"{key}.layer: {exc}"
            continue
        what = {"head": "heads", "class": "classes"}.get(n.kind, "channels")
        if n.index >= sizes[name]:
            problems[n.id] = (f"{key}.index: {n.index} is out of range: layer {n.layer!r} has "
                              f"{sizes[name]} {what} (valid 0..{sizes[name] - 1})")
    return problems
