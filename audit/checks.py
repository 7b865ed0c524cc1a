"""The pure part of the preflight: a config checked against the real world before any work.

Every check is a function `check(ctx, model_index, model_cfg)` that appends `Problem`s (each
naming its key path, e.g. `models[0].neurons[4].layer`, and the offending value) and notes to
the context; `MODEL_CHECKS` lists them in order, and `register_model_check` plugs in a new one
(a new key of the config brings its own check). `run_model_checks` runs them all and reports
every problem at once: nothing stops at the first.

Checks here need no storage and no MLflow: architectures exist; checkpoints (builtin:, file:)
load and fit the architecture; layers, channel/class indices and taps fit each version's model;
reference and probe images exist and decode, odd ones converted or skipped with a named count,
too few usable ones a problem. `models:/` sources and `mlflow_registered_model` listings are
resolved through callables the flows pass in (`CheckContext.resolve_source`, `versions_of`).

Cheap on reruns: each result is cached under a key made of the content it depends on (a
checkpoint's SHA-256, an image's SHA-256, the architecture and the neuron definitions, the
software versions), so a nightly rerun of unchanged versions builds no model and decodes no
image; `CheckCache` is the storage interface (flows keep it in a folder of the artifact store).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

from .config import AuditConfig, ModelConfig, VersionConfig
from .errors import AuditInputError

CHECKS_VERSION = "checks-v2"       # bump when a check's logic changes: cached results are then redone
TOPK_REFERENCES = "top-k"
MIN_PROBE_IMAGES = 2
MIN_REFERENCE_IMAGES = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config or its surroundings, named by key path and value.

    infrastructure=True: the world is unreachable (a database server down), not a wrong input."""
    key: str
    value: Any
    message: str
    infrastructure: bool = False

    def __str__(self) -> str:
        value = self.value if isinstance(self.value, str) else json.dumps(self.value, default=str)
        if len(value) > 160:
            value = value[:157] + "..."
        return f"{self.key} = {value!r}: {self.message}" if isinstance(self.value, str) else \
            f"{self.key} = {value}: {self.message}"


@dataclass
class ResolvedSource:
    """A `models:/` source as the flows resolve it: a content identity (cheap) and a loader (costly)."""
    identity: str
    load_state: Callable[[], Mapping[str, Any]]


class CheckCache(Protocol):
    def get(self, key: str) -> dict | None: ...
    def put(self, key: str, value: dict) -> None: ...


class MemoryCache:
    """A process-local CheckCache (the default; the flows persist theirs)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict] = {}

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict) -> None:
        self.entries[key] = value


@dataclass
class CheckContext:
    cfg: AuditConfig
    cache: CheckCache = field(default_factory=MemoryCache)
    # which versions of which model will be used (None: every version of every enabled model)
    selection: dict[str, list[str] | None] | None = None
    # models:/ sources -> ResolvedSource (raises AuditInputError for a missing one); None: not supported here
    resolve_source: Callable[[str], ResolvedSource] | None = None
    # the versions of a model, the registry's included (raises AuditInputError for a missing registered model)
    versions_of: Callable[[ModelConfig], list[VersionConfig]] | None = None
    # builds the model of one version (the flows pass their cached loader); None: audit.models.load_model
    load_model: Callable[[ModelConfig, VersionConfig], Any] | None = None
    # a selected version brings the versions it is compared with (its predecessor, the champion)
    with_partners: bool = True
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # content identity of each (model, version) source, for the fingerprints of unchanged versions
    identities: dict[tuple[str, str], str] = field(default_factory=dict)
    _digests: dict[str, str] = field(default_factory=dict)
    _image_sets: dict[tuple[str, int], tuple[int, str]] = field(default_factory=dict)

    def problem(self, key: str, value: Any, message: str, infrastructure: bool = False) -> None:
        self.problems.append(Problem(key, value, message, infrastructure))

    def file_sha256(self, path: Path) -> str:
        """SHA-256 of a file's bytes, once per process."""
        k = str(Path(path).resolve())
        if k not in self._digests:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            self._digests[k] = h.hexdigest()
        return self._digests[k]

    def selected_models(self) -> list[tuple[int, ModelConfig]]:
        if self.selection is None:
            return [(i, m) for i, m in enumerate(self.cfg.models) if m.enabled]
        return [(i, m) for i, m in enumerate(self.cfg.models) if m.name in self.selection]


CheckFn = Callable[[CheckContext, int, ModelConfig], None]


def software_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the cached checks and the fingerprints depend on
    (read from the installed metadata: no import of torch or timm)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"neuron-audit": __version__, "checks": CHECKS_VERSION}
    for pkg in ("torch", "timm", "numpy", "scipy", "pillow", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def cache_key(kind: str, parts: Mapping[str, Any]) -> str:
    return kind + "-" + hashlib.sha256(json.dumps({**parts, "software": software_versions()}, sort_keys=True,
                                                  default=str).encode()).hexdigest()


def model_shape_config(mcfg: ModelConfig) -> dict:
    """The parts of a model's config that decide how it is built and which neurons must fit it
    (architecture, neurons, taps, and any model-building key such as model_args); not the versions,
    thresholds, probe or schedule."""
    d = mcfg.model_dump(mode="json")
    for k in ("name", "versions", "champion", "enabled", "thresholds", "probe", "probe_set", "mlflow_registered_model"):
        d.pop(k, None)
    vis = d.get("visualization") or {}
    d["visualization"] = {k: vis.get(k) for k in ("taps", "tap_weights")}
    return d


# ------------------------------------------------------------------------------------------ checks
def check_architecture(ctx: CheckContext, mi: int, mcfg: ModelConfig) -> None:
    """`architecture` is a timm model name (cached per name and timm version)."""
    key = cache_key("architecture", {"architecture": mcfg.architecture})
    hit = ctx.cache.get(key)
    if hit is None:
        import difflib

        import timm

        ok = timm.is_model(mcfg.architecture)
        hint = ""
        if not ok:
            close = difflib.get_close_matches(mcfg.architecture, timm.list_models(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        hit = {"ok": ok, "message": "" if ok else f"not a timm architecture{hint}"}
        ctx.cache.put(key, hit)
    if not hit["ok"]:
        ctx.problem(f"models[{mi}].architecture", mcfg.architecture, hit["message"])


def _image_spec_check(ctx: CheckContext, key: str, spec: str, minimum: int) -> None:
    """Images of one spec exist and decode; converted/skipped ones noted; too few usable is a problem."""
    from .assets import IMAGE_SUFFIXES, resolve_images

    memo = ctx._image_sets.get((spec, minimum))
    if memo is not None:                      # the same spec under another key: report it there too
        usable, summary = memo
        if usable < minimum:
            ctx.problem(key, spec, summary)
        return
    try:
        paths = resolve_images(spec, base_dir=ctx.cfg.base_dir)
    except AuditInputError as exc:
        ctx._image_sets[(spec, minimum)] = (0, str(exc))
        ctx.problem(key, spec, str(exc))
        return
    usable, converted, skipped = 0, {}, {}
    for p in paths:
        try:
            digest = ctx.file_sha256(p)
        except OSError as exc:
            skipped[p.name] = f"unreadable ({exc.__class__.__name__})"
            continue
        ck = cache_key("image", {"sha256": digest})
        hit = ctx.cache.get(ck)
        if hit is None:
            from .assets import open_rgb

            img, conv, skip = open_rgb(p)
            hit = {"ok": img is not None, "converted": conv, "skipped": skip}
            ctx.cache.put(ck, hit)
        if hit["ok"]:
            usable += 1
            if hit["converted"]:
                converted[p.name] = hit["converted"]
        else:
            skipped[p.name] = hit["skipped"]
    detail = []
    if converted:
        detail.append(f"{len(converted)} converted (" + ", ".join(f"{k}: {v}" for k, v in list(converted.items())[:4])
                      + (" ..." if len(converted) > 4 else "") + ")")
    if skipped:
        detail.append(f"{len(skipped)} skipped (" + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:4])
                      + (" ..." if len(skipped) > 4 else "") + ")")
    if not paths:
        summary = (f"no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                   f"need at least {minimum}")
    else:
        summary = (f"{usable} usable image(s) of {len(paths)}" + (f": {'; '.join(detail)}" if detail else "")
                   + (f"; need at least {minimum}" if usable < minimum else ""))
    ctx._image_sets[(spec, minimum)] = (usable, summary)
    if usable < minimum:
        ctx.problem(key, spec, summary)
    elif converted or skipped:
        ctx.notes.append(f"{key} ({spec}): {summary}")


def check_images(ctx: CheckContext, mi: int, mcfg: ModelConfig) -> None:
    """`probe_set` and every neuron's `references` folder or sample exist and hold enough usable images."""
    _image_spec_check(ctx, f"models[{mi}].probe_set", mcfg.probe_set, MIN_PROBE_IMAGES)
    for ni, n in enumerate(mcfg.neurons):
        if n.references and n.references != TOPK_REFERENCES:
            _image_spec_check(ctx, f"models[{mi}].neurons[{ni}].references", n.references, MIN_REFERENCE_IMAGES)


def _source_identity(ctx: CheckContext, mcfg: ModelConfig, vcfg: VersionConfig) -> tuple[str | None, Any]:
    """(identity, resolved models:/ source or None); raises AuditInputError naming what is wrong."""
    src = vcfg.source
    if src.startswith("builtin:"):
        from .builtin_weights import BUILTIN_MODELS, builtin_weight_file

        name = src[len("builtin:"):]
        if name not in BUILTIN_MODELS:
            raise AuditInputError(f"unknown built-in model; valid: {', '.join('builtin:' + m for m in BUILTIN_MODELS)}")
        return f"builtin:{name}:{ctx.file_sha256(builtin_weight_file(name))}", None
    if src.startswith("file:"):
        p = Path(src[len("file:"):])
        p = p if p.is_absolute() else ctx.cfg.base_dir / p
        if not p.exists():
            raise AuditInputError(f"checkpoint file {str(p)!r} does not exist")
        if not p.is_file():
            raise AuditInputError(f"{str(p)!r} is not a file")
        try:
            return f"file:{ctx.file_sha256(p)}", None
        except OSError as exc:
            raise AuditInputError(f"cannot read checkpoint {str(p)!r}: {exc.strerror or exc}") from None
    if src.startswith("models:/"):
        if ctx.resolve_source is None:
            raise AuditInputError("models:/ sources need the MLflow registry (run the check through neuron-audit)")
        resolved = ctx.resolve_source(src)
        return f"registry:{resolved.identity}", resolved
    raise AuditInputError("unknown model source; valid: builtin:NAME, file:PATH, models:/NAME/VERSION, models:/NAME@ALIAS")


def _load_for_check(ctx: CheckContext, mcfg: ModelConfig, vcfg: VersionConfig, resolved: ResolvedSource | None):
    if ctx.load_model is not None:
        return ctx.load_model(mcfg, vcfg)
    from .models import load_model

    if resolved is not None:
        return load_model(mcfg.architecture, state_dict=resolved.load_state())
    return load_model(mcfg.architecture, vcfg.source, base_dir=ctx.cfg.base_dir)


def _checkpoint_failures() -> tuple[type[BaseException], ...]:
    """What reading a user's checkpoint can raise: our own input errors, I/O, torch and safetensors
    decoding errors (anything else is a bug and surfaces)."""
    import pickle
    import zipfile

    failures: list[type[BaseException]] = [AuditInputError, OSError, RuntimeError, ValueError, EOFError,
                                           pickle.UnpicklingError, zipfile.BadZipFile]
    try:
        from safetensors import SafetensorError

        failures.append(SafetensorError)
    except ImportError:
        pass
    return tuple(failures)


def _model_problems(mcfg: ModelConfig, model: Any) -> list[tuple[str, Any, str]]:
    """(key suffix, value, message) for neurons and taps that do not fit a built model."""
    import re

    from .config import check_neurons_against_model
    from .taps import get_layer

    out: list[tuple[str, Any, str]] = []
    by_id = check_neurons_against_model(mcfg, model)
    prefix = re.compile(r"^models\[[^\]]*\]\.neurons\[\d+\][^:]*?(\.([a-z_]+))?: ")
    try:
        from .pipeline import class_layer_ok
    except ImportError:        # pragma: no cover - the pipeline module moved
        class_layer_ok = None
    for ni, n in enumerate(mcfg.neurons):
        msg = by_id.get(n.id)
        if msg:
            m = prefix.match(msg)      # "models[NAME].neurons[i] (id).FIELD: problem"
            field_name = m.group(2) if m and m.group(2) else ("layer" if "layer" in msg.split(":")[0] else "index")
            value = getattr(n, field_name, None)
            out.append((f"neurons[{ni}].{field_name}", value, f"neuron {n.id!r}: {msg[m.end():] if m else msg}"))
            continue
        if class_layer_ok is not None:
            bad = class_layer_ok(model, n)
            if bad:
                out.append((f"neurons[{ni}].layer", n.layer, bad))
    taps = mcfg.visualization.taps or []
    for ti, tap in enumerate(taps):
        try:
            get_layer(model, tap)
        except AuditInputError as exc:
            out.append((f"visualization.taps[{ti}]", tap, str(exc)))
    weights = mcfg.visualization.tap_weights
    if weights is not None and taps and len(weights) != len(taps):
        out.append(("visualization.tap_weights", weights, f"has {len(weights)} weights for {len(taps)} taps"))
    return out


def check_versions(ctx: CheckContext, mi: int, mcfg: ModelConfig) -> None:
    """Each selected version's checkpoint exists, loads and fits the architecture, and the neurons and
    taps fit the model it builds. Cached per (checkpoint content, model-building config, software)."""
    if any(p.key == f"models[{mi}].architecture" for p in ctx.problems):
        return                                   # every version would fail the same way
    try:
        versions = ctx.versions_of(mcfg) if ctx.versions_of is not None else list(mcfg.versions)
    except AuditInputError as exc:       # `infrastructure`: the registry did not answer (exit 4, not 2)
        ctx.problem(f"models[{mi}].mlflow_registered_model", mcfg.mlflow_registered_model, str(exc),
                    infrastructure=getattr(exc, "infrastructure", False))
        return
    if not versions:
        ctx.problem(f"models[{mi}].mlflow_registered_model" if mcfg.mlflow_registered_model else f"models[{mi}].versions",
                    mcfg.mlflow_registered_model or [], "no versions to audit")
        return
    wanted = (ctx.selection or {}).get(mcfg.name)
    known = [v.version for v in versions]
    for w in wanted or []:
        if w not in known:
            ctx.problem("--version", w, f"model {mcfg.name!r} has no version {w!r}; valid: {', '.join(known)}")
    if wanted is not None and ctx.with_partners:
        # auditing a version compares it with its predecessor and the champion: those must load too
        wanted = list(wanted)
        for w in list(wanted):
            if w in known and known.index(w) > 0:
                wanted.append(known[known.index(w) - 1])
            if mcfg.champion in known and w in known and known.index(mcfg.champion) < known.index(w):
                wanted.append(mcfg.champion)
    config_index = {v.version: j for j, v in enumerate(mcfg.versions)}
    shape = model_shape_config(mcfg)
    failures = _checkpoint_failures()
    for vcfg in versions:
        if wanted is not None and vcfg.version not in wanted:
            continue
        j = config_index.get(vcfg.version)
        key = (f"models[{mi}].versions[{j}].source" if j is not None
               else f"models[{mi}].mlflow_registered_model (version {vcfg.version})")
        try:
            identity, resolved = _source_identity(ctx, mcfg, vcfg)
        except AuditInputError as exc:
            ctx.problem(key, vcfg.source, str(exc), infrastructure=getattr(exc, "infrastructure", False))
            continue
        ctx.identities[(mcfg.name, vcfg.version)] = identity
        ck = cache_key("version", {"identity": identity, "model": shape})
        hit = ctx.cache.get(ck)
        if hit is None:
            try:
                model = _load_for_check(ctx, mcfg, vcfg, resolved)
            except failures as exc:
                hit = {"load_error": f"{exc}" if isinstance(exc, AuditInputError)
                       else f"cannot load it as {mcfg.architecture!r} weights: {exc.__class__.__name__}: {exc}",
                       "problems": []}
            else:
                hit = {"load_error": None, "problems": [list(p) for p in _model_problems(mcfg, model)]}
            ctx.cache.put(ck, hit)
        if hit["load_error"]:
            ctx.problem(key, vcfg.source, hit["load_error"])
            continue
        for suffix, value, message in hit["problems"]:
            full = f"models[{mi}].{suffix}"
            if not any(p.key == full and p.message.startswith(message) for p in ctx.problems):
                ctx.problem(full, value, message + (f" (version {vcfg.version})" if len(versions) > 1 else ""))


MODEL_CHECKS: list[CheckFn] = [check_architecture, check_images, check_versions]


def register_model_check(fn: CheckFn, before: CheckFn | None = None) -> CheckFn:
    """Add a per-model check (a new config key brings its own); returns fn (usable as a decorator)."""
    if fn not in MODEL_CHECKS:
        MODEL_CHECKS.insert(MODEL_CHECKS.index(before) if before in MODEL_CHECKS else len(MODEL_CHECKS), fn)
    return fn


def check_selection(ctx: CheckContext) -> None:
    """The models chosen on the command line exist, and there is something to audit."""
    if ctx.selection is not None:
        names = [m.name for m in ctx.cfg.models]
        for name in ctx.selection:
            if name not in names:
                ctx.problem("--model", name, f"unknown model; valid: {', '.join(names)}")
    elif not any(m.enabled for m in ctx.cfg.models):
        ctx.problem("models", [m.name for m in ctx.cfg.models], "every model has `enabled: false`: nothing to audit")


def run_model_checks(ctx: CheckContext, checks: Iterable[CheckFn] | None = None) -> CheckContext:
    """Run every check on every selected model; problems and notes accumulate in ctx."""
    check_selection(ctx)
    for mi, mcfg in ctx.selected_models():
        for check in list(checks if checks is not None else MODEL_CHECKS):
            check(ctx, mi, mcfg)
    return ctx
