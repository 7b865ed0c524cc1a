"""How an audit shows up in the Prefect UI: flow-run and task-run names, artifact keys, and the final state.

- Flow runs are named after what they audit and the day: `lite0-demo 2026-12-01`, `lite0-demo v2 2026-12-01`,
  `lite0-demo, resnet-prod +3 more 2026-12-01` (the date of the scheduled start, in the schedule's timezone).
- Task runs name the model, the version and, for rendering, the neuron batch:
  `probe statistics lite0-demo v2`, `render lite0-demo v2 neurons 1-8 of 30 (egyptian-cat … b5-c17)`,
  `compare lite0-demo 1→2`.
- Markdown artifacts are keyed per store and model (`neuron-audit-<model>-<store id>`): each key's history in
  Prefect is that model's verdicts over nights, and two stores on one Prefect server never share a key.
- A run that found a drift FAIL stays Completed (the audit itself worked) with a state message naming the
  failing neurons and the tag `verdict:FAIL` (`verdict:WARN` / `verdict:PASS` otherwise).
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Callable

RENDER_BATCH_SIZE = 8
_MAX_MESSAGE = 500


def _params(kind: str) -> dict[str, Any]:
    if kind == "flow":
        from prefect.runtime import flow_run

        return dict(flow_run.parameters or {})
    from prefect.runtime import task_run

    return dict(task_run.parameters or {})


def _run_date(timezone: str | None) -> str:
    from datetime import datetime, timezone as tz
    from zoneinfo import ZoneInfo

    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time or datetime.now(tz.utc)
    if timezone:
        when = when.astimezone(ZoneInfo(timezone))
    return when.strftime("%Y-%m-%d")


def models_label(names: list[str], shown: int = 2) -> str:
    """`a`, `a, b`, `a, b +3 more`."""
    if len(names) <= shown:
        return ", ".join(names) or "no models"
    return f"{', '.join(names[:shown])} +{len(names) - shown} more"


def flow_run_name() -> str:
    """Name of a nightly-audit flow run: the model(s), the version when only one is audited, and the date."""
    from audit.config import load_config
    from audit.errors import AuditInputError

    p = _params("flow")
    timezone, names = None, []
    try:
        cfg = load_config(p["config_path"])
        timezone = cfg.schedule.timezone
        names = [m.name for m in cfg.models if m.enabled]
    except (AuditInputError, KeyError):
        pass
    label = p.get("model") or models_label(names)
    version = f" v{p['version']}" if p.get("version") else ""
    return f"{label}{version} {_run_date(timezone)}"


def version_task_name(action: str) -> str:
    """Task-run name template for tasks with `model` and `version` parameters."""
    return f"{action} {{model}} v{{version}}"


def neuron_batches(neuron_ids: list[str], size: int = RENDER_BATCH_SIZE) -> list[list[str]]:
    return [neuron_ids[i:i + size] for i in range(0, len(neuron_ids), size)] or [[]]


def batch_label(batch: list[str], all_ids: list[str] | None = None) -> str:
    """`neurons 1-8 of 30 (egyptian-cat … b5-c17)`; without all_ids: `8 neurons (a … h)`."""
    if not batch:
        return "no neurons"
    ends = batch[0] if len(batch) == 1 else f"{batch[0]} … {batch[-1]}"
    if all_ids and batch[0] in all_ids:
        first = all_ids.index(batch[0]) + 1
        return f"neurons {first}-{first + len(batch) - 1} of {len(all_ids)} ({ends})"
    return f"{len(batch)} neuron{'s' if len(batch) != 1 else ''} ({ends})"


def render_task_name() -> str:
    p = _params("task")
    batch = p.get("neuron_ids")
    all_ids = None
    try:
        from . import runtime

        all_ids = [n.id for n in runtime.config(p["cfg_path"]).model(p["model"]).neurons]
    except (KeyError, ValueError):       # AuditInputError is a ValueError
        pass
    label = batch_label(list(batch), all_ids) if batch is not None else "all neurons"
    return f"render {p.get('model')} v{p.get('version')} {label}"


def compare_task_name() -> str:
    """`compare M 1→2` (compare-versions) or `log compare M 1→2 to MLflow` (from a report parameter)."""
    p = _params("task")
    report = p.get("report")
    if isinstance(report, dict):
        return f"log compare {report.get('model')} {report.get('baseline')}→{report.get('candidate')} to MLflow"
    return f"compare {p.get('model')} {p.get('baseline')}→{p.get('candidate')}"


def artifact_key(store_id: str, model: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) unique per store and model name."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40] or "model"
    exact = hashlib.sha256(model.encode()).hexdigest()[:6]      # "My_Model" and "my-model" differ
    return f"neuron-audit-{slug}-{exact}-{re.sub(r'[^a-z0-9]', '', store_id.lower())[:12]}"


def model_markdown(summary: dict, model: str) -> str:
    """The markdown artifact of one model in a flow run: its compares' verdict counts, the work each version
    needed, the FAIL neurons with their reasons, and the neurons that could not be audited."""
    reports = [r for r in summary["reports"] if r["model"] == model]
    versions = [v for v in summary["versions"] if v["model"] == model]
    lines = [f"# neuron-audit: {model} (audit run {summary['run_id']})", "",
             "| baseline | candidate | PASS | WARN | FAIL |", "|---|---|---|---|---|"]
    lines += [f"| {r['baseline']} | {r['candidate']} | {r['summary']['PASS']} | {r['summary']['WARN']} | "
              f"{r['summary']['FAIL']} |" for r in reports]
    lines += ["", "| version | statistics computed / cached | images rendered / reused | not audited |",
              "|---|---|---|---|"]
    lines += [f"| {v['version']} | {len(v['stats_computed'])} / {len(v['stats_cached'])} | "
              f"{len(v['viz_rendered'])} / {len(v['viz_reused'])} | {len(v['neuron_errors'])} |" for v in versions]
    fails = [(r, n) for r in reports for n in r["neurons"] if n["verdict"] == "FAIL"]
    if fails:
        lines += ["", "## FAIL"] + [f"- {r['baseline']}→{r['candidate']} `{n['id']}`: {n['reason']} "
                                    f"(report: `{r.get('report_path')}`)" for r, n in fails]
    errors = [f"- v{v['version']} `{nid}`: {err}" for v in versions for nid, err in v["neuron_errors"].items()]
    if errors:
        lines += ["", "## Not audited"] + errors
    return "\n".join(lines)


def verdict_summary(summary: dict) -> tuple[str, str]:
    """(worst verdict over the run's reports or "none", one-line message naming the FAIL neurons)."""
    fails = [f"{r['model']} {r['baseline']}→{r['candidate']} {n['id']}" for r in summary.get("reports", [])
             for n in r["neurons"] if n["verdict"] == "FAIL"]
    warns = sum(1 for r in summary.get("reports", []) for n in r["neurons"] if n["verdict"] == "WARN")
    n_versions = len(summary.get("versions", []))
    if fails:
        msg = f"drift FAIL in {len(fails)} neuron comparison(s): {'; '.join(fails)}"
        return "FAIL", msg[:_MAX_MESSAGE - 3] + "..." if len(msg) > _MAX_MESSAGE else msg
    if warns:
        return "WARN", f"no FAIL; {warns} WARN across {len(summary.get('reports', []))} comparison(s)"
    if summary.get("reports"):
        return "PASS", f"all PASS across {len(summary['reports'])} comparison(s) of {n_versions} version(s)"
    return "none", f"{n_versions} version(s) audited, nothing to compare"


def tag_flow_run(flow_run_id: str | None, tags: list[str]) -> None:
    """Add tags to a flow run (visible and filterable in the Prefect UI)."""
    if not flow_run_id:
        return
    import httpx
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run_id).tags or []
            client.update_flow_run(flow_run_id, tags=sorted(set(current) | set(tags)))
    except httpx.HTTPError:      # a tag is a convenience; the state message carries the verdict too
        pass


def verdict_state(summary: dict, tagger: Callable[[str | None, list[str]], None] = tag_flow_run):
    """The flow's final state: Completed, with a message that names the FAIL neurons, and the flow run tagged
    `verdict:<worst>`. The state's data is the summary, so calling the flow still returns it."""
    from prefect.states import Completed

    worst, message = verdict_summary(summary)
    summary["verdict"] = worst
    tagger(summary.get("flow_run_id"), [f"verdict:{worst}"])
    return Completed(message=message, data=summary)
