"""/docs (Swagger UI) and /redoc (ReDoc) served from assets installed with the service, so that
they work offline: FastAPI's own pages load their scripts from a CDN. The assets are those the
maintained package ``fastapi-offline`` ships (Swagger UI, ReDoc: their licences travel with it);
this router serves them itself, under /docs/assets/, rather than mounting that package's app."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import Response

from ..errors import ApiError

router = APIRouter(include_in_schema=False)

ASSETS = resources.files("fastapi_offline") / "static"
ASSET_NAMES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "redoc.standalone.js": "text/javascript"}


@router.get("/docs")
def swagger_ui(request: Request) -> Response:
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title=f"{request.app.title} - Swagger UI",
                               swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs/assets/swagger-ui.css",
                               swagger_favicon_url="/static/favicon.svg")


@router.get("/redoc")
def redoc(request: Request) -> Response:
    # No Google fonts: the page asks nothing of any other host.
    return get_redoc_html(openapi_url=request.app.openapi_url, title=f"{request.app.title} - ReDoc",
                          redoc_js_url="/docs/assets/redoc.standalone.js", redoc_favicon_url="/static/favicon.svg",
                          with_google_fonts=False)


# The one address a page would fetch from elsewhere: ReDoc's sidebar logo (hidden if it fails to
# load). Pointed at the service's own icon, so that the page asks nothing of any other host.
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@lru_cache(maxsize=len(ASSET_NAMES))
def _asset_bytes(name: str) -> bytes:
    data = (ASSETS / name).read_bytes()
    return data.replace(REDOC_LOGO, b"/static/favicon.svg") if name == "redoc.standalone.js" else data


@router.get("/docs/assets/{name}")
def asset(name: str) -> Response:
    if name not in ASSET_NAMES:  # a fixed list: no path from the request reaches the file system
        raise ApiError(404, "not_found", f"no asset {name[:100]!r}")
    return Response(_asset_bytes(name), media_type=ASSET_NAMES[name], headers={"Cache-Control": "public, max-age=86400"})
