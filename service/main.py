"""The FastAPI application and `cnnfilterdb serve`."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from cnnfilterdb import __version__

from . import errors
from .catalog import LiveCatalog
from .routers import analysis, layers, meta, models, sql
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    from cnnfilterdb.runtime import tune_allocator
    from cnnfilterdb.stats.histogram import warm_up

    tune_allocator()
    warm_up()  # the scan kernels load now, not on the first analysis request
    settings = settings or Settings()
    app = FastAPI(
        title="CNN Filter DB",
        version=__version__,
        description="Trained 3x3 convolution filters (CNN-Filter-DB) over HTTP. Read-only; errors are "
                    '`{"error": {"code", "message"}}`; NaN and infinities are encoded as null.',
    )
    app.state.settings = settings
    app.state.catalog = LiveCatalog(settings)
    errors.install(app)
    for r in (meta.router, models.router, layers.router, analysis.router, sql.router):
        app.include_router(r)
    return app


def app_factory() -> FastAPI:
    """For `uvicorn --factory service.main:app_factory`: settings from CNNFILTERDB_* variables."""
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
    uvicorn.run("service.main:app_factory", factory=True, host=host, port=port,
                workers=settings.workers, log_level="info")
    return 0
