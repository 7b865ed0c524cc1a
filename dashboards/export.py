"""Static HTML export: the dashboard's views rendered with the same templates into
files with relative links and copied images, openable from disk (file://).

Layout of `out_dir`:
    index.html
    static/style.css
    models/<model>/index.html
    models/<model>/neurons/<neuron>.html
    models/<model>/compare/<baseline>_vs_<candidate>.html
    models/<model>/batches/index.html, models/<model>/batches/<batch>.html   (watched batches)
    artifacts/<path relative to the artifact root>   (only the files the pages show)
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from storage.artifacts import ArtifactStore, placeholder_png

from . import watch_views
from .views import STATIC_DIR, NotFound, StaticLinks, Views, safe_artifact


def export_static(store: Any, artifacts_root: str | Path, out_dir: str | Path, *, mlflow_ui_url: str | None = None,
                  prefect_ui_url: str | None = None, thresholds: Any = None, title: str = "neuron-audit") -> Path:
    """Write the whole dashboard as static files under `out_dir`; returns the path of `index.html`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(artifacts_root)
    views = Views(store, root, mlflow_ui_url, prefect_ui_url, thresholds=thresholds, title=title)
    watch_views.install(views)
    used: set[str] = set()

    def write(rel: str, depth: int, build) -> None:
        links = StaticLinks(root, depth, used)
        try:
            template, ctx = build(links)
        except NotFound as e:
            template, ctx = views.not_found(links, str(e))
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(views.render(template, ctx), encoding="utf-8")

    for kind, args in views.all_pages():
        if kind == "overview":
            write("index.html", 0, lambda links: views.overview(links))
        elif kind == "model":
            write(StaticLinks.model_path(*args), 2, lambda links, a=args: views.model(links, a[0]))
        elif kind == "neuron":
            write(StaticLinks.neuron_path(*args), 3, lambda links, a=args: views.neuron(links, *a))
        elif kind == "compare":
            write(StaticLinks.compare_path(*args), 3, lambda links, a=args: views.compare(links, *a))

    for rel, depth, build in watch_views.static_pages(views):
        write(rel, depth, build)

    static_out = out / "static"
    static_out.mkdir(parents=True, exist_ok=True)
    for f in STATIC_DIR.iterdir():
        if f.is_file():
            shutil.copy2(f, static_out / f.name)

    art_out = out / "artifacts"
    artifacts = ArtifactStore(root, create=False)
    for rel in sorted(used):
        src = safe_artifact(root, rel)
        dst = art_out / rel
        if src is None or artifacts.verify(rel):   # deleted or corrupt: a placeholder, not a broken image
            if Path(rel).suffix.lower() == ".png":
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(placeholder_png())
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists() or dst.stat().st_size != src.stat().st_size or dst.stat().st_mtime < src.stat().st_mtime:
            shutil.copy2(src, dst)
    return out / "index.html"
