"""The distribution: one import namespace, every source file shipped, the layers import downwards.

The repository keeps the design's top-level folders (``ingest/``, ``service/``, ``sql/``) beside
``cnnfilterdb/``; pyproject's ``package-dir`` installs them as ``cnnfilterdb.ingest``,
``cnnfilterdb.service`` and ``cnnfilterdb.sql``, so the wheel's only top-level package is
``cnnfilterdb`` and another distribution's ``sql`` package cannot shadow ours.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .helpers import REPO

# The repository's folders and the import names they are installed under.
FOLDERS = {"cnnfilterdb": "cnnfilterdb", "ingest": "cnnfilterdb.ingest", "service": "cnnfilterdb.service",
           "sql": "cnnfilterdb.sql"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(REPO)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (path,) = out.glob("cnnfilterdb-*.whl")
    return zipfile.ZipFile(path)


def _shipped_files() -> dict[str, Path]:
    """Every file the wheel must hold (its path in the wheel -> the repository's file)."""
    files = {}
    for folder, package in FOLDERS.items():
        prefix = package.replace(".", "/")
        for f in (REPO / folder).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in {".py", ".sql", ".html", ".js", ".css", ".svg", ".properties"}:
                files[f"{prefix}/{f.relative_to(REPO / folder).as_posix()}"] = f
    return files


def test_the_wheel_installs_one_top_level_package(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"cnnfilterdb"}


def test_every_source_file_is_in_the_wheel(wheel):
    """A package missing from pyproject's list works in an editable install but not in a real one
    (the Docker image): every module, SQL file and static asset must be in the wheel, unchanged."""
    names = set(wheel.namelist())
    expected = _shipped_files()
    missing = sorted(set(expected) - names)
    assert not missing
    for name, f in expected.items():
        assert wheel.read(name) == f.read_bytes(), name


def _imports(path: Path, package: str) -> set[str]:
    """The absolute names of the modules ``path`` (a module of ``package``) imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


READS_MODEL_FILES = {("cnnfilterdb/api.py", "cnnfilterdb.ingest.model_files")}  # FilterDB.check


@pytest.mark.parametrize("folder", ["cnnfilterdb", "ingest", "sql"])
def test_the_layers_import_downwards(folder):
    """The engine (cnnfilterdb) imports neither ingest nor service, ingest does not import the
    service: the CLI (cnnfilterdb/cli.py) is the place that wires them together, with one named
    exception (docs/architecture.md#the-folders): the Python API's check reads a model file with
    the ingest's reader, so that a check and an ingest read a file one way."""
    above = {"cnnfilterdb": ("cnnfilterdb.ingest", "cnnfilterdb.service"), "ingest": ("cnnfilterdb.service",),
             "sql": ("cnnfilterdb.ingest", "cnnfilterdb.service")}[folder]
    wrong = []
    for f in sorted((REPO / folder).rglob("*.py")):
        if f == REPO / "cnnfilterdb" / "cli.py":
            continue
        rel = f.relative_to(REPO / folder).with_suffix("")
        package = ".".join([FOLDERS[folder], *rel.parts[:-1]])  # the package the module is in
        wrong += [f"{f.relative_to(REPO)} imports {m}" for m in _imports(f, package) if m.startswith(above)
                  and (str(f.relative_to(REPO)), m) not in READS_MODEL_FILES]
    assert not wrong


def test_the_wheel_works_installed(wheel, tmp_path):
    """The wheel's files alone (as in the Docker image, no editable install): the SQL files and the
    static assets are found as package data, the SQL worker starts as ``-m cnnfilterdb.service...``,
    also from a working directory that holds a ``cnnfilterdb`` folder of its own (the image's source
    tree, which has no ``service``: a decoy here)."""
    site = tmp_path / "site"
    wheel.extractall(site)
    (tmp_path / "cnnfilterdb").mkdir()
    (tmp_path / "cnnfilterdb" / "__init__.py").write_text('raise ImportError("the decoy in the working directory")\n')
    h5 = tmp_path / "s.h5"
    script = f"""
import json, subprocess, sys
import cnnfilterdb, cnnfilterdb.ingest, cnnfilterdb.service, cnnfilterdb.sql
assert all(m.__file__.startswith({str(site)!r}) for m in (cnnfilterdb, cnnfilterdb.ingest, cnnfilterdb.service, cnnfilterdb.sql))
from cnnfilterdb.ingest.sample import write_sample_h5
write_sample_h5({str(h5)!r}, n_models=3, n_filters=3000, seed=1)
from cnnfilterdb.cli import main
assert main(["ingest", {str(h5)!r}, "--db", "db"]) == 0
out = subprocess.run([sys.executable, "-P", "-m", "cnnfilterdb.cli", "sql", "SELECT count(*) AS n FROM filters", "--db", "db",
                      "--format", "json"], capture_output=True, text=True, check=True).stdout
assert json.loads(out)["rows"] == [[3000]], out
from fastapi.testclient import TestClient
from cnnfilterdb.service.main import create_app
from cnnfilterdb.service.settings import Settings
with TestClient(create_app(Settings(db="db"))) as c:
    assert c.get("/static/app.js").status_code == 200
    assert c.get("/docs").status_code == 200
    assert c.get("/v1/stats").json()["filters"] == 3000
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    p = subprocess.run([sys.executable, "-P", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]


def test_ruff_is_clean():
    """The linter's rules (pyproject's [tool.ruff]) hold over the whole repository."""
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(REPO)],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-2000:]
