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

_BUILTIN_BENIGN_EDITS = ("fp16", "bf16", "int8", "noise", "bn")   # audit.drift.benign.DEFAULT_EDITS
_SOURCE_RE = re.compile(r"^(builtin:[\w.-]+|file:.+|models:/[^/@]+(/\d+|@[\w-]+))$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreConfig(_Strict):
    """Where results are kept. Relative paths and relative `sqlite:///./...` URLs are read
    against the folder of the config file."""

    database: str = Field(default="sqlite:///./.neuron-audit/audit.db", description=(
        "SQLAlchemy URL of the results database (registry, runs, statistics, drift results, alerts); "
        "SQLite, or PostgreSQL as `postgresql+psycopg://user:pass@host:5432/db`."))
    mlflow_tracking_uri: str = Field(default="sqlite:///./.neuron-audit/mlflow.db", description=(
        "MLflow tracking URI: one experiment per model, one run per (audit run, version); "
        "a `sqlite:///` file or an `http://host:5000` server. Also the registry that `models:/` sources are read from."))
    artifacts: str = Field(default="./.neuron-audit/artifacts", description=(
        "Folder of the content-addressed files: visualization PNGs and masks, raw activations, "
        "compare reports, the static report."))


class ScheduleConfig(_Strict):
    """When `neuron-audit serve` runs the nightly audit."""

    cron: str = Field(default="0 2 * * *", description="5-field cron expression of the nightly run.")
    timezone: str = Field(default="UTC", description="IANA time zone the cron expression is read in (e.g. `Europe/Berlin`).")

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
    """Where a new FAIL is announced."""

    webhook: str | None = Field(default=None, description=(
        "http(s) URL that receives one JSON POST per new FAIL (retried; undelivered alerts are retried by "
        "the next run). null: alerts are only recorded in the database and shown on the dashboard."))
    timeout_s: float = Field(default=5.0, gt=0, le=120, description=(
        "Seconds per delivery attempt; a webhook that hangs costs about three times this per run."))

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
    dashboard: str | None = Field(default=None, description=(
        "Base URL of `neuron-audit dashboard` as people open it, e.g. http://audit.internal:8050: the verdict tags "
        "of registered versions and the gate's summary link to its pages and images"))

    @field_validator("mlflow", "prefect", "dashboard")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v


class RegistryWebhooksConfig(_Strict):
    """MLflow registry webhooks received by `neuron-audit listen` (docs/gate.md): which events trigger what.
    Display and delivery settings only: not part of the config's hash."""
    host: str = Field(default="127.0.0.1", description="Address the receiver binds (loopback by default).")
    port: int = Field(default=8765, ge=1, le=65535, description="Port the receiver listens on.")
    secret_env: str = Field(default="NEURON_AUDIT_WEBHOOK_SECRET", description=(
        "Name of the environment variable holding the HMAC secret the MLflow webhook was created with; "
        "the receiver refuses to start without it, and drops every delivery whose signature does not match."))
    on_version_created: Literal["audit", "ignore"] = Field(default="audit", description=(
        "`model_version.created` of a registered model some `models[].mlflow_registered_model` names: `audit` "
        "audits the new version against its predecessor and the champion and tags it with the verdict."))
    on_alias_created: Literal["guard", "ignore"] = Field(default="guard", description=(
        "`model_version_alias.created` for `guarded_alias`: `guard` audits the version if it never was, and "
        "alerts loudly (log, `alerts.webhook`) when its verdict is FAIL."))
    guarded_alias: str = Field(default="champion", description="The alias whose moves `on_alias_created` guards.")
    revert_failed_alias: bool = Field(default=False, description=(
        "true: when `guarded_alias` lands on a FAILed version, move it back to the version that held it before "
        "(logged; only when that holder is known to this receiver). false: never move an alias."))
    dedupe_seconds: float = Field(default=3600.0, ge=0, description=(
        "How long a delivery id is remembered: a retried delivery within this time is answered and ignored."))

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    @field_validator("guarded_alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if not re.match(r"^[\w-]+$", v):
            raise ValueError(f"{v!r} is not an alias name (letters, digits, '_', '-')")
        return v


class DaskConfig(_Strict):
    """A Dask cluster that audits one version per worker."""

    address: str | None = Field(default=None, description=(
        "Scheduler address (`tcp://host:8786`) of a running Dask cluster; null starts a local cluster."))
    n_workers: int = Field(default=2, description="Worker processes of the local cluster (used when `address` is null).")


class ExecutorConfig(_Strict):
    """Where the audit's heavy tasks run."""

    dask: DaskConfig | None = Field(default=None, description=(
        "null: in the flow's own process. A mapping: on a Dask cluster (see `executor.dask.*`)."))


class VersionConfig(_Strict):
    """One version of a model and where its weights come from."""

    version: str = Field(description="Version name (numbers are read as strings); unique within the model.")
    source: str = Field(description=(
        "Weights: `builtin:efficientnet_lite0|1|2`, `file:PATH` (a `.safetensors` file or a torch state dict, "
        "loaded with weights_only=True), `models:/NAME/VERSION` or `models:/NAME@ALIAS` (MLflow registry)."))

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
    """One registered neuron: a class logit or a channel of an inner layer. Layer names and
    channel counts are checked against the model before any work (`neuron-audit layers`)."""

    id: str = Field(description=(
        "Name of the neuron in reports, the dashboard and the database: letters, digits, `.`, `_`, `-`; "
        "unique within the model."))
    kind: Literal["class", "inner", "head"] = Field(description=(
        "`class`: a logit of the classifier (`layer` must be the model's head). "
        "`inner`: a channel of an inner layer (its spatial max is the neuron's value on an image; tokens: the max "
        "over tokens). `head`: an attention head of an attention module (`layer` is the module, `index` the head)."))
    layer: str = Field(description="Module name of the layer, as `neuron-audit layers` lists them (`classifier`, `blocks.5`).")
    index: int = Field(ge=0, description="Class index (`class`), channel index (`inner`) or head index (`head`) within `layer`.")
    label: str | None = Field(default=None, description="Human-readable name shown on the dashboard (e.g. `Egyptian cat`).")
    references: str | list[str] | None = Field(default=None, description=(
        "Class neurons: photographs of the class that the visualization matches: a folder, an image file, "
        "`builtin:samples/NAME`, or a list of them (the VITAL paper uses 50 distinct photographs; fewer than 5 "
        "are warned about, and so are references the audited model mostly does not classify as the class). `top-k` or null: the neuron's top-activating probe images of each version, with "
        "relevance weighting (this project's data-driven form, which also sees head-only changes). "
        "Inner neurons ignore it: their references are the probe images that fire the channel most."))
    critical: bool = Field(default=True, description="Stored with the neuron in the registry; no effect on verdicts yet.")
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
    """How each neuron's feature visualization is rendered (VITAL). Keys left null take the preset's value."""

    method: Literal["vital", "fourier", "maco", "deepinversion"] = Field(default="vital", description=(
        "Visualization method. The nightly flow and `compare` render VITAL whatever this says; "
        "`fourier` (Lucid), `maco` and `deepinversion` (the target plus a batch-norm statistics prior, "
        "no references) are available from `neuron-audit visualize --method`."))
    preset: Literal["fast", "paper"] = Field(default="fast", description=(
        "`fast`: this project's default (fewer steps; measured against the authors' settings in the README's "
        "ablation table). `paper`: the authors' settings (adagorgun/VITAL: 2,000 Adam steps at lr 1.0 with "
        "warm-up and cosine decay, full reference photographs, no flip)."))
    resolution: int | None = Field(default=None, ge=32, le=1024, description=(
        "Side of the square image in pixels; null: the model's input size."))
    steps: int | None = Field(default=None, ge=1, le=20000, description="Optimization steps per visualization; null: the preset's.")
    seeds: list[int] = Field(default_factory=lambda: [0], description=(
        "One visualization per seed. Two or more seeds give the `visual_distance` statistic "
        "(distance between versions relative to the seed-to-seed spread)."))
    lr: float | None = Field(default=None, gt=0, description="Adam learning rate; null: the preset's.")
    taps: list[str] | None = Field(default=None, description=(
        "Layers whose sorted feature distributions are matched; null: the preset's tap set for the model "
        "(the stem, the feature stages and the feature map the classifier pools)."))
    tap_weights: list[float] | None = Field(default=None, description="Weight of each tap in the loss, one per tap; null: the preset's.")
    n_references: int | None = Field(default=None, ge=1, le=512, description=(
        "Reference images per neuron (photographs or crops for class neurons, probe images for inner ones); "
        "null: the preset's."))
    reference_form: Literal["full", "crops"] | None = Field(default=None, description=(
        "`full`: whole reference images (class photographs resized and centre-cropped; inner: the top probe "
        "images uncropped, relevance localizes). `crops`: random crops of the photographs (the fast preset keeps "
        "the 16 of 64 on which the model's class logit is highest) / receptive-field patches. null: the preset's."))
    class_weight: float | None = Field(default=None, ge=0, le=1000, description=(
        "Class neurons with photographs: weight of the class term -log p(class) beside VITAL's sort matching "
        "(0: the authors' loss). It pulls the image to the class where the photographs are few or the model "
        "barely recognises them, and stops pulling once the model gives the class. null: the preset's."))
    inner_activation_weight: float | None = Field(default=None, ge=0, le=1000, description=(
        "Inner neurons: weight of the channel's own activation (spatial mean over the references' mean peak), "
        "maximized beside VITAL's sort matching (0: the authors' loss). null: the preset's."))


class ProbeConfig(_Strict):
    """The fixed probe set: deterministic crops of the `probe_set` images on which every
    version's activations are measured and compared."""

    crops_per_image: int = Field(default=12, ge=1, le=256, description=(
        "Probe images cut from each source image (crop 0 is the whole image). More crops give the statistics "
        "the power to see a change confined to a few photographs."))
    resolution: int | None = Field(default=None, ge=32, le=1024, description="Side of the probe images in pixels; null: the model's input size.")


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
    benign_edits: list[str] = Field(default=list(_BUILTIN_BENIGN_EDITS), min_length=1, description=(
        "The benign edits the baseline's null is built from (a FAIL is a move beyond what they do): built-in "
        "`fp16`, `bf16` (round trips), `int8` (per-channel weights), `noise` (int8-scale weight noise, 4 draws), "
        "`bn` (BN statistics re-estimated, 4 draws), or `package.module:function`, a function of the model that "
        "returns the edited copy (imported when the config is read; see docs/benign-edits.md)"))

    @field_validator("benign_edits")
    @classmethod
    def _benign_edits(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"{next(x for x in v if v.count(x) > 1)!r} is listed twice")
        if all(x in _BUILTIN_BENIGN_EDITS for x in v):
            return v              # no need to import torch to read a config of built-in names
        from .drift.benign import resolve_benign

        for i, name in enumerate(v):
            try:
                resolve_benign(name)
            except AuditInputError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        return v


class WatchConfig(_Strict):
    """Feature drift on production batches (`neuron-audit watch`, the inbox flow); see audit/watch/."""
    inbox: str | None = Field(default=None, description="Folder whose sub-folders are batches, each processed once by the inbox flow.")
    reference: str = Field(default="probe", description=(
        "What a batch is compared with: `probe` (the probe set), `batches` (the last `reference_batches` PASS "
        "batches), or a folder / `builtin:samples` spec."))
    reference_batches: int = Field(default=8, ge=1, le=1000, description="With `reference: batches`: how many recent PASS batches.")
    min_images: int = Field(default=20, ge=2, description="Fewer usable images in a batch is bad input.")
    alpha: float = Field(default=0.01, gt=0, lt=1, description="FAIL: family-wise error per batch across neurons (Holm).")
    alpha_warn: float = Field(default=0.05, gt=0, lt=1, description="WARN: false discovery rate across neurons (Benjamini-Hochberg).")
    shift_fail: float = Field(default=0.5, gt=0, description="A FAIL's mean shift, in reference standard deviations ...")
    tail_fail: float = Field(default=0.15, gt=0, lt=1, description=(
        "... or change of the fraction of images beyond the reference's 10 % / 90 % levels."))
    power: float = Field(default=0.8, gt=0, lt=1, description="Power used to say how many images a batch needs to see a FAIL-sized shift.")
    evidence_images: int = Field(default=6, ge=1, le=64, description="Batch images shown as evidence per flagged neuron.")
    settle_seconds: float = Field(default=30.0, ge=0, description="Inbox: a sub-folder changed this recently is still arriving.")
    seed: int = Field(default=0, description="Seed of the permutation and resampling tests (verdicts are reproducible).")

class ModelConfig(_Strict):
    """One audited model. Give `versions`, `mlflow_registered_model`, or both; version names and
    neuron ids are unique; the champion is one of the versions."""

    name: str = Field(description="Name of the model in reports, the dashboard, the database and MLflow; unique.")
    architecture: str = Field(description="timm architecture name (e.g. `efficientnet_lite0`); every version's weights must fit it.")
    champion: str | None = Field(default=None, description=(
        "Version that every later version is also compared with (besides its predecessor); null: predecessors only."))
    versions: list[VersionConfig] = Field(default_factory=list, description=(
        "The versions, oldest first; each is compared with the one before it."))
    mlflow_registered_model: str | None = Field(default=None, description=(
        "Name of a model in the MLflow registry (`store.mlflow_tracking_uri`): its versions are audited too."))
    mlflow_aliases: list[str] | None = Field(
        default=None, description="With `mlflow_registered_model`: audit only the versions these aliases point "
                                  "to (e.g. [champion, challenger]); absent: every registered version.")
    allow_pickle: bool = Field(
        default=False, description="Load registered versions logged with serialization_format='pickle'. "
                                   "Unpickling runs code from the file: opt in only for models you trust.")
    probe_set: str = Field(default="builtin:samples", description="Probe images: `builtin:samples` or a folder of images.")
    neurons: list[NeuronConfig] = Field(description="The registered neurons (at least one).")
    enabled: bool = Field(default=True, description="false: the nightly audit skips the model (`--model` still audits it).")
    visualization: VisualizationConfig = Field(default_factory=VisualizationConfig, description="How visualizations are rendered.")
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="How the probe set is cut.")
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig, description="When a neuron PASSes, WARNs or FAILs.")
    watch: WatchConfig = Field(default_factory=WatchConfig, description="Feature drift on production batches (`neuron-audit watch`).")
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
    """The whole `neuron-audit.yaml`. Only `models` is required; model names are unique."""

    store: StoreConfig = Field(default_factory=StoreConfig, description="Where results are kept.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="When the nightly audit runs.")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Where new FAILs are announced.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Where the heavy tasks run.")
    ui: UIConfig = Field(default_factory=UIConfig, description="Web UI base URLs for links (display only).")
    registry_webhooks: RegistryWebhooksConfig = Field(default_factory=RegistryWebhooksConfig, description=(
        "MLflow registry webhooks (`neuron-audit listen`)."))
    models: list[ModelConfig] = Field(description="The audited models.")
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
        return hashlib.sha256(json.dumps(self.model_dump(mode="json", exclude={"ui", "registry_webhooks"}), sort_keys=True).encode()).hexdigest()


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
