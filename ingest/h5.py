"""Reader of the original CNN-Filter-DB ``dataset.h5`` (docs/method.md#dataset-h5), v0.1.0 and v1.0.0.

``/filters`` (or ``/filter``) holds float16/32/64 filters shaped (N, 3, 3) or (N, 9); ``/meta`` is a
pandas DataFrame (PyTables) with one row per convolution layer and a MultiIndex
[model_id, conv_depth, conv_depth_norm]; ``filter_ids`` = "first:last", inclusive, into /filters.

The filters are streamed in blocks: each block is checked (finite), written to the shards, and
folded into the per-layer statistics (quality, moments of the scaled filters). A layer that
spans a block boundary gets a second, bounded pass for its sparsity-dependent metrics.

Layer shapes: the authors' later pipeline (onnxzoo2filterdb) adds ``in_channels`` (per group:
``w.shape[1]``) and ``out_channels`` to /meta, the layer's filters being ``w.reshape(-1, 3, 3)`` of
its (out, in, 3, 3) weight. When a row has both, n_filters must be in * out, and the layer gets
``orthogonality`` from that weight, computed as a model file's layer is (docs/method.md#dataset-h5).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cnnfilterdb.stats.quality import MAX_ORTHOGONALITY_CHANNELS, MAX_ORTHOGONALITY_FILTERS, orthogonality
from cnnfilterdb.store import StoreTransaction

from .errors import file_error
from .progress import Progress
from .rows import LayerState, insert_layers, insert_models, iter_pieces
from .sample import SAMPLE_ATTR
from .shards import ShardWriter

BLOCK_ROWS = 1 << 21  # 2M filters, 72 MB of float32 per read from /filters
INDEX_COLUMNS = ["model_id", "conv_depth", "conv_depth_norm"]
KERNEL_COLUMN = re.compile(r"^\((\d+),\s*(\d+)\) filters$")

# Original column -> models column. Both names of the visual category map to one column.
TEXT_COLUMNS = {
    "Name": "name",
    "Training-Dataset": "training_dataset",
    "Pretraining-Dataset": "pretraining_dataset",
    "producer": "producer",
    "Paper": "paper",
    "Accessible": "accessible",
    "Dataset URL": "dataset_url",
}
INT_COLUMNS = {"op_set": "op_set", "depth": "depth", "total_filters": "total_filters"}
FLOAT_COLUMNS = {"3x3_filter_share": "filter_share_3x3"}
VISUAL_CATEGORY_COLUMNS = ("Visual Category", "Datatype")  # v1.0.0, v0.1.0
VISUAL_CATEGORY_RENAMES = {"formula": "fractals"}  # v0.1.0 label -> v1.0.0 label
SHAPE_COLUMNS = ("in_channels", "out_channels")  # per layer (row), not per model: never in `extra`
HANDLED = {"model", "Task", "filter_ids", *TEXT_COLUMNS, *INT_COLUMNS, *FLOAT_COLUMNS, *VISUAL_CATEGORY_COLUMNS,
           *SHAPE_COLUMNS}
MAX_CHANNELS = 2**31 - 1  # the layers' in_channels/out_channels are INTEGER
# A layer's orthogonality needs its whole weight in float64 (as a model file's does); beyond these
# sizes (stats/quality.py's, for model files and dataset.h5 alike) it is left null and the layer is
# listed in the ingest's result.
ORTHOGONALITY_MAX_OUT = MAX_ORTHOGONALITY_CHANNELS
ORTHOGONALITY_MAX_FILTERS = MAX_ORTHOGONALITY_FILTERS


def _onnx_operator_names() -> frozenset[str]:
    import onnx.defs

    return frozenset(s.name for s in onnx.defs.get_all_schemas_with_history())


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


def _text(v) -> str | None:
    if _missing(v):
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def normalize_task(raw: str | None) -> str | None:
    """v1.0.0 labels segmentation unreliably: every label containing 'Segmentation' is 'Segmentation'."""
    if raw is None:
        return None
    return "Segmentation" if "Segmentation" in raw else raw


def _plain(v):
    """A JSON-able plain Python value of a pandas/numpy cell."""
    if _missing(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, (str, int, float, bool)) else str(v)


@dataclass
class H5Layer:
    row: int          # row of /meta (for error messages)
    model_id: int     # as in the file
    conv_depth: int
    conv_depth_norm: float
    first: int        # inclusive range into /filters
    last: int
    model: str = ""   # the model's name (for messages)
    in_channels: int | None = None   # per group, as the file gives it; both or neither
    out_channels: int | None = None

    @property
    def n(self) -> int:
        return self.last - self.first + 1

    @property
    def with_orthogonality(self) -> bool:
        """The shape is known, and the layer small enough for its orthogonality (ORTHOGONALITY_MAX_*)."""
        return (self.out_channels is not None and self.out_channels <= ORTHOGONALITY_MAX_OUT
                and self.n <= ORTHOGONALITY_MAX_FILTERS)


@dataclass
class H5Contents:
    path: Path
    filters_name: str
    n_rows: int
    dtype: np.dtype
    sample: str | None = None  # the sample marker attribute, for files written by ingest.sample
    models: list[dict] = field(default_factory=list)  # in file model_id order, keyed by models columns
    layers: list[H5Layer] = field(default_factory=list)  # sorted by first


def is_hdf5(path: Path) -> bool:
    try:
        return h5py.is_hdf5(path)
    except OSError:
        return False


def read_contents(path: Path) -> H5Contents:
    """Open and validate everything but the filter values: datasets, /meta, the filter_ids ranges.

    Returns
    -------
    H5Contents: the filters dataset's name, rows and dtype, the models (one dict of models
    columns each) and the layers sorted by their first filter. IngestError naming the file for
    anything not in the layout of docs/method.md#dataset-h5.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise file_error(path, f"not a readable HDF5 file ({e})") from None
    with f:
        name = "filters" if "filters" in f else ("filter" if "filter" in f else None)
        if name is None:
            raise file_error(path, "no /filters (or /filter) dataset")
        if "meta" not in f:
            raise file_error(path, "no /meta table")
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            raise file_error(path, f"/{name} is not a dataset")
        if ds.shape[1:] not in ((3, 3), (9,)):
            raise file_error(path, f"/{name} has shape {ds.shape}; expected (N, 3, 3) or (N, 9)")
        if ds.dtype not in (np.float16, np.float32, np.float64):
            raise file_error(path, f"/{name} has dtype {ds.dtype}; expected float16, float32 or float64")
        contents = H5Contents(path, name, int(ds.shape[0]), ds.dtype, _text(f.attrs.get(SAMPLE_ATTR)))
    try:
        meta = pd.read_hdf(path, "meta")
    except Exception as e:  # PyTables raises many types for corrupt tables
        raise file_error(path, f"/meta is not a readable pandas table ({type(e).__name__}: {e})") from None
    if not isinstance(meta, pd.DataFrame):
        raise file_error(path, "/meta is not a pandas DataFrame")
    _parse_meta(contents, meta)
    return contents


def _parse_meta(c: H5Contents, meta: pd.DataFrame) -> None:
    path = c.path
    missing_index = [n for n in INDEX_COLUMNS if n not in (meta.index.names or [])]
    if missing_index:
        if all(n in meta.columns for n in INDEX_COLUMNS):
            meta = meta.set_index(INDEX_COLUMNS)
        else:
            raise file_error(path, f"/meta index lacks {missing_index}; expected a MultiIndex {INDEX_COLUMNS}")
    meta = meta.reset_index()
    if "filter_ids" not in meta.columns:
        raise file_error(path, "/meta has no filter_ids column")
    if len(meta) == 0:
        raise file_error(path, "/meta has no rows")

    layers: list[H5Layer] = []
    for row, (mid, depth, depth_norm, ids) in enumerate(
        zip(meta["model_id"], meta["conv_depth"], meta["conv_depth_norm"], meta["filter_ids"])
    ):
        m = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", _text(ids) or "")
        if not m:
            raise file_error(path, f"/meta row {row} (model_id {mid}): filter_ids {ids!r} is not 'first:last'")
        first, last = int(m.group(1)), int(m.group(2))
        if first > last:
            raise file_error(path, f"/meta row {row} (model_id {mid}): filter_ids {first}:{last} is reversed")
        if first < 0 or last >= c.n_rows:
            raise file_error(path, f"/meta row {row} (model_id {mid}): filter_ids {first}:{last} out of range "
                              f"(/{c.filters_name} has {c.n_rows} filters)")
        try:
            depth_i, depth_norm_f = int(depth), float(depth_norm)
        except (TypeError, ValueError):
            raise file_error(path, f"/meta row {row} (model_id {mid}): conv_depth/conv_depth_norm not numeric") from None
        if not (0.0 <= depth_norm_f <= 1.0):
            raise file_error(path, f"/meta row {row} (model_id {mid}): conv_depth_norm {depth_norm_f} outside [0, 1]")
        layers.append(H5Layer(row, int(mid), depth_i, depth_norm_f, first, last))
    layers.sort(key=lambda l: l.first)
    for a, b in zip(layers, layers[1:]):
        if b.first <= a.last:
            raise file_error(path, f"/meta rows {a.row} and {b.row}: filter_ids {a.first}:{a.last} and "
                              f"{b.first}:{b.last} overlap")
    c.layers = layers

    ops = _onnx_operator_names()
    vc_col = next((col for col in VISUAL_CATEGORY_COLUMNS if col in meta.columns), None)
    first_rows = meta.drop_duplicates("model_id", keep="first")
    models = []
    seen_names: dict[str, int] = {}
    for rec in first_rows.to_dict("records"):
        mid = int(rec["model_id"])
        model = _text(rec.get("model")) or f"{path.stem}:{mid}"
        if model in seen_names:
            raise file_error(path, f"/meta: model {model!r} appears under model_id {seen_names[model]} and {mid}")
        seen_names[model] = mid
        out: dict = {"file_model_id": mid, "model": model}
        raw_task = _text(rec.get("Task"))
        out["task_raw"], out["task"] = raw_task, normalize_task(raw_task)
        vc = _text(rec.get(vc_col)) if vc_col else None
        out["visual_category"] = VISUAL_CATEGORY_RENAMES.get(vc, vc)
        for src, dst in TEXT_COLUMNS.items():
            out[dst] = _text(rec.get(src))
        for src, dst in INT_COLUMNS.items():
            out[dst] = _as_number(path, model, src, rec.get(src), int)
        for src, dst in FLOAT_COLUMNS.items():
            out[dst] = _as_number(path, model, src, rec.get(src), float)
        kernels, op_counts, extra = {}, {}, {}
        for col, v in rec.items():
            if col in HANDLED or col in INDEX_COLUMNS:
                continue
            if KERNEL_COLUMN.match(str(col)):
                if not _missing(v):
                    kernels[str(col)] = _as_number(path, model, col, v, int)
            elif col in ops:
                if not _missing(v):
                    op_counts[str(col)] = _as_number(path, model, col, v, int)
            else:
                extra[str(col)] = _plain(v)
        out["kernel_counts"], out["op_counts"] = kernels, op_counts
        out["extra"] = json.dumps(extra, allow_nan=False, default=str) if extra else None
        models.append(out)
    c.models = models
    names = {m["file_model_id"]: m["model"] for m in models}
    for layer in layers:
        layer.model = names[layer.model_id]
    _parse_shapes(c, meta)


def _parse_shapes(c: H5Contents, meta: pd.DataFrame) -> None:
    """Each layer's in_channels (per group) and out_channels from the /meta columns of the
    authors' later pipeline, when present: both or neither per row (NaN/None in both: unknown),
    each a whole number from 1 to MAX_CHANNELS, and in * out the layer's filter count."""
    present = [col for col in SHAPE_COLUMNS if col in meta.columns]
    if not present:
        return
    if len(present) == 1:
        other = next(col for col in SHAPE_COLUMNS if col not in present)
        raise file_error(c.path, f"/meta has an {present[0]} column but no {other} column; layer shapes need both")
    by_row = {layer.row: layer for layer in c.layers}
    for row, (v_in, v_out) in enumerate(zip(meta["in_channels"], meta["out_channels"])):
        layer = by_row[row]
        where = (f"/meta row {row}: model {layer.model!r}, layer at conv_depth {layer.conv_depth} "
                 f"(filter_ids {layer.first}:{layer.last})")
        values = {}
        for col, v in (("in_channels", v_in), ("out_channels", v_out)):
            try:
                values[col] = _channels(v)
            except ValueError as e:
                raise file_error(c.path, f"{where}: {col} {_shown(v)} {e}") from None
        k_in, k_out = values["in_channels"], values["out_channels"]
        if (k_in is None) != (k_out is None):
            given, missing = ("in_channels", "out_channels") if k_out is None else ("out_channels", "in_channels")
            raise file_error(c.path, f"{where}: {given} is {values[given]} but {missing} is missing; "
                                     "a layer's shape needs both (or neither)")
        if k_in is None:
            continue
        if k_in * k_out != layer.n:
            raise file_error(c.path, f"{where}: {layer.n} filters, but in_channels {k_in} x out_channels {k_out} "
                                     f"= {k_in * k_out}; the layer's filters must be its (out, in, 3, 3) weight")
        layer.in_channels, layer.out_channels = k_in, k_out


def _shown(v) -> str:
    """A cell for a message: its repr, cut short."""
    r = repr(v.item() if isinstance(v, np.generic) else v)
    return r if len(r) <= 40 else r[:37] + "..."


def _channels(v) -> int | None:
    """A channel count of /meta: None if missing (None, NaN, NA, an empty string), else a whole
    number from 1 to MAX_CHANNELS; ValueError (the reason) for anything else."""
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        text = v.strip()
        if not text:
            return None
        if re.fullmatch(r"[+-]?\d{1,30}", text):
            v = int(text)
        else:
            try:
                v = float(text)
            except ValueError:
                raise ValueError("is not a whole number") from None
            if math.isnan(v):  # a NaN spelled out is not a missing value
                raise ValueError("is not a whole number")
    elif _missing(v) or (isinstance(v, np.floating) and np.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        raise ValueError("is a boolean, not a whole number")
    if isinstance(v, (int, np.integer)):
        k = int(v)
    elif isinstance(v, (float, np.floating)):
        x = float(v)
        if not math.isfinite(x) or x != math.floor(x):
            raise ValueError("is not a whole number")
        k = int(x)
    else:
        raise ValueError(f"is a {type(v).__name__}, not a whole number")
    if k < 1:
        raise ValueError("must be at least 1")
    if k > MAX_CHANNELS:
        raise ValueError(f"is too large (at most {MAX_CHANNELS})")
    return k


def _as_number(path: Path, model: str, column: str, v, kind):
    if _missing(v):
        return None
    try:
        x = float(v)
        if kind is int:
            if x != int(x):
                raise ValueError
            return int(x)
        return x
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise file_error(path, f"/meta model {model!r}: column {column!r} value {v!r} is not a {kind.__name__}") from None


# Models columns compared when a file's model is already in the store under its name: what the
# file states of it (not where it came from: `source` names the file, which may have moved).
COMPARED = ["name", "task", "task_raw", "visual_category", "training_dataset", "pretraining_dataset", "producer",
            "op_set", "depth", "paper", "accessible", "dataset_url", "total_filters", "filter_share_3x3",
            "kernel_counts", "op_counts", "extra", "n_filters", "n_layers"]
FIRST = 5  # names listed in a result's {count, first} summaries


@dataclass
class H5Ingest:
    """What ``ingest_h5`` did with one file: its models added, and those already in the store
    under their names, either identical (``present``: skipped) or not (``differs``: left as
    stored, each with the fields that differ)."""
    added: list[str] = field(default_factory=list)
    n_filters: int = 0
    present: list[str] = field(default_factory=list)
    differs: list[dict] = field(default_factory=list)
    # Added layers whose shape is known but too large for their orthogonality (left null).
    no_orthogonality: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        out = {"added_models": {"count": len(self.added), "first": self.added[:FIRST]},
               "present": {"count": len(self.present), "first": self.present[:FIRST]},
               "differs": {"count": len(self.differs), "first": self.differs[:FIRST]}}
        if self.no_orthogonality:
            out["orthogonality_skipped"] = {"count": len(self.no_orthogonality),
                                            "first": self.no_orthogonality[:FIRST],
                                            "reason": f"more than {ORTHOGONALITY_MAX_OUT} output channels or "
                                                      f"{ORTHOGONALITY_MAX_FILTERS} filters in the layer"}
        return out


def _same(field_name: str, stored, given) -> bool:
    if field_name in ("kernel_counts", "op_counts"):
        return dict(stored or {}) == dict(given or {})
    if field_name == "extra":
        return (None if stored is None else json.loads(stored)) == (None if given is None else json.loads(given))
    return stored == given


def _stored_differences(tx: StoreTransaction, models: list[dict]) -> dict[str, dict]:
    """For each of ``models`` (the file's, with n_filters and n_layers) stored under its name:
    {field: {"stored": ..., "file": ...}} for every compared field that differs ({} if none)."""
    if not models:
        return {}
    rows = tx.con.execute(f"SELECT model, {', '.join(COMPARED)} FROM models WHERE list_contains(?, model)",
                          [[m["model"] for m in models]]).fetchall()
    stored = {r[0]: dict(zip(COMPARED, r[1:])) for r in rows}
    out = {}
    for m in models:
        s = stored[m["model"]]
        out[m["model"]] = {k: {"stored": _plain_json(k, s[k]), "file": _plain_json(k, m.get(k))}
                           for k in COMPARED if not _same(k, s[k], m.get(k))}
    return out


def _plain_json(field_name: str, v):
    return json.loads(v) if field_name == "extra" and v is not None else v


def ingest_h5(path: Path, tx: StoreTransaction, progress: Progress) -> H5Ingest:
    """Stream one dataset.h5 into the transaction: its models not yet in the store (by ``model``
    name) are added; those present are skipped, and reported with the fields that differ when
    the stored model is not as in the file (left as stored: `cnnfilterdb label` changes metadata).
    A file whose models are all present is a no-op."""
    c = read_contents(path)
    file_models = {m["file_model_id"] for m in c.models}
    for layer in c.layers:
        if layer.model_id not in file_models:
            raise file_error(path, f"/meta row {layer.row}: model_id {layer.model_id} has no model row")
    counts: dict[int, tuple[int, int]] = {}
    for l in c.layers:
        n, k = counts.get(l.model_id, (0, 0))
        counts[l.model_id] = (n + l.n, k + 1)
    for m in c.models:
        m["n_filters"], m["n_layers"] = counts[m["file_model_id"]]

    in_store = {m for (m,) in tx.con.execute("SELECT model FROM models").fetchall()}
    result = H5Ingest()
    differences = _stored_differences(tx, [m for m in c.models if m["model"] in in_store])
    for name, fields in differences.items():
        result.present.append(name)
        if fields:
            result.differs.append({"model": name, "fields": fields})
    new = [m for m in c.models if m["model"] not in in_store]
    if not new:
        return result

    # Ids: on an empty store the file's filter and model ids are kept; otherwise they follow the
    # store's. Layers of models already present are left out, and the filter ids close up over
    # them: each run of consecutive layers that are written keeps its own spacing, and the next
    # run starts right after it. So a model's filter and layer ids stay as contiguous as in the file.
    new_ids = {m["file_model_id"] for m in new}
    model_offset = tx.next_model_id()
    if len(new) == len(c.models):
        model_ids = {fid: model_offset + fid for fid in new_ids}
    else:  # numbered in the file's order, without gaps for the models left out
        model_ids = {fid: model_offset + k for k, fid in enumerate(sorted(new_ids))}
    layer_base = tx.next_layer_id()
    next_filter = tx.next_filter_id()
    layers, offsets = [], []
    offset, previous_written = None, False
    for layer in c.layers:
        if layer.model_id not in new_ids:
            previous_written = False
            continue
        if offset is None:
            offset = 0 if next_filter == 0 else next_filter - layer.first
        elif not previous_written:
            offset = layers[-1].last + offset + 1 - layer.first
        layers.append(layer)
        offsets.append(offset)
        previous_written = True
    states = [LayerState(layer_base + i, model_ids[l.model_id]) for i, l in enumerate(layers)]
    sub = H5Contents(c.path, c.filters_name, c.n_rows, c.dtype, c.sample, new, layers)

    orthogonalities = _stream_filters(sub, states, np.array(offsets, dtype=np.int64), tx, progress)

    source = str(c.path.resolve())
    if c.sample:
        source = f"SAMPLE ({c.sample}): {source}"
    insert_models(tx, [{**{k: v for k, v in m.items() if k != "file_model_id"},
                        "model_id": model_ids[m["file_model_id"]], "source": source, "sha256": None}
                       for m in new])
    insert_layers(tx, [{"layer_id": st.layer_id, "model_id": st.model_id, "conv_depth": l.conv_depth,
                        "conv_depth_norm": l.conv_depth_norm, "filter_id_first": l.first + off,
                        "filter_id_last": l.last + off, "n_filters": l.n,
                        # The file gives in_channels per group and no groups: see docs/method.md#dataset-h5.
                        "in_channels": l.in_channels, "out_channels": l.out_channels, "groups": None,
                        **st.quality_row(o)}
                       for st, l, off, o in zip(states, layers, offsets, orthogonalities)])
    tx.insert_layer_moments([s.layer_id for s in states], [s.scaled for s in states])
    result.added = [m["model"] for m in new]
    result.no_orthogonality = [{"model": l.model, "filter_ids": f"{l.first}:{l.last}", "in_channels": l.in_channels,
                                "out_channels": l.out_channels}
                               for l in layers if l.out_channels is not None and not l.with_orthogonality]
    result.n_filters = sum(l.n for l in layers)
    tx.record_ingest(str(path.resolve()), "dataset.h5", None, len(new), result.n_filters)
    return result


def _read_block(ds: h5py.Dataset, a: int, b: int, path: Path, raw: np.ndarray | None = None) -> np.ndarray:
    """Filters a..b-1 as float32 (n, 9), read into ``raw`` (a reused buffer) when given."""
    n = b - a
    try:
        if raw is None:
            X = ds[a:b]
        else:
            ds.read_direct(raw, source_sel=np.s_[a:b], dest_sel=np.s_[0:n])
            X = raw[:n]
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        raise file_error(path, f"cannot read filters {a}..{b - 1} ({e}); the file may be truncated") from None
    return np.asarray(X, dtype=np.float32).reshape(n, 9)


def _transpose_into(X: np.ndarray, out: np.ndarray, step: int = 1 << 14) -> None:
    """out[:, i] = X[i] for X (n, 9), in cache-sized steps (a strided whole-array copy is slower)."""
    for s in range(0, len(X), step):
        out[:, s:s + step] = X[s:s + step].T


def _layer_orthogonality(layer: H5Layer, X: np.ndarray) -> float | None:
    """orthogonality of the layer's filters X (float32 (n, 9), as stored) read as its
    (out, in, 3, 3) weight: the same array, so the same bits, as a model file's layer gives."""
    return orthogonality(X.reshape(layer.out_channels, layer.in_channels, 3, 3))


def _stream_filters(c: H5Contents, states: list[LayerState], offsets: np.ndarray,
                    tx: StoreTransaction, progress: Progress) -> list[float | None]:
    """The filters of ``c.layers`` into the shards, layer j's ids shifted by ``offsets[j]``;
    returns each layer's orthogonality (None where its shape is unknown or too large)."""
    ortho: list[float | None] = [None] * len(c.layers)
    firsts = np.array([l.first for l in c.layers], dtype=np.int64)
    lasts = np.array([l.last for l in c.layers], dtype=np.int64)
    total = int((lasts - firsts + 1).sum())
    writer = ShardWriter(tx, batch_rows=BLOCK_ROWS)
    bar = progress.bar(total, f"{c.path.name}: filters")
    try:
        with h5py.File(c.path, "r") as f:
            ds = f[c.filters_name]
            raw = np.empty((BLOCK_ROWS, *ds.shape[1:]), dtype=ds.dtype)  # reused read buffer
            span_first, span_last = int(firsts.min()), int(lasts.max())
            li = 0  # first layer that may intersect the current block
            for a in range(span_first, span_last + 1, BLOCK_ROWS):
                b = min(a + BLOCK_ROWS, span_last + 1)
                X = _read_block(ds, a, b, c.path, raw)
                # Checked after the cast to float32: a float64 beyond float32's range is an Inf too.
                if not np.isfinite(X).all():
                    i = int(np.argmax(~np.isfinite(X).all(axis=1)))
                    raise file_error(c.path, f"filter {a + i} (/{c.filters_name}[{a + i}]) is not finite: {X[i].tolist()}")
                while li < len(c.layers) and lasts[li] < a:
                    li += 1
                batch = writer.take()
                segments = []  # (layer index, start in batch, end in batch, whole layer in block)
                j = li
                while j < len(c.layers) and firsts[j] < b:
                    lo, hi = max(int(firsts[j]), a) - a, min(int(lasts[j]) + 1, b) - a
                    o, n = batch.n, hi - lo
                    # Transposed, (9, n): the shard writer takes the weight columns as they are,
                    # and every reduction below runs over contiguous memory. Filters that no
                    # layer claims (gaps between layers) are not stored.
                    _transpose_into(X[lo:hi], batch.w[:, o:o + n])
                    batch.filter_id[o:o + n] = np.arange(a + lo + offsets[j], a + hi + offsets[j])
                    batch.model_id[o:o + n] = states[j].model_id
                    batch.layer_id[o:o + n] = states[j].layer_id
                    batch.n += n
                    segments.append((j, o, o + n, bool(firsts[j] >= a and lasts[j] < b)))
                    j += 1
                for k, o, e, whole in segments:
                    states[k].spans_blocks |= not whole
                    states[k].fold(batch.w[:, o:e], whole)
                    if whole and c.layers[k].with_orthogonality:
                        lo = int(firsts[k]) - a
                        ortho[k] = _layer_orthogonality(c.layers[k], X[lo:lo + c.layers[k].n])
                writer.write(batch)
                bar.update(batch.n)
            # Second pass for layers cut by block boundaries: now that their maximum is known.
            # Their orthogonality reads the whole layer once (it needs the whole weight).
            for k, st in enumerate(states):
                if st.spans_blocks:
                    for a in range(int(firsts[k]), int(lasts[k]) + 1, BLOCK_ROWS):
                        b = min(a + BLOCK_ROWS, int(lasts[k]) + 1)
                        for z, p in iter_pieces(np.ascontiguousarray(_read_block(ds, a, b, c.path).T)):
                            st.quality.add_thresholded(z, p)
                    if c.layers[k].with_orthogonality:
                        W = _read_block(ds, int(firsts[k]), int(lasts[k]) + 1, c.path)
                        ortho[k] = _layer_orthogonality(c.layers[k], W)
                        del W
    finally:
        bar.close()
        writer_error = None
        try:
            writer.close()
        except BaseException as e:
            writer_error = e
    if writer_error is not None:
        raise writer_error
    return ortho
