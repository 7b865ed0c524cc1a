"""The version picker: two selects (A = baseline, B = candidate) over a model's versions, for a
compare of any two versions, stored or not."""
from __future__ import annotations


def version_picker(versions: list[dict], champion: str | None, latest: dict | None,
                   baseline: str | None = None, candidate: str | None = None) -> dict:
    """dict(versions=[labels, newest first], baseline, candidate): preselects the given pair, else the latest
    comparison's, else the champion (or the oldest version) against the newest version."""
    names = [str(v["version"]) for v in versions]
    if baseline is None or candidate is None:
        if latest:
            baseline, candidate = str(latest["baseline"]), str(latest["candidate"])
        elif names:
            baseline = str(champion) if champion is not None and str(champion) in names else names[0]
            candidate = names[-1]
    return {"versions": list(reversed(names)), "baseline": baseline, "candidate": candidate}
