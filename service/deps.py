"""Dependencies injected into the routers: the settings and the live catalog."""
from __future__ import annotations

from fastapi import Request

from .catalog import LiveCatalog
from .settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_catalog(request: Request) -> LiveCatalog:
    return request.app.state.catalog


def rows_as_dicts(cur) -> list[dict]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]
