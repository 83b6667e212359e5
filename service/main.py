"""The FastAPI application and `cnnfilterdb serve`."""
from __future__ import annotations

import re
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI

from cnnfilterdb import __version__

from . import errors
from .body_limit import BodyLimit, Bounds
from .catalog import LiveCatalog
from .figure_cache import FigureCache
from .head import HeadAsGet
from .routers import analysis, check, dashboard, docs, export, layers, meta, models, plots, sql, versions
from .schemas import ErrorResponse
from .settings import Settings
from .strict import reject_unknown_query_parameters
from .usersql.pool import SqlLimits, SqlPool


def create_app(settings: Settings | None = None) -> FastAPI:
    from cnnfilterdb.plots import warm_up as load_matplotlib
    from cnnfilterdb.runtime import freeze_startup_objects, tune_allocator
    from cnnfilterdb.stats.histogram import warm_up

    tune_allocator()
    warm_up()  # the scan kernels load now, not on the first analysis request
    load_matplotlib()  # and matplotlib, not in the first figure request
    settings = settings or Settings()
    # uploads are never written inside the store: ValueError at start otherwise; and those of a
    # killed service process are removed
    check.remove_stale_uploads(check.check_tmp_dir(settings))
    sql_pool = SqlPool(settings.db, settings.sql_workers, SqlLimits(
        timeout_s=settings.sql_timeout_s, memory_limit=settings.sql_memory_limit,
        address_space_bytes=int(settings.sql_worker_memory_cap)))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        sql_pool.start()  # in the background; without a lifespan (tests) the first query starts it
        freeze_startup_objects()  # what the service keeps for its lifetime: out of full collections
        yield
        sql_pool.close()
        app.state.catalog.close()

    app = FastAPI(
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query_parameters)],  # every endpoint: service/strict.py
        # Any route: a body over the size limit, or one that stalls (service/body_limit.py).
        responses={408: {"model": ErrorResponse, "description": "Request timeout: the request body did not "
                                                                 "arrive within body_timeout_s"},
                   413: {"model": ErrorResponse, "description": "Request too large: the body is over max_body_bytes "
                                                                "(POST /v1/check: max_check_bytes)"}},
        title="CNN Filter DB",
        docs_url=None, redoc_url=None,  # served offline by routers/docs.py
        version=__version__,
        description="Trained 3x3 convolution filters (CNN-Filter-DB) over HTTP. Read-only; errors are "
                    '`{"error": {"code", "message"}}`; NaN and infinities are encoded as null.\n\n'
                    "GET /v1/fields lists what a selection (`where`) can filter and a `group_by` can group "
                    "on. A parameter or field an endpoint does not take is a 400 naming the known ones. "
                    "Results name the store version they were computed on; pass it back as `as_of` to "
                    "get the same result again.",
        openapi_tags=[
            {"name": "meta", "description": "The store: its health, counts, fields and versions."},
            {"name": "models", "description": "The models and their metadata."},
            {"name": "layers", "description": "The 3x3 convolution layers, their quality metrics and filters."},
            {"name": "filters", "description": "Single filters, and any selection of them as a file."},
            {"name": "analysis", "description": "The paper's statistics on any selection of filters: PCA, "
                                                "histograms and densities of the coefficients, divergences "
                                                "between groups, degenerate layers, similar models."},
            {"name": "plots", "description": "The paper's figures, drawn on any selection."},
            {"name": "sql", "description": "Read-only SQL on the store's views."},
        ],
    )
    app.state.settings = settings
    app.state.catalog = LiveCatalog(settings)
    app.state.sql_pool = sql_pool
    app.state.figure_cache = FigureCache(settings.figure_cache_bytes)
    app.state.check_slots = check.CheckSlots(settings.max_checks, settings.max_checks_per_client)
    errors.install(app)
    app.add_middleware(HeadAsGet)
    # Every body within max_body_bytes and body_timeout_s, but the model file of POST /v1/check
    # (max_check_bytes, check_upload_timeout_s, and a minimum rate after a grace period).
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                       routes={("POST", check.PATH): Bounds(
                           int(settings.max_check_bytes), settings.check_upload_timeout_s,
                           settings.check_min_upload_bytes_per_s, settings.check_upload_grace_s,
                           "check_min_upload_bytes_per_s")})
    routers = (meta.router, versions.router, models.router, layers.router, export.router, analysis.router,
               check.router, plots.router, sql.router, docs.router, dashboard.router)
    for r in routers:
        app.include_router(r)
    _check_analyses(routers)
    return app


def _check_analyses(routers) -> None:
    """No route hides another: each route (an analysis of requests.ANALYSES or any other) answers
    its own requests (its path, an id filled in, for each of its methods); RuntimeError at start
    naming both otherwise (a new analysis at POST /v1/sql or GET /, or behind /v1/layers/{id})."""
    from starlette.routing import Match

    routes = [route for router in routers for route in router.routes if getattr(route, "methods", None)]
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "0", route.path)
        for method in route.methods:
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            first = next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)
            if first is not route:
                raise RuntimeError(f"{method} {route.path} ({route.name}) is answered by {first.path} ({first.name}): "
                                   "give one of them another path")


def app_factory() -> FastAPI:
    """For `uvicorn --factory cnnfilterdb.service.main:app_factory`: settings from CNNFILTERDB_* variables."""
    return create_app(Settings())


def run(db: Path, host: str, port: int, overrides: dict | None = None) -> int:
    import os

    import uvicorn

    # The app factory runs in each worker process and reads its settings from the environment,
    # so flags are handed over as CNNFILTERDB_* variables.
    os.environ["CNNFILTERDB_DB"] = str(db)
    for key, value in (overrides or {}).items():
        os.environ[f"CNNFILTERDB_{key.upper()}"] = str(value)
    settings = Settings()
    _raise_file_limit(settings.max_connections)
    # The caps on connections and requests, the head timeout: service/connections.py (uvicorn's own
    # limit_concurrency counted idle connections with the requests, so idle ones could starve them).
    uvicorn.run("cnnfilterdb.service.main:app_factory", factory=True, host=host, port=port,
                workers=settings.workers, log_level="info",
                http="cnnfilterdb.service.connections:GuardedH11Protocol",
                timeout_keep_alive=settings.keep_alive_timeout_s)  # type: ignore[arg-type]  # a float is fine
    return 0


# Files the service holds besides its connections: shards, the catalog, SQL workers' pipes, logs.
FILES_BESIDES_CONNECTIONS = 512


def _raise_file_limit(max_connections: int) -> None:
    """The soft limit on open files raised to the hard one: each connection is a descriptor, and
    at the limit the server stops accepting (asyncio pauses its listener) instead of answering. A
    hard limit too low for max_connections is said in one line."""
    import resource
    import sys

    needed = max_connections + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # over the kernel's nr_open: the limit stays
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(f"warning: the open-file limit is {soft} (ulimit -n), under max_connections + {FILES_BESIDES_CONNECTIONS}"
              f" = {needed}: connections beyond it wait in the listen queue", file=sys.stderr)
