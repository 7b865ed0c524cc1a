"""docs/configuration.md and docs/cli.md are what docs/tools/generate.py makes of the code now."""
from __future__ import annotations

import json

import pytest

import cli_reference
import config_reference
import generate

from tests.docs.doc_pages import ROOT


@pytest.mark.parametrize("page", sorted(generate.PAGES))
def test_generated_page_is_current(page):
    committed = (ROOT / "docs" / page).read_text()
    assert committed == generate.PAGES[page](), (
        f"docs/{page} is out of date with the code: run `python docs/tools/generate.py` and commit the result")


def test_every_config_key_has_a_meaning():
    missing = config_reference.undescribed_keys()
    assert not missing, f"add `description=` to these fields in audit/config.py: {missing}"


def _sections_in(annotation) -> list[tuple[type, str]]:
    """Nested config sections in an annotation: `X` and `X | None` -> (X, ""), `list[X]` -> (X, "[]")."""
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        return [(m, "[]") for m, _ in _sections_in(args[0])]
    return [found for a in args for found in _sections_in(a)]


def test_config_reference_lists_every_key_with_its_default():
    """Walks the schema independently of the generator's own walk: every field of every nested
    model appears as a row with its default."""
    from pydantic import BaseModel

    from audit.config import AuditConfig

    page = (ROOT / "docs" / "configuration.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in page.splitlines() if line.startswith("| `")}
    seen = []

    def visit(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            key = f"{prefix}{name}"
            seen.append(key)
            assert key in rows, f"{key} is missing from docs/configuration.md"
            if not field.is_required() and field.default_factory is None and not isinstance(field.default, BaseModel):
                assert f"`{json.dumps(field.default)}`" in rows[key], (key, rows[key])
            for sub, suffix in _sections_in(field.annotation):
                visit(sub, f"{key}{suffix}.")

    visit(AuditConfig, "")
    assert len(seen) == len(rows)


def test_config_reference_type_labels():
    from typing import Literal

    from audit.config import VisualizationConfig

    assert config_reference.type_label(str | None) == "string or null"
    assert config_reference.type_label(list[int]) == "list of integers"
    assert config_reference.type_label(Literal["a", "b"]) == 'one of `"a"`, `"b"`'
    assert config_reference.type_label(dict[str, float]) == "mapping of string to number"
    assert config_reference.bounds(VisualizationConfig.model_fields["resolution"]) == ["≥ 32", "≤ 1024"]


def test_every_cli_option_has_help_text():
    group, root = cli_reference.root_command()
    missing = [f"{ctx.command_path} {'/'.join(p.opts)}" for cmd, ctx in cli_reference.walk(group, root)
               for p in cli_reference.options(cmd, ctx) if not (getattr(p, "help", None) or "").strip()]
    assert not missing, f"give these options a help= text in flows/cli.py: {missing}"
    undocumented = [ctx.command_path for cmd, ctx in cli_reference.walk(group, root) if not (cmd.help or "").strip()]
    assert not undocumented, f"give these commands a docstring: {undocumented}"


def test_contract_commands_offer_the_promised_flags():
    """`check` and `watch` are owed by the contract; once the app has them they must accept its flags."""
    group, root = cli_reference.root_command()
    for name, promised in cli_reference.CONTRACT_COMMANDS.items():
        cmd = group.commands.get(name)
        if cmd is None:
            assert f"`neuron-audit {name}` (not in this build yet)" in (ROOT / "docs" / "cli.md").read_text()
            continue
        ctx = cmd.context_class(cmd, info_name=name, parent=root)
        lacking = set(promised.flags) - cli_reference.flags_of(cmd, ctx)
        assert not lacking, f"neuron-audit {name} lacks the contract's flags {sorted(lacking)}"


def test_generate_check_mode(monkeypatch, capsys):
    assert generate.main(["--check"]) == 0
    monkeypatch.setattr(generate, "PAGES", {"cli.md": lambda: "a different page\n"})
    assert generate.main(["--check"]) == 1
    assert "docs/cli.md is out of date" in capsys.readouterr().err
