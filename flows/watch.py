"""`neuron-audit watch`: feature drift of one production batch, as plain functions of serialisable
arguments (the CLI calls them directly; flows/watch_flow.py wraps them as Prefect tasks).

Order of work, so that bad input changes nothing: every input is checked first (model, version,
batch id, the folder and its usable images, the neurons against the model, the reference window);
then the batch's statistics are computed in memory; then the batch and all its neurons' results
are written in one transaction; then alerts (one per new FAIL) and MLflow.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from audit.errors import AuditInputError
from audit.pipeline import neuron_target

from . import runtime

log = logging.getLogger("neuron_audit")
_BATCH_ID_RE = re.compile(r"^[\w.@:+-][\w .@:+-]{0,199}$")
THUMBNAIL_PX = 96


@dataclass
class WatchInputs:
    """Everything a watch needs, checked."""

    cfg_path: str
    model: str
    version: str
    batch_id: str
    folder: Path
    batch: object                         # audit.probe.ProbeSet of the batch's whole images
    targets: list = field(default_factory=list)
    neuron_errors: dict[str, str] = field(default_factory=dict)


def default_version(cfg, mcfg) -> str:
    """The champion, else the last registered version."""
    if mcfg.champion:
        return str(mcfg.champion)
    versions = runtime.registry_versions(cfg, mcfg)
    if not versions:
        raise AuditInputError(f"model {mcfg.name!r} has no versions to watch with")
    return versions[-1].version


def check_batch_id(batch_id: str) -> str:
    bid = str(batch_id).strip()
    if not _BATCH_ID_RE.match(bid):
        raise AuditInputError(f"--batch-id: {batch_id!r} is not a valid batch id (1-200 letters, digits, "
                              "spaces and . _ - @ : +)")
    return bid


def validate_inputs(cfg_path: str, model: str, images: str | Path, version: str | None = None,
                    batch_id: str | None = None) -> WatchInputs:
    """Check every input before any work; raises AuditInputError naming the problem."""
    from audit.watch import load_batch

    from .work import VersionOutcome, valid_neurons

    cfg = runtime.config(cfg_path)
    mcfg = cfg.model(model)
    version = str(version) if version is not None else default_version(cfg, mcfg)
    runtime.version_config(cfg, mcfg, version)                 # unknown version: the valid ones are named
    folder = Path(images).expanduser()
    bid = check_batch_id(batch_id if batch_id is not None else folder.resolve().name)
    loaded = runtime.load_version(cfg_path, model, version)
    size = runtime.probe_size(mcfg, loaded.model)
    batch = load_batch(folder, size, mcfg.watch.min_images)
    outcome = VersionOutcome(model, version)
    neurons = valid_neurons(cfg_path, model, version, outcome)
    if not neurons:
        raise AuditInputError(f"model {model!r}: no registered neuron can be watched: "
                              + "; ".join(f"{k}: {v}" for k, v in outcome.neuron_errors.items()))
    return WatchInputs(str(cfg_path), model, version, bid, folder, batch, [neuron_target(n) for n in neurons],
                       dict(outcome.neuron_errors))


def _cache_dir(cfg) -> Path:
    """The reference cache's folder (the store's artifacts, without opening the store)."""
    return cfg.resolve_path(cfg.store.artifacts) / "cache" / "watch"


def _reference_outputs(cfg, mcfg, loaded, images, targets, layer_rows: list[int] | None):
    """The reference images' neuron values and per-photograph layer means, from the content-keyed
    cache when present (`audit.watch.refcache`), else one forward pass, then cached.
    `layer_rows`: the rows that are independent photographs (None: all)."""
    from audit.watch import CachedReference, batch_features, load_reference, reference_key, save_reference, \
        tested_layers

    layers = tested_layers(loaded.model, targets)
    key = reference_key(weights_sha256=loaded.weights_sha256, architecture=mcfg.architecture,
                        model_args=mcfg.model_args, num_classes=mcfg.num_classes, images_sha256=images.sha256,
                        neurons=[(t.layer, t.index, t.kind) for t in targets], layers=layers)
    folder = _cache_dir(cfg)
    hit = load_reference(folder, key)
    if hit is not None and hit.values.shape == (len(images.names), len(targets)):
        log.info("watch reference: cache hit %s", key[:12])
        return hit, True, key
    values, means = batch_features(loaded.model, images, targets, layers)
    rows = np.arange(len(values)) if layer_rows is None else np.asarray(layer_rows, dtype=int)
    entry = CachedReference(values, list(images.names), {k: v[rows] for k, v in means.items()})
    save_reference(folder, key, entry)
    return entry, False, key


def _batch_layers_key(loaded, mcfg, images_sha256: str, layers: list[str]) -> str:
    from audit.watch import reference_key

    return reference_key(weights_sha256=loaded.weights_sha256, architecture=mcfg.architecture,
                         model_args=mcfg.model_args, num_classes=mcfg.num_classes, images_sha256=images_sha256,
                         neurons=[], layers=layers)


def reference_window(inputs: WatchInputs):
    """The model's reference window (`watch.reference`): the probe set (units: recipe slots; whole-layer
    test on each photograph's whole-image crop), a folder of photographs, or the last PASS batches of this
    version (units: images). The reference's model outputs come from the content-keyed cache when the
    same weights, architecture, images, neurons and statistics produced them before."""
    from audit.probe import build_probe_set
    from audit.watch import PROBE_REFERENCE_LIMITS, ReferenceWindow, image_units, load_reference, probe_units, \
        tested_layers

    cfg = runtime.config(inputs.cfg_path)
    mcfg = cfg.model(inputs.model)
    loaded = runtime.load_version(inputs.cfg_path, inputs.model, inputs.version)
    spec = mcfg.watch.reference
    if spec == "probe":
        probe = runtime.probe_set(cfg, mcfg, loaded.model)
        whole = [i for i, n in enumerate(probe.names) if n.endswith("#crop0")]
        entry, hit, key = _reference_outputs(cfg, mcfg, loaded, probe, inputs.targets, whole)
        n_photos = len(whole)
        return ReferenceWindow(entry.values, probe_units(probe.names), list(probe.names), "probe",
                               f"probe set {mcfg.probe_set} ({len(probe.names)} crops of {n_photos} photographs, "
                               f"{mcfg.probe.crops_per_image} recipe slots per photograph)", probe.sha256,
                               {"cache": "hit" if hit else "computed", "cache_key": key,
                                "limits": PROBE_REFERENCE_LIMITS.format(n=n_photos)}, entry.layers)
    if spec == "batches":
        ids = [t.neuron_id for t in inputs.targets]
        store = runtime.store(inputs.cfg_path)
        values, names, used = store.batches.reference_values(inputs.model, inputs.version, ids,
                                                             mcfg.watch.reference_batches, inputs.batch_id)
        if len(values) < mcfg.watch.min_images:
            raise AuditInputError(f"models[{inputs.model}].watch.reference: 'batches' needs earlier PASS batches of "
                                  f"version {inputs.version} with at least {mcfg.watch.min_images} images; the store "
                                  f"has {len(values)} (watch a few batches against the probe set or a folder first)")
        sha = hashlib.sha256(("|".join(used)).encode()).hexdigest()
        layers = tested_layers(loaded.model, inputs.targets)
        blocks = []
        for bid in used:
            row = store.batches.get_batch(inputs.model, bid)
            hit = load_reference(_cache_dir(cfg), _batch_layers_key(loaded, mcfg, row["images_sha256"], layers))
            blocks.append(hit.layers if hit is not None else None)
        ref_layers = ({k: np.concatenate([b[k] for b in blocks]) for k in layers}
                      if blocks and all(b is not None and set(layers) <= set(b) for b in blocks) else {})
        if ref_layers and len(next(iter(ref_layers.values()))) != len(values):
            ref_layers = {}
        return ReferenceWindow(values, image_units(len(values)), names, "batches",
                               f"the last {len(used)} PASS batches ({', '.join(used[-3:])}{' ...' if len(used) > 3 else ''})",
                               sha, {"batches": used}, ref_layers)
    size = runtime.probe_size(mcfg, loaded.model)
    ref = build_probe_set(spec, size=size, crops_per_image=1, base_dir=cfg.base_dir, min_images=mcfg.watch.min_images)
    entry, hit, key = _reference_outputs(cfg, mcfg, loaded, ref, inputs.targets, None)
    return ReferenceWindow(entry.values, image_units(len(entry.values)), [n.split("#", 1)[0] for n in ref.names],
                           "folder", f"folder {spec} ({len(ref.names)} photographs)", ref.sha256,
                           {"cache": "hit" if hit else "computed", "cache_key": key}, entry.layers)


def _thumbnails(store, batch, indices: set[int]) -> dict[int, str]:
    from PIL import Image

    from audit.models import to_uint8_image

    out = {}
    for i in sorted(indices):
        img = Image.fromarray(to_uint8_image(batch.images[i]))
        if img.width > THUMBNAIL_PX:
            img = img.resize((THUMBNAIL_PX, THUMBNAIL_PX), Image.BICUBIC)
        out[i] = store.artifacts.put_image(np.asarray(img))
    return out


def compute(inputs: WatchInputs):
    """(batch values [n, p], reference window, BatchVerdict): no store writes (the batch's layer means
    go to the content-keyed cache, so later batches can use it as their reference)."""
    from audit.watch import CachedReference, batch_features, judge_batch, save_reference, tested_layers

    cfg = runtime.config(inputs.cfg_path)
    mcfg = cfg.model(inputs.model)
    loaded = runtime.load_version(inputs.cfg_path, inputs.model, inputs.version)
    reference = reference_window(inputs)
    layers = tested_layers(loaded.model, inputs.targets)
    values, means = batch_features(loaded.model, inputs.batch, inputs.targets, layers)
    save_reference(_cache_dir(cfg), _batch_layers_key(loaded, mcfg, inputs.batch.sha256, layers),
                   CachedReference(np.zeros((len(values), 0)), list(inputs.batch.names), means))
    verdict = judge_batch(values, reference, inputs.targets, list(inputs.batch.names),
                          mcfg.watch, batch_layers=means)
    return values, reference, verdict


def store_batch(inputs: WatchInputs, values: np.ndarray, verdict) -> int:
    """Thumbnails of the evidence images, then the batch and its results in one transaction."""
    store = runtime.store(inputs.cfg_path)
    loaded = runtime.load_version(inputs.cfg_path, inputs.model, inputs.version)
    store.upsert_model_version(inputs.model, inputs.version, loaded.source, loaded.weights_sha256)
    shown = {im["index"] for n in verdict.neurons for im in n.evidence.get("images", [])}
    thumbs = _thumbnails(store, inputs.batch, shown)
    for n in verdict.neurons:
        for im in n.evidence.get("images", []):
            im["thumbnail"] = thumbs.get(im["index"])
    summary = {"text": verdict.summary, "groups": verdict.groups, "power": verdict.power, "counts": verdict.counts(),
               "errors": inputs.neuron_errors, "layers": verdict.layers}
    return store.batches.save_batch(
        inputs.model, inputs.version, inputs.batch_id, source=str(inputs.folder.resolve()),
        images_sha256=inputs.batch.sha256, n_images=len(inputs.batch.names), skipped=inputs.batch.skipped,
        reference=verdict.reference, verdict=verdict.verdict, joint=verdict.joint, summary=summary,
        neuron_ids=[t.neuron_id for t in inputs.targets], image_names=list(inputs.batch.names), values=values,
        results=[{"neuron_id": n.neuron_id, "verdict": n.verdict, "reason": n.reason, "statistics": n.statistics,
                  "evidence": n.evidence} for n in verdict.neurons])


def build_report(inputs: WatchInputs, verdict, batch_pk: int | None) -> dict:
    """The watch report (docs/cli.md: model, version, batch_id, n_images, neurons[id, verdict, reason, ...])."""
    return {"model": inputs.model, "version": inputs.version, "batch_id": inputs.batch_id,
            "n_images": len(inputs.batch.names), "n_skipped": len(inputs.batch.skipped),
            "skipped": {Path(k).name: v for k, v in inputs.batch.skipped.items()},
            "images_sha256": inputs.batch.sha256, "verdict": verdict.verdict, "summary": verdict.summary,
            "groups": verdict.groups, "joint": verdict.joint, "layers": verdict.layers, "power": verdict.power,
            "reference": verdict.reference,
            "counts": verdict.counts(), "errors": dict(inputs.neuron_errors), "batch_pk": batch_pk,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "neurons": [n.as_dict() for n in verdict.neurons]}


def alert_payload(report: dict, subject: str, reason: str, links: dict | None = None) -> dict:
    what = {"(joint)": "the joint test", "(layers)": "the whole-layer test"}.get(subject, f"neuron `{subject}`")
    text = (f":rotating_light: neuron-audit watch FAIL — {report['model']} v{report['version']}, batch "
            f"`{report['batch_id']}` ({report['n_images']} images): {what} — {reason}")
    return {"text": text, "kind": "watch", "model": report["model"], "version": report["version"],
            "batch_id": report["batch_id"], "subject": subject, "reason": reason, "summary": report["summary"],
            "links": links or {}}


def send_alerts(cfg_path: str, report: dict, links: dict | None = None) -> list[dict]:
    """One webhook POST per FAIL that is new for this batch (neurons, the joint and whole-layer tests); deliveries that
    failed earlier are retried."""
    from .alerts import post_json

    cfg = runtime.config(cfg_path)
    store = runtime.store(cfg_path)
    fails = [(n["id"], n["reason"]) for n in report["neurons"] if n["verdict"] == "FAIL"]
    if report["joint"].get("verdict") == "FAIL":
        fails.append(("(joint)", report["joint"]["reason"]))
    if report.get("layers", {}).get("verdict") == "FAIL":
        fails.append(("(layers)", report["layers"]["reason"]))
    sent = []
    for subject, reason in fails:
        payload = alert_payload(report, subject, reason, links)
        alert_id = store.batches.create_alert_if_new(report["batch_pk"], subject, "webhook", payload)
        if alert_id is None or not cfg.alerts.webhook:
            continue
        ok, err = post_json(cfg.alerts.webhook, payload)
        store.batches.mark_alert(alert_id, ok, err)
        sent.append({"alert_id": alert_id, "subject": subject, "delivered": ok, "error": err})
    if cfg.alerts.webhook:
        attempted = {s["alert_id"] for s in sent}
        for alert in store.batches.undelivered_alerts():
            if alert["id"] not in attempted:
                ok, err = post_json(cfg.alerts.webhook, alert["payload"])
                store.batches.mark_alert(alert["id"], ok, err)
    return sent


def log_mlflow(cfg_path: str, report: dict) -> str:
    """One MLflow run per watched batch in the model's experiment (found again by its content key)."""
    from storage.tracking import MlflowTracker

    cfg = runtime.config(cfg_path)
    store = runtime.store(cfg_path)
    tracker = MlflowTracker(cfg.store.mlflow_tracking_uri)
    metrics = {f"watch.{n['id']}.shift": n["statistics"]["shift"] for n in report["neurons"]}
    metrics.update({f"watch.{n['id']}.p_value": n["statistics"]["p_value"] for n in report["neurons"]})
    metrics.update({f"watch.count.{k}": float(v) for k, v in report["counts"].items()})
    metrics["watch.joint.ratio"] = report["joint"].get("ratio")
    if report.get("layers", {}).get("layers"):
        metrics["watch.layers.p_value"] = report["layers"]["p_value"]
        metrics["watch.layers.max_ratio"] = max(x["ratio"] for x in report["layers"]["layers"])
    metrics["watch.n_images"] = float(report["n_images"])
    key = f"watch-{report['batch_id']}-{report['version']}-{report['images_sha256'][:12]}-{report['reference']['sha256'][:12]}"
    rid = tracker.log_keyed_run(model=report["model"], run_key=key[:250],
                                params={"batch_id": report["batch_id"], "version": report["version"],
                                        "reference": report["reference"]["description"], "kind": "watch"},
                                metrics={k: v for k, v in metrics.items() if v is not None},
                                tags={"neuron_audit.kind": "watch", "neuron_audit.batch_id": report["batch_id"],
                                      "neuron_audit.version": str(report["version"]),
                                      "neuron_audit.verdict": report["verdict"],
                                      "mlflow.runName": f"{report['model']} batch {report['batch_id']}"},
                                report=report, report_name="watch/report.json")
    store.batches.set_mlflow_run(report["batch_pk"], rid)
    return rid


def exit_code(report: dict) -> int:
    """0 no FAIL; 1 a FAIL; 3 some neuron could not be watched (docs/cli.md)."""
    code = 1 if report["verdict"] == "FAIL" else 0
    return max(code, 3) if report.get("errors") else code


def watch_batch_run(cfg_path: str, model: str, images: str | Path, version: str | None = None,
                    batch_id: str | None = None, *, alerts: bool = True, mlflow: bool = True) -> dict:
    """Watch one batch end to end (validate, compute, store, alert, MLflow); returns the report.
    MLflow and webhook failures are recorded in `report['problems']`, never lose the stored result."""
    from .logs import stage

    subject = f"batch {batch_id if batch_id is not None else Path(images).name} of {model}"
    with stage("watch", subject, logging.getLogger("neuron_audit.watch")) as st:
        report = _watch_batch_run(cfg_path, model, images, version, batch_id, alerts=alerts, mlflow=mlflow)
        st.count(images=report["n_images"], verdict=report["verdict"], **{
            k: v for k, v in report["counts"].items() if isinstance(v, int) and not isinstance(v, bool)})
    return report


def _watch_batch_run(cfg_path: str, model: str, images: str | Path, version: str | None, batch_id: str | None, *,
                     alerts: bool, mlflow: bool) -> dict:
    t0 = time.perf_counter()
    inputs = validate_inputs(cfg_path, model, images, version, batch_id)
    values, _reference, verdict = compute(inputs)
    pk = store_batch(inputs, values, verdict)
    report = build_report(inputs, verdict, pk)
    report["problems"] = []
    if verdict.reference.get("limits"):
        log.warning("watch %s: %s", inputs.batch_id, verdict.reference["limits"])
    if alerts:
        try:
            report["alerts"] = send_alerts(cfg_path, report)
        except OSError as exc:
            report["problems"].append(f"alerts: {exc}")
    if mlflow:
        from storage.errors import TrackingUnavailableError

        try:
            report["mlflow_run_id"] = log_mlflow(cfg_path, report)
        except TrackingUnavailableError as exc:
            report["problems"].append(str(exc))
            log.warning("watch %s: MLflow logging failed: %s", inputs.batch_id, exc)
    report["seconds"] = time.perf_counter() - t0
    return report


def inbox_folders(cfg_path: str, model: str, now: float | None = None) -> list[Path]:
    """The model's inbox sub-folders not yet watched (each a batch named by the folder), oldest name
    first; folders changed within `watch.settle_seconds` are still arriving and wait for the next run."""
    cfg = runtime.config(cfg_path)
    mcfg = cfg.model(model)
    if not mcfg.watch.inbox:
        return []
    inbox = cfg.resolve_path(mcfg.watch.inbox)
    if not inbox.is_dir():
        raise AuditInputError(f"models[{model}].watch.inbox: {str(inbox)!r} is not a folder")
    store = runtime.store(cfg_path)
    now = time.time() if now is None else now
    out = []
    for sub in sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if store.batches.get_batch(model, sub.name) is not None:
            continue
        newest = max([sub.stat().st_mtime] + [f.stat().st_mtime for f in sub.rglob("*") if f.is_file()])
        if now - newest < mcfg.watch.settle_seconds:
            continue
        out.append(sub)
    return out


def verdict_table(report: dict):
    """A rich table of the batch's verdicts, FAIL first."""
    from rich.table import Table

    order = {"FAIL": 0, "WARN": 1, "PASS": 2}
    colour = {"FAIL": "bold red", "WARN": "yellow", "PASS": "green"}
    table = Table(title=f"{report['model']} v{report['version']} — batch {report['batch_id']} "
                        f"({report['n_images']} images, {report['n_skipped']} skipped): {report['verdict']}")
    for col in ("neuron", "verdict", "shift (SD)", "above q90", "below q10", "reason"):
        table.add_column(col, overflow="fold")
    for n in sorted(report["neurons"], key=lambda n: (order[n["verdict"]], n["id"])):
        st = n["statistics"]
        table.add_row(n["id"], f"[{colour[n['verdict']]}]{n['verdict']}[/]", f"{st['shift']:+.2f}",
                      f"{st['above']:.0%}", f"{st['below']:.0%}", n["reason"])
    j = report["joint"]
    table.add_row("(joint)", f"[{colour[j['verdict']]}]{j['verdict']}[/]", "", "", "", j.get("reason", ""))
    lay = report.get("layers") or {}
    if lay:
        table.add_row("(layers)", f"[{colour.get(lay['verdict'], 'yellow')}]{lay['verdict']}[/]", "", "", "",
                      lay.get("reason", ""))
    return table


def run_watch_command(config: str, model: str, images, version, batch_id, json_out, out, err) -> int:
    """The body of `neuron-audit watch`: watch, print the table and the batch's summary, write --json;
    returns the exit code."""
    import json

    report = watch_batch_run(config, model, images, version, batch_id)
    out.print(verdict_table(report))
    out.print(f"summary: {report['summary']}")
    out.print(f"reference: {report['reference']['description']}")
    if report["reference"].get("limits"):
        err.print(f"note: {report['reference']['limits']}")
    out.print(f"power: {report['power']['statement']}")
    if report["n_skipped"]:
        err.print(f"skipped {report['n_skipped']} file(s): "
                  + "; ".join(f"{k}: {v}" for k, v in list(report["skipped"].items())[:5]))
    for nid, problem in report["errors"].items():
        err.print(f"neuron {nid} not watched: {problem}")
    for problem in report["problems"]:
        err.print(f"warning: {problem}")
    if json_out:
        json_out = Path(json_out)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        from storage.artifacts import jsonable

        json_out.write_text(json.dumps(jsonable(report), indent=2))
        err.print(f"wrote {json_out}")
    return exit_code(report)
