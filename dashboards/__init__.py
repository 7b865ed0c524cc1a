"""Read-only web dashboard and static HTML export over the audit store.

`create_app(store, artifacts_root, mlflow_ui_url=None, prefect_ui_url=None) -> FastAPI`,
`serve(store, artifacts_root, host="127.0.0.1", port=8050, ...)`,
`export_static(store, artifacts_root, out_dir) -> Path` (index.html).
"""
from __future__ import annotations

__all__ = ["create_app", "serve", "export_static"]


def __getattr__(name):
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    if name == "export_static":
        from .export import export_static

        return export_static
    raise AttributeError(name)
