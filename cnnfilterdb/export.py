"""Streaming export of a selection of filters as Parquet, Arrow IPC stream, NumPy .npy or CSV.

A selection is a set of layers; the export holds every filter of those layers, as the rows
``filter_id, model_id, layer_id, w0..w8`` (``COLUMNS``), in filter_id order, encoded as one of
``FORMATS``. ``export_chunks`` yields the file as a stream of byte chunks (for an HTTP response);
``write_export`` writes it to a path atomically.

Guarantees:

- Memory is bounded whatever the size of the store or of the selection: the shards are read one
  whole row group (128K rows) at a time per thread, memory-mapped as the engine's scans do
  (``cnnfilterdb.scan``), at most ``LOOKAHEAD_PER_THREAD`` row groups per thread ahead of the
  consumer, and the encoder holds one output row group at most (``OUTPUT_ROWS``). A slow consumer
  (a slow HTTP client) therefore slows the reading down rather than filling memory.
- Order: rows come in filter_id order (shards and row groups are read in order and handed to the
  encoder in order); a shard whose filter ids do not increase raises StoreDamaged.
- Exactness: the rows are the stored ones, bit for bit (CSV writes the shortest decimal that parses
  back to the same float32). The number of rows read must equal ``n_rows`` (the catalog's count,
  which the .npy header states up front): anything else raises StoreDamaged, never a silently
  wrong file. A stream that raised part-way is incomplete and must be discarded (``write_export``
  removes it; an HTTP response is cut off).
- Failures: a shard that cannot be read (missing, truncated, corrupt) raises StoreDamaged naming
  it. With the catalog's checksums (``held`` or ``checksums``; the engine always passes them), each
  row group's bytes are hashed before they are decoded, and one that differs from what was
  committed raises StoreDamaged naming the shard and the row group (cnnfilterdb/checksums.py). The
  footers are read (and checked), and the row groups of the first chunk of rows read (and
  checked), when ``export_chunks`` is called, before any byte is handed on, so a missing or
  truncated shard, or damage in the first row groups read, is reported before a response starts.
- A consumer may stop early: closing the generator (``GeneratorExit``) shuts the reading threads
  down and closes the shards before ``close()`` returns.
- ``write_export`` is atomic: the file appears complete at its path, or not at all.
"""
from __future__ import annotations

import io
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .atomic import atomic_file, destination
from .checksums import Checksums
from .layout import SHARDS, StoreDamaged, store_name
from .requests import EXPORT_FORMATS
from .scan import REMAP_ROW_GROUPS, HeldShards, LayerGroups, ShardReader, _layer_spans, _reading, _units

COLUMNS = ["filter_id", "model_id", "layer_id"] + [f"w{i}" for i in range(9)]
# Each format of requests.EXPORT_FORMATS (the set a request may name): its media type and file suffix.
_FILES = {
    "parquet": ("application/vnd.apache.parquet", ".parquet"),
    "arrow": ("application/vnd.apache.arrow.stream", ".arrows"),
    "npy": ("application/octet-stream", ".npy"),
    "csv": ("text/csv", ".csv"),  # UTF-8 (ASCII in fact: numbers only)
}
FORMATS: dict[str, tuple[str, str]] = {fmt: _FILES[fmt] for fmt in EXPORT_FORMATS}
# As the shards' (ingest/shards.py): every column required, so readers see NOT NULL columns.
SCHEMA = pa.schema([pa.field("filter_id", pa.int64(), nullable=False), pa.field("model_id", pa.int32(), nullable=False),
                    pa.field("layer_id", pa.int32(), nullable=False)]
                   + [pa.field(f"w{i}", pa.float32(), nullable=False) for i in range(9)])
NPY_DTYPE = np.dtype([("filter_id", "<i8"), ("model_id", "<i4"), ("layer_id", "<i4"), ("w", "<f4", (3, 3))])

# The Parquet export, chosen by measurement (bench/bench_export.py, 2 cores): the weights are
# random-like float32 that no codec shrinks by more than a few percent, so they are PLAIN and
# uncompressed as in the shards; the id columns are nearly free as delta/dictionary runs.
PARQUET_OPTIONS = dict(
    compression="none",
    use_dictionary=["model_id", "layer_id"],
    column_encoding={"filter_id": "DELTA_BINARY_PACKED", **{f"w{i}": "PLAIN" for i in range(9)}},
    write_statistics=["filter_id", "model_id", "layer_id"],
    sorting_columns=[pq.SortingColumn(0)],
    write_batch_size=1 << 16,
    data_page_size=1 << 20,
)
OUTPUT_ROWS = 1 << 17  # rows per Parquet row group / Arrow record batch written (6 MB)
LOOKAHEAD_PER_THREAD = 2  # row groups read ahead of the consumer, per reading thread
CSV_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 14)


def export_chunks(paths: list[Path], layer_ids: np.ndarray, max_layer_id: int, n_rows: int, fmt: str,
                  metadata: dict[str, str] | None = None, threads: int | None = None,
                  held: HeldShards | None = None, checksums: Checksums | None = None) -> Iterator[bytes]:
    """The selected filters (rows whose layer_id is in layer_ids), in filter_id order, encoded as fmt, as a
    stream of byte chunks whose concatenation is the whole file.

    The arguments are checked, the shards' footers read and the first chunk of rows made when this
    is called (a missing or truncated shard, or a damaged row group among those of the first chunk,
    raises StoreDamaged here, before any byte); the other rows are read as the chunks are consumed.

    Parameters
    ----------
    paths : list of Path
        The store's shard files, in filter_id order.
    layer_ids : ndarray of int, shape (n_layers,)
        The selected layers, each in [0, max_layer_id]; may be empty (a valid file of no rows).
    max_layer_id : int
        The largest layer_id of the store (``LayerGroups``' bound).
    n_rows : int
        The number of filters of the selected layers, from the catalog: the .npy header states it up
        front, and the rows read must number exactly this.
    fmt : str
        A key of FORMATS: "parquet", "arrow" (IPC stream), "npy" (structured array of NPY_DTYPE,
        shape (n_rows,), ``a['w']`` of shape (n_rows, 3, 3) float32 row-major) or "csv" (header line).
    metadata : dict of str to str, optional
        Key-value metadata of the schema (parquet and arrow; ignored by npy and csv).
    threads : int, optional
        Threads reading (and for npy and csv encoding) row groups; default min(4, cores).
    held : HeldShards, optional
        The shards already held open (an analysis snapshot's, with its checksums); default opened here.
    checksums : checksums.Checksums, optional
        The catalog's row group checksums, for shards opened here (``held`` carries its own);
        default none: unchecked.

    Returns
    -------
    chunks : iterator of bytes
        Chunks of one row group's rows at most (about 5 MB; 16 MB of CSV). Closing it early stops
        the threads and closes the shards.

    Raises
    ------
    ValueError
        Unknown format, or a layer id outside [0, max_layer_id].
    StoreDamaged
        A shard cannot be read, holds layer ids outside the store's range or rows out of order, or
        the selected layers hold another number of rows than n_rows (raised part-way through).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {sorted(FORMATS)}")
    layer_ids = np.asarray(layer_ids, dtype=np.int64)
    if len(layer_ids) and not (0 <= layer_ids.min() and layer_ids.max() <= max_layer_id):
        raise ValueError(f"layer ids must be in [0, {max_layer_id}]")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, not {n_rows}")
    # One group: group_of_layer >= 0 is the selection; _units keeps the row groups it overlaps.
    groups = LayerGroups.of(layer_ids, np.zeros(len(layer_ids), dtype=np.int64), 1, max_layer_id)
    selected = groups.group_of_layer >= 0
    units = [(path, row_group) for path, row_group, _, _ in _units(list(paths), groups)]
    schema = SCHEMA.with_metadata(metadata) if metadata else SCHEMA
    encode = {"parquet": _parquet, "arrow": _arrow, "npy": _npy, "csv": _csv}[fmt]
    own = held is None
    if own:  # readable to the end, even if unlinked from now on
        held = HeldShards([path for path, _ in units], checksums)
    counted = _Counted(_row_groups(units, held, own, selected, n_rows, threads, _prepare[fmt]))
    return _started(encode(counted, schema, n_rows), counted)


class _Counted:
    """The (rows, data) of ``_row_groups``, counting the rows handed on (``rows``)."""

    def __init__(self, row_groups):
        self._row_groups = row_groups
        self.rows = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._row_groups)
        self.rows += item[0]
        return item

    def close(self) -> None:
        self._row_groups.close()


def _started(chunks: Iterator[bytes], counted: _Counted) -> Iterator[bytes]:
    """``chunks`` with their first chunk of rows already made: the row groups it holds (the first
    that holds selected rows for npy and csv; OUTPUT_ROWS rows for parquet and arrow) are read and
    checked now, so that damage there raises here, before an HTTP response starts (a 503, not a
    stream cut after its 200). Memory: that chunk, which the stream was going to hold anyway."""
    head: list[bytes] = []
    try:
        for chunk in chunks:
            head.append(chunk)
            if counted.rows:
                break
    except BaseException:
        chunks.close()
        raise
    return _resumed(head, chunks)


def _resumed(head: list[bytes], chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        while head:
            yield head.pop(0)
        yield from chunks
    finally:
        chunks.close()


def write_export(path: Path, paths: list[Path], layer_ids: np.ndarray, max_layer_id: int, n_rows: int, fmt: str,
                 metadata: dict[str, str] | None = None, held: HeldShards | None = None) -> int:
    """Write the export of the selected filters (see ``export_chunks``) to ``path`` atomically.

    The file is written as a temporary file in the same directory, fsynced, then renamed over
    ``path`` (and the directory fsynced): ``path`` is the complete export or is left as it was.
    On any error (or interruption) the temporary file is removed.

    Parameters
    ----------
    path : Path
        The destination file; its directory must exist.
    paths, layer_ids, max_layer_id, n_rows, fmt, metadata, held
        As for ``export_chunks``.

    Returns
    -------
    n_rows : int
        The number of rows written.
    """
    destination(path)  # a path that cannot be written is refused before any shard is read
    chunks = export_chunks(paths, layer_ids, max_layer_id, n_rows, fmt, metadata, held=held)
    try:
        with atomic_file(path) as f:
            for chunk in chunks:
                f.write(chunk)
    finally:
        chunks.close()  # stops the reading threads now, not when the generator is collected
    return n_rows


# -- reading ------------------------------------------------------------------------------------

def _table(columns: list[pa.Array]) -> pa.Table:
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _one_array(column: pa.ChunkedArray) -> pa.Array:
    # A row group read whole is one chunk per column: taken as is, not copied.
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _prepare_npy(columns: list[pa.Array]) -> bytes:
    """The rows as the bytes of a NPY_DTYPE array (built in the reading thread: numpy's strided
    copies release the GIL)."""
    n = len(columns[0])
    rec = np.empty(n, dtype=NPY_DTYPE)
    rec["filter_id"] = columns[0].to_numpy()
    rec["model_id"] = columns[1].to_numpy()
    rec["layer_id"] = columns[2].to_numpy()
    w = rec["w"].reshape(n, 9)
    for j in range(9):
        w[:, j] = columns[3 + j].to_numpy()
    return rec.tobytes()


def _prepare_csv(columns: list[pa.Array]) -> bytes:
    """The rows as CSV lines, no header (pyarrow writes float32 as the shortest decimal that parses
    back to the same value; it releases the GIL)."""
    sink = pa.BufferOutputStream()
    if len(columns[0]):
        pa_csv.write_csv(_table(columns), sink, CSV_OPTIONS)
    return sink.getvalue().to_pybytes()


_prepare = {"parquet": _table, "arrow": _table, "npy": _prepare_npy, "csv": _prepare_csv}


def _row_groups(units: list[tuple[Path, int]], held: HeldShards, own: bool, selected: np.ndarray, n_rows: int,
                threads: int | None, prepare):
    """(rows, prepare(columns of the selected rows)) of each row group of ``units``, in order.

    Row groups are read in a pool of threads, at most LOOKAHEAD_PER_THREAD per thread ahead of the
    consumer (ThreadPoolExecutor.map would read the whole selection ahead of a slow consumer). Each
    thread memory-maps its shard and renews the mapping every REMAP_ROW_GROUPS row groups, as
    ``scan._map_units`` does, so that the mapped pages never add up.
    """
    local = threading.local()
    open_files: dict[int, ShardReader] = {}  # each thread's current file, closed at the end
    n_layer_slots = len(selected)

    def read(path: Path, row_group: int):
        with _reading(path):
            f = getattr(local, "file", None)
            if f is None or local.path != path or local.uses >= REMAP_ROW_GROUPS:
                if f is not None:
                    f.close()
                # The old file is dropped here: its mapping goes with the last reference to it.
                f = local.file = open_files[threading.get_ident()] = held.open(path)
                local.path, local.uses = path, 0
            local.uses += 1
            table = f.read_row_group(row_group, columns=COLUMNS, use_threads=False)
        columns = [_one_array(table.column(c)) for c in COLUMNS]
        layer = columns[2].to_numpy()
        filter_id = columns[0].to_numpy()
        if len(layer):
            if not (0 <= layer.min() and layer.max() < n_layer_slots):
                raise StoreDamaged(store_name(path), f"row group {row_group} holds layer ids outside the store's "
                                                     f"[0, {n_layer_slots - 1}]")
            if not (filter_id[1:] > filter_id[:-1]).all():
                raise StoreDamaged(store_name(path), f"row group {row_group} is not sorted by filter_id")
        lo, hi = _layer_spans(path)[row_group]
        # Fast path: a row group whose layers all are selected (its statistics say so) is taken whole.
        if not (0 <= lo <= hi < n_layer_slots and selected[lo:hi + 1].all()):
            keep = selected[layer]
            if not keep.all():
                mask = pa.array(keep)
                columns = [c.filter(mask) for c in columns]
        first_last = (int(filter_id[0]), int(filter_id[-1])) if len(filter_id) else None
        return len(columns[0]), first_last, prepare(columns)

    threads = threads or min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="export")
    pending: deque = deque()
    todo = iter(units)
    total, last_id, last_path = 0, -1, None
    try:
        while True:
            while len(pending) < threads * LOOKAHEAD_PER_THREAD and (unit := next(todo, None)) is not None:
                pending.append((unit, pool.submit(read, *unit)))
            if not pending:
                break
            (path, row_group), future = pending.popleft()
            rows, first_last, prepared = future.result()
            if first_last is not None:
                if first_last[0] <= last_id:
                    raise StoreDamaged(store_name(path), f"row group {row_group} starts at filter_id {first_last[0]}, "
                                                         f"not after {last_id} (read before, in {store_name(last_path)})")
                last_id, last_path = first_last[1], path
            total += rows
            if total > n_rows:
                raise StoreDamaged(store_name(path), f"the selected layers hold more than the {n_rows:,} filters "
                                                     "the catalog counts")
            yield rows, prepared
        if total != n_rows:
            raise StoreDamaged(SHARDS, f"the selected layers hold {total:,} filters, the catalog counts {n_rows:,}")
    finally:
        # Also on GeneratorExit (a consumer stopping early) and after an error: nothing more is read,
        # the threads are joined and the files closed before this returns.
        pool.shutdown(wait=True, cancel_futures=True)
        for f in open_files.values():
            f.close()
        open_files.clear()
        if own:  # not a snapshot's: it outlives this export
            held.close()


# -- encoding -----------------------------------------------------------------------------------

class _Drain:
    """A write-only file that keeps what is written until taken: the sink of a pyarrow writer
    whose output is handed on chunk by chunk. ``tell`` counts every byte ever written (the
    Parquet writer records offsets from it)."""

    def __init__(self):
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        """Everything written since the last take."""
        data = b"".join(self._parts) if len(self._parts) != 1 else self._parts[0]
        self._parts = []
        return data


def _coalesced(row_groups) -> Iterator[pa.Table]:
    """The tables of ``row_groups`` regrouped into tables of OUTPUT_ROWS rows (the last shorter):
    a scattered selection makes small pieces, which would make small row groups and batches."""
    pieces: list[pa.Table] = []
    held = 0
    for rows, table in row_groups:
        if not rows:
            continue
        pieces.append(table)
        held += rows
        while held >= OUTPUT_ROWS:
            whole = pa.concat_tables(pieces)
            yield whole.slice(0, OUTPUT_ROWS)
            rest = whole.slice(OUTPUT_ROWS)
            pieces, held = ([rest] if len(rest) else []), len(rest)
    if held:
        yield pa.concat_tables(pieces)


def _parquet(row_groups, schema: pa.Schema, n_rows: int) -> Iterator[bytes]:
    sink = _Drain()
    writer = pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS)
    try:
        for table in _coalesced(row_groups):
            writer.write_table(table, row_group_size=OUTPUT_ROWS)
            yield sink.take()
    finally:
        row_groups.close()
    writer.close()  # the footer: only once every row is written (an error leaves the file without one)
    yield sink.take()


def _arrow(row_groups, schema: pa.Schema, n_rows: int) -> Iterator[bytes]:
    sink = _Drain()
    writer = pa.ipc.new_stream(sink, schema)
    try:
        for table in _coalesced(row_groups):
            for batch in table.combine_chunks().to_batches():
                writer.write_batch(batch)
            yield sink.take()
    finally:
        row_groups.close()
    writer.close()  # the end-of-stream marker, only after every row
    yield sink.take()


def _npy(row_groups, schema: pa.Schema, n_rows: int) -> Iterator[bytes]:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(NPY_DTYPE),
                                                  "fortran_order": False, "shape": (n_rows,)})
    try:
        yield header.getvalue()
        for rows, data in row_groups:
            if rows:
                yield data
    finally:
        row_groups.close()


def _csv(row_groups, schema: pa.Schema, n_rows: int) -> Iterator[bytes]:
    try:
        yield (",".join(COLUMNS) + "\n").encode()
        for rows, data in row_groups:
            if rows:
                yield data
    finally:
        row_groups.close()
