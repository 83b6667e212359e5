"""Ingest: readers of filter sources and the one entry point that writes them into a store."""
from __future__ import annotations

from pathlib import Path

from threadpoolctl import threadpool_limits

from cnnfilterdb.store import StoreError, StoreTransaction

from .h5 import ingest_h5, is_hdf5
from .progress import Progress


def detect_kind(path: Path) -> str:
    """The kind of a source file, by content (not by name)."""
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    if is_hdf5(path):
        return "dataset.h5"
    raise StoreError(f"{path}: not a recognized filter source (expected an original CNN-Filter-DB dataset.h5)")


def ingest_paths(paths: list[Path], db: Path, progress: Progress | None = None) -> dict:
    """Ingest every path into the store at ``db`` in one all-or-nothing transaction."""
    progress = progress or Progress()
    kinds = [(Path(p), detect_kind(Path(p))) for p in paths]
    added_models = added_filters = 0
    # The ingest runs its own threads (shard writer, range scan); BLAS threads on top of them
    # only oversubscribe the cores for the small products of the statistics.
    with threadpool_limits(limits=1, user_api="blas"), StoreTransaction(db) as tx:
        for path, kind in kinds:
            models, filters = ingest_h5(path, tx, progress)
            added_models += models
            added_filters += filters
        if added_models:
            bar = progress.bar(int(tx.con.execute("SELECT coalesce(sum(n_rows), 0) FROM _shards").fetchone()[0]),
                               "basis range")
            tx.commit(progress=bar.update)
            bar.close()
    return {"db": str(Path(db).resolve()), "models_added": added_models, "filters_added": added_filters}
