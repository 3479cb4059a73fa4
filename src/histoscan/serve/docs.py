"""API documentation that works offline: Swagger UI (/docs) and ReDoc (/redoc) from installed assets."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_PACKAGE = "fastapi_offline"  # ships swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
ASSETS_URL = "/static/docs"  # mounted before /static (the page's files), so it wins the prefix
DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL = "/docs", "/redoc", "/docs/oauth2-redirect"
REDOC_JS = "redoc.standalone.js"
# ReDoc's side menu shows "API docs by Redocly" with a logo image from this URL; it is served pointing at an
# empty data: URL instead (the image fails without a request and ReDoc hides it), so nothing leaves the page
REDOCLY_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
# And a policy that the pages load nothing from elsewhere: scripts, styles, images, fonts and fetches stay on
# this server; the inline init script and ReDoc's inline styles need 'unsafe-inline', its search worker blob:.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'self'"
)


def assets_dir() -> Path:
    """The folder holding the Swagger UI and ReDoc files of the installed `fastapi-offline` package.

    Raises:
        RuntimeError: the package is not installed (it is a dependency of histoscan).
    """
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"{ASSETS_PACKAGE} is not installed: pip install fastapi-offline (API docs assets)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    missing = [
        f
        for f in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
        if not (folder / f).is_file()
    ]
    if missing:
        raise RuntimeError(f"{folder}: missing API docs assets {', '.join(missing)}")
    return folder


def add_docs(app: FastAPI) -> None:
    """Serve the docs assets under /static/docs and the /docs, /docs/oauth2-redirect and /redoc pages.

    The app must be created with `docs_url=None, redoc_url=None`; call this before mounting /static.
    """
    folder = assets_dir()

    @app.get(f"{ASSETS_URL}/{REDOC_JS}", include_in_schema=False)  # before the mount, so it wins
    async def redoc_js() -> Response:
        return Response(
            _redoc_js(folder), media_type="text/javascript", headers={"Cache-Control": "no-cache"}
        )

    app.mount(ASSETS_URL, StaticFiles(directory=str(folder)), name="docs-assets")
    title = f"{app.title} {app.version} — API"

    def _page(response: HTMLResponse) -> HTMLResponse:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(
            get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=title,
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
                # no badge image from validator.swagger.io; keep the bearer key typed into "Authorize"
                swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
            )
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _page(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(
            get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=title,
                redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )


@functools.cache
def _redoc_js(folder: Path) -> bytes:
    """ReDoc's standalone bundle with the Redocly logo URL replaced by an empty data: URL."""
    return (folder / REDOC_JS).read_bytes().replace(REDOCLY_LOGO, b"data:,")
