"""One line, never a traceback (issue 20, finding 6): every writing command on a full disk, and
``cnnfilterdb sql`` after its worker crashed.

The full disk is a real one: a small tmpfs mounted in a mount namespace of the test's own
(``unshare --user --map-root-user --mount``: no privilege needed where user namespaces are
allowed, as on this project's CI and in Docker with the default profile), the store copied onto
it, the rest of it filled to ``free`` bytes. The command runs as a user runs it (a subprocess):
it exits 1 with exactly one line on stderr, naming the problem and no path but the store's and
the output's; the store stays byte-identical and passes ``verify``; no partial output is left.
Each command runs with the disk full (it fails at its first write) and, for the store's
writers, with room for the staging catalog but not for what follows (it fails in DuckDB, in
pyarrow or in numpy, midway)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO, cli_main

# The child: mounts the tmpfs, copies the store, fills the disk, runs the command, reports (JSON).
CHILD = r'''
import hashlib, json, os, shutil, subprocess, sys, tempfile
from pathlib import Path

spec = json.loads(sys.argv[1])
mnt = Path(tempfile.mkdtemp())
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={spec['size']}", "tmpfs", str(mnt)], check=True)
db, out = mnt / "db", mnt / "out"
shutil.copytree(spec["store"], db)
out.mkdir()

def files(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}

before = files(db)
filler = mnt / "filler"
with open(filler, "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"\0" * (1 << 16))
    except OSError:
        pass
os.truncate(filler, max(0, filler.stat().st_size - spec["free"]))
argv = [a.replace("{DB}", str(db)).replace("{OUT}", str(out)) for a in spec["argv"]]
p = subprocess.run([sys.executable, "-m", "cnnfilterdb.cli", *argv], capture_output=True, text=True)
filler.unlink()
from cnnfilterdb.store import FilterStore
print(json.dumps({"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout, "mount": str(mnt),
                  "same": files(db) == before,
                  "problems": FilterStore(db).verify().problems if (db / "catalog.duckdb").exists() else [],
                  "outputs": sorted(str(q.relative_to(out)) for q in out.rglob("*"))}))
'''


def _on_a_full_disk(store: Path, argv: list[str], free: int, size: str = "48m") -> dict:
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", CHILD,
                        json.dumps({"store": str(store), "argv": argv, "free": free, "size": size})],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_v1) -> Path:
    """Two versions (compact has one to forget), a model to label and one to remove."""
    db = tmp_path_factory.mktemp("faults") / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    assert cli_main(["label", "0", "--task", "GAN", "--db", str(db)]) == 0
    return db


@pytest.fixture(scope="module")
def stale_store(tmp_path_factory, sample_v1) -> Path:
    """A model the basis was not fitted on: `refit` has work to do."""
    import numpy as np

    db = tmp_path_factory.mktemp("stale") / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    model = db.parent / "late.npz"
    np.savez(model, conv=np.random.default_rng(0).normal(size=(8, 4, 3, 3)).astype(np.float32))
    assert cli_main(["ingest", "--allow-missing", str(model), "--task", "GAN", "--refit", "never", "--db", str(db)]) == 0
    return db


@pytest.fixture(scope="module")
def catalog_bytes(store) -> int:
    return (store / "catalog.duckdb").stat().st_size


WRITERS = {
    "ingest": lambda src: ["ingest", "--allow-missing", src, "--db", "{DB}"],
    "label": lambda src: ["label", "1", "--task", "Detection", "--db", "{DB}"],
    "remove": lambda src: ["remove", "2", "--db", "{DB}"],
    "compact": lambda src: ["compact", "--keep-versions", "1", "--db", "{DB}"],
    "refit": lambda src: ["refit", "--db", "{DB}"],
}
CHECKED = REPO / "tests" / "data" / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"  # a model `check -o` reports on
OUTPUTS = {
    "export parquet": ["export", "-o", "{OUT}/f.parquet", "--db", "{DB}"],
    "export csv": ["export", "-o", "{OUT}/f.csv", "--db", "{DB}"],
    "export npy": ["export", "-o", "{OUT}/f.npy", "--db", "{DB}"],
    "plot": ["plot", "covariance", "-o", "{OUT}/c.png", "--db", "{DB}"],
    "report": ["report", "-o", "{OUT}/report", "--db", "{DB}"],
    "check html": ["check", str(CHECKED), "-o", "{OUT}/r.html", "--db", "{DB}"],
    "check png": ["check", str(CHECKED), "-o", "{OUT}/r.png", "--db", "{DB}"],
}


# What the JVM and Spark print on stderr as Spark starts, before any of the project's code can
# say anything (on every spark command, failed or not); and the demo's progress lines.
SPARK_START = ("WARNING: Using incubator modules", "Setting default log level", "To adjust logging level",
               "Setting Spark log level", "WARNING: ")
DEMO_PROGRESS = ("building the demo's sample store in ", "writing a synthetic SAMPLE dataset ")


def _one_line(r: dict, before: tuple[str, ...] = ()) -> str:
    lines = r["stderr"].splitlines(keepends=True)
    assert lines and all(line.startswith(before) for line in lines[:-1]) if before else len(lines) == 1, r["stderr"]
    err = lines[-1]
    assert r["rc"] == 1 and err.startswith("cnnfilterdb: error: ") and err.endswith("\n"), err
    assert "Traceback" not in err and "staging" not in err, err
    # no absolute path but the store's and the outputs' (the names the user gave)
    for word in err.split():
        if word.strip("(\"'),:").startswith("/"):
            assert word.strip("(\"'),:").startswith((r["mount"] + "/db", r["mount"] + "/out")), err
    return err


@pytest.mark.parametrize("command", sorted(WRITERS))
@pytest.mark.parametrize("room", ["none", "for the staging catalog"])
def test_a_store_writer_on_a_full_disk_is_one_line_and_changes_nothing(store, sample_v01, catalog_bytes, command,
                                                                        room, request):
    if command == "refit":  # a store whose basis is fitted on its filters has nothing to refit
        store = request.getfixturevalue("stale_store")
        catalog_bytes = (store / "catalog.duckdb").stat().st_size
    free = 0 if room == "none" else catalog_bytes + 400_000
    r = _on_a_full_disk(store, WRITERS[command](str(sample_v01)), free)
    err = _one_line(r)
    assert "No space left on device" in err or "is the disk full?" in err, err
    assert r["same"] and r["problems"] == [], r


@pytest.mark.parametrize("command", sorted(OUTPUTS))
def test_an_output_on_a_full_disk_is_one_line_and_leaves_no_partial_file(store, command):
    r = _on_a_full_disk(store, OUTPUTS[command], 0)
    err = _one_line(r)
    assert "No space left on device" in err, err
    assert r["same"] and r["problems"] == [], r
    assert not [f for f in r["outputs"] if f.endswith(".partial") or f.startswith(".cnnfilterdb-")], r["outputs"]
    if command != "report":  # a report is a directory of figures: those written before the disk filled stay
        assert r["outputs"] == [], r["outputs"]


@pytest.mark.requires("spark")
def test_spark_refresh_on_a_full_disk_is_one_line_and_changes_nothing(store, catalog_bytes):
    r = _on_a_full_disk(store, ["spark", "refresh", "--master", "local[1]", "--db", "{DB}"], catalog_bytes + 400_000)
    err = _one_line(r, SPARK_START)
    assert "No space left on device" in err or "is the disk full?" in err, err
    assert r["same"] and r["problems"] == [], r


def test_an_io_error_with_no_file_names_the_store(store, tmp_path, capsys, monkeypatch):
    """In process: an OSError of a writer (here EIO, from the shard writer) is one line naming the
    store as given, not the absolute path of a staging file."""
    import errno

    from cnnfilterdb.store import StoreTransaction

    db = tmp_path / "db"
    shutil.copytree(store, db)

    def broken(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(db.resolve() / "catalog.duckdb.x.staging"))

    monkeypatch.setattr(StoreTransaction, "relabel", broken)
    assert cli_main(["label", "1", "--task", "GAN", "--db", str(db)]) == 1
    assert capsys.readouterr().err == f"cnnfilterdb: error: Input/output error ({db})\n"


# -- cnnfilterdb sql after its worker crashed ----------------------------------------------------

CRASH = "SELECT json_structure(repeat('[', 200000) || repeat(']', 200000))"  # DuckDB's stack overflows (signal 11)


def test_sql_after_a_worker_crash_is_one_line(store):
    """The replacement of the crashed worker was left starting when the command ended: it wrote
    its hello into a closed pipe (a BrokenPipeError traceback). Repeated: it was a race."""
    for _ in range(4):
        p = subprocess.run([sys.executable, "-m", "cnnfilterdb.cli", "sql", CRASH, "--db", str(store)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
        assert p.stderr.startswith("cnnfilterdb: error: SQL (sql_worker_crashed): the query crashed the process "
                                   "that ran it (signal"), p.stderr


POOL_CHILD = r'''
import os, signal, sys, time
from cnnfilterdb.service.usersql.pool import SqlFailed, SqlLimits, SqlPool

pool = SqlPool(sys.argv[1], 1, SqlLimits(timeout_s=10, memory_limit="512MB", address_space_bytes=3 << 30))
pool.start(wait=True)
(w,) = list(pool._all)
os.kill(w.proc.pid, signal.SIGKILL)  # the worker gone before the statement is sent: a broken pipe
w.proc.wait()
try:
    pool.run("SELECT 42", None, 10, 100_000)
except SqlFailed as e:
    print(f"{e.status} {e.code}: {e.message}")
pool.close()  # its replacement, starting now, is stopped
print(pool.run("SELECT 42", None, 10, 100_000).rows_json.decode())  # a later run starts the pool again
pool.close()
'''


def test_a_worker_gone_is_one_sql_failed_and_leaves_nothing_behind(store):
    p = subprocess.run([sys.executable, "-c", POOL_CHILD, str(store)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    first, second = p.stdout.splitlines()
    assert first.startswith("400 sql_worker_crashed: the query crashed the process that ran it (signal 9"), first
    assert second == "[[42]]"
    assert not [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
                if "usersql" in line and str(store) in line]


def test_the_full_disk_harness_really_fills_the_disk(store):
    """The test's premise: the tmpfs is full (a write of one page fails with ENOSPC)."""
    r = _on_a_full_disk(store, ["info", "--db", "{DB}"], 0)
    assert r["rc"] == 0 and r["same"]
    check = r"""
import os, subprocess, tempfile
m = tempfile.mkdtemp()
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", m], check=True)
with open(os.path.join(m, "f"), "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"\0" * 4096)
    except OSError as e:
        print(e.errno)
"""
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", check],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "28", p.stderr


def test_every_writing_command_is_covered():
    """A new writing command gets its full-disk test: the commands that write are these."""
    import argparse

    from cnnfilterdb.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(sub.choices)
    writers = {"ingest", "label", "remove", "compact", "refit", "export", "plot", "report", "check", "spark", "demo"}
    readers = {"info", "sql", "verify", "drift", "model-metrics", "correlate", "log", "serve"}
    assert commands == writers | readers, commands ^ (writers | readers)
    assert set(WRITERS) | {c.split()[0] for c in OUTPUTS} | {"spark", "demo"} == writers


def test_demo_on_a_full_disk_is_one_line(tmp_path):
    """demo builds its sample store: on a full disk, one line, and no store left half-built."""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _on_a_full_disk(empty, ["demo", "--no-serve", "--db", "{OUT}/sample", "--models", "4", "--filters", "20000"], 0)
    err = _one_line(r, DEMO_PROGRESS)
    assert "No space left on device" in err, err
    assert r["outputs"] == [], r["outputs"]
