"""What `neuron-audit ... --help` prints: flags take no value, every option says what it is for."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from typer.testing import CliRunner

import cli_reference

from tests.docs.doc_pages import ROOT


def _help_pages() -> dict[str, str]:
    """`--help` of the program and of every command, at two terminal widths."""
    from flows.cli import app

    group, root = cli_reference.root_command()
    paths = [[]] + [ctx.command_path.split()[1:] for _cmd, ctx in cli_reference.walk(group, root)]
    pages = {}
    for columns in ("60", "200"):
        runner = CliRunner(env={"COLUMNS": columns, "TERM": "xterm-256color"})
        for path in paths:
            result = runner.invoke(app, [*path, "--help"])
            assert result.exit_code == 0, (path, result.output)
            pages[f"{' '.join(['neuron-audit', *path])} @{columns}"] = result.output
    return pages


def test_no_flag_shows_a_value_placeholder():
    for name, text in _help_pages().items():
        assert "<bool>" not in text and "BOOLEAN" not in text, f"{name}:\n{text}"
        for flag in ("--quick", "--no-visuals", "--help"):
            for line in text.splitlines():
                if line.strip().startswith(flag + " ") or line.strip() == flag:
                    after = line.strip()[len(flag):].split()
                    # the next word is the help text, never a metavar such as <bool> or BOOL
                    assert not after or not re.fullmatch(r"<\w+>|[A-Z_]+", after[0]), f"{name}: {line!r}"


def test_required_flags_have_help_text():
    group, root = cli_reference.root_command()
    for cmd, ctx in cli_reference.walk(group, root):
        for p in cli_reference.options(cmd, ctx):
            if p.required:
                names, text = p.get_help_record(ctx)
                assert text.replace("[required]", "").strip(), f"{ctx.command_path} {names} has no help text"


def test_console_entry_help(tmp_path):
    """The real entry point (`python -m audit`, the console script's code) prints the plain help."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    r = subprocess.run([sys.executable, "-m", "audit", "compare", "--help"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--baseline V1" in r.stdout and "The version compared against" in r.stdout
    assert "<bool>" not in r.stdout and "<str>" not in r.stdout
