"""Ingest: readers of filter sources and the one entry point that writes them into a store."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_limits

from cnnfilterdb.store import StoreError, StoreTransaction, file_sha256

from .h5 import ingest_h5, is_hdf5, read_contents
from .model_files import META_FIELDS, ingest_model_file, stored_model_with
from .models import detect, read_model
from .progress import Progress
from .shards import ShardWriter

MODEL_BATCH_ROWS = 1 << 20
# Kinds suggested by a name: a file whose content is not recognized but whose name says what it
# should be gets that reader's own error (e.g. a truncated ONNX file), not "unrecognized".
SUFFIX_KINDS = {".onnx": "onnx", ".pt": "torch", ".pth": "torch", ".safetensors": "safetensors", ".npz": "npz",
                ".h5": "dataset.h5", ".hdf5": "dataset.h5"}


@dataclass
class Source:
    path: Path
    meta: dict
    explicit: bool  # named by the user (not found by walking a directory)
    kind: str | None = None


def detect_kind(path: Path) -> str | None:
    """The kind of a source file by content: 'dataset.h5', 'onnx', 'torch', 'safetensors', 'npz', or None."""
    if is_hdf5(path):
        return "dataset.h5"
    return detect(path)


def read_manifest(manifest: Path) -> list[Source]:
    """A CSV with a `path` column (relative to the manifest's folder) and any of META_FIELDS."""
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise StoreError(f"{manifest}: cannot read the manifest ({e})") from None
    if not rows or "path" not in rows[0]:
        raise StoreError(f"{manifest}: a manifest needs a header with a 'path' column (and any of {META_FIELDS})")
    unknown = sorted(set(rows[0]) - {"path"} - set(META_FIELDS))
    if unknown:
        raise StoreError(f"{manifest}: unknown column(s) {unknown}; known: ['path'] + {META_FIELDS}")
    out = []
    for i, r in enumerate(rows, start=2):
        if not (r.get("path") or "").strip():
            raise StoreError(f"{manifest}: line {i} has no path")
        p = Path(r["path"].strip())
        out.append(Source(p if p.is_absolute() else manifest.parent / p,
                          {k: (v.strip() or None) for k, v in r.items() if k != "path" and v is not None}, True))
    return out


def _sources(paths: list[Path], meta: dict, manifest: Path | None) -> list[Source]:
    if manifest is not None:
        return read_manifest(manifest)
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += [Source(f, dict(meta), False) for f in sorted(p.rglob("*")) if f.is_file()]
        else:
            out.append(Source(p, dict(meta), True))
    return out


def ingest_paths(paths: list[Path], db: Path, progress: Progress | None = None, meta: dict | None = None,
                 manifest: Path | None = None, skip_bad: bool = False) -> dict:
    """Ingest every source into the store at ``db`` in one all-or-nothing transaction.

    Directories are walked recursively (files that are no filter source are ignored there).
    With ``skip_bad``, a file that fails its checks (read before anything of it is written) is
    skipped and reported; the others are ingested. A re-ingested model file (same sha256) is a no-op.
    """
    progress = progress or Progress()
    meta = {k: v for k, v in (meta or {}).items() if v is not None}
    if "model" in meta and len(paths) > 1:
        raise StoreError("--model names one model; for several files use a manifest")
    sources, skipped, ignored = [], [], []
    for s in _sources(paths, meta, manifest):
        if not s.path.is_file():
            if skip_bad:
                skipped.append({"path": str(s.path), "reason": "no such file"})
                continue
            raise StoreError(f"{s.path}: no such file")
        s.kind = detect_kind(s.path)
        if s.kind is None:
            hint = SUFFIX_KINDS.get(s.path.suffix.lower())
            if hint is None and not s.explicit:
                ignored.append(str(s.path))
                continue
            try:
                if hint == "dataset.h5":
                    read_contents(s.path)
                elif hint is not None:
                    read_model(s.path, hint)
                raise StoreError(f"{s.path}: not a recognized filter source (dataset.h5, ONNX, PyTorch, safetensors or .npz)")
            except StoreError as e:
                if not skip_bad:
                    raise
                skipped.append({"path": str(s.path), "reason": str(e).removeprefix(f"{s.path}: ")})
                continue
        sources.append(s)

    added_models = added_filters = 0
    files = []
    total_bytes = sum(s.path.stat().st_size for s in sources)
    with threadpool_limits(limits=1, user_api="blas"), StoreTransaction(db) as tx:
        # The ingest runs its own threads (shard writer, scans); BLAS threads on top of them
        # only oversubscribe the cores for the small products of the statistics.
        bar = progress.bar(total_bytes, "files", unit="B")
        writer: ShardWriter | None = None
        try:
            for s in sources:
                try:
                    if s.kind == "dataset.h5":
                        if writer is not None:  # the h5 reader numbers its filters after all registered shards
                            writer.close()
                            writer = None
                        models, filters = ingest_h5(s.path, tx, progress)
                    else:
                        sha = file_sha256(s.path)
                        if stored_model_with(tx, sha) is not None:
                            models, filters = 0, 0  # the same file again: nothing to do
                        else:
                            m = read_model(s.path, s.kind)  # every check, before anything of it is written
                            if writer is None:
                                writer = ShardWriter(tx, batch_rows=MODEL_BATCH_ROWS)
                            models, filters = ingest_model_file(s.path, s.kind, m, s.meta, tx, writer, sha)
                except StoreError as e:
                    if not skip_bad:
                        raise
                    skipped.append({"path": str(s.path), "reason": str(e).removeprefix(f"{s.path}: ")})
                    continue
                files.append({"path": str(s.path), "kind": s.kind, "models": models, "filters": filters,
                              "status": "added" if models else "already in the store"})
                added_models += models
                added_filters += filters
                bar.update(s.path.stat().st_size)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if added_models:
            tx.commit()
    for sk in skipped:
        progress.note(f"skipped {sk['path']}: {sk['reason']}")
    return {"db": str(Path(db).resolve()), "models_added": added_models, "filters_added": added_filters,
            "files": files, "skipped": skipped, "ignored": ignored}


__all__ = ["ingest_paths", "detect_kind", "read_contents", "Progress"]
