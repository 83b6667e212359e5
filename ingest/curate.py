"""Curation of a store: relabel models, remove them, reclaim the space of old versions.

Each is one all-or-nothing transaction (``StoreTransaction``), like an ingest: every model named
is checked before anything is written, a failure or a kill leaves the store as it was, and
``label`` and ``remove`` commit a new store version (``compact`` changes no version's content).

- ``label_models``: new metadata from this version on; the previous values stay in the history
  (``models_at(v)`` of an older version still shows them). The basis is not refitted: it depends
  on the filters only.
- ``remove_models``: the models leave the current version; the basis is kept (their layers are no
  longer selected) or refitted over what remains, by the refit policy (store.py). Their shards
  stay on disk for the older versions.
- ``refit_store``: a new basis and its stored histograms now (``cnnfilterdb refit``).
- ``compact``: forget the versions before the last ``keep_versions``: their history rows,
  bases and histogram files go, and the filters of models no kept version holds are taken out
  of the shards (a shard is rewritten without them, or dropped if nothing of it remains).
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cnnfilterdb.atomic import fsync_path
from cnnfilterdb.checksums import Checksums, ShardChecks, shard_checksums
from cnnfilterdb.layout import StoreError, file_sha256
from cnnfilterdb.scan import HeldShards, _reading
from cnnfilterdb.selection import nearest
from cnnfilterdb.store import FilterStore, StoreTransaction, check_refit

from .errors import IngestError
from .h5 import normalize_task
from .model_files import META_FIELDS
from .shards import PARQUET_OPTIONS, SCHEMA

# What `label` may change: the metadata a user gives at ingest, but the model's unique name.
LABEL_FIELDS = [f for f in META_FIELDS if f != "model"]


def _model_ids(tx: StoreTransaction, models: list[str]) -> dict[str, int]:
    """model name (or model_id) -> model_id among the current models; StoreError naming every
    unknown one with the nearest known names (a case-insensitive match first)."""
    known = dict(tx.con.execute("SELECT model, model_id FROM models").fetchall())
    ids = set(known.values())
    out, unknown = {}, []
    for m in models:
        as_id = int(m) if m.isascii() and m.isdigit() and len(m) <= 10 and int(m) in ids else None
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
    if unknown:
        hints = []
        removed = dict(tx.con.execute("SELECT model, max(version_to) FROM _models GROUP BY model "
                                      "HAVING bool_and(version_to IS NOT NULL)").fetchall())
        for m in unknown[:5]:
            if m in removed:
                hints.append(f"{m!r} (removed in store version {removed[m]})")
                continue
            near = nearest(m, list(known))
            hints.append(f"{m!r}" + (f" (did you mean {', '.join(map(repr, near))}?)" if near else ""))
        raise StoreError(f"no such model in the store: {', '.join(hints)}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    return out


def _label_values(values: dict, where: str) -> dict:
    """The models columns a label sets: a task sets task_raw as given and task normalized."""
    unknown = sorted(set(values) - set(LABEL_FIELDS))
    if unknown:
        raise IngestError(f"{where}: cannot label {unknown}; the fields are {LABEL_FIELDS}")
    for field, v in values.items():
        if v is None:
            continue
        if not v.strip():
            raise IngestError(f"{where}: {field} is empty; give a value (a manifest's empty cell leaves a field as it is)")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise IngestError(f"{where}: {field} {v!r} is not valid UTF-8 text") from None
        if "\0" in v:
            raise IngestError(f"{where}: {field} holds a NUL character")
    out = dict(values)
    if "task" in out:
        out["task_raw"], out["task"] = out["task"], normalize_task(out["task"])
    return out


def read_label_manifest(path: Path) -> list[tuple[str, dict]]:
    """A CSV with a `model` column and any of LABEL_FIELDS: (model, values) per row; an empty cell
    leaves that field as it is."""
    try:
        # utf-8-sig: a spreadsheet's CSV starts with a byte-order mark; strict: an unclosed quote is an error
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, strict=True))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise IngestError(f"{path}: cannot read the manifest ({e})") from None
    header = [h.strip() for h in rows[0]] if rows else []
    if "model" not in header:
        raise IngestError(f"{path}: a label manifest needs a header with a 'model' column and any of {LABEL_FIELDS}")
    if len(set(header)) < len(header):
        raise IngestError(f"{path}: the header names a column twice: {sorted({h for h in header if header.count(h) > 1})}")
    out, seen = [], {}
    for i, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            raise IngestError(f"{path}: line {i} has {len(row)} cells, the header {len(header)}")
        r = dict(zip(header, row))
        model = r.pop("model").strip()
        if not model:
            raise IngestError(f"{path}: line {i} has no model")
        if model in seen:
            raise IngestError(f"{path}: line {i} labels {model!r} again (line {seen[model]}): one row per model")
        seen[model] = i
        values = {k: v.strip() for k, v in r.items() if v.strip()}
        _label_values(values, f"{path}: line {i}")  # checked here to name the line
        out.append((model, values))
    return out


def label_models(db: Path, changes: list[tuple[str, dict]]) -> dict:
    """Relabel models, all or nothing, as one new store version.

    Parameters
    ----------
    db : the store directory.
    changes : (model name or model_id, {field: value}) pairs; fields among LABEL_FIELDS (a value
        None clears the field).

    Returns
    -------
    dict with ``version`` (None if nothing changed: no version is committed), ``changed`` the
    names of the models whose metadata changed, ``unchanged`` those already so labelled.
    """
    changes = [(m, _label_values(v, "label")) for m, v in changes]
    if len({m for m, _ in changes}) < len(changes):
        raise StoreError("label: a model is named twice; name each once")
    if not any(v for _, v in changes):
        raise StoreError(f"nothing to label: give at least one of {['--' + f.replace('_', '-') for f in LABEL_FIELDS]}")
    with StoreTransaction(db) as tx:
        ids = _model_ids(tx, [m for m, _ in changes])
        changed, unchanged = [], []
        for m, values in changes:
            (changed if tx.relabel(ids[m], values) else unchanged).append(m)
        version = tx.commit("label") if changed else None
    return {"db": str(Path(db).resolve()), "version": version, "changed": changed, "unchanged": unchanged}


def remove_models(db: Path, models: list[str], refit: str = "auto") -> dict:
    """Take models out of the store as one new store version (older versions keep them); ``refit``
    as the commit's (store.StoreTransaction.commit: "auto", "always", "never").

    Returns
    -------
    dict with ``version``, ``removed`` (names), the store's ``models`` and ``filters`` left, its
    ``basis_version`` and whether this commit ``refitted`` it.
    """
    if not models:
        raise StoreError("name at least one model to remove")
    check_refit(refit)
    with StoreTransaction(db) as tx:
        ids = _model_ids(tx, models)
        for model_id in dict.fromkeys(ids.values()):
            tx.remove(model_id)
        version = tx.commit("remove", refit=refit)
    n_models, n_filters = _counts_at(db, version)
    return {"db": str(Path(db).resolve()), "version": version, "removed": list(ids), "models": n_models,
            "filters": n_filters, "basis_version": tx.basis_version, "refitted": tx.refitted}


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

    from cnnfilterdb.catalog import basis_version_at, load_basis

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


__all__ = ["LABEL_FIELDS", "label_models", "read_label_manifest", "remove_models", "compact"]
