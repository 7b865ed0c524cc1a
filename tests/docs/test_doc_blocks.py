"""Every block of README.md and docs/ runs (configs validate, commands and flags exist, reports
match the schema) or is marked as an illustration; every link resolves inside the repository."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

import cli_reference

from tests.docs.doc_pages import ROOT, Block, anchors, fenced_blocks, inline_code, links, markdown_files

SHELL = {"bash", "sh", "shell", "console"}
CHECKED = SHELL | {"yaml", "yml", "json", "python"}
ALL_BLOCKS = [b for path in markdown_files() for b in fenced_blocks(path)]


YAML_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("yaml", "yml")]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL]
JSON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "json"]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


def _program_args(words: list[str]) -> list[str] | None:
    """The arguments after `neuron-audit` / `python -m audit`, or None for another program."""
    if words[:1] == ["neuron-audit"]:
        return words[1:]
    if words[:3] in (["python", "-m", "audit"], ["python3", "-m", "audit"]):
        return words[3:]
    return None


def _resolve(args: list[str]):
    """(command, context, remaining args) for the leading subcommand words of `args`."""
    cmd, ctx = cli_reference.root_command()
    global_flags = cli_reference.flags_of(cmd, ctx) - set(ctx.help_option_names)
    while args and args[0] in global_flags:          # `neuron-audit --json-logs run ...`: options of every command
        args = args[1:]
    while args and args[0] in getattr(cmd, "commands", {}):
        sub = cmd.commands[args[0]]
        ctx = sub.context_class(sub, info_name=args[0], parent=ctx)
        cmd, args = sub, args[1:]
    return cmd, ctx, args


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-") and a not in ("-", "--")]


def check_cli_call(args: list[str], require: bool) -> list[str]:
    """Problems of one `neuron-audit ARGS` call: unknown command or flags, missing required flags."""
    cmd, ctx, rest = _resolve(args)
    if rest and not rest[0].startswith("-") and getattr(cmd, "commands", None) is not None:
        return [f"unknown command {' '.join([ctx.command_path, rest[0]])!r}"]
    known = cli_reference.flags_of(cmd, ctx)
    problems = [f"{ctx.command_path} has no flag {f!r}" for f in _flags(rest) if f not in known]
    if require and not set(ctx.help_option_names) & set(rest):
        given = set(_flags(rest))
        for p in cli_reference.options(cmd, ctx):
            if p.required and not given & set(p.opts):
                problems.append(f"{ctx.command_path} needs {p.opts[-1]}")
    return problems


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.MULTILINE))


def check_shell_line(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    if not words:
        return []
    args = _program_args(words)
    if args is not None:
        return check_cli_call(args, require=True)
    if words[0] == "make":
        missing = [t for t in words[1:] if "=" not in t and not t.startswith("-") and t not in _makefile_targets()]
        return [f"the Makefile has no target {t!r}" for t in missing]
    if words[0] in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
        return [] if (ROOT / words[1]).is_file() else [f"no script {words[1]} in the repository"]
    return [f"{words[0]!r} is not checked: run `neuron-audit`, `make` or a repository script, "
            f"or mark the block `# illustration`"]


def _shell_lines(text: str) -> list[str]:
    return [l for l in re.sub(r"\\\n\s*", " ", text).splitlines() if l.strip()]


def test_every_block_has_a_checked_language():
    unchecked = [f"{b.where} ({b.lang or 'no language'})" for b in ALL_BLOCKS if b.lang not in CHECKED]
    assert not unchecked, f"tag each block yaml, bash, json or python (not run: `# illustration`): {unchecked}"


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=_ids(YAML_BLOCKS))
def test_yaml_block_is_a_valid_config(block, tmp_path):
    if block.is_illustration:
        pytest.skip("marked as an illustration")
    from audit.config import parse_config

    cfg = parse_config(yaml.safe_load(block.text), base_dir=tmp_path, origin=block.where)
    assert cfg.models, block.where


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=_ids(SHELL_BLOCKS))
def test_shell_block_commands_exist(block):
    if block.is_illustration:
        pytest.skip("marked as an illustration")
    problems = [f"{block.where}: `{line}`: {p}" for line in _shell_lines(block.text) for p in check_shell_line(line)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=_ids(JSON_BLOCKS))
def test_json_block_is_a_valid_compare_report(block):
    import jsonschema

    schema = json.loads((ROOT / "docs" / "compare-report.schema.json").read_text())
    report = json.loads(block.text)
    jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=_ids(PYTHON_BLOCKS))
def test_python_block_compiles_and_its_imports_exist(block):
    """A Python snippet is Python, and the packages it imports are installed (or are this repository's)."""
    import ast
    import importlib.util

    if block.is_illustration:
        pytest.skip("marked as an illustration")
    tree = ast.parse(block.text, filename=block.where)
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    missing = sorted(m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None)
    assert not missing, f"{block.where} imports what is not installed: {missing}"


def _inline_calls() -> list[tuple[str, str]]:
    out = []
    for path in markdown_files():
        for code in inline_code(path):
            words = code.replace("\\|", "|").split()
            args = _program_args(words)
            if args is not None:
                out.append((f"{path.relative_to(ROOT)}: `{code}`", args))
    return out


def test_inline_commands_name_real_commands_and_flags():
    """`neuron-audit demo [--dir DIR] [--quick]` in prose: the command and every flag exist (a command the
    contract owes but this build lacks is checked against the contract's flags)."""
    group, _root = cli_reference.root_command()
    problems = []
    for where, args in _inline_calls():
        # placeholders (`COMMAND`, `[OPTIONS]`, `[ARGS]...`, `...`) stand for anything
        args = [a.strip("[]") for a in args if not re.fullmatch(r"\[?([A-Z][A-Z0-9_]*|\.\.\.)\]?(\.\.\.)?", a)]
        owed = cli_reference.CONTRACT_COMMANDS.get(args[0]) if args else None
        if owed is not None and args[0] not in group.commands:
            problems += [f"{where}: {f!r} is not in the contract of {args[0]}" for f in _flags(args[1:])
                         if f.split("|")[0] not in owed.flags]
            continue
        problems += [f"{where}: {p}" for p in check_cli_call([a.split("|")[0] for a in args], require=False)]
    assert not problems, "\n".join(problems)


def test_the_checker_rejects_what_does_not_exist():
    """The checks above would catch a stale command, flag, required flag, make target or script."""
    assert check_shell_line("neuron-audit compare -c x.yaml --model m --baseline 1 --candidate 2") == []
    assert check_shell_line("neuron-audit compare -c x.yaml --model m --baseline 1") == ["neuron-audit compare needs --candidate"]
    assert check_shell_line("neuron-audit compare --help") == []
    assert check_shell_line("neuron-audit demo --fast") == ["neuron-audit demo has no flag '--fast'"]
    assert check_shell_line("neuron-audit db downgrade") == ["unknown command 'neuron-audit db downgrade'"]
    assert check_shell_line("make demo-slow") == ["the Makefile has no target 'demo-slow'"]
    assert check_shell_line("python docs/tools/missing.py")
    assert check_shell_line("pip install neuron-audit")
    assert Block(Path("x.md"), 1, "yaml", "# illustration: a fragment\na: 1").is_illustration
    assert not Block(Path("x.md"), 1, "yaml", "a: 1  # illustration").is_illustration


def test_links_resolve_inside_the_repository():
    problems = []
    for path in markdown_files():
        for target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):             # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}: ({target})"
            if ROOT not in dest.parents and dest != ROOT:
                problems.append(f"{where} points outside the repository")
            elif not dest.exists():
                problems.append(f"{where} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)


def test_no_pointer_to_files_outside_the_repository():
    texts = {p: p.read_text() for p in [*markdown_files(), ROOT / "pyproject.toml"]}
    bad = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p, text in texts.items()
           for m in re.finditer(r"(\.\./)+shared/\S*|\bshared/(SPEC|ENVIRONMENT)\.md", text)]
    assert not bad, f"point to the in-repository docs instead: {bad}"
