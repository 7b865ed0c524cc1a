"""Recognising unchanged versions before any model is loaded and before Prefect is needed.

A version's fingerprint is the SHA-256 of everything its results depend on: the content of its
weights (the checkpoint file's SHA-256, or what its registry version points to), the model's
config except the version list, champion and thresholds, the content of the probe and reference
images, whether visualizations are rendered, and the software versions. A comparison's
fingerprint adds the two versions' fingerprints and the thresholds. After a complete audit the
fingerprint is recorded (`audit_checks`) with a manifest of what it produced: the artifacts (each
verified by the hash in its name) and its MLflow run.

A version is unchanged when its fingerprint equals the recorded one and its manifest is intact;
a comparison when both its versions are unchanged and its report is intact. A run where everything
is unchanged only records the check (an `audit_runs` row, status completed, with what was
skipped), retries undelivered alerts and prints the stored verdicts: no model, no Prefect server,
no MLflow call, no artifact written. Everything here is cheap to import (no torch, timm, Prefect
or MLflow).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from audit.checks import CheckContext, software_versions
from audit.config import AuditConfig, ModelConfig
from audit.errors import AuditInputError


@dataclass
class VersionPlan:
    model: str
    version: str
    fingerprint: str | None          # None: the source's content could not be identified (never skipped)
    unchanged: bool = False
    reason: str = ""


@dataclass
class PairPlan:
    model: str
    baseline: str
    candidate: str
    fingerprint: str | None
    unchanged: bool = False
    report_path: str | None = None   # relative to the artifact root, when unchanged


@dataclass
class AuditPlan:
    versions: list[VersionPlan] = field(default_factory=list)
    pairs: list[PairPlan] = field(default_factory=list)
    store_ready: bool = False        # the store exists with the recorded checks

    @property
    def all_unchanged(self) -> bool:
        return self.store_ready and bool(self.versions) and all(v.unchanged for v in self.versions) \
            and all(p.unchanged for p in self.pairs)

    def version(self, model: str, version: str) -> VersionPlan | None:
        return next((v for v in self.versions if (v.model, v.version) == (model, str(version))), None)

    def pair(self, model: str, baseline: str, candidate: str) -> PairPlan | None:
        return next((p for p in self.pairs if (p.model, p.baseline, p.candidate) == (model, baseline, candidate)), None)


def comparison_pairs(versions: list[str], champion: str | None, only: str | None = None) -> list[tuple[str, str]]:
    """Each version against its predecessor and against the champion (no self-pairs, no repeats)."""
    pairs: list[tuple[str, str]] = []
    for i, v in enumerate(versions):
        if only is not None and v != only:
            continue
        if i > 0:
            pairs.append((versions[i - 1], v))
        # versions listed after the champion are also compared with it
        if champion in versions and versions.index(champion) < i and (champion, v) not in pairs:
            pairs.append((champion, v))
    return pairs


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _images_identity(ctx: CheckContext, spec: str) -> list[tuple[str, str]] | None:
    from audit.assets import resolve_images

    try:
        paths = resolve_images(spec, base_dir=ctx.cfg.base_dir)
        return sorted((p.name, ctx.file_sha256(p)) for p in paths)
    except (AuditInputError, OSError):
        return None


def version_fingerprint(ctx: CheckContext, mcfg: ModelConfig, version: str, identity: str | None,
                        with_visuals: bool) -> str | None:
    """The fingerprint of one version's audit (see the module docstring); None when a part is unknown."""
    if identity is None:
        return None
    model = mcfg.model_dump(mode="json")
    for k in ("versions", "champion", "enabled", "thresholds"):
        model.pop(k, None)
    images = {"probe_set": _images_identity(ctx, mcfg.probe_set)}
    for n in mcfg.neurons:
        if n.references and n.references != "top-k":
            images[f"references:{n.id}"] = _images_identity(ctx, n.references)
    if any(v is None for v in images.values()):
        return None
    return _sha({"kind": "version", "version": str(version), "identity": identity, "model": model,
                 "images": images, "with_visuals": bool(with_visuals), "software": software_versions()})


def pair_fingerprint(mcfg: ModelConfig, fp_a: str | None, fp_b: str | None, with_visuals: bool) -> str | None:
    if fp_a is None or fp_b is None:
        return None
    return _sha({"kind": "compare", "a": fp_a, "b": fp_b, "thresholds": mcfg.thresholds.model_dump(mode="json"),
                 "with_visuals": bool(with_visuals), "software": software_versions()})


def pair_subject(baseline: str, candidate: str) -> str:
    return f"{baseline}..{candidate}"


def _manifest_problem(store, cfg: AuditConfig, manifest: dict) -> str | None:
    """Why the recorded results of a version are not intact (an artifact missing or corrupt, the MLflow run
    gone), or None."""
    from sources.mlflow_index import run_exists

    for rel in manifest.get("artifacts", []):
        problem = store.artifacts.verify(rel)
        if problem:
            return f"artifact {rel}: {problem}"
    run = manifest.get("mlflow_run_id")
    if run and run_exists(run, cfg.store.mlflow_tracking_uri) is False:
        return f"MLflow run {run} is gone"
    return None


def _report_problem(store, manifest: dict) -> str | None:
    """Why the recorded report of a comparison cannot stand for it (gone, unreadable, other verdicts), or None.
    A report written again with the same verdicts (e.g. by `neuron-audit compare`) still stands."""
    rel = manifest.get("report_path")
    if not rel:
        return "no report recorded"
    problem = store.artifacts.verify(rel)
    if problem:
        return f"report {rel}: {problem}"
    try:
        summary = store.artifacts.get_json(rel).get("summary")
    except (OSError, ValueError, AttributeError) as exc:
        return f"report {rel}: unreadable ({exc.__class__.__name__})"
    return None if summary == manifest.get("summary") else f"report {rel}: its verdicts differ from the recorded ones"


def open_store_for_plan(cfg: AuditConfig):
    """The store when it exists and has the recorded checks (no migration, no file created), else None."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage.db import sqlite_path
    from storage.errors import StoreUnavailableError
    from storage.repository import AuditStore

    db = sqlite_path(cfg.store.database)
    if db is not None and not db.is_file():
        return None
    try:
        store = AuditStore(cfg.store.database, str(cfg.resolve_path(cfg.store.artifacts)), connect_retries=0)
        store.get_check("", "version", "")        # the table exists (schema new enough)
        return store
    except (StoreUnavailableError, SQLAlchemyError, OSError):
        return None


def plan_audit(cfg: AuditConfig, ctx: CheckContext, identities: dict[tuple[str, str], str], store, *,
               model: str | None = None, version: str | None = None, with_visuals: bool = True) -> AuditPlan:
    """Which versions and comparisons of this audit are unchanged since their recorded check (a logged stage)."""
    from .logs import get_logger, stage

    with stage("plan", "which versions and comparisons changed", get_logger("audit")) as st:
        plan = _plan_audit(cfg, ctx, identities, store, model=model, version=version, with_visuals=with_visuals)
        st.count(**{"versions to audit": sum(1 for v in plan.versions if not v.unchanged),
                    "versions unchanged": sum(1 for v in plan.versions if v.unchanged),
                    "comparisons to run": sum(1 for p in plan.pairs if not p.unchanged),
                    "comparisons unchanged": sum(1 for p in plan.pairs if p.unchanged)})
    return plan


def _plan_audit(cfg: AuditConfig, ctx: CheckContext, identities: dict[tuple[str, str], str], store, *,
                model: str | None, version: str | None, with_visuals: bool) -> AuditPlan:
    from . import runtime

    plan = AuditPlan(store_ready=store is not None)
    models = [cfg.model(model)] if model else [m for m in cfg.models if m.enabled]
    for mcfg in models:
        versions = [v.version for v in runtime.registry_versions(cfg, mcfg)]
        todo = [str(version)] if version is not None else versions
        fps = {v: version_fingerprint(ctx, mcfg, v, identities.get((mcfg.name, v)), with_visuals) for v in versions}
        for v in todo:
            vp = VersionPlan(mcfg.name, v, fps.get(v))
            if store is not None and vp.fingerprint is not None:
                rec = store.get_check(mcfg.name, "version", v)
                if rec is None:
                    vp.reason = "not audited before"
                elif rec["fingerprint"] != vp.fingerprint:
                    vp.reason = "weights, config, images or software changed"
                else:
                    problem = _manifest_problem(store, cfg, rec["manifest"])
                    vp.unchanged, vp.reason = problem is None, problem or "unchanged"
            plan.versions.append(vp)
        for a, b in comparison_pairs(versions, mcfg.champion, only=str(version) if version is not None else None):
            pp = PairPlan(mcfg.name, a, b, pair_fingerprint(mcfg, fps.get(a), fps.get(b), with_visuals))
            va, vb = plan.version(mcfg.name, a), plan.version(mcfg.name, b)
            both = all(x is None or x.unchanged for x in (va, vb)) and vb is not None
            if store is not None and both and pp.fingerprint is not None:
                rec = store.get_check(mcfg.name, "compare", pair_subject(a, b))
                if rec and rec["fingerprint"] == pp.fingerprint and _report_problem(store, rec["manifest"]) is None:
                    pp.unchanged, pp.report_path = True, rec["manifest"]["report_path"]
            plan.pairs.append(pp)
    return plan


def record_version(store, cfg: AuditConfig, vp: VersionPlan, run_id: int, mlflow_run_id: str | None) -> None:
    """Record a complete audit of a version: its fingerprint and what it produced."""
    if vp.fingerprint is None:
        return
    manifest = {"artifacts": store.version_artifacts(vp.model, vp.version), "mlflow_run_id": mlflow_run_id}
    store.record_check(vp.model, "version", vp.version, vp.fingerprint, manifest, run_id)


def record_pair(store, pp: PairPlan, report: dict, run_id: int) -> None:
    """Record a complete comparison: its fingerprint, its report file and its verdicts."""
    if pp.fingerprint is None or not report.get("report_path"):
        return
    path = Path(report["report_path"])
    rel = path.resolve().relative_to(store.artifacts.root).as_posix()
    manifest = {"report_path": rel, "summary": report.get("summary", {})}
    store.record_check(pp.model, "compare", pair_subject(pp.baseline, pp.candidate), pp.fingerprint, manifest, run_id)


def skipped_outcome(model: str, version: str) -> dict:
    """The summary entry of a version skipped as unchanged (the keys of work.VersionOutcome)."""
    return {"model": model, "version": version, "weights_sha256": "", "stats_computed": [], "stats_cached": [],
            "viz_rendered": [], "viz_reused": [], "neuron_errors": {}, "seconds": 0.0, "skipped": "unchanged"}


def stored_report(store, rel: str) -> dict:
    report = store.artifacts.get_json(rel)
    report["report_path"] = str(store.artifacts.path(rel))
    report["unchanged"] = True
    return report


def run_unchanged(cfg: AuditConfig, store, plan: AuditPlan, flow_run_id: str | None = None) -> dict:
    """The audit of a config whose every version and comparison is unchanged: record the check, retry
    undelivered alerts, return the stored reports. Writes one audit_runs row and nothing else."""
    import time

    import audit

    from .alerts import WebhookBreaker, post_json

    t0 = time.perf_counter()
    store.mark_interrupted_runs()
    run_id = store.start_run(flow_run_id, cfg.sha256(), audit.__version__)
    summary: dict = {"run_id": run_id, "flow_run_id": flow_run_id, "versions": [], "reports": [], "errors": [],
                     "warnings": [], "not_audited": [], "unchanged": True}
    for vp in plan.versions:
        summary["versions"].append(skipped_outcome(vp.model, vp.version))
    for pp in plan.pairs:
        summary["reports"].append(stored_report(store, pp.report_path))
    if cfg.alerts.webhook:
        with WebhookBreaker():
            for alert in store.undelivered_alerts():
                ok, err = post_json(cfg.alerts.webhook, alert["payload"], timeout_s=cfg.alerts.timeout_s)
                store.mark_alert(alert["id"], ok, err)
                if not ok:
                    summary["warnings"].append(f"alert {alert['id']} still undelivered: {err}")
    index = cfg.resolve_path(cfg.store.artifacts) / "static-report" / "index.html"
    if index.is_file():
        summary["static_report"] = str(index)          # the report stands: nothing it shows changed
    summary["seconds"] = time.perf_counter() - t0
    store.finish_run(run_id, "completed", None, {
        "unchanged": [f"{v.model} v{v.version}" for v in plan.versions],
        "compares_unchanged": [f"{p.model} {p.baseline}->{p.candidate}" for p in plan.pairs],
        "warnings": summary["warnings"]})
    return summary
