"""What an audit's summary means for a scheduler: its exit code, what could not be audited, the
alert that says so.

Exit codes (docs/cli.md): 0 every selected neuron audited, no FAIL; 1 a drift FAIL (it wins over 3:
the FAIL is the news, and what could not be audited is listed and alerted all the same); 2 bad
input found before any work; 3 the audit ran but some neuron or version could not be audited, or
no neuron at all was audited; 4 an internal or infrastructure error; 130/143 interrupted by
Ctrl-C/SIGTERM (the run is marked `interrupted`, finished results are kept).
"""
from __future__ import annotations

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_INTERNAL = 0, 1, 2, 3, 4

EXIT_CODES_HELP = (
    "Exit codes: 0 everything audited, no FAIL; 1 a drift FAIL was found; 2 bad input, found before any "
    "work (every problem named with its key and value; nothing stored); 3 the audit ran but some neuron or "
    "version could not be audited (listed, stored with the run, alerted), or it audited nothing; 4 internal "
    "or infrastructure error (one line here, the traceback in the log file it names); 130/143 stopped by "
    "Ctrl-C/SIGTERM (the run is marked interrupted; finished results are kept).")


def not_audited(summary: dict) -> list[dict]:
    """Every neuron or version of the summary that could not be audited: dict(model, version, neuron, reason)."""
    out = list(summary.get("not_audited", []))
    seen = {(d["model"], d.get("version"), d.get("neuron")) for d in out}
    for v in summary.get("versions", []):
        for nid, reason in (v.get("neuron_errors") or {}).items():
            key = (v["model"], v["version"], nid)
            if key not in seen:
                seen.add(key)
                out.append({"model": v["model"], "version": v["version"], "neuron": nid, "reason": reason})
    for r in summary.get("reports", []):
        for nid, reason in (r.get("errors") or {}).items():
            if not any(d["model"] == r["model"] and d.get("neuron") == nid for d in out):
                out.append({"model": r["model"], "version": f"{r['baseline']}->{r['candidate']}", "neuron": nid,
                            "reason": reason})
    return out


def audited_neurons(summary: dict) -> int:
    """How many (version, neuron) results this audit stands on: computed, reused, or unchanged."""
    n = 0
    for v in summary.get("versions", []):
        if v.get("skipped"):
            n += 1               # unchanged: its last complete audit (every neuron) stands
        else:
            n += len(set(v.get("stats_computed") or []) | set(v.get("stats_cached") or []))
    return n


def exit_code(summary: dict) -> int:
    if any(n.get("verdict") == "FAIL" for r in summary.get("reports", []) for n in r.get("neurons", [])):
        return EXIT_FAIL
    if not_audited(summary) or audited_neurons(summary) == 0:
        return EXIT_INCOMPLETE
    return EXIT_OK


def describe(item: dict) -> str:
    where = f"{item['model']} v{item['version']}" if item.get("version") else item["model"]
    return f"{where} {item['neuron']}: {item['reason']}" if item.get("neuron") else f"{where}: {item['reason']}"


def incomplete_payload(summary: dict, items: list[dict]) -> dict:
    """The webhook message of an audit that could not audit everything."""
    lines = "; ".join(describe(d) for d in items[:10]) + (" ..." if len(items) > 10 else "")
    return {"text": f":warning: neuron-audit run {summary.get('run_id')}: {len(items)} neuron(s)/version(s) could "
                    f"not be audited — {lines}",
            "kind": "audit-incomplete", "run_id": summary.get("run_id"), "not_audited": items}
