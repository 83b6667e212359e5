"""The dashboard: GET / and its static assets (service/static/), shipped in the package.

The assets are a flat directory (package-data `service = ["static/*"]`): `GET /static/{name}`
serves a file only when `name` is one of the directory's own entries, so no request can name
anything else (`..`, an absolute path, an encoded slash: a 404 like any unknown route). Each
response carries a strong `ETag` (a hash of the bytes) with `Cache-Control: no-cache`, and a
matching `If-None-Match` gets a 304: a browser revalidates and never runs stale code.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..errors import ApiError

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}

# The page loads nothing from elsewhere: scripts, styles, images and requests from the service only
# (blob: images are the page's own: the check figure, the answer of a POST /v1/check it made).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


class Assets:
    """The files of one flat directory, read when asked and cached by (size, mtime)."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, tuple[tuple[int, int], Asset]] = {}

    def get(self, name: str) -> Asset:
        # Only a name the directory lists: never a path built from the request.
        try:
            listed = name in os.listdir(self.root)
        except OSError:
            listed = False
        path = self.root / name if listed else None
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        if st is None or not path.is_file():
            raise ApiError(404, "not_found", f"no static file {name[:100]!r}")
        key = (st.st_size, st.st_mtime_ns)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        body = path.read_bytes()
        asset = Asset(body, CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                      '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
        self._cache[name] = (key, asset)
        return asset


ASSETS = Assets(STATIC_DIR)


def get_assets() -> Assets:
    """The dashboard's assets (a dependency: tests may point it at another directory)."""
    return ASSETS


def _serve(request: Request, asset: Asset, extra: dict[str, str] | None = None) -> Response:
    # Every asset with the page's policy: /static/index.html is the page too
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", **(extra or {})}
    inm = request.headers.get("if-none-match")
    if inm is not None and (inm.strip() == "*" or asset.etag in [t.strip().removeprefix("W/") for t in inm.split(",")]):
        return Response(status_code=304, headers=headers)
    return Response(content=asset.body, media_type=asset.content_type, headers=headers)


@router.get("/")
def index(request: Request, assets: Assets = Depends(get_assets)):
    """The dashboard's single page; its views are routed in the browser (`#/explore?...`)."""
    return _serve(request, assets.get("index.html"))


@router.get("/static/{name}")
def static(name: str, request: Request, assets: Assets = Depends(get_assets)):
    return _serve(request, assets.get(name))
