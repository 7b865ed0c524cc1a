"""Read-only web dashboard (FastAPI + Jinja2, plots as inline SVG, no JavaScript).

Stable URLs:
    /                                              overview (?alerts_page=N)
    /models/{model}                                neurons with latest verdict (?sort=severity|neuron|layer|spearman|
                                                   wasserstein, ?verdict=FAIL|WARN|PASS|none, ?kind=, ?layer=, ?q=,
                                                   ?page=, ?comparisons_page=, ?versions_page=)
    /models/{model}/neurons/{neuron_id}            one neuron across versions
    /models/{model}/compare/{baseline}/{candidate} all neurons, A vs B, any two versions (same filters, ?page=)
    /models/{model}/compare?baseline=A&candidate=B the version picker's target: redirects to the page above
    /models/{model}/batches[/{batch_id}]           production batches (dashboards/watch_views.py)
    /artifacts/{path}                              files inside the artifact root only
    /static/{file}                                 CSS
    /healthz                                       liveness (JSON)
Every method other than GET/HEAD answers 405.
"""
from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from storage.artifacts import ArtifactStore, placeholder_png
from storage.errors import StoreUnavailableError

from . import watch_views
from .errors import BadRequest, NotFound
from .listing import NeuronFilter
from .views import STATIC_DIR, Links, Views, safe_artifact

_READ_METHODS = ("GET", "HEAD")
_STATIC_FILES = {p.name for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else set()

_IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg")

mimetypes.add_type("image/png", ".png")
mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("image/svg+xml", ".svg")


class ArtifactCheck:
    """Integrity of the artifacts the dashboard serves (the hash in a content-addressed name), remembered
    per (path, size, mtime) so that each file is hashed once."""

    def __init__(self, root: str | Path):
        self.store = ArtifactStore(root, create=False)
        self._seen: dict[tuple[str, int, int], str | None] = {}

    def inside(self, rel: str) -> bool:
        try:
            self.store.path(rel)
            return True
        except ValueError:
            return False

    def problem(self, rel: str) -> str | None:
        try:
            st = self.store.path(rel).stat()
        except (ValueError, OSError):
            return "missing"
        key = (rel, st.st_size, st.st_mtime_ns)
        if key not in self._seen:
            self._seen[key] = self.store.verify(rel)
        return self._seen[key]


class _ReadOnly(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        if request.method not in _READ_METHODS:
            return Response("method not allowed: this dashboard is read-only\n", status_code=405,
                            headers={"Allow": "GET, HEAD"}, media_type="text/plain")
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def create_app(store: Any, artifacts_root: str | Path, mlflow_ui_url: str | None = None,
               prefect_ui_url: str | None = None, *, thresholds: Any = None, title: str = "neuron-audit") -> FastAPI:
    """The dashboard app over an `AuditStore`-like object (see `views.Views` for the queries used).

    `thresholds`: an `audit.config.ThresholdsConfig` for the bands (defaults when None).
    `mlflow_ui_url` / `prefect_ui_url`: base URLs of the MLflow and Prefect UIs for run links.
    """
    views = Views(store, artifacts_root, mlflow_ui_url, prefect_ui_url, thresholds=thresholds, title=title)

    def links() -> Links:   # one per page: it remembers the artifact files it looked up for that page only
        return Links(Path(artifacts_root))

    app = FastAPI(title=f"{title} dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_ReadOnly)
    app.state.views = views

    def page(template_ctx: tuple[str, dict], status: int = 200) -> HTMLResponse:
        template, ctx = template_ctx
        return HTMLResponse(views.render(template, ctx), status_code=status)

    def not_found(message: str, status: int = 404) -> HTMLResponse:
        return page(views.not_found(links(), message), status=status)

    def shown(build) -> HTMLResponse:
        """The page `build(links)` makes, or the not-found page (404; 400 for parameters that name no page)."""
        try:
            return page(build(links()))
        except NotFound as e:
            return not_found(str(e))
        except BadRequest as e:
            return not_found(str(e), status=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return not_found("There is no page at this address.")
        return Response(str(exc.detail), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.api_route("/", methods=list(_READ_METHODS), response_class=HTMLResponse)
    def overview(alerts_page: str | None = None):
        return shown(lambda ln: views.overview(ln, alerts_page))

    @app.api_route("/models/{model}", methods=list(_READ_METHODS), response_class=HTMLResponse)
    def model_page(model: str, sort: str | None = None, verdict: str | None = None, kind: str | None = None,
                   layer: str | None = None, q: str | None = None, page: str | None = None,
                   comparisons_page: str | None = None, versions_page: str | None = None):
        filt = NeuronFilter.from_params(verdict, kind, layer, q)
        return shown(lambda ln: views.model(ln, model, sort, filt, page, comparisons_page, versions_page))

    @app.api_route("/models/{model}/neurons/{neuron_id}", methods=list(_READ_METHODS), response_class=HTMLResponse)
    def neuron_page(model: str, neuron_id: str):
        return shown(lambda ln: views.neuron(ln, model, neuron_id))

    @app.api_route("/models/{model}/compare", methods=list(_READ_METHODS), response_class=HTMLResponse)
    def compare_picker(model: str, baseline: str | None = None, candidate: str | None = None):
        if not baseline or not candidate:
            return not_found("pick a baseline (A) and a candidate (B) version to compare", status=400)
        return RedirectResponse(links().compare(model, baseline, candidate), status_code=303)

    @app.api_route("/models/{model}/compare/{baseline}/{candidate}", methods=list(_READ_METHODS),
                   response_class=HTMLResponse)
    def compare_page(model: str, baseline: str, candidate: str, verdict: str | None = None, kind: str | None = None,
                     layer: str | None = None, q: str | None = None, page: str | None = None):
        filt = NeuronFilter.from_params(verdict, kind, layer, q)
        return shown(lambda ln: views.compare(ln, model, baseline, candidate, filt, page))

    checked = ArtifactCheck(artifacts_root)

    watch_views.install(views)

    @app.api_route("/models/{model}/batches", methods=list(_READ_METHODS), response_class=HTMLResponse)
    def batch_timeline_page(model: str):
        return shown(lambda ln: watch_views.timeline_page(views, ln, model))

    @app.api_route("/models/{model}/batches/{batch_id}", methods=list(_READ_METHODS), response_class=HTMLResponse)
    def batch_page(model: str, batch_id: str):
        return shown(lambda ln: watch_views.batch_page(views, ln, model, batch_id))

    @app.api_route("/artifacts/{path:path}", methods=list(_READ_METHODS))
    def artifact(path: str):
        # Only existing files strictly inside the artifact root: `..`, encoded `%2e%2e`,
        # absolute paths, backslashes and symlinks that leave the root all answer 404.
        if "\\" in path:
            return not_found("No such artifact.")
        p = safe_artifact(Path(artifacts_root), path)
        if p is None or checked.problem(path):
            # a deleted or corrupt image inside the root shows a placeholder, never a broken image
            if checked.inside(path) and Path(path).suffix.lower() in _IMAGE_SUFFIXES:
                return Response(placeholder_png(), media_type="image/png",
                                headers={"Cache-Control": "no-store", "X-Artifact-Placeholder": "missing or corrupt"})
            return not_found("No such artifact.")
        media = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        return FileResponse(p, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    @app.api_route("/static/{name}", methods=list(_READ_METHODS))
    def static(name: str):
        if name not in _STATIC_FILES:
            return not_found("No such file.")
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return FileResponse(STATIC_DIR / name, media_type=media)

    @app.api_route("/healthz", methods=list(_READ_METHODS))
    def healthz():
        try:
            n = len(store.list_models())
        except (SQLAlchemyError, StoreUnavailableError, OSError) as e:  # the store is unreachable: not healthy
            return JSONResponse({"status": "error", "error": type(e).__name__}, status_code=503)
        return {"status": "ok", "models": n}

    return app


def serve(store: Any, artifacts_root: str | Path, host: str = "127.0.0.1", port: int = 8050,
          mlflow_ui_url: str | None = None, prefect_ui_url: str | None = None, *, thresholds: Any = None,
          log_level: str = "warning") -> None:
    """Run the dashboard with uvicorn until interrupted (blocking)."""
    import uvicorn

    app = create_app(store, artifacts_root, mlflow_ui_url, prefect_ui_url, thresholds=thresholds)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
