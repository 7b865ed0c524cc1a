"""Model sources: schemes registered by name, one reader for every weights file with one set of errors
(each an AuditInputError naming the value), and the old import paths still answering for one release."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import sources  # noqa: E402
from audit.errors import AuditInputError  # noqa: E402
from sources import registry  # noqa: E402
from sources.errors import SourceError, SourceFormatError, SourceNotFoundError, UnknownSourceError  # noqa: E402


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in torch.nn.Linear(4, 3).state_dict().items()}


def _same(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_builtin_file_and_registry_schemes_are_registered_by_name():
    assert sources.list_sources()[:3] == ["builtin", "file", "models"]
    assert sources.source_scheme("models").prefix == "models:/"
    assert sources.scheme_of("models:/m@champion").name == "models"
    with pytest.raises(UnknownSourceError, match="registered: builtin, file, models"):
        sources.source_scheme("hub")


def test_an_unknown_source_is_bad_input_naming_it_and_the_valid_forms():
    with pytest.raises(UnknownSourceError) as err:
        sources.resolve("hf-hub:timm/resnet50")
    assert isinstance(err.value, AuditInputError) and err.value.value == "hf-hub:timm/resnet50"
    assert "builtin:NAME, file:PATH, models:/NAME/VERSION, models:/NAME@ALIAS" in str(err.value)


def test_a_team_registers_its_own_scheme_with_one_call(monkeypatch):
    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))
    state = _state()
    seen = []

    def read_bucket(rest, context):
        seen.append((rest, context.base_dir))
        return sources.SourceWeights(f"bucket:{rest}", state, {"bucket": rest})

    sources.register_source("bucket", "bucket:", read_bucket, syntax="bucket:KEY")
    got = sources.resolve("bucket:models/a", base_dir="/cfg")
    assert _same(got.state_dict, state) and got.info == {"bucket": "models/a"} and seen == [("models/a", "/cfg")]
    with pytest.raises(ValueError, match="already registered"):
        sources.register_source("bucket", "bucket:", read_bucket)
    with pytest.raises(UnknownSourceError, match="bucket:KEY"):
        sources.resolve("nope:x")


def test_one_reader_for_safetensors_torch_files_and_pt2_archives(tmp_path):
    from safetensors.torch import save_file

    state = _state()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.ckpt")
    module = torch.nn.Linear(4, 3)
    module.load_state_dict(state)
    torch.export.save(torch.export.export(module, (torch.randn(2, 4),)), tmp_path / "w.pt2")
    for name in ("w.safetensors", "w.pt", "wrapped.ckpt", "w.pt2"):
        assert _same(sources.resolve(f"file:{name}", base_dir=tmp_path).state_dict, state), name
        assert _same(sources.read_state_dict(tmp_path / name), state), name


def test_unreadable_weights_name_the_file_with_one_set_of_errors(tmp_path):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    cases = [("missing.pt", SourceNotFoundError, "does not exist"),
             ("junk.pt", SourceFormatError, "cannot read checkpoint"),
             ("list.pt", SourceFormatError, "is not a state dict of tensors"),
             ("bad.pt2", SourceFormatError, "not a torch.export archive")]
    for name, kind, words in cases:
        with pytest.raises(kind, match=words) as err:
            sources.resolve(f"file:{name}", base_dir=tmp_path)
        assert isinstance(err.value, AuditInputError) and name in str(err.value), name
    with pytest.raises(SourceNotFoundError, match="unknown built-in model 'efficientnet_lite9'"):
        sources.resolve("builtin:efficientnet_lite9")
    with pytest.raises(SourceError, match="store.mlflow_tracking_uri") as err:
        sources.resolve("models:/m/1")
    assert err.value.value == "models:/m/1"
    with pytest.raises(SourceError, match="not a registry source"):
        sources.mlflow_registry.parse_models_uri("models:/")


def test_load_model_builds_the_architecture_from_any_source(tmp_path, lite0):
    from safetensors.torch import save_file

    from audit.models import load_model as audit_load_model
    from audit.models import weights_sha256

    save_file({k: v.contiguous() for k, v in lite0.state_dict().items()}, str(tmp_path / "w.safetensors"))
    m = sources.load_model("efficientnet_lite0", "file:w.safetensors", base_dir=tmp_path)
    assert weights_sha256(m) == weights_sha256(lite0) and not m.training
    # the source-string form of audit.models.load_model, kept for one release, reads through sources/
    old = audit_load_model("efficientnet_lite0", "file:w.safetensors", base_dir=tmp_path)
    assert weights_sha256(old) == weights_sha256(lite0)


def test_old_import_paths_answer_for_one_release(tmp_path):
    import audit.models
    import storage.errors
    import storage.mlflow_env
    import storage.mlflow_index
    import storage.registry_formats
    import storage.resolve
    from sources import mlflow_env, mlflow_index, mlflow_layout, mlflow_registry, pt2, state_dicts
    from sources.errors import TrackingUnavailableError

    assert storage.resolve.resolve_registry_source is mlflow_registry.resolve_registry_source
    assert storage.resolve.register_state_dict is mlflow_registry.register_state_dict
    assert storage.mlflow_index.version_identity is mlflow_index.version_identity
    assert storage.registry_formats.pt2_state_dict is pt2.pt2_state_dict
    assert storage.registry_formats.RegistryFormatError is SourceFormatError
    assert storage.registry_formats.state_dict_file is state_dicts.read_state_dict
    assert storage.registry_formats.describe_layout is mlflow_layout.describe_layout
    assert storage.errors.TrackingUnavailableError is TrackingUnavailableError
    assert storage.mlflow_env.apply_mlflow_env is mlflow_env.apply_mlflow_env
    assert audit.models.read_source is sources.read_source
    assert audit.models.file_state_dict is sources.read_state_dict
    state = _state()
    torch.save(state, tmp_path / "w.pt")
    assert _same(audit.models.read_source("file:w.pt", tmp_path), state)
    with pytest.raises(AttributeError):
        audit.models.no_such_name  # noqa: B018
