"""The Python API's session: what a user's SQL does to its own instance stays there, close() while
other reads run, a file given as the store."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cnnfilterdb
from cnnfilterdb.layout import StoreError


def test_sql_cannot_break_the_engine(v1_store):
    with cnnfilterdb.open(v1_store) as db:
        n = len(db.models())
        db.sql("USE memory; DETACH catalog")
        db.sql("SET GLOBAL threads = 1")
        db.sql("CREATE TABLE memory.main.t AS SELECT 1 AS x")
        assert len(db.models()) == n  # the engine's instance never saw them
        assert db.divergence("task").matrix.shape[0] >= 2
        with pytest.raises(Exception, match="t"):  # the table lived one call
            db.sql("SELECT * FROM memory.main.t")


def test_close_while_reads_run(v1_store):
    db = cnnfilterdb.open(v1_store)
    want, n_models = db.filters(), len(db.models())
    errors, done = [], threading.Event()

    def reader():
        try:
            while not done.is_set():
                assert len(db.models()) == n_models
                assert db.filters({"conv_depth": 0}).shape[1:] == (3, 3)
                assert db.divergence("task").matrix.shape[0] >= 2
        except Exception as e:  # any error is the finding
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(20):
        db.close()
    done.set()
    for t in threads:
        t.join()
    assert errors == []
    batches = db.iter_filters(batch=1000)
    first = next(batches)
    db.close()  # a stream already started reads on
    assert np.array_equal(np.concatenate([first, *batches]), want)


@pytest.mark.parametrize("target", ["catalog.duckdb", "/dev/null"])
def test_a_file_is_not_a_store(v1_store, target):
    path = v1_store / target if not target.startswith("/") else target
    with pytest.raises(StoreError, match="not a store directory"):
        cnnfilterdb.open(path)
