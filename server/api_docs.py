"""The API's documentation pages, offline: Swagger UI at /api/docs and ReDoc at /api/redoc, their
scripts and styles served by the lab itself from the `fastapi-offline` package's copy of the
swagger-ui-dist and ReDoc bundles (FastAPI's defaults load them from a CDN, which a cluster without
internet cannot reach). No Google fonts, no online validator badge, and a Content-Security-Policy that keeps the pages
from fetching anything from elsewhere. Also the favicon."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from server.core.resources import lab_dir

ASSETS_URL = "/api/docs-assets"
# The pages may load nothing from elsewhere: ReDoc's bundle still shows a "by Redocly" logo from its CDN
# (decoration, hidden when it fails); the policy stops the browser from even trying.
SAME_SITE_ONLY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:"
)
FAVICON_URL = "/static/favicon.svg"


def assets_dir() -> Path:
    """Where the installed package keeps swagger-ui-bundle.js, swagger-ui.css and redoc.standalone.js."""
    return Path(str(resources.files("fastapi_offline") / "static"))


def install(app: FastAPI, openapi_url: str, title: str) -> None:
    """Call before any catch-all mount: the routes and the assets' mount must match first."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="api-docs-assets")
    favicon = lab_dir("static") / "favicon.svg"

    @app.get("/api/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} · API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=FAVICON_URL,
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the online validator
        )
        page.headers["Content-Security-Policy"] = SAME_SITE_ONLY
        return page

    @app.get("/api/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} · API",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=FAVICON_URL,
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = SAME_SITE_ONLY
        return page

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon_ico() -> FileResponse:
        """Browsers ask for it whatever the page links: the same SVG."""
        return FileResponse(favicon, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})
