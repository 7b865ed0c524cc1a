"""docs/cli.md from the typer app of flows/cli.py.

Each command's section is its own help: the docstring, the usage line and one row per option
as `neuron-audit CMD --help` prints it (click's help records, so the page and the terminal
agree word for word). New commands appear on the next run. Commands the product contract owes
but the app does not have yet are listed from CONTRACT_COMMANDS; once a command exists, its
own help replaces the contract's text (and tests/docs check that it offers the promised flags).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator

PROGRAM = "neuron-audit"

EXIT_CODES = [
    (0, "Everything was audited and no neuron FAILs."),
    (1, "A drift FAIL was found (`compare`, `run`, `demo`, `watch`)."),
    (2, "Bad input, found before any work starts: a config key, a model source, a layer or index, an image "
        "folder. Every problem is named with its key and value; nothing is stored."),
    (3, "The audit ran, but some neuron or version could not be audited. The ones missing are listed in the "
        "report, on the dashboard and in an alert."),
    (4, "Internal or infrastructure error (database, MLflow, Prefect, a bug): one line on the terminal, the "
        "traceback in a log file whose path that line prints."),
]
EXIT_NOTES = [
    "An audit of zero neurons never exits 0.",
    "Ctrl-C exits 130.",
]


@dataclass(frozen=True)
class ContractCommand:
    """A command the product contract promises: its synopsis, the flags it must accept, its meaning."""

    synopsis: str
    flags: tuple[str, ...]
    text: str


CONTRACT_COMMANDS = {
    "check": ContractCommand(
        synopsis="neuron-audit check -c CONFIG",
        flags=("-c", "--config"),
        text="The preflight alone: architectures, layers, indices, images, checkpoints, registry entries and the "
             "store, all checked against the real world. Exit 0 or 2."),
    "watch": ContractCommand(
        synopsis="neuron-audit watch -c CONFIG --model M --images DIR [--version V] [--batch-id ID] [--json OUT]",
        flags=("-c", "--config", "--model", "--images", "--version", "--batch-id", "--json"),
        text='Feature drift of a production batch of images against the reference window; exit 0, 1 or 2 as '
             'above. Its JSON: `{"model", "version", "batch_id", "n_images", "neurons": [{"id", "verdict", '
             '"reason", ...}]}`.'),
}


def _app():
    from flows.cli import app

    return app


def root_command(app: Any = None):
    """The click command tree of the typer app, and its root context."""
    import typer

    group = typer.main.get_command(app if app is not None else _app())
    return group, group.context_class(group, info_name=PROGRAM)


def walk(cmd: Any, ctx: Any) -> Iterator[tuple[Any, Any]]:
    """(command, context) for every visible command under `cmd` (groups too), in registration order."""
    for name, sub in getattr(cmd, "commands", {}).items():
        if sub.hidden:
            continue
        sub_ctx = sub.context_class(sub, info_name=name, parent=ctx)
        yield sub, sub_ctx
        yield from walk(sub, sub_ctx)


def options(cmd: Any, ctx: Any) -> list[Any]:
    """The command's parameters as its help shows them, without --help."""
    help_names = set(ctx.help_option_names)
    return [p for p in cmd.get_params(ctx) if not set(getattr(p, "opts", [])) & help_names]


def flags_of(cmd: Any, ctx: Any) -> set[str]:
    """Every option string the command accepts (`--help` included)."""
    out = set(ctx.help_option_names)
    for p in cmd.get_params(ctx):
        out.update(getattr(p, "opts", []))
        out.update(getattr(p, "secondary_opts", []))
    return out


def _paragraphs(text: str | None) -> list[str]:
    """Markdown paragraphs of a docstring. In a paragraph that starts with click's `\\b`, each
    indented line (a command, by convention) becomes inline code on a line of its own."""
    out = []
    for p in inspect.cleandoc(text or "").split("\n\n"):
        if not p.strip():
            continue
        if p.startswith("\b\n"):
            segments: list[str] = []
            prose = False
            for line in (l for l in p[2:].splitlines() if l.strip()):
                if line[:1].isspace():
                    segments.append(f"`{line.strip()}`")
                    prose = False
                elif prose:
                    segments[-1] += " " + line.strip()
                else:
                    segments.append(line.strip())
                    prose = True
            out.append("\\\n".join(segments))
        else:
            out.append(" ".join(p.split()))
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def command_section(cmd: Any, ctx: Any) -> list[str]:
    lines = ["", f"### `{ctx.command_path}`", ""]
    for p in _paragraphs(cmd.help):
        lines += [p, ""]
    usage = " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)])
    lines += [f"Usage: `{usage}`"]
    subcommands = [(n, c) for n, c in getattr(cmd, "commands", {}).items() if not c.hidden]
    if subcommands:
        lines += ["", "| command | what it does |", "|---|---|"]
        lines += [f"| `{ctx.command_path} {n}` | {_cell(c.get_short_help_str(limit=200))} |" for n, c in subcommands]
    rows = [rec for rec in (p.get_help_record(ctx) for p in options(cmd, ctx)) if rec]
    if rows:
        lines += ["", "| option | meaning |", "|---|---|"]
        lines += [f"| `{_cell(names)}` | {_cell(text) or '(no help text)'} |" for names, text in rows]
    return lines


def render(app: Any = None) -> str:
    group, root = root_command(app)
    commands = list(walk(group, root))
    top = [(c, x) for c, x in commands if x.parent is root]
    lines = [
        "# Command-line reference (`neuron-audit`)",
        "",
        "<!-- Generated from flows/cli.py by docs/tools/generate.py; do not edit by hand. -->",
        "",
        f"`{PROGRAM} COMMAND --help` prints the same text as each section below.",
        f"`python -m audit` is the same command line.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`{x.command_path}`](#{x.command_path.replace(' ', '-')}) | {_cell(c.get_short_help_str(limit=200))} |"
              for c, x in top]
    globals_ = [rec for rec in (p.get_help_record(root) for p in options(group, root)) if rec]
    if globals_:
        lines += ["", "## Global options", "",
                  f"Given before the command (`{PROGRAM} --json-logs run -c neuron-audit.yaml`); they set how every "
                  "command logs. Without a terminal (a scheduler, a pipe), each long stage (preflight, plan, "
                  "register, probe statistics, render, compare, MLflow sync, alerts, static report, watch) logs one "
                  "line on stderr when it starts and one when it ends, with its duration and what it produced; on a "
                  "terminal the progress bars show as well. The lines go through Python's `logging` module, on "
                  "loggers named `neuron_audit.*`, so a deployment can route them. Processes a scheduler starts "
                  "without this command line (a Prefect worker's flow run) read the same choice from "
                  "`NEURON_AUDIT_JSON_LOGS=1` and `NEURON_AUDIT_QUIET=1`.",
                  "", "| option | meaning |", "|---|---|"]
        lines += [f"| `{_cell(names)}` | {_cell(text) or '(no help text)'} |" for names, text in globals_]
    lines += ["", "## Exit codes", "", "Every command exits with one of these codes:", "", "| code | meaning |",
              "|---|---|"]
    lines += [f"| {code} | {_cell(text)} |" for code, text in EXIT_CODES]
    lines += [""] + [f"- {note}" for note in EXIT_NOTES]
    lines += ["", "## Commands"]
    for c, x in commands:
        lines += command_section(c, x)
    missing = {name: cc for name, cc in CONTRACT_COMMANDS.items() if name not in group.commands}
    if missing:
        lines += ["", "## Owed by the contract, not in this build yet", "",
                  "These commands are promised to users and are being built; their synopsis is the contract."]
        for name, cc in missing.items():
            lines += ["", f"### `{PROGRAM} {name}` (not in this build yet)", "", f"Synopsis: `{cc.synopsis}`", "",
                      cc.text]
    lines += ["", "## Environment", "",
              "Every command sets these before Prefect or MLflow start, unless they are set already: "
              "`PREFECT_SERVER_ANALYTICS_ENABLED=false`, `DO_NOT_TRACK=true`, `MLFLOW_DISABLE_TELEMETRY=true`, "
              "`HF_HUB_OFFLINE=1` (no telemetry, no model hub). `neuron-audit serve` uses the Prefect server in "
              "`PREFECT_API_URL`, or starts one on 127.0.0.1."]
    return "\n".join(lines) + "\n"
