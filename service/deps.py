"""Dependencies injected into the routers: the settings, the live catalog, the SQL worker pool,
the cache of rendered figures."""
from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from .catalog import LiveCatalog
from .figure_cache import FigureCache
from .settings import Settings
from .usersql.pool import SqlPool


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_catalog(request: Request) -> LiveCatalog:
    return request.app.state.catalog


def get_sql_pool(request: Request) -> SqlPool:
    return request.app.state.sql_pool


def get_figure_cache(request: Request) -> FigureCache:
    return request.app.state.figure_cache


def respond(model: BaseModel) -> Response:
    """Serialize a response model once, in pydantic's core (FastAPI would validate it again and
    encode it in Python: 10x slower for a page of filters). The route's response_model still
    documents the shape in OpenAPI."""
    return Response(content=model.model_dump_json(), media_type="application/json")
