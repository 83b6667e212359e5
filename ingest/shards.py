"""Writer of the filter shards: Parquet files sorted by filter_id, written in a background thread.

Encodings were chosen by measurement (bench/, docs/method.md#scale): trained float32 weights are
random-like and barely compress, so the nine weight columns are PLAIN and uncompressed (about
1.6e7 rows/s, 1.00x raw float32); filter_id is DELTA_BINARY_PACKED (sorted, nearly free) and
model_id/layer_id are dictionary/RLE encoded (long runs, nearly free). Statistics are written for
the id columns only, so that DuckDB skips row groups on filter_id, model_id and layer_id.
"""
from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnnfilterdb.atomic import fsync_path
from cnnfilterdb.layout import WEIGHT_COLUMNS, sha256_update
from cnnfilterdb.store import StoreTransaction

# Every column is required (NOT NULL): pages then carry no definition levels, which halves the
# cost of decoding the weights on every scan (6 against 14 ns per row here) and speeds writing.
SCHEMA = pa.schema(
    [pa.field("filter_id", pa.int64(), nullable=False), pa.field("model_id", pa.int32(), nullable=False),
     pa.field("layer_id", pa.int32(), nullable=False)]
    + [pa.field(w, pa.float32(), nullable=False) for w in WEIGHT_COLUMNS]
)
ID_COLUMNS = ["filter_id", "model_id", "layer_id"]
PARQUET_OPTIONS = dict(
    compression="none",
    use_dictionary=["model_id", "layer_id"],
    column_encoding={"filter_id": "DELTA_BINARY_PACKED", **{w: "PLAIN" for w in WEIGHT_COLUMNS}},
    write_statistics=ID_COLUMNS,
    sorting_columns=[pq.SortingColumn(0)],
    # Larger encoder batches: faster writes, same file size. Row groups of 128K rows with 1 MiB
    # pages keep a layer's filters (a filter_id range) to one small read: 3.8 ms instead of 6.8 ms
    # with 1M-row groups, for 24 -> 17 M rows/s of writing (bench/, measured on 2 cores).
    write_batch_size=1 << 16,
    data_page_size=1 << 20,
)


class ShardWriter:
    """Appends rows (filter_id, model_id, layer_id, w0..w8) in filter_id order to new shards.

    The caller fills a ``Batch`` from ``take()`` and hands it to ``write``; a writer thread encodes
    it (pyarrow releases the GIL, so the caller's numpy work overlaps the encoding) and returns
    it to the pool. A fixed pool of ``n_batches`` bounds memory, and reusing the buffers avoids
    the page faults of fresh large arrays.
    """

    def __init__(self, tx: StoreTransaction, batch_rows: int, shard_rows: int = 1 << 25,
                 row_group_rows: int = 1 << 17, n_batches: int = 3):
        self.tx = tx
        self.shard_rows = shard_rows
        self.row_group_rows = row_group_rows
        self._free: queue.Queue = queue.Queue()
        for _ in range(n_batches):
            self._free.put(Batch(batch_rows))
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._digest = None  # sha256 of the current shard's bytes up to offset _hashed
        self._hashed = 0
        self._rows = 0
        self._first = self._last = -1
        self._finished: list[tuple[Path, int, int, int, str]] = []  # path, rows, first and last id, sha256
        self._next_id = 0
        self._current: Batch | None = None  # the batch write_rows is filling
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def take(self) -> Batch:
        """An empty batch from the pool (waits while all are being written)."""
        self._raise_if_failed()
        batch = self._free.get()
        batch.n = 0
        return batch

    @property
    def next_filter_id(self) -> int:
        """One past the last filter_id handed to the writer (0 before any)."""
        return self._next_id

    def write_rows(self, filter_ids: np.ndarray, model_id: int, layer_id: int, Xt: np.ndarray) -> None:
        """Append the rows of one layer (Xt float32 (9, n)); small layers share a batch."""
        n = len(filter_ids)
        start = 0
        while start < n:
            if self._current is None:
                self._current = self.take()
            b = self._current
            k = min(n - start, b.w.shape[1] - b.n)
            o = b.n
            b.filter_id[o:o + k] = filter_ids[start:start + k]
            b.model_id[o:o + k] = model_id
            b.layer_id[o:o + k] = layer_id
            b.w[:, o:o + k] = Xt[:, start:start + k]
            b.n += k
            start += k
            if b.n == b.w.shape[1]:
                self._current = None
                self.write(b)
        if n:
            self._next_id = int(filter_ids[-1]) + 1

    def write(self, batch: Batch) -> None:
        """Queue the first ``batch.n`` rows of the batch; the caller must not touch it afterwards."""
        self._raise_if_failed()
        if batch.n:
            self._next_id = max(self._next_id, int(batch.filter_id[batch.n - 1]) + 1)
        self._queue.put(batch)

    def close(self) -> None:
        """Flush and register every shard with the transaction; raises the writer's error if any."""
        if self._current is not None and self._current.n and self._error is None:
            self._queue.put(self._current)
        self._current = None
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()
        # Registered here, on the caller's thread: a DuckDB connection is not shared across threads.
        for path, rows, first, last, sha256 in self._finished:
            self.tx.add_shard(path, rows, first, last, sha256)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                break
            try:
                if self._error is None:
                    n = batch.n
                    self._append(batch.filter_id[:n], batch.model_id[:n], batch.layer_id[:n], batch.w[:, :n])
            except BaseException as e:  # handed to the producer thread
                self._error = e
            finally:
                self._free.put(batch)  # also after an error, so that the producer never blocks
        try:
            if self._error is None:
                self._finish_shard()
        except BaseException as e:
            self._error = e

    def _append(self, filter_ids, model_ids, layer_ids, Xt) -> None:
        start = 0
        n = len(filter_ids)
        while start < n:
            if self._writer is None:
                self._path = self.tx.new_shard_path()
                self._writer = pq.ParquetWriter(self._path, SCHEMA, **PARQUET_OPTIONS)
                self._digest, self._hashed = hashlib.sha256(), 0
                self._rows = 0
                self._first = int(filter_ids[start])
            take = min(n - start, self.shard_rows - self._rows)
            sl = slice(start, start + take)
            arrays = [pa.array(filter_ids[sl]), pa.array(model_ids[sl]), pa.array(layer_ids[sl])]
            arrays += [pa.array(Xt[j, sl]) for j in range(9)]
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA), row_group_size=self.row_group_rows)
            # Written bytes are final (Parquet only appends): hashed now, back from the page cache,
            # while the producer works, rather than the whole shard after its close.
            self._hashed = sha256_update(self._digest, self._path, self._hashed)
            self._rows += take
            self._last = int(filter_ids[start + take - 1])
            start += take
            if self._rows >= self.shard_rows:
                self._finish_shard()

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        sha256_update(self._digest, self._path, self._hashed)  # the last row groups and the footer
        fsync_path(self._path)  # here, off the producer's thread
        self._finished.append((self._path, self._rows, self._first, self._last, self._digest.hexdigest()))
        self._writer = None


class Batch:
    """Reusable row buffers of one write: ids and the weights transposed, (9, rows) float32."""

    def __init__(self, rows: int):
        self.n = 0
        self.filter_id = np.empty(rows, dtype=np.int64)
        self.model_id = np.empty(rows, dtype=np.int32)
        self.layer_id = np.empty(rows, dtype=np.int32)
        self.w = np.empty((9, rows), dtype=np.float32)
