"""API documentation pages (Swagger UI at /docs, ReDoc at /redoc) served from assets installed with the package.

FastAPI's defaults load Swagger UI and ReDoc from a CDN, which leaves a blank page on a machine without
internet. The `fastapi-offline` distribution ships both bundles; we serve its static folder ourselves, under
content-hashed URLs (api/static_assets.py) that a CDN or the proxy may cache for a year. The pages themselves
change with each release, so they are revalidated (`no-cache`).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

from api.static_assets import AssetDirectory, install_static

ASSETS = AssetDirectory(files("fastapi_offline") / "static")
PAGE_HEADERS = {"Cache-Control": "no-cache"}


def _page(response: HTMLResponse) -> HTMLResponse:
    response.headers.update(PAGE_HEADERS)
    return response


def install_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the docs pages; the app must be created with docs_url=None and redoc_url=None."""
    install_static(app, ASSETS)
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or f"{docs_url}/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} — Swagger UI",
                oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
                swagger_js_url=root + ASSETS.url("swagger-ui-bundle.js"),
                swagger_css_url=root + ASSETS.url("swagger-ui.css"),
                swagger_favicon_url=root + ASSETS.url("favicon.png"),
            )
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} — ReDoc",
                redoc_js_url=root + ASSETS.url("redoc.standalone.js"),
                redoc_favicon_url=root + ASSETS.url("favicon.png"),
                with_google_fonts=False,
            )
        )
