"""The tests' shared fixtures: sample files and stores built once per session (helpers.py has the
functions the tests share); and what some tests need beyond the `test` extra (``need``)."""
from __future__ import annotations

import functools
import importlib
import os
import shutil
from pathlib import Path

import pytest

from cnnfilterdb.ingest.sample import write_sample_h5

from .helpers import cli_main, open_catalog

# ---- what some tests need beyond `pip install -e '.[test]'` ------------------------------------
#
# The README's test command installs the `test` extra alone: no torch (plain `pip install torch`
# takes a CUDA build of several GB), no PySpark, and neither chromium nor Java (Debian packages).
# The tests that need one of them skip without it, the reason saying what to install; where CI is
# set (.ci/run sets CI=1 and installs all four), a missing one is a failure, so CI never skips them.
# A test says what it needs with the marker ``@pytest.mark.requires("spark")``, a fixture by
# calling ``need("torch")`` (the fixture ``need``): both come here.

TORCH_CPU = "pip install torch --index-url https://download.pytorch.org/whl/cpu"  # .ci/run: 2.13.0
INSTALL = {
    "torch": f"the CPU build of torch: {TORCH_CPU} (a plain `pip install torch` takes a CUDA build of several GB)",
    "playwright": "playwright: pip install -e '.[test]'",
    "chromium": "Debian's chromium: apt-get install chromium",
    "pyspark": "PySpark: pip install -e '.[spark]'",
    "java": "a Java runtime (Spark 4: 17 or 21): apt-get install openjdk-17-jre-headless",
}
# What each need is made of: Python modules (importable) and programs (on PATH; Java also at $JAVA_HOME).
NEEDS = {
    "torch": ["torch"],
    "chromium": ["playwright", "chromium"],  # the dashboard's browser tests: playwright drives Debian's chromium
    "spark": ["pyspark", "java"],
}
MODULES = {"torch", "playwright", "pyspark"}


def in_ci(environ=os.environ) -> bool:
    """CI is set (to anything but empty, 0, false or no): every test must run."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _find(part: str):
    """The module or the program's path, or None."""
    if part in MODULES:
        try:
            return importlib.import_module(part)
        except ImportError:
            return None
    if part == "java" and (home := os.environ.get("JAVA_HOME")) and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which(part)


@functools.cache
def _found(part: str):
    return _find(part)


def missing(what: str) -> str | None:
    """None if `what` ('torch', 'chromium', 'spark') is here, else a sentence saying what to install."""
    absent = [part for part in NEEDS[what] if _found(part) is None]
    if not absent:
        return None
    return f"{what} tests need " + "; and ".join(INSTALL[part] for part in absent)


def need(what: str, environ=os.environ):
    """What `what` is made of, found (the torch module; chromium's path; pyspark): else the calling
    test skips saying what to install, or fails where CI is set."""
    if (why := missing(what)) is not None:
        if in_ci(environ):
            pytest.fail(f"CI is set, and {why}", pytrace=False)
        pytest.skip(why)
    return _found(NEEDS[what][-1])


@pytest.fixture(scope="session", name="need")
def need_fixture():
    """``need`` for fixtures: ``def browser(need): chromium = need("chromium")``."""
    return need


def pytest_configure(config):
    config.addinivalue_line("markers", "requires(*what): the test needs 'torch', 'chromium' or 'spark' "
                                       "(skipped without it, failed where CI is set; tests/conftest.py)")


def pytest_collection_modifyitems(config, items):
    """A test marked requires(...) whose need is missing is skipped (the report names the test's
    line), or, where CI is set, fails in pytest_runtest_setup."""
    if in_ci():
        return
    for item in items:
        for what in {what for mark in item.iter_markers("requires") for what in mark.args}:
            if (why := missing(what)) is not None:
                item.add_marker(pytest.mark.skip(reason=why))


def pytest_runtest_setup(item):
    """Before any fixture of the test is built (this conftest's hook runs before pytest's own)."""
    for mark in item.iter_markers("requires"):
        for what in mark.args:
            need(what)


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
