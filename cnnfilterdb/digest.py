"""The digest of a store version: a sha256 of what the version holds, recorded when it is committed
(``_versions.digest``, catalog layout 8), so that a citation "store <id>, version N" can be checked
against any copy of the store (docs/versions.md#citing-a-version; ``cnnfilterdb verify``
recomputes it for every kept version that has one).

What is hashed, in this order, as UTF-8 lines each ending in ``\\n`` (and raw bytes where said):

1. the format line ``cnnfilterdb version digest 1``;
2. the section ``models``: the rows of ``models_at(N)`` in ``model_id`` order;
3. the section ``layers``: the rows of ``layers_at(N)`` in ``layer_id`` order (ids, depths, filter id
   ranges, shapes, the layer quality metrics);
4. the section ``layer_moments``: the ``_layer_moments`` rows (count, mean, scatter of the peak-scaled
   filters) of those layers, in ``layer_id`` order;
5. the section ``basis``: the ``_basis`` row of the version's global basis (no row: none);
6. ``histograms``, then one line ``[path, bytes, sha256]`` (canonical JSON) for each stored histogram
   segment the version reads (those of its basis written at or before it), in the order the engine
   reads them.

A section is its name, ``rows <count>``, then column by column in the order of their names, each
column whose values are all NULL left out (so a column a later catalog layout or a new model property
adds, NULL for the rows before, does not change an older version's digest): ``column <name>``, then
its values in row order. A column of lists of floating-point numbers (the moments, the basis) is the
lists' lengths as a canonical JSON array, then every element as little-endian float64 bytes; any
other column is one canonical JSON array of its values: keys sorted, no spaces, non-ASCII escaped,
integers exact, floats as the shortest text that reads back to the same double (Python's ``repr``),
NULL as ``null``, maps as arrays of ``[key, value]``, timestamps in ISO 8601, JSON columns as the text
the catalog holds. The text is made in Python, not by DuckDB, so that another DuckDB release reads
the same digest from the same catalog.

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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    """``value`` as canonical JSON (see the module)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_plain)


def _float_lists(column: pa.Array) -> bool:
    t = column.type
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
        and pa.types.is_floating(t.value_type)


def _section(update, con, name: str, query: str, params: list) -> None:
    """The rows of ``query`` as the section ``name`` (see the module), column by column."""
    table = con.execute(query, params).to_arrow_table()
    update(f"{name}\nrows {table.num_rows}\n".encode())
    for column_name in sorted(table.column_names):
        column = table[column_name].combine_chunks()
        if column.null_count == len(column):
            continue  # every value NULL (none at all: an empty section), as if the column were not there
        update(f"column {column_name}\n".encode())
        if _float_lists(column) and (values := pc.list_flatten(column)).null_count == 0:
            lengths = pc.list_value_length(column).to_pylist()
            update(canonical(lengths).encode() + b"\n")
            update(np.asarray(values.to_numpy(zero_copy_only=False), dtype="<f8").tobytes())
            update(b"\n")
        else:
            update(canonical(column.to_pylist()).encode() + b"\n")


_RECORDED = object()


def version_digest(con, version: int, basis_version=_RECORDED) -> str:
    """The sha256 (hex) of what store version ``version`` holds (see the module), read on any
    connection to the catalog (a reader's, or a writer's staging copy with the version written).
    ``basis_version``: the version's global basis (None: none), given by the commit that is about to
    record the version; default the one ``_versions`` records for it."""
    v = int(version)
    h = hashlib.sha256()
    h.update(FORMAT.encode() + b"\n")
    _section(h.update, con, "models", "SELECT * FROM models_at(?) ORDER BY model_id", [v])
    _section(h.update, con, "layers", "SELECT * FROM layers_at(?) ORDER BY layer_id", [v])
    _section(h.update, con, "layer_moments", "SELECT m.* FROM _layer_moments m SEMI JOIN layers_at(?) l "
                                             "USING (layer_id) ORDER BY m.layer_id", [v])
    bv = basis_version_at(con, v) if basis_version is _RECORDED else basis_version
    _section(h.update, con, "basis", "SELECT * FROM _basis WHERE version = ?", [bv])
    h.update(b"histograms\n")
    for path, size, sha256, _bins in ([] if bv is None else histogram_segments(con, bv, v)):
        h.update(canonical([path, size, sha256]).encode() + b"\n")
    return h.hexdigest()
