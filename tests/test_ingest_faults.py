"""Bad input: a one-line error naming the file and the fault, a non-zero exit, the store unchanged."""
from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest

from .helpers import cli_main, open_catalog, run_cli, store_snapshot


def _write(path, meta: pd.DataFrame | None, filters: np.ndarray | None, name="filters"):
    path.unlink(missing_ok=True)
    if meta is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta.to_hdf(path, key="meta", mode="w")
    if filters is not None:
        with h5py.File(path, "a") as f:
            f.create_dataset(name, data=filters)
    return path


@pytest.fixture(scope="module")
def parts(sample_v1):
    meta = pd.read_hdf(sample_v1, "meta")
    with h5py.File(sample_v1) as f:
        X = f["filters"][...]
    return meta, X


def _set_ids(meta, i, value):
    meta = meta.copy()
    col = meta.columns.get_loc("filter_ids")
    meta.iloc[i, col] = value
    return meta


def _faults(parts, tmp):
    meta, X = parts
    n = len(X)
    first_ids = meta["filter_ids"].tolist()
    a1, b1 = map(int, first_ids[1].split(":"))
    nan = X.copy()
    nan[1234, 1, 2] = np.nan
    inf = X.copy()
    inf[4321, 0, 0] = -np.inf
    return {
        "not_hdf5": (lambda p: (p.write_text("model,task\nresnet,Classification\n"), p)[1], "not a readable HDF5 file"),
        "no_meta": (lambda p: _write(p, None, X), "no /meta"),
        "no_filters": (lambda p: _write(p, meta, None), "no /filters"),
        "out_of_range": (lambda p: _write(p, _set_ids(meta, len(meta) - 1, f"{n - 5}:{n + 3}"), X), "out of range"),
        "reversed": (lambda p: _write(p, _set_ids(meta, 1, f"{b1}:{a1}"), X), "reversed"),
        "overlapping": (lambda p: _write(p, _set_ids(meta, 1, f"{a1 - 3}:{b1}"), X), "overlap"),
        "nan": (lambda p: _write(p, meta, nan), "filter 1234 "),
        "inf": (lambda p: _write(p, meta, inf), "filter 4321 "),
        "bad_shape": (lambda p: _write(p, meta, X.reshape(n, 9)[:, :4]), "shape"),
        "not_a_range": (lambda p: _write(p, _set_ids(meta, 2, "12-40"), X), "not 'first:last'"),
    }


FAULTS = ["not_hdf5", "no_meta", "no_filters", "out_of_range", "reversed", "overlapping", "nan", "inf",
          "bad_shape", "not_a_range", "truncated"]


def _make(fault, parts, sample_v1, tmp_path):
    p = tmp_path / f"{fault}.h5"
    if fault == "truncated":
        data = sample_v1.read_bytes()
        p.write_bytes(data[: int(len(data) * 0.6)])
        return p, "truncated"
    make, words = _faults(parts, tmp_path)[fault]
    return make(p), words


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_on_absent_store(fault, parts, sample_v1, tmp_path, capsys):
    src, words = _make(fault, parts, sample_v1, tmp_path)
    db = tmp_path / "db"
    code = cli_main(["ingest", "--allow-missing", str(src), "--db", str(db)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert str(src) in err and words in err, err
    assert not db.exists()


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_on_existing_store(fault, parts, sample_v1, sample_v01, tmp_path, capsys):
    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    before = store_snapshot(db)
    src, words = _make(fault, parts, sample_v1, tmp_path)
    code = cli_main(["ingest", "--allow-missing", str(src), "--db", str(db)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and words in err and len(err.splitlines()) == 1, err
    assert store_snapshot(db) == before


def test_exit_code_and_message_from_the_console(parts, sample_v1, tmp_path):
    src, _ = _make("nan", parts, sample_v1, tmp_path)
    code, out, err = run_cli("ingest", "--allow-missing", str(src), "--db", str(tmp_path / "db"))
    assert code == 1
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("cnnfilterdb: error: ") and "is not finite" in err
    assert not (tmp_path / "db").exists()


def test_existing_models_in_a_new_file_are_reported_and_the_new_ones_added(sample_v1, tmp_path, capsys):
    """A file that repeats some (not all) models of the store: the new ones are added, the
    present ones (same name, same metadata and filters) reported and left alone."""
    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    capsys.readouterr()
    meta = pd.read_hdf(sample_v1, "meta")
    with h5py.File(sample_v1) as f:
        X = f["filters"][...]
    meta = meta.copy()
    # Odd models get new names; even ones keep the names already in the store.
    meta["model"] = [f"new-{mid}" if mid % 2 else name for mid, name in zip(meta.index.get_level_values(0), meta["model"])]
    src = _write(tmp_path / "mixed.h5", meta, X)
    before = store_snapshot(db)
    assert cli_main(["ingest", "--allow-missing", str(src), "--db", str(db)]) == 0
    result = json.loads(capsys.readouterr().out)
    n_new = sum(1 for m in meta["model"].unique() if m.startswith("new-"))
    assert result["models_added"] == n_new and result["files"][0]["present"]["count"] == meta["model"].nunique() - n_new
    with open_catalog(db) as con:
        assert con.execute("SELECT count(*) FROM models").fetchone()[0] == len(before["tables"]["models"]) + n_new
        # The models already there are unchanged, row for row.
        old = con.execute("SELECT * FROM models WHERE NOT starts_with(model, 'new-') ORDER BY ALL").fetchall()
    assert old == sorted(before["tables"]["models"])
