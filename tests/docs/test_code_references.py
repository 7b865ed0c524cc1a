"""The code that docs/DESIGN.md and docs/architecture.md name exists: paths are files or folders
of the repository, dotted names (`audit.drift.compare_versions`) and the names in DESIGN.md's
module tables are defined where the page says. Read from the source (ast), nothing is imported."""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from tests.docs.doc_pages import ROOT, inline_code, prose

PAGES = [ROOT / "docs" / "DESIGN.md", ROOT / "docs" / "architecture.md"]
PACKAGES = ("audit", "sources", "storage", "flows", "dashboards")
PATH_RE = re.compile(rf"^(?:{'|'.join(PACKAGES)}|docs|tests|benchmarks)/[\w./-]*$")
DOTTED_RE = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+$")
NAME_RE = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\(|$|\s)")


@functools.lru_cache(maxsize=None)
def _definitions(module_file: Path) -> dict[str, set[str]]:
    """Top-level names of a module (defs, classes, assignments, imports) -> the names defined in
    each class body (methods, attributes); plain names map to an empty set."""
    tree = ast.parse(module_file.read_text())
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            out[node.name] = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            out[node.name] |= {t.id for n in node.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                               for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                               if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    out[t.id] = set()
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out[(alias.asname or alias.name).split(".")[0]] = set()
    return out


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def defined(module_file: Path, attrs: list[str]) -> bool:
    """Whether `attrs` (a name, or Class.member) is defined in the module's source."""
    defs = _definitions(module_file)
    if not attrs or attrs[0] not in defs:
        return False
    return len(attrs) == 1 or (len(attrs) == 2 and attrs[1] in defs[attrs[0]])


def dotted_name_exists(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_file = _module_file(parts[:i])
        if module_file is not None:
            return i == len(parts) or defined(module_file, parts[i:])
    return False


def design_table_names(page: Path) -> list[tuple[str, str]]:
    """(module path, name) for each name in the last column of DESIGN.md's module tables."""
    out = []
    for line in prose(page).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[\w/]+\.py`", cells[0]):
            for span in re.findall(r"`([^`]+)`", cells[2]):
                m = NAME_RE.match(span)
                if m:
                    out.append((cells[0].strip("`"), m.group(1)))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_paths_exist(page):
    missing = [c for c in inline_code(page) if PATH_RE.match(c) and not (ROOT / c).exists()]
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_dotted_names_exist(page):
    names = [c for c in inline_code(page) if DOTTED_RE.match(c)]
    missing = [n for n in names if not dotted_name_exists(n)]
    assert not missing, f"{page.name} names code that does not exist (moved? update the page): {missing}"


def test_design_tables_match_the_modules():
    page = ROOT / "docs" / "DESIGN.md"
    rows = design_table_names(page)
    assert len(rows) > 100, "the module tables were not found"
    missing = [f"{module}: {name}" for module, name in rows
               if not ((ROOT / module).is_file() and defined(ROOT / module, name.split(".")))]
    assert not missing, f"DESIGN.md names what these modules do not define: {missing}"


def test_every_module_is_on_the_map():
    """Each module of the five packages has a row in DESIGN.md (a new module gets one)."""
    listed = {m for m, _ in design_table_names(ROOT / "docs" / "DESIGN.md")}
    modules = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert not modules - listed, f"add these modules to docs/DESIGN.md: {sorted(modules - listed)}"


def test_the_checks_reject_what_does_not_exist():
    assert dotted_name_exists("audit.drift.compare_versions")
    assert dotted_name_exists("storage.repository.AuditStore.artifact_path")
    assert dotted_name_exists("storage.results_repo.ResultRepository.save_stats")
    assert not dotted_name_exists("storage.repository.AuditStore.save_stats")   # a mixin's method: named where defined
    assert dotted_name_exists("flows.cli.app")
    assert not dotted_name_exists("audit.drift.compare_all_versions")
    assert not dotted_name_exists("storage.repository.AuditStore.save_everything")
    assert not dotted_name_exists("audit.nonexistent.thing")
