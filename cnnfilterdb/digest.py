"""The digest of a store version: a sha256 of what the version holds, recorded when it is committed
(``_versions.digest``, catalog layout 8), so that a citation "store <id>, version N" can be checked
against any copy of the store (docs/versions.md#citing-a-version; ``cnnfilterdb verify``
recomputes it for every kept version that has one).

What is hashed, in this order, as UTF-8 lines each ending in ``\\n``:

1. the format line ``cnnfilterdb version digest 1``;
2. ``models``, then one line per row of ``models_at(N)`` in ``model_id`` order;
3. ``layers``, then one line per row of ``layers_at(N)`` in ``layer_id`` order (ids, depths,
   filter id ranges, shapes, the layer quality metrics);
4. ``layer_moments``, then the ``_layer_moments`` row (count, mean, scatter of the peak-scaled
   filters) of each of those layers, in ``layer_id`` order;
5. ``basis``, then the ``_basis`` row of the version's global basis (``null`` when it has none);
6. ``histograms``, then ``[path, bytes, sha256]`` of each stored histogram segment the version
   reads (those of its basis written at or before it), in the order the engine reads them.

A row is one canonical JSON object: its columns by name, keys sorted, a NULL column left out (a
column a later catalog layout adds, NULL for the rows before, does not change an older version's
digest), no spaces, non-ASCII escaped; numbers as Python writes them (integers exactly, floats as the
shortest text that reads back to the same double: ``repr``), lists and maps as JSON arrays and
objects, timestamps in ISO 8601, JSON columns as the text the catalog holds. The text is made in
Python, not by DuckDB, so that another DuckDB release reads the same digest from the same catalog.

The filters themselves enter through what the store computed from them and keeps unchanged while
the version is kept: each layer's filter id range, quality metrics and moments, and the sha256 of
the histogram segments. The shards' own bytes are not in the digest: ``compact`` rewrites shards
without the filters of models no kept version holds, which changes their sha256 and not what a
kept version holds; ``verify`` checks every shard against the sha256 the catalog records for it.
"""
from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
from collections.abc import Iterable

from .catalog import basis_version_at, histogram_segments

FORMAT = "cnnfilterdb version digest 1"


def _plain(v):
    """A value as canonical JSON takes it (json.dumps' ``default``)."""
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (decimal.Decimal, uuid.UUID)):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    raise TypeError(f"no canonical form for {type(v).__name__}")


def canonical(value) -> str:
    """``value`` as one line of canonical JSON (see the module)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_plain)


def _rows(con, query: str, params: list) -> Iterable[str]:
    """Each row of ``query`` as canonical JSON, its NULL columns left out."""
    cur = con.execute(query, params)
    names = [d[0] for d in cur.description]
    while batch := cur.fetchmany(4096):
        for row in batch:
            yield canonical({k: v for k, v in zip(names, row) if v is not None})


_RECORDED = object()


def version_digest(con, version: int, basis_version=_RECORDED) -> str:
    """The sha256 (hex) of what store version ``version`` holds (see the module), read on any
    connection to the catalog (a reader's, or a writer's staging copy with the version written).
    ``basis_version``: the version's global basis (None: none), given by the commit that is about to
    record the version; default the one ``_versions`` records for it."""
    v = int(version)
    h = hashlib.sha256()

    def line(text: str) -> None:
        h.update(text.encode("utf-8") + b"\n")

    line(FORMAT)
    line("models")
    for row in _rows(con, "SELECT * FROM models_at(?) ORDER BY model_id", [v]):
        line(row)
    line("layers")
    for row in _rows(con, "SELECT * FROM layers_at(?) ORDER BY layer_id", [v]):
        line(row)
    line("layer_moments")
    for row in _rows(con, "SELECT m.* FROM _layer_moments m SEMI JOIN layers_at(?) l USING (layer_id) "
                          "ORDER BY m.layer_id", [v]):
        line(row)
    line("basis")
    bv = basis_version_at(con, v) if basis_version is _RECORDED else basis_version
    rows = [] if bv is None else list(_rows(con, "SELECT * FROM _basis WHERE version = ?", [bv]))
    line(rows[0] if rows else "null")
    line("histograms")
    for path, size, sha256, _bins in ([] if bv is None else histogram_segments(con, bv, v)):
        line(canonical([path, size, sha256]))
    return h.hexdigest()
