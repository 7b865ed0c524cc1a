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
    timeout_s: float = Field(default=5.0, gt=0, le=120)   # per delivery attempt; a hanging webhook costs ~3x this per run

    @field_validator("webhook")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v


class UIConfig(_Strict):
    """Base URLs of the MLflow and Prefect web UIs, for links from the dashboard and the static report to the
    MLflow run of each version and the Prefect flow run of each audit (without them, run ids show as text).
    Unset: MLflow's is the tracking URI when that is an http(s) server; Prefect's is PREFECT_UI_URL, or
    PREFECT_API_URL without its /api. Display only: not part of the config's hash."""
    mlflow: str | None = Field(default=None, description="MLflow UI base URL, e.g. http://mlflow.internal:5000")
    prefect: str | None = Field(default=None, description="Prefect UI base URL, e.g. http://127.0.0.1:4200")

    @field_validator("mlflow", "prefect")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
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
    # Class neurons: photographs of the class (a folder, a file, builtin:samples/NAME, or a list of them),
    # or "top-k" (the data-driven form: the top-activating probe images); inner: mined from the probe set.
    references: str | list[str] | None = None
    critical: bool = True

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][\w.-]*$", v):
            raise ValueError(f"{v!r} is not a valid neuron id (letters, digits, '.', '_', '-')")
        return v

    @field_validator("references")
    @classmethod
    def _references(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list: give photographs or folders of the class, or leave the key out")
            if "top-k" in v:
                raise ValueError("'top-k' stands alone (references: top-k), not inside a list of photographs")
            if any(not str(s).strip() for s in v):
                raise ValueError(f"{v!r} holds an empty entry")
        elif isinstance(v, str) and not v.strip():
            raise ValueError("an empty string: give photographs or folders of the class, or 'top-k'")
        return v

    @property
    def references_text(self) -> str | None:
        """The references as one line of text (for storage and display)."""
        return self.references if not isinstance(self.references, list) else ", ".join(self.references)


class VisualizationConfig(_Strict):
    method: Literal["vital", "fourier", "maco"] = "vital"
    # "fast": this project's default (measured against the authors' settings in the README's ablation
    # table); "paper": the authors' settings exactly (adagorgun/VITAL: 2,000 steps, lr 1.0, ...).
    preset: Literal["fast", "paper"] = "fast"
    resolution: int | None = Field(default=None, ge=32, le=1024)   # None: the model's input size
    steps: int | None = Field(default=None, ge=1, le=20000)        # None: the preset's
    seeds: list[int] = Field(default_factory=lambda: [0])
    lr: float | None = Field(default=None, gt=0)                   # None: the preset's
    taps: list[str] | None = None                                  # None: the preset's tap set for the model
    tap_weights: list[float] | None = None                         # None: the preset's
    n_references: int | None = Field(default=None, ge=1, le=512)   # None: the preset's
    reference_form: Literal["full", "crops"] | None = None         # None: the preset's


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


class WatchConfig(_Strict):
    """Feature drift on production batches (`neuron-audit watch`, the inbox flow); see audit/watch/."""
    inbox: str | None = None                     # folder whose sub-folders are batches, each processed once
    reference: str = "probe"                     # probe | batches | a folder or builtin:samples spec
    reference_batches: int = Field(default=8, ge=1, le=1000)   # reference "batches": the last N PASS batches
    min_images: int = Field(default=20, ge=2)    # fewer usable images in a batch is bad input
    alpha: float = Field(default=0.01, gt=0, lt=1)       # FAIL: family-wise error per batch (Holm)
    alpha_warn: float = Field(default=0.05, gt=0, lt=1)  # WARN: false discovery rate (BH)
    shift_fail: float = Field(default=0.5, gt=0)         # a FAIL's mean shift, in reference SDs ...
    tail_fail: float = Field(default=0.15, gt=0, lt=1)   # ... or change of the fraction beyond the 10%/90% levels
    power: float = Field(default=0.8, gt=0, lt=1)        # for "how many images a batch needs"
    evidence_images: int = Field(default=6, ge=1, le=64)
    settle_seconds: float = Field(default=30.0, ge=0)    # inbox: a sub-folder changed this recently is still arriving
    seed: int = 0


class ModelConfig(_Strict):
    name: str
    architecture: str
    champion: str | None = None
    versions: list[VersionConfig] = Field(default_factory=list)
    mlflow_registered_model: str | None = None
    mlflow_aliases: list[str] | None = Field(
        default=None, description="With `mlflow_registered_model`: audit only the versions these aliases point "
                                  "to (e.g. [champion, challenger]); absent: every registered version.")
    allow_pickle: bool = Field(
        default=False, description="Load registered versions logged with serialization_format='pickle'. "
                                   "Unpickling runs code from the file: opt in only for models you trust.")
    probe_set: str = "builtin:samples"
    neurons: list[NeuronConfig]
    enabled: bool = True
    visualization: VisualizationConfig = Field(default_factory=VisualizationConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)

    @field_validator("champion", mode="before")
    @classmethod
    def _champion_str(cls, v: Any) -> str | None:
        return None if v is None else str(v)

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        if not self.versions and not self.mlflow_registered_model:
            raise ValueError("give `versions` or `mlflow_registered_model`")
        if self.mlflow_aliases is not None:
            if not self.mlflow_registered_model:
                raise ValueError("`mlflow_aliases` needs `mlflow_registered_model`")
            if not self.mlflow_aliases:
                raise ValueError("`mlflow_aliases` is empty: name at least one alias, or drop the key")
            bad = [a for a in self.mlflow_aliases if not re.match(r"^[\w-]+$", a)]
            if bad:
                raise ValueError(f"mlflow_aliases: {bad[0]!r} is not an alias name (letters, digits, '_', '-')")
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
    ui: UIConfig = Field(default_factory=UIConfig)
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
        return hashlib.sha256(json.dumps(self.model_dump(mode="json", exclude={"ui"}), sort_keys=True).encode()).hexdigest()


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
