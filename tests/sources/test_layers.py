"""The layer picture stays one-way: audit <- sources <- (storage, flows) <- dashboards (flows also render the
dashboard's static pages). Read from the source (ast, every import, function-level ones included)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("audit", "sources", "storage", "flows", "dashboards")
# what each package may import of the others (and of the heavy services)
ALLOWED = {
    "audit": set(),
    "sources": {"audit", "mlflow"},
    "storage": {"audit", "sources", "mlflow"},
    "flows": {"audit", "sources", "storage", "dashboards", "mlflow", "prefect"},
    "dashboards": {"audit", "storage"},
}
# the one import audit/ makes of sources/: the names audit.models had before they moved (read_source,
# file_state_dict, load_model from a source string), kept for one release inside functions only
COMPAT = {("audit/models.py", "sources")}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level package imported, whether at module level) for each import in the file."""
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.module.split(".")[0], id(node) in top_level))
    return out


def _files(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


def test_each_package_imports_only_the_layers_below_it():
    watched = set(PACKAGES) | {"mlflow", "prefect"}
    wrong = []
    for pkg in PACKAGES:
        for f in _files(pkg):
            rel = str(f.relative_to(ROOT))
            for imported, module_level in _imports(f):
                if imported == pkg or imported not in watched or imported in ALLOWED[pkg]:
                    continue
                if (rel, imported) in COMPAT and not module_level:
                    continue
                wrong.append(f"{rel} imports {imported}")
    assert not wrong, wrong


def test_the_compat_import_is_the_only_one_and_lazy():
    """audit/models.py reaches sources/ only inside functions (nothing is imported when audit is)."""
    found = [(str(f.relative_to(ROOT)), top) for f in _files("audit") for name, top in _imports(f) if name == "sources"]
    assert found and all(rel == "audit/models.py" and not top for rel, top in found), found


def test_no_package_imports_one_that_imports_it_back():
    edges = {pkg: {name for f in _files(pkg) for name, _ in _imports(f) if name in PACKAGES and name != pkg}
             for pkg in PACKAGES}
    edges["audit"] -= {"sources"}    # the one-release compat import above
    both = sorted({tuple(sorted((a, b))) for a in PACKAGES for b in edges[a] if a in edges[b]})
    assert not both, both


def test_importing_sources_loads_neither_torch_nor_mlflow():
    """The preflight and the recognition of unchanged versions import sources/ and must stay cheap."""
    import subprocess
    import sys

    code = ("import sys, sources, sources.mlflow_index, storage.mlflow_index\n"
            "print(','.join(m for m in ('torch', 'timm', 'mlflow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "", (r.stdout, r.stderr[-2000:])


def test_storage_is_handed_its_store_and_never_loads_the_config():
    """storage/ keeps results only: no module of it reads neuron-audit.yaml or opens an AuditStore of its own
    (flows/runtime.py opens both once per process and passes them in)."""
    wrong = []
    for f in _files("storage"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "audit.config":
                wrong += [f"{f.name} imports audit.config.{a.name}" for a in node.names if a.name == "load_config"]
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "AuditStore"):
                wrong.append(f"{f.name} opens an AuditStore")
    assert not wrong, wrong
