"""The tags a registered model version gets: its verdict, counts, and links to the MLflow run and to the
dashboard page of its worst comparison (storage/mlflow_content.py, pure)."""
from __future__ import annotations

from storage.mlflow_content import dashboard_page, registered_version_tags


def _content() -> dict:
    drift = [{"neuron_id": "a", "baseline": "1", "verdict": "PASS", "statistics": {}, "baseline_registered_at": "t1"},
             {"neuron_id": "a", "baseline": "3", "verdict": "FAIL", "statistics": {}, "baseline_registered_at": "t3"},
             {"neuron_id": "b", "baseline": "3", "verdict": "WARN", "statistics": {}, "baseline_registered_at": "t3"},
             {"neuron_id": "c", "baseline": "3", "verdict": "PASS", "statistics": {}, "baseline_registered_at": "t3"}]
    return {"model_version_id": 9, "source": "models:/reg/4", "weights_sha256": "f" * 64,
            "stats": {"a": {}, "b": {}, "c": {}}, "drift": drift, "visualizations": [], "reports": {}}


def test_tags_count_verdicts_and_link_the_worst_comparison():
    content = _content()
    page = dashboard_page("http://dash:8050/", "my model", "4", content)
    assert page == "http://dash:8050/models/my%20model/compare/3/4"
    tags = registered_version_tags(content, "r1", run_url="http://mlflow/#/runs/r1", dashboard_url=page)
    assert tags["neuron_audit.verdict"] == "FAIL" and tags["neuron_audit.failed_neurons"] == "a"
    assert (tags["neuron_audit.fail_count"], tags["neuron_audit.warn_count"], tags["neuron_audit.pass_count"]) == \
        ("1", "1", "1")
    assert tags["neuron_audit.mlflow_run_url"] == "http://mlflow/#/runs/r1"
    assert tags["neuron_audit.dashboard_url"] == page


def test_without_ui_urls_no_link_tags():
    content = {**_content(), "drift": []}
    assert dashboard_page(None, "m", "4", content) is None
    assert dashboard_page("http://dash", "m", "4", content) == "http://dash/models/m"
    tags = registered_version_tags(content, "r1")
    assert tags["neuron_audit.verdict"] == "none"
    assert "neuron_audit.mlflow_run_url" not in tags and "neuron_audit.dashboard_url" not in tags
