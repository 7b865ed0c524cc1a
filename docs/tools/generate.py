"""Write the generated reference pages of docs/, or check that they are current.

    python docs/tools/generate.py           # rewrite docs/configuration.md and docs/cli.md
    python docs/tools/generate.py --check   # exit 1, naming the stale pages, if either is out of date

Run it after changing audit/config.py or flows/cli.py; tests/docs fails while a page is stale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
if str(ROOT) not in sys.path:          # run as a script: import the repository's own packages
    sys.path.insert(0, str(ROOT))

import cli_reference  # noqa: E402
import config_reference  # noqa: E402

PAGES: dict[str, Callable[[], str]] = {
    "configuration.md": config_reference.render,
    "cli.md": cli_reference.render,
}


def stale_pages() -> list[str]:
    """Names of the generated pages whose committed text differs from a fresh rendering."""
    return [name for name, render in PAGES.items()
            if not (DOCS / name).is_file() or (DOCS / name).read_text() != render()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a page is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for name in stale:
            print(f"docs/{name} is out of date: run `python docs/tools/generate.py`", file=sys.stderr)
        return 1 if stale else 0
    for name, render in PAGES.items():
        (DOCS / name).write_text(render())
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
