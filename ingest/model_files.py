"""Writing model files (ONNX, PyTorch, safetensors, npz) into a store transaction."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cnnfilterdb.checked import CheckedLayer, CheckedModel
from cnnfilterdb.stats.quality import orthogonality, orthogonality_work
from cnnfilterdb.store import StoreTransaction

from .errors import IngestError
from .models import CONV_OPS, ExtractedModel, detect, read_model
from .rows import LayerState, insert_layers, insert_models
from .shards import ShardWriter

# Metadata a user gives per file (flags or manifest columns), as models columns.
META_FIELDS = ["model", "name", "task", "visual_category", "training_dataset", "pretraining_dataset", "paper",
               "dataset_url", "accessible"]


def stored_model_with(tx: StoreTransaction, sha: str) -> str | None:
    """The model ingested from a file with this sha256, if any."""
    row = tx.con.execute("SELECT model FROM models WHERE sha256 = ?", [sha]).fetchone()
    return row[0] if row else None


def metadata_differences(tx: StoreTransaction, model: str, meta: dict) -> dict[str, dict]:
    """The metadata given for a file already in the store (flags or manifest) that differs from
    its stored model's: {field: {"stored": value, "given": value}}. A field not given is no
    difference; a task is compared as it was given (task_raw), not as normalized."""
    given = {k: v for k, v in meta.items() if k in META_FIELDS and v is not None}
    if not given:
        return {}
    columns = [("coalesce(task_raw, task)" if k == "task" else k) for k in given]
    row = tx.con.execute(f"SELECT {', '.join(columns)} FROM models WHERE model = ?", [model]).fetchone()
    return {k: {"stored": stored, "given": v} for (k, v), stored in zip(given.items(), row) if stored != v}


def relabel_hint(model: str, differences: dict[str, dict], db: Path | None = None) -> str:
    """The command that gives the stored model the metadata given now (`cnnfilterdb label`);
    a different model name is not a label: the model is removed and the file ingested again."""
    import shlex

    db_arg = f" --db {shlex.quote(str(db))}" if db is not None else ""
    fields = {k: d["given"] for k, d in differences.items() if k != "model"}
    hints = []
    if fields:
        hints.append(f"cnnfilterdb label {shlex.quote(model)}"
                     + "".join(f" --{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in fields.items()) + db_arg)
    if "model" in differences:
        hints.append(f"cnnfilterdb remove {shlex.quote(model)}{db_arg}, then ingest the file again with "
                     f"--model {shlex.quote(str(differences['model']['given']))}")
    return " or ".join(hints) if len(hints) == 1 else f"{hints[0]}; and to rename it: {hints[1]}"


def model_layers(m: ExtractedModel, first_layer_id: int = 0, model_id: int = 0) -> Iterator[tuple[CheckedLayer, LayerState]]:
    """Each 3x3 convolution of ``m`` as a layer (``checked.CheckedLayer``: its filters, conv depth,
    shape and quality metrics) with the statistics folded from its filters (the moments a commit
    stores): what an ingest stores and what a check reports, computed by this one function."""
    layer_id = first_layer_id
    for conv in m.convs:
        if conv.op not in CONV_OPS or conv.weight.shape[2:] != (3, 3):
            continue
        st = LayerState(layer_id, model_id)
        Xt = np.ascontiguousarray(conv.weight.reshape(-1, 9).T)
        st.fold(Xt, whole=True)
        out_channels, in_per_group = conv.weight.shape[:2]
        yield CheckedLayer(name=conv.name, conv_depth=conv.level,
                           conv_depth_norm=conv.level / (m.n_levels - 1) if m.n_levels > 1 else 0.0,
                           in_channels=in_per_group * conv.groups, out_channels=out_channels, groups=conv.groups,
                           metrics=st.quality_row(orthogonality(conv.weight)), columns=Xt), st
        layer_id += 1


def read_checked(path: Path, shown: str | None = None, max_unpacked: int | None = None, *,
                 max_layers: int | None = None, max_filters: int | None = None, max_work: int | None = None,
                 external_data: bool = True) -> CheckedModel:
    """A model file read and checked exactly as an ingest reads it (``read_model``: every format
    of docs/method.md#model-files, the same errors), as a ``checked.CheckedModel`` for
    ``check.check``, named after ``shown`` (an upload's file name; default the path's). IngestError
    naming the file as ``shown``: not a model, no 3x3 convolution, a NaN weight, unreadable, a
    zip that would unpack to more than ``max_unpacked`` bytes (``models.check_unpacked``), more
    than ``max_layers`` layers of 3x3 filters, ``max_filters`` filters, or ``max_work``
    multiply-adds of the layers' orthogonality (``stats.quality.orthogonality_work``: out^2 pairs
    a layer; counted from the shapes, before any is computed on), or (``external_data`` False: an upload) an ONNX model keeping
    tensors in other files."""
    import hashlib

    path = Path(path)
    shown = shown or str(path)
    if path.is_dir():
        raise IngestError(f"{shown}: is a directory; a check reads one model file (an ingest takes folders)")
    try:
        kind = detect(path)
        if kind is None:
            raise IngestError(f"{path}: not a model file (ONNX, PyTorch .pt/.pth, safetensors or .npz, read by content)")
        m = read_model(path, kind, max_unpacked=max_unpacked, external_data=external_data)
    except IngestError as e:  # the upload's name, not a temporary file's
        raise IngestError(str(e).replace(str(path), shown)) from None
    shapes = [c.weight.shape for c in m.convs if c.op in CONV_OPS and c.weight.shape[2:] == (3, 3)]
    n_filters = sum(int(s[0]) * int(s[1]) for s in shapes)
    if max_layers is not None and len(shapes) > max_layers:
        raise IngestError(f"{shown}: holds {len(shapes):,} layers of 3x3 filters, more than the {max_layers:,} a check "
                          "takes here")
    if max_filters is not None and n_filters > max_filters:
        raise IngestError(f"{shown}: holds {n_filters:,} 3x3 filters, more than the {max_filters:,} a check takes here")
    work = sum(orthogonality_work(int(s[0]), int(s[1]) * 9) for s in shapes)
    if max_work is not None and work > max_work:
        raise IngestError(f"{shown}: its layers' orthogonality (every pair of output channels) is {work:.2g} "
                          f"multiply-adds, more than the {max_work:.2g} a check takes here")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return CheckedModel(name=Path(shown).name, kind=kind, sha256=h.hexdigest(), bytes=path.stat().st_size,
                        producer=m.producer, op_set=m.op_set, layers=[layer for layer, _ in model_layers(m)])


def ingest_model_file(path: Path, kind: str, m: ExtractedModel, meta: dict, tx: StoreTransaction,
                      writer: ShardWriter, sha: str) -> tuple[int, int]:
    """Add one model read by ``read_model`` (every check done, nothing written yet); returns (1, filters)."""
    model_id = tx.next_model_id()
    layer_id = tx.next_layer_id()
    next_filter = max(tx.next_filter_id(), writer.next_filter_id)
    name = meta.get("model") or path.stem
    taken = lambda s: tx.con.execute("SELECT count(*) FROM models WHERE model = ?", [s]).fetchone()[0] > 0  # noqa: E731
    if taken(name):
        if meta.get("model"):
            raise IngestError(f"{path}: a model named {name!r} is already in the store (from another file)")
        name = f"{name}-{sha[:8]}"

    layers = []
    for layer, st in model_layers(m, layer_id, model_id):
        n = layer.n_filters
        writer.write_rows(np.arange(next_filter, next_filter + n, dtype=np.int64), model_id, layer_id, layer.columns)
        layers.append({
            "layer_id": layer_id, "model_id": model_id, "conv_depth": layer.conv_depth,
            "conv_depth_norm": layer.conv_depth_norm, "filter_id_first": next_filter,
            "filter_id_last": next_filter + n - 1, "n_filters": n, "in_channels": layer.in_channels,
            "out_channels": layer.out_channels, "groups": layer.groups, **layer.metrics,
        })
        tx.insert_layer_moments([layer_id], [st.scaled])
        layer_id += 1
        next_filter += n

    kernels = m.kernel_counts()
    total = sum(v for k, v in kernels.items() if k != "(1, 1) filters")
    n3 = sum(l["n_filters"] for l in layers)
    task_raw = meta.get("task")
    insert_models(tx, [{
        **{k: meta.get(k) for k in META_FIELDS}, "model": name, "model_id": model_id,
        "task_raw": task_raw, "task": ("Segmentation" if task_raw and "Segmentation" in task_raw else task_raw),
        "producer": m.producer, "op_set": m.op_set, "depth": m.n_levels, "total_filters": total,
        "filter_share_3x3": (kernels.get("(3, 3) filters", 0) / total) if total else None,
        "n_filters": n3, "n_layers": len(layers), "source": str(path.resolve()), "sha256": sha,
        "kernel_counts": kernels, "op_counts": m.op_counts, "extra": None,
    }])
    insert_layers(tx, layers)
    tx.record_ingest(str(path.resolve()), kind, sha, 1, n3)
    return 1, n3
