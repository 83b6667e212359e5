"""What every reader writes besides the filters: model and layer rows, and per-layer statistics."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from cnnfilterdb.stats.basis import peak_scale_columns
from cnnfilterdb.stats.moments import Moments
from cnnfilterdb.stats.quality import LayerQualityAccumulator, column_peaks
from cnnfilterdb.store import StoreTransaction

PIECE_COLUMNS = 1 << 15  # filters per piece of float64 work: stays in the CPU caches
MAP = pa.map_(pa.string(), pa.int64())
MODEL_SCHEMA = pa.schema([
    ("model_id", pa.int32()), ("model", pa.string()), ("name", pa.string()), ("task", pa.string()),
    ("task_raw", pa.string()), ("visual_category", pa.string()), ("training_dataset", pa.string()),
    ("pretraining_dataset", pa.string()), ("producer", pa.string()), ("op_set", pa.int32()),
    ("depth", pa.int32()), ("paper", pa.string()), ("accessible", pa.string()),
    ("dataset_url", pa.string()), ("total_filters", pa.int64()), ("filter_share_3x3", pa.float64()),
    ("n_filters", pa.int64()), ("n_layers", pa.int32()), ("source", pa.string()), ("sha256", pa.string()),
    ("kernel_counts", MAP), ("op_counts", MAP), ("extra", pa.string()),
])
LAYER_SCHEMA = pa.schema([
    ("layer_id", pa.int32()), ("model_id", pa.int32()), ("conv_depth", pa.int32()), ("conv_depth_norm", pa.float64()),
    ("filter_id_first", pa.int64()), ("filter_id_last", pa.int64()), ("n_filters", pa.int64()),
    ("in_channels", pa.int32()), ("out_channels", pa.int32()), ("groups", pa.int32()),
    ("sparsity", pa.float64()), ("variance_entropy", pa.float64()), ("variance_entropy_norm", pa.float64()),
    ("variance_entropy_clean", pa.float64()), ("orthogonality", pa.float64()),
])


def insert_models(tx: StoreTransaction, rows: list[dict]) -> None:
    """Rows keyed by the models columns; kernel_counts/op_counts dicts, extra a JSON string or None."""
    rows = [{**r, "kernel_counts": list((r.get("kernel_counts") or {}).items()),
             "op_counts": list((r.get("op_counts") or {}).items())} for r in rows]
    t = pa.Table.from_pylist([{k: r.get(k) for k in MODEL_SCHEMA.names} for r in rows], schema=MODEL_SCHEMA)
    tx.con.register("_new_models", t)
    tx.con.execute("INSERT INTO _models BY NAME SELECT * REPLACE (extra::JSON AS extra), ? AS version_added, "
                   "? AS version_from FROM _new_models", [tx.version, tx.version])
    tx.con.unregister("_new_models")


def insert_layers(tx: StoreTransaction, rows: list[dict]) -> None:
    """Rows keyed by the layers columns but depth_bin, which the depth_bin macro derives."""
    t = pa.Table.from_pylist([{k: r.get(k) for k in LAYER_SCHEMA.names} for r in rows], schema=LAYER_SCHEMA)
    tx.con.register("_new_layers", t)
    tx.con.execute("INSERT INTO _layers BY NAME SELECT *, depth_bin(conv_depth_norm) AS depth_bin FROM _new_layers")
    tx.con.unregister("_new_layers")


def iter_pieces(columns) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cache-sized float64 pieces of nine weight columns, with the filters' peaks.

    ``columns`` is a (9, n) array or nine (n,) arrays. Each piece is (10, m), m <= PIECE_COLUMNS:
    the filters in rows 0..8 (one per column) and a row of ones (see ``Moments.of_augmented``).
    The piece is a reused buffer, valid only until the next iteration.
    """
    n = len(columns[0])
    buf = np.ones((10, min(n, PIECE_COLUMNS)), dtype=np.float64)
    for s in range(0, n, PIECE_COLUMNS):
        m = min(PIECE_COLUMNS, n - s)
        z = buf[:, :m]
        for j in range(9):
            z[j] = columns[j][s:s + m]
        # Peaks from the float32 source when there is one: exact, and half the bytes to scan.
        src = columns[:, s:s + m] if isinstance(columns, np.ndarray) else None
        yield z, (column_peaks(src) if src is not None else column_peaks(z[:9])).astype(np.float64)


@dataclass
class LayerState:
    """A layer's statistics while its filters stream by."""
    layer_id: int
    model_id: int
    quality: LayerQualityAccumulator = field(default_factory=LayerQualityAccumulator)
    scaled: Moments = field(default_factory=Moments)
    spans_blocks: bool = False

    def fold(self, Xt: np.ndarray, whole: bool) -> None:
        """Fold filters (float32 (9, n), one per column) into the statistics, in cache-sized pieces.

        ``whole``: these are all the layer's filters, so its maximum (the sparsity threshold) is
        known now and the second pass of the quality metrics runs on the same pieces.
        """
        if whole:
            self.quality.see_peaks(column_peaks(Xt))
        scaled = None
        for z, p in iter_pieces(Xt):
            m = self.quality.add(z, p)
            if whole:
                self.quality.add_thresholded(z, p, m)
            if scaled is None or scaled.shape[1] < z.shape[1]:
                scaled = np.ones_like(z)
            s = scaled[:, :z.shape[1]]
            peak_scale_columns(z[:9], p, out=s[:9])
            self.scaled = self.scaled.merge(Moments.of_augmented(s))

    def quality_row(self, orthogonality: float | None = None) -> dict:
        q = self.quality.result(orthogonality)
        return {"sparsity": q.sparsity, "variance_entropy": q.variance_entropy,
                "variance_entropy_norm": q.variance_entropy_norm,
                "variance_entropy_clean": q.variance_entropy_clean, "orthogonality": q.orthogonality}
