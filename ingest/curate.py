"""Curation of a store: remove models, refit the basis, reclaim the space of old versions (the
labelling of models is ingest/labels.py).

Each is one all-or-nothing transaction (``StoreTransaction``), like an ingest: every model named
is checked before anything is written, a failure or a kill leaves the store as it was, and
``remove`` commits a new store version (``compact`` changes no version's content).

- ``model_ids`` and ``models_where``: the current models a command names, or a selection holds;
- ``remove_models``: the models leave the current version; the basis is kept (their layers are no
  longer selected) or refitted over what remains, by the refit policy (store.py). Their shards
  stay on disk for the older versions.
- ``refit_store``: a new basis and its stored histograms now (``cnnfilterdb refit``).
- ``compact``: forget the versions before the last ``keep_versions``: their history rows,
  bases and histogram files go, and the filters of models no kept version holds are taken out
  of the shards (a shard is rewritten without them, or dropped if nothing of it remains).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cnnfilterdb.atomic import fsync_path
from cnnfilterdb.catalog import basis_version_at
from cnnfilterdb.checksums import Checksums, ShardChecks, shard_checksums
from cnnfilterdb.layout import StoreError, file_sha256
from cnnfilterdb.scan import HeldShards, _reading
from cnnfilterdb.selection import nearest
from cnnfilterdb.store import FilterStore, StoreTransaction, check_refit

from .shards import PARQUET_OPTIONS, SCHEMA


def model_ids(tx: StoreTransaction, models: list[str], missing_ok: bool = False,
              where: dict[str, str] | None = None, names_only: bool = False) -> dict[str, int]:
    """model name (or model_id) -> model_id among the current models; StoreError naming every
    unknown one with the nearest known names (a case-insensitive match first) and, from
    ``where`` (model -> "meta.csv: line 7"), where it was given; ``missing_ok``: the unknown left
    out; ``names_only``: a model is named by its unique name only (a manifest's key: "7" is the
    model named 7, not model_id 7)."""
    known = dict(tx.con.execute("SELECT model, model_id FROM models").fetchall())
    ids = set(known.values())
    out, unknown = {}, []
    for m in models:
        as_id = int(m) if not names_only and m.isascii() and m.isdigit() and len(m) <= 10 and int(m) in ids else None
        if m in known and as_id is not None and known[m] != as_id:
            raise StoreError(f"{m!r} is both the name of model_id {known[m]} and a model_id: name the model "
                             f"{m!r} by its id {known[m]}, or model_id {m} by its name")
        if m in known or as_id is not None:
            out[m] = known[m] if m in known else as_id
        else:
            unknown.append(m)
    twice = sorted(i for i, n in Counter(out.values()).items() if n > 1)
    if twice:
        raise StoreError(f"a model is named twice (by name and by id): model_id {twice[0]}; name each once")
    if unknown and not missing_ok:
        hints = []
        removed = dict(tx.con.execute("SELECT model, max(version_to) FROM _models GROUP BY model "
                                      "HAVING bool_and(version_to IS NOT NULL)").fetchall())
        for m in unknown[:5]:
            if m in removed:
                hints.append(f"{m!r} (removed in store version {removed[m]})")
                continue
            near = nearest(m, list(known))
            at = f", {where[m]}" if where and m in where else ""
            hints.append(f"{m!r}" + (f" (did you mean {', '.join(map(repr, near))}?{at})" if near else
                                     f" ({at[2:]})" if at else ""))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        skip = " (--skip-unknown leaves such rows out)" if where else ""
        raise StoreError(f"no such model in the store: {', '.join(hints)}{more}{skip}")
    return out


def models_where(tx: StoreTransaction, where: dict) -> list[str]:
    """The names of the current models a selection holds (the analyses' ``where``: a condition on a
    layer's field keeps the models with a layer that meets it), in model_id order; the selection
    checked as the analyses check it (an unknown field or a text value no model holds is an error)."""
    from cnnfilterdb.requests import check_where
    from cnnfilterdb.results import check_listing, models_query

    where = check_where(where)
    properties = check_listing(tx.con, where, tx.base_version)
    query, params = models_query(where, tx.base_version, properties)
    return [m for (m,) in tx.con.execute(f"SELECT model FROM ({query}) ORDER BY model_id", params).fetchall()]


def remove_models(db: Path, models: list[str] | None = None, refit: str = "auto", where: dict | None = None,
                  dry_run: bool = False) -> dict:
    """Take models out of the store as one new store version (older versions keep them): those
    named in ``models``, or those the selection ``where`` holds; ``refit`` as the commit's
    (store.StoreTransaction.commit: "auto", "always", "never"). ``dry_run``: say which models it
    would remove, commit nothing.

    Returns
    -------
    dict with ``version`` (None: a dry run, or a selection of no model), ``removed`` (names), the
    store's ``models`` and ``filters`` left, its ``basis_version`` and whether this commit
    ``refitted`` it, ``dry_run``.
    """
    if (where is None) == (not models):
        raise StoreError("name the models to remove, or give --where JSON (not both)" if models
                         else "name at least one model to remove, or give --where JSON")
    if where == {}:
        raise StoreError("--where {} selects every model: name the models to remove, or narrow the selection")
    check_refit(refit)
    with StoreTransaction(db) as tx:
        names = models_where(tx, where) if where is not None else models
        if where is not None and names and len(names) == tx.con.execute(
                "SELECT count(*) FROM models_at(?)", [tx.base_version]).fetchone()[0]:
            raise StoreError(f"--where selects every model of the store ({len(names):,}): name them to remove them "
                             "all, or narrow the selection")
        ids = model_ids(tx, names)
        if dry_run or not ids:
            gone = f"WHERE model_id NOT IN ({', '.join(map(str, ids.values()))})" if ids else ""
            n_models, n_filters = tx.con.execute("SELECT count(*), coalesce(sum(n_filters), 0) FROM models_at(?) " + gone,
                                                 [tx.base_version]).fetchone()
            return {"db": str(Path(db).resolve()), "version": None, "removed": list(ids), "models": n_models,
                    "filters": int(n_filters), "basis_version": basis_version_at(tx.con, tx.base_version),
                    "refitted": False, "dry_run": dry_run}
        for model_id in dict.fromkeys(ids.values()):
            tx.remove(model_id)
        version = tx.commit("remove", refit=refit)
    n_models, n_filters = _counts_at(db, version)
    return {"db": str(Path(db).resolve()), "version": version, "removed": list(ids), "models": n_models,
            "filters": n_filters, "basis_version": tx.basis_version, "refitted": tx.refitted, "dry_run": False}


def refit_store(db: Path) -> dict:
    """Refit the store's global basis and the stored histograms of all its layers now, as a new
    store version (action "refit"; older versions keep their basis: ``as_of`` answers unchanged).
    Nothing is committed if the basis is fitted on the current version's filters already and its
    stored histograms are complete (a refit would write the same): ``version`` None, ``note`` says so.

    Returns
    -------
    dict with ``version``, ``refitted``, ``basis_version``, ``n_filters`` (fitted on), ``range``
    [lo, hi], ``previous_basis_version``, ``elapsed_s``, ``note``.
    """
    import time

    from cnnfilterdb.catalog import load_basis

    t0 = time.perf_counter()
    FilterStore(db).connect().close()  # no store there: one line saying so, nothing created
    note = None
    with StoreTransaction(db) as tx:
        if tx.base_version == 0:
            raise StoreError(f"{tx.root}: the store has no version to refit")
        previous = version = basis_version_at(tx.con, tx.base_version)
        complete = previous is not None and tx.con.execute(
            "SELECT bool_and(fine_bins IS NOT NULL AND density_bins IS NOT NULL) FROM _histograms "
            "WHERE basis_version = ?", [previous]).fetchone()[0]
        changed = None if previous is None else tx.changed_since_fit(previous)
        if complete and changed is not None and changed[0] == 0:
            version, note = None, (f"basis {previous} is fitted on this version's filters and its stored histograms "
                                   "are complete: nothing to refit")
        else:
            version = tx.commit("refit", refit="always", summary="basis and stored histograms refitted")
    with FilterStore(db).connect() as con:
        b = load_basis(con, version)
    return {"db": str(Path(db).resolve()), "version": version, "refitted": version is not None,
            "basis_version": None if b is None else b.version, "previous_basis_version": previous,
            "n_filters": None if b is None else b.n_filters, "range": None if b is None else [b.range_min, b.range_max],
            "elapsed_s": round(time.perf_counter() - t0, 3), "note": note}


def _counts_at(db: Path, version: int) -> tuple[int, int]:
    with FilterStore(db).connect() as con:
        return con.execute("SELECT n_models, n_filters FROM _versions WHERE version = ?", [version]).fetchone()


def compact(db: Path, keep_versions: int) -> dict:
    """Keep the last ``keep_versions`` store versions and reclaim the space of the older ones.

    Returns
    -------
    dict with ``kept`` [first, last] versions, ``compacted`` how many versions were forgotten,
    ``shards_rewritten``, ``shards_dropped``, ``bytes_before``, ``bytes_after`` (the store's files).
    """
    if not isinstance(keep_versions, int) or keep_versions < 1:
        raise StoreError(f"--keep-versions must be at least 1, got {keep_versions!r}")
    with StoreTransaction(db) as tx:
        con, current = tx.con, tx.base_version
        if current == 0:
            raise StoreError(f"{tx.root}: the store has no version to compact")
        first = max(1, current - keep_versions + 1)
        before = _store_bytes(con)
        forgotten = con.execute("SELECT count(*) FROM _versions WHERE version < ? AND NOT compacted",
                                [first]).fetchone()[0]
        first = max(first, con.execute("SELECT min(version) FROM _versions WHERE NOT compacted").fetchone()[0])
        tx.keep_id_floors()
        con.execute("UPDATE _versions SET compacted = true WHERE version < ?", [first])
        # Rows no kept version sees; then what belongs only to models no kept version holds.
        con.execute("DELETE FROM _models WHERE version_to IS NOT NULL AND version_to <= ?", [first])
        con.execute("CREATE TEMP TABLE _gone AS SELECT layer_id, filter_id_first, filter_id_last FROM _layers "
                    "WHERE model_id NOT IN (SELECT model_id FROM _models)")
        con.execute("DELETE FROM _layer_moments WHERE layer_id IN (SELECT layer_id FROM _gone)")
        con.execute("DELETE FROM _layers WHERE layer_id IN (SELECT layer_id FROM _gone)")
        con.execute("DELETE FROM _histograms WHERE basis_version NOT IN "
                    "(SELECT basis_version FROM _versions WHERE NOT compacted AND basis_version IS NOT NULL)")
        con.execute("DELETE FROM _basis WHERE version NOT IN (SELECT basis_version FROM _histograms) "
                    "AND version NOT IN (SELECT basis_version FROM _versions WHERE NOT compacted "
                    "AND basis_version IS NOT NULL)")
        rewritten, dropped = _compact_shards(tx)
        con.execute("DROP TABLE _gone")
        tx.commit(None)
    with FilterStore(db).connect() as con:
        after = _store_bytes(con)
    return {"db": str(Path(db).resolve()), "kept": [first, current], "compacted": forgotten,
            "shards_rewritten": rewritten, "shards_dropped": dropped, "bytes_before": before, "bytes_after": after}


def _store_bytes(con) -> int:
    """The bytes of the files the catalog references (shards and histograms)."""
    return int(con.execute("SELECT (SELECT coalesce(sum(bytes), 0) FROM _shards) + "
                              "(SELECT coalesce(sum(bytes), 0) FROM _histograms)").fetchone()[0])


def _compact_shards(tx: StoreTransaction) -> tuple[int, int]:
    """Take the filters of the layers in _gone out of the shards: a shard holding some is
    rewritten without them (row group by row group: memory stays one row group), one holding
    only those is dropped. Returns (rewritten, dropped)."""
    con = tx.con
    # A layer may run across shards (a shard ends every shard_rows filters): each shard counts
    # the gone filters of every layer overlapping its filter_id range.
    shards = con.execute("""
        SELECT s.path, s.n_rows, s.filter_id_first, s.filter_id_last, s.sha256,
               -- least/greatest skip NULLs: the shards no gone layer overlaps are counted apart
               coalesce(sum(least(g.filter_id_last, s.filter_id_last) - greatest(g.filter_id_first, s.filter_id_first) + 1)
                        FILTER (WHERE g.layer_id IS NOT NULL), 0)
        FROM _shards s LEFT JOIN _gone g
          ON g.filter_id_first <= s.filter_id_last AND g.filter_id_last >= s.filter_id_first
        GROUP BY ALL ORDER BY s.filter_id_first""").fetchall()
    gone_layers = np.array([r[0] for r in con.execute("SELECT layer_id FROM _gone").fetchall()], dtype=np.int64)
    rewritten = dropped = 0
    for rel, n_rows, _first, _last, sha256, n_gone in shards:
        if n_gone == 0:
            continue
        con.execute("DELETE FROM _shards WHERE path = ?", [rel])
        if n_gone >= n_rows:
            dropped += 1
            continue
        path = tx.new_shard_path()
        kept, lo, hi = _rewrite_without(tx.root / rel, path, gone_layers, _source_checks(tx, rel, sha256))
        if kept != n_rows - n_gone:  # the catalog's layers and the shard disagree: stop, change nothing
            raise StoreError(f"{rel}: {kept:,} rows would remain, the catalog expects {n_rows - n_gone:,}; the store "
                             "is damaged: run `cnnfilterdb verify`")
        tx.add_shard(path, kept, lo, hi, file_sha256(path))
        rewritten += 1
    return rewritten, dropped


def _source_checks(tx: StoreTransaction, rel: str, sha256: str) -> ShardChecks:
    """The checksums a rewrite checks the shard ``rel`` against: those the catalog records, or (a
    store of a layout before 6, whose shards have none yet) those of the file once its whole sha256
    is checked against the catalog's. Either way a damaged shard is StoreDamaged naming it (and its
    row group) before any of it is copied: a rewrite must never certify damaged bytes as new ones."""
    rows = tx.con.execute("SELECT path, row_group, byte_offset, byte_length, xxh3 FROM _row_groups WHERE path = ?",
                          [rel]).fetchall()
    if not rows:
        rows = [(rel, *r) for r in shard_checksums(tx.root / rel, sha256)]
    return Checksums.from_rows(rows, [rel]).shards[rel]


def _rewrite_without(src: Path, dst: Path, gone_layers: np.ndarray, checks: ShardChecks) -> tuple[int, int, int]:
    """Copy the shard ``src`` to ``dst`` without the rows of ``gone_layers``; (rows, first id, last id).
    Read as the engine's scans read (``scan.HeldShards``): the footer and the spans checked against
    ``checks``, each row group's bytes hashed before they are decoded."""
    import pyarrow.compute as pc

    held = HeldShards([src], Checksums({checks.rel: checks}))
    kept, lo, hi = 0, None, None
    try:
        f = held.open(src)
        try:
            with pq.ParquetWriter(dst, SCHEMA, **PARQUET_OPTIONS) as w:
                for i in range(f.file.metadata.num_row_groups):
                    with _reading(src):
                        t = f.read_row_group(i, columns=SCHEMA.names)
                    t = t.filter(pc.invert(pc.is_in(t.column("layer_id"), value_set=_as_int32(gone_layers))))
                    if t.num_rows:
                        w.write_table(t.cast(SCHEMA), row_group_size=1 << 17)
                        ids = t.column("filter_id")
                        lo = ids[0].as_py() if lo is None else lo
                        hi = ids[-1].as_py()
                        kept += t.num_rows
        finally:
            f.close()
    finally:
        held.close()
    fsync_path(dst)
    return kept, lo, hi


def _as_int32(a: np.ndarray):
    import pyarrow as pa

    return pa.array(a.astype(np.int32), pa.int32())


__all__ = ["model_ids", "models_where", "remove_models", "refit_store", "compact"]
