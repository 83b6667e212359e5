"""All-or-nothing ingest: SIGKILL at several points, and readers (the DuckDB shell, another
process) querying while an ingest runs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnfilterdb.ingest.sample import write_sample_h5

from .helpers import cli_main, open_catalog, store_snapshot

DUCKDB_SHELL = str(Path(sys.executable).parent / "duckdb")


@pytest.fixture(scope="module")
def big_h5(tmp_path_factory) -> Path:
    # Large enough that an ingest takes a second or more, so that kills land mid-way.
    return write_sample_h5(tmp_path_factory.mktemp("big") / "big.h5", n_models=30, n_filters=3_000_000, seed=11)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, sample_v01) -> Path:
    db = tmp_path_factory.mktemp("base") / "db"
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    return db


def _spawn_ingest(src: Path, db: Path) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-m", "cnnfilterdb.cli", "ingest", "--allow-missing", str(src), "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_for(pred, timeout=30.0):
    t = time.monotonic()
    while not pred():
        if time.monotonic() - t > timeout:
            raise TimeoutError
        time.sleep(0.002)


def _counts(db: Path) -> tuple:
    with open_catalog(db) as con:
        return con.execute("SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM layers), "
                           "(SELECT count(*) FROM filters)").fetchone()


def _staging(db: Path) -> list[Path]:
    return list(db.glob("catalog.duckdb.*.staging*"))


def _new_shards(db: Path, before: dict) -> list[str]:
    return [p for p in (str(q.relative_to(db)) for q in (db / "shards").iterdir()) if p not in before["files"]]


@pytest.fixture(scope="module")
def full_ingest_seconds(base_store, big_h5, tmp_path_factory) -> float:
    db = tmp_path_factory.mktemp("timing") / "db"
    shutil.copytree(base_store, db)
    t = time.monotonic()
    p = _spawn_ingest(big_h5, db)
    assert p.wait() == 0, p.stderr.read()
    return time.monotonic() - t


# Events (surely before the commit): the staging catalog exists; the first new shard exists; the
# staging catalog's WAL exists (rows being written after the filters streamed). Then fractions of
# a full ingest's duration, which may land before or after the commit point.
KILL_POINTS = ["staging-created", "first-shard", "staging-wal", "0.5", "0.75", "0.9", "0.97"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_leaves_previous_store(point, base_store, big_h5, full_ingest_seconds, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(base_store, db)
    before = store_snapshot(db)
    old_counts = _counts(db)

    t0 = time.monotonic()
    p = _spawn_ingest(big_h5, db)
    if point == "staging-created":
        _wait_for(lambda: _staging(db) or p.poll() is not None)
    elif point == "first-shard":
        _wait_for(lambda: _new_shards(db, before) or p.poll() is not None)
    elif point == "staging-wal":
        _wait_for(lambda: list(db.glob("catalog.duckdb.*.staging.wal")) or p.poll() is not None)
    else:
        time.sleep(max(0.0, float(point) * full_ingest_seconds - (time.monotonic() - t0)))
    finished = p.poll() is not None
    p.send_signal(signal.SIGKILL)
    p.wait()

    after = store_snapshot(db)
    if finished or after["tables"]["_ingests"] != before["tables"]["_ingests"]:
        # The kill came after the commit point: the whole new content is there.
        assert point[0].isdigit(), f"the ingest had committed before the event {point}"
        assert _counts(db) == (old_counts[0] + 30, _counts(db)[1], old_counts[2] + 3_000_000)
    else:
        # Readers see exactly the previous store; only unreferenced leftovers may lie around.
        assert after["tables"] == before["tables"]
        assert after["filters"] == before["filters"]
        assert after["catalog_sha"] == before["catalog_sha"]
        assert _counts(db) == old_counts

    # The next ingest cleans up and succeeds.
    assert cli_main(["ingest", str(big_h5), "--db", str(db)]) == 0
    assert not _staging(db)
    with open_catalog(db) as con:
        referenced = {r[0] for r in con.execute("SELECT path FROM _shards UNION ALL SELECT path FROM _histograms").fetchall()}
    on_disk = {f"shards/{q.name}" for q in (db / "shards").iterdir()}
    # Every file is referenced, but the previous commit's histograms (a reader of the previous
    # catalog may still map them; the next ingest removes them).
    assert referenced <= on_disk
    assert all(p.endswith("-histograms.npy") for p in on_disk - referenced)
    models, layers, filters = _counts(db)
    assert models == old_counts[0] + 30 and filters == old_counts[2] + 3_000_000


READER = r"""
import duckdb, json, os, sys, time
db, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
cat = os.path.join(db, "catalog.duckdb")
with open(out, "w") as f:
    while not os.path.exists(stop):
        try:
            with duckdb.connect(cat, read_only=True, config={"file_search_path": db}) as con:
                row = con.execute("SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM layers), "
                                  "(SELECT count(*) FROM filters), (SELECT sum(w0 * w4) FROM filters)").fetchone()
            # Checked after reading: if the staging catalog is still there, the commit (its rename)
            # had not happened when this reader connected.
            staging = any(".staging" in n for n in os.listdir(db))
            f.write(json.dumps({"t": time.time(), "staging_after": staging, "counts": list(row[:3])}) + "\n")
        except Exception as e:
            f.write(json.dumps({"t": time.time(), "error": repr(e)}) + "\n")
        f.flush()
"""

SHELL_LOOP = r"""
cd "$1"  # the views name their shards relative to the store
while [ ! -f "$3" ]; do
  "$4" -readonly -csv -noheader catalog.duckdb \
     -c "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM layers), (SELECT count(*) FROM filters)" >> "$2" 2>&1
done
"""


def test_readers_keep_working_during_ingest(base_store, big_h5, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(base_store, db)
    old = list(_counts(db))
    stop = tmp_path / "stop"
    reader_log, shell_log = tmp_path / "reader.jsonl", tmp_path / "shell.csv"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(db), str(reader_log), str(stop)])
    shell_loop = subprocess.Popen(["bash", "-c", SHELL_LOOP, "loop", str(db), str(shell_log), str(stop), DUCKDB_SHELL])
    # A shell session opened before the ingest, kept open across the commit.
    session = subprocess.Popen([DUCKDB_SHELL, "-readonly", "-csv", "-noheader",
                                "-cmd", f"SET file_search_path = '{db}'", str(db / "catalog.duckdb")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        ingest = _spawn_ingest(big_h5, db)
        session_answers = []
        while ingest.poll() is None:
            session.stdin.write("SELECT count(*), sum(w0) IS NOT NULL FROM filters;\n")
            session.stdin.flush()
            session_answers.append(session.stdout.readline().strip())
            time.sleep(0.05)
        assert ingest.returncode == 0, ingest.stderr.read()
        time.sleep(0.5)
    finally:
        stop.touch()
        reader.wait(timeout=30)
        shell_loop.wait(timeout=30)
        session.stdin.close()
        session_err = session.stderr.read()
        session.wait(timeout=30)

    new = list(_counts(db))
    assert new[0] > old[0]
    # The reader process: never an error; only the old or the new content, old then new;
    # whenever the commit had not happened yet when it connected, the old content.
    obs = [json.loads(line) for line in reader_log.read_text().splitlines()]
    assert obs and not [o for o in obs if "error" in o]
    seq = [o["counts"] for o in obs]
    assert all(c in (old, new) for c in seq)
    assert seq[0] == old and seq[-1] == new
    first_new = seq.index(new)
    assert all(c == new for c in seq[first_new:])
    assert all(o["counts"] == old for o in obs if o["staging_after"])
    assert sum(1 for o in obs if o["staging_after"]) > 0  # it did read while the ingest ran
    # The shell, started anew in a loop: no errors, old then new.
    shell_rows = [line.split(",") for line in shell_log.read_text().split()]
    assert shell_rows and all(len(r) == 3 for r in shell_rows), shell_log.read_text()[:500]
    shell_counts = [[int(x) for x in r] for r in shell_rows]
    assert all(c in (old, new) for c in shell_counts)
    assert shell_counts[0] == old and shell_counts[-1] == new
    # The long-lived shell session answered every query, from the store it opened.
    assert session_answers and not session_err.strip(), session_err
    assert all(a == f"{old[2]},true" for a in session_answers), session_answers[:5]
