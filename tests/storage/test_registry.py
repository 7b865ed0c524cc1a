"""Registered MLflow model versions, logged through the real MLflow API, read back as weights: the pt2 default
(no unpickling), state dicts, pickled modules only with opt-in; missing names, versions and aliases named."""
from __future__ import annotations

import socket

import pytest

from _registry_testlib import ARCH, log_registered, log_state_dict_version, tiny_model

torch = pytest.importorskip("torch")
NAME = "reg-tiny"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A local sqlite MLflow store holding NAME v1 (pt2, alias champion), v2 (pickled), v3 (state dict)."""
    d = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{d}/mlflow.db"
    models = {"1": tiny_model(0), "2": tiny_model(1), "3": tiny_model(2)}
    assert log_registered(uri, d / "artifacts", NAME, models["1"], alias="champion") == "1"
    assert log_registered(uri, d / "artifacts", NAME, models["2"], serialization_format="pickle") == "2"
    assert log_state_dict_version(uri, d / "artifacts", NAME, models["3"]) == "3"
    return uri, models


def _same(state: dict, model) -> bool:
    own = model.state_dict()
    return set(state) == set(own) and all(torch.equal(state[k], own[k]) for k in own)


def test_pt2_alias_and_state_dict_versions_load_exactly(registry, tmp_path, monkeypatch):
    from sources import load_model
    from sources.mlflow_registry import resolve_registry_source

    uri, models = registry
    monkeypatch.chdir(tmp_path)        # MLflow's process-wide default registry would be ./mlflow.db here
    state, info = resolve_registry_source(f"models:/{NAME}/1", uri)
    assert info["format"] == "pt2" and info["file"] == "model.pt2" and _same(state, models["1"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(load_model(ARCH, state_dict=state)(x), models["1"](x), atol=1e-5)
    state, info = resolve_registry_source(f"models:/{NAME}@champion", uri)
    assert info["version"] == "1" and info["alias"] == "champion" and _same(state, models["1"])
    state, info = resolve_registry_source(f"models:/{NAME}/3", uri)
    assert info["format"] == "state_dict" and _same(state, models["3"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing may be written to the working directory"


def test_pickled_version_needs_opt_in(registry):
    from audit.errors import AuditInputError
    from sources.mlflow_registry import check_registry_source, resolve_registry_source

    uri, models = registry
    with pytest.raises(AuditInputError, match=r"pickle.*runs code.*models\[m\]\.allow_pickle: true"):
        resolve_registry_source(f"models:/{NAME}/2", uri, model_key="models[m]")
    assert "allow_pickle" in check_registry_source(f"models:/{NAME}/2", uri)
    state, info = resolve_registry_source(f"models:/{NAME}/2", uri, allow_pickle=True)
    assert info["format"] == "pickle" and _same(state, models["2"])
    assert check_registry_source(f"models:/{NAME}/2", uri, allow_pickle=True) is None


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_missing_names_versions_aliases_and_unreadable_registry_are_named(registry):
    from audit.errors import AuditInputError
    from sources.mlflow_registry import check_registered_model, check_registry_source, list_registry_versions

    uri, _ = registry
    assert check_registry_source(f"models:/{NAME}/1", uri) is None
    assert check_registry_source(f"models:/{NAME}@champion", uri) is None
    assert "no registered model named 'nope'" in check_registry_source("models:/nope/1", uri)
    problem = check_registry_source(f"models:/{NAME}/9", uri)
    assert "versions 1, 2, 3" in problem and "@champion" in problem
    assert "no such version or alias" in check_registry_source(f"models:/{NAME}@production", uri)
    assert "not a registry source" in check_registry_source(f"models:/{NAME}", uri)
    assert "cannot read the model registry" in check_registry_source(f"models:/{NAME}/1", _closed_port())
    assert list_registry_versions(NAME, uri) == ["1", "2", "3"]
    assert list_registry_versions(NAME, uri, ["champion"]) == ["1"]
    with pytest.raises(AuditInputError, match="no registered model named 'nope'"):
        list_registry_versions("nope", uri)
    with pytest.raises(AuditInputError, match="no alias @production"):
        list_registry_versions(NAME, uri, ["production"])
    problems = check_registered_model(NAME, uri)
    assert len(problems) == 1 and f"models:/{NAME}/2" in problems[0] and "allow_pickle" in problems[0]
    assert check_registered_model(NAME, uri, ["champion"]) == []
    assert "no registered model" in check_registered_model("nope", uri)[0]


def test_pt2_reader_matches_torch_export_without_unpickling(tmp_path):
    """The weights read from the archive's raw records equal torch.export's own ExportedProgram.state_dict, and
    the dtype table matches torch's serializer."""
    from sources.errors import SourceFormatError
    from sources.pt2 import PT2_DTYPES, pt2_state_dict

    try:
        from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE
    except ImportError:      # private name moved: the table is still checked by the round trip below
        _SERIALIZE_TO_TORCH_DTYPE = {}
    for code, dtype in PT2_DTYPES.items():
        assert _SERIALIZE_TO_TORCH_DTYPE.get(code, dtype) == dtype

    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3).to(torch.float64)
            self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
            self.register_buffer("halves", torch.arange(6, dtype=torch.float16).reshape(2, 3).t())   # non-contiguous

        def forward(self, x):
            return self.lin(x) + self.steps + self.halves.sum()

    m = Mixed()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(2, 4, dtype=torch.float64),)), path)
    state = pt2_state_dict(path)
    own = m.state_dict()
    assert set(state) == set(own) and all(torch.equal(state[k], own[k]) and state[k].dtype == own[k].dtype for k in own)
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    with pytest.raises(SourceFormatError, match="not a torch.export archive"):
        pt2_state_dict(tmp_path / "bad.pt2")
