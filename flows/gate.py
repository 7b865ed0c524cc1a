"""`neuron-audit gate`: one candidate checkpoint audited against the champion, for a CI job (docs/gate.md).

The candidate (`--candidate SOURCE`) need not be in the config. It becomes a version of the model named by
what it is: a config or registry version with the same source keeps that version's name; a registry version
of the model's `mlflow_registered_model` is that version; anything else is `gate-<sha256[:12]>` of the
checkpoint's bytes (of the source text for `builtin:`/other `models:/` sources). So a re-run on the same
weights finds every statistic, visualization and null stored by content and recomputes nothing.

A candidate outside the config is audited through a derived config: the config's YAML with the candidate
appended to the model's versions, written next to the config (so that its relative paths still resolve) as a
hidden file and removed afterwards. Then the same units of work as `neuron-audit compare` run on the pair
(against, candidate) under the store's writer lock, the candidate's MLflow run is synced (a registered
candidate gets the verdict tags), and the exit code is flows/outcome.py's."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import yaml

from audit.config import AuditConfig, ModelConfig, VersionConfig, load_config
from audit.errors import AuditInputError

_SOURCE_RE = re.compile(r"^(builtin:|file:|models:/)")


@dataclass
class GateTarget:
    """What the gate audits: the model, the version compared against, and the candidate as a version."""
    model: str
    against: str
    candidate: str                 # the candidate's version name
    source: str                    # the candidate's source, as the config would spell it
    in_config: bool                # False: audited through a derived config
    notes: list[str] = field(default_factory=list)


def candidate_source(candidate: str, cwd: Path | None = None) -> str:
    """`--candidate` as a model source: a source as the config spells it, or the path of a checkpoint file
    (read against the current directory). Bad input names `--candidate` and its value."""
    text = candidate.strip()
    if _SOURCE_RE.match(text):
        try:
            VersionConfig(version="candidate", source=text)
        except ValueError as exc:
            raise AuditInputError(f"--candidate {candidate!r}: {_first_error(exc)}") from None
        if text.startswith("file:"):
            path = Path(text[len("file:"):])
            path = path if path.is_absolute() else (cwd or Path.cwd()) / path
            return _existing_file(candidate, path)
        return text
    path = Path(text)
    return _existing_file(candidate, path if path.is_absolute() else (cwd or Path.cwd()) / path)


def _existing_file(given: str, path: Path) -> str:
    if not path.is_file():
        raise AuditInputError(f"--candidate {given!r}: no checkpoint file at {path} (give a file path, file:PATH, "
                              "builtin:NAME, models:/NAME/VERSION or models:/NAME@ALIAS)")
    return f"file:{path.resolve()}"


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(exc)


def _same_source(cfg: AuditConfig, a: str, b: str) -> bool:
    """Whether two sources name the same weights file (file: sources compared as resolved paths)."""
    if a.startswith("file:") and b.startswith("file:"):
        pa, pb = (cfg.resolve_path(s[len("file:"):]).resolve() for s in (a, b))
        return pa == pb
    return a == b


def source_label(source: str) -> str:
    """`gate-<12 hex>`: the sha256 of the checkpoint's bytes (file:), else of the source text."""
    h = hashlib.sha256()
    if source.startswith("file:"):
        with open(source[len("file:"):], "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(source.encode())
    return "gate-" + h.hexdigest()[:12]


def resolve_against(cfg: AuditConfig, mcfg: ModelConfig, against: str, versions: list[str]) -> str:
    """The version `--against` names: `champion` is the model's `champion`; a version name of the config or
    registry is itself; with `mlflow_registered_model`, any other word is read as a registry alias."""
    if against == "champion" and mcfg.champion:
        return mcfg.champion
    if against in versions:
        return against
    if mcfg.mlflow_registered_model and re.match(r"^[\w-]+$", against):
        from storage.errors import TrackingUnavailableError
        from sources.mlflow_registry import list_registry_versions

        try:
            found = list_registry_versions(mcfg.mlflow_registered_model, cfg.store.mlflow_tracking_uri, [against])
        except (TrackingUnavailableError, AuditInputError) as exc:
            raise AuditInputError(f"--against {against!r}: alias of registered model "
                                  f"{mcfg.mlflow_registered_model!r} cannot be read: {exc}") from None
        if found:
            return found[0]
    hint = "the model has no `champion`; " if against == "champion" else ""
    raise AuditInputError(f"--against {against!r}: {hint}not a version of model {mcfg.name!r} "
                          f"(versions: {', '.join(versions) or 'none'})")


def plan_gate(config: str, model: str, candidate: str, against: str = "champion") -> tuple[AuditConfig, GateTarget]:
    """Every input of the gate checked and named before any work (AuditInputError: exit 2, nothing stored)."""
    from . import runtime

    cfg = load_config(config)
    mcfg = cfg.model(model)
    source = candidate_source(candidate)
    listed = runtime.registry_versions(cfg, mcfg)
    names = [v.version for v in listed]
    base = resolve_against(cfg, mcfg, against, names)
    same = next((v.version for v in listed if _same_source(cfg, v.source, source)), None)
    if same is None and mcfg.mlflow_registered_model and source.startswith("models:/"):
        from sources.mlflow_registry import parse_models_uri

        name, number, _alias = parse_models_uri(source)
        if name == mcfg.mlflow_registered_model and number in names:
            same = number
    if same is not None:
        if same == base:
            raise AuditInputError(f"--candidate {candidate!r} is version {same!r} of model {model!r}, the version "
                                  f"it would be compared against (--against {against!r})")
        return cfg, GateTarget(model, base, same, source, True)
    label = source_label(source)
    return cfg, GateTarget(model, base, label, source, False,
                           [f"the candidate {source} is audited as version {label} of {model}"])


@contextlib.contextmanager
def gate_config(config: str, target: GateTarget) -> Iterator[str]:
    """The config path the gate audits with: `config` itself, or a derived config with the candidate appended
    to the model's versions, written next to `config` (its relative paths resolve the same) and removed after."""
    if target.in_config:
        yield config
        return
    path = Path(config)
    data = yaml.safe_load(path.read_text())
    for m in data["models"]:
        if m.get("name") == target.model:
            m["versions"] = list(m.get("versions") or []) + [{"version": target.candidate, "source": target.source}]
    derived = path.with_name(f".{path.stem}.{target.candidate}.{os.getpid()}.yaml")
    derived.write_text(f"# derived by `neuron-audit gate` from {path.name}; removed when it ends\n"
                       + yaml.safe_dump(data, sort_keys=False))
    try:
        yield str(derived)
    finally:
        derived.unlink(missing_ok=True)


def audit_pair(cfg_path: str, model: str, baseline: str, candidate: str, with_visuals: bool = True,
               progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Both versions audited (what the store lacks is computed) and compared: the summary
    {"versions": [VersionOutcome as dict], "reports": [report]} that flows/outcome.py reads."""
    from . import work

    summary: dict = {"versions": [], "reports": []}
    for v in (baseline, candidate):
        if progress:
            progress(f"version {v}", 0, 3)
        work.register_version(cfg_path, model, v)
        o = work.probe_statistics(cfg_path, model, v, work.VersionOutcome(model, v))
        if progress:
            progress(f"version {v}", 2, 3)
        if with_visuals:
            work.render_visualizations(cfg_path, model, v, None, o)
        if progress:
            progress(f"version {v}", 3, 3)
        summary["versions"].append(vars(o))
    summary["reports"].append(work.compare_pair(cfg_path, model, baseline, candidate, None, with_visuals=with_visuals))
    return summary


def sync_candidate(cfg_path: str, model: str, candidate: str, neuron_errors: dict) -> tuple[str | None, str | None]:
    """The candidate's MLflow run brought up to date (a registered candidate gets the verdict tags):
    (MLflow run id, None), or (None, why not) when MLflow cannot be reached."""
    from storage.errors import TrackingUnavailableError
    from .mlflow_sync import sync_version_audit

    try:
        return sync_version_audit(cfg_path, model, candidate, None, neuron_errors=neuron_errors).mlflow_run_id, None
    except TrackingUnavailableError as exc:
        return None, str(exc)


@dataclass
class GateResult:
    """What the gate found: the summary (flows/outcome.py), its exit code, the candidate's MLflow run."""
    target: GateTarget
    summary: dict
    code: int
    mlflow_run_id: str | None = None
    warnings: list[str] = field(default_factory=list)


def run_gate(config: str, target: GateTarget, *, with_visuals: bool = True,
             preflight: Callable[[str, str, list[str]], object],
             progress: Callable[[str, int, int], None] | None = None,
             notify: Callable[[str], None] | None = None) -> GateResult:
    """The audit of `target` (plan_gate's): the preflight on the pair (bad input: PreflightFailed naming the
    candidate, nothing stored), both versions audited and compared under the writer lock, the candidate's
    MLflow run synced. `preflight(config_path, model, versions)` is the caller's (the CLI prints its notes)."""
    from .outcome import exit_code
    from .preflight import PreflightFailed
    from .runlock import exclusive_store

    with gate_config(config, target) as path:
        try:
            checked = preflight(path, target.model, [target.against, target.candidate])
        except PreflightFailed as exc:
            raise _named_for_user(exc, path, config, target) from None
        with exclusive_store(checked.cfg.store.database, "gate", notify=notify or (lambda m: None)):
            summary = audit_pair(path, target.model, target.against, target.candidate, with_visuals, progress)
        errors = next((v["neuron_errors"] for v in summary["versions"] if v["version"] == target.candidate), {})
        run_id, why = sync_candidate(path, target.model, target.candidate, errors)
    result = GateResult(target, summary, exit_code(summary), run_id)
    if why:
        result.warnings.append(f"MLflow: the candidate's run is not logged yet: {why}")
    return result


def _named_for_user(exc, derived: str, config: str, target: GateTarget):
    """A preflight failure on the derived config, told about the user's config and `--candidate`."""
    from .preflight import PreflightFailed

    origin = config if target.in_config else f"{config} with --candidate {target.source} as version {target.candidate}"
    return PreflightFailed(origin, exc.problems)


def write_summary(result: GateResult, summary_file: Path, *, store, dashboard_url: str | None,
                  mlflow_run_url: str | None, not_audited: list[str]) -> None:
    """Append the Markdown summary to `summary_file` (as `$GITHUB_STEP_SUMMARY` expects)."""
    from .gate_summary import gate_markdown, thumbnail_links

    t = result.target
    reports = result.summary.get("reports") or []
    flagged = [n["id"] for r in reports for n in r.get("neurons", []) if n.get("verdict") in ("WARN", "FAIL")]
    thumbs = thumbnail_links(store, t.model, flagged, [t.against, t.candidate], dashboard_url=dashboard_url,
                             relative_to=summary_file.parent)
    links = {"MLflow run": mlflow_run_url,
             "dashboard": (f"{dashboard_url.rstrip('/')}/models/{t.model}/compare/{t.against}/{t.candidate}"
                           if dashboard_url else None)}
    md = gate_markdown(result.summary, code=result.code, model=t.model, against=t.against, candidate=t.candidate,
                       source=t.source, not_audited=not_audited, thumbnails=thumbs, links=links,
                       notes=t.notes + result.warnings)
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    with open(summary_file, "a") as fh:
        fh.write(md)
