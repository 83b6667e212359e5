"""The tests' shared fixtures: sample files and stores built once per session (helpers.py has the
functions the tests share)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cnnfilterdb.ingest.sample import write_sample_h5

from .helpers import cli_main, open_catalog


@pytest.fixture(scope="session")
def sample_v1(tmp_path_factory) -> Path:
    return write_sample_h5(tmp_path_factory.mktemp("h5") / "v1.h5", n_models=12, n_filters=60_000, seed=3)


@pytest.fixture(scope="session")
def v1_store(tmp_path_factory, sample_v1) -> Path:
    """A store of sample_v1, shared by the read-only tests of the service and the analysis."""
    db = tmp_path_factory.mktemp("v1store") / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    return db


@pytest.fixture(scope="session")
def v1_client(v1_store):
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    return TestClient(create_app(Settings(db=v1_store)), raise_server_exceptions=False)


@pytest.fixture(scope="session")
def sample_v01(tmp_path_factory) -> Path:
    return write_sample_h5(tmp_path_factory.mktemp("h5") / "v01.h5", n_models=9, n_filters=30_000, seed=4,
                           version="0.1.0", shape="9")


@pytest.fixture(scope="module")
def con(v1_store):
    """The catalog of v1_store, read-only, for one test module (a module may define its own)."""
    c = open_catalog(v1_store)
    yield c
    c.close()
