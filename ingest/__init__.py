"""Ingest: readers of filter sources and the one entry point that writes them into a store."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_limits

from cnnfilterdb.catalog import SAMPLE_MODELS, basis_version_at
from cnnfilterdb.layout import CATALOG, LOCK, default_db, file_sha256
from cnnfilterdb.store import StoreTransaction, check_refit

from .errors import IngestError
from .h5 import ingest_h5, is_hdf5, read_contents
from .model_files import META_FIELDS, ingest_model_file, metadata_differences, relabel_hint, stored_model_with
from .models import detect, read_model
from .progress import Progress
from .shards import ShardWriter
from .values import check_required, check_spellings

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
    """A CSV with a `path` column (relative to the manifest's folder) and any of META_FIELDS, by
    their names or the label manifests' aliases (``labels.ALIASES``: Task, Visual Category, ...)."""
    from .labels import ALIASES

    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = [{ALIASES.get(k, k) if k is not None else k: v for k, v in r.items()} for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise IngestError(f"{manifest}: cannot read the manifest ({e})") from None
    if not rows or "path" not in rows[0]:
        raise IngestError(f"{manifest}: a manifest needs a header with a 'path' column (and any of {META_FIELDS})")
    unknown = sorted(set(rows[0]) - {"path"} - set(META_FIELDS), key=str)
    if unknown:
        raise IngestError(f"{manifest}: unknown column(s) {unknown}; known: ['path'] + {META_FIELDS}")
    out = []
    for i, r in enumerate(rows, start=2):
        if not (r.get("path") or "").strip():
            raise IngestError(f"{manifest}: line {i} has no path")
        p = Path(r["path"].strip())
        out.append(Source(p if p.is_absolute() else manifest.parent / p,
                          {k: (v.strip() or None) for k, v in r.items() if k != "path" and v is not None}, True))
    return out


def _sources(paths: list[Path], meta: dict, manifest: Path | None, ignored: list[str]) -> list[Source]:
    """The files to ingest. A store found inside a folder is not a source (its files, its histogram
    segments (.npz) among them, are the store's own): it is listed in ``ignored``."""
    if manifest is not None:
        return read_manifest(manifest)
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            # a store: its catalog, or the lock of a writer that created it and died before committing
            stores = {c.parent for name in (CATALOG, LOCK) for c in p.rglob(name)}
            ignored += [f"{d} (a store)" for d in sorted(stores)]
            out += [Source(f, dict(meta), False) for f in sorted(p.rglob("*"))
                    if f.is_file() and not stores.intersection(f.parents)]
        else:
            out.append(Source(p, dict(meta), True))
    return out


def sample_and_real(con) -> tuple[int, int]:
    """(synthetic sample models, real models) of a catalog (or of a transaction's staging one)."""
    n_sample, n = con.execute(f"SELECT count(*) FILTER (WHERE {SAMPLE_MODELS}), count(*) FROM models").fetchone()
    return int(n_sample), int(n - n_sample)


def mixing_warnings(before: tuple[int, int], after: tuple[int, int]) -> list[str]:
    """A warning when an ingest puts real models and the synthetic sample of `cnnfilterdb demo`
    into one store (either way round): every analysis would compare them with each other.
    ``before``, ``after``: (sample models, real models) of the store."""
    added_sample, added_real = after[0] - before[0], after[1] - before[1]
    if added_real > 0 and after[0] > 0:
        return [f"this store holds {after[0]} synthetic sample models (from `cnnfilterdb demo`); the {added_real} "
                "real model(s) added to it will be compared with them: use a store of their own (--db)"]
    if added_sample > 0 and after[1] > 0:
        return [f"the {added_sample} synthetic sample models (not real data) added here are in a store holding "
                f"{after[1]} real model(s), which will be compared with them: keep the sample in a store of its "
                "own (--db; `cnnfilterdb demo` builds ./filterdb-sample)"]
    return []


def ingest_paths(paths: list[Path], db: Path, progress: Progress | None = None, meta: dict | None = None,
                 manifest: Path | None = None, skip_bad: bool = False, refit: str = "auto",
                 allow_missing: bool = False, new_value: bool = False) -> dict:
    """Ingest every source into the store at ``db`` in one all-or-nothing transaction.

    Directories are walked recursively (files that are no filter source are ignored there, and a
    store inside one is skipped).
    With ``skip_bad``, a file that fails its checks (read before anything of it is written) is
    skipped and reported; the others are ingested. A re-ingested model file (same sha256) is a
    no-op; if the metadata given for it differs from the stored one's, its entry says which and
    the command that relabels it. A dataset.h5 adds its models not yet in the store and lists
    those present (and any that differ from the stored ones). ``warnings`` (also printed as notes):
    real models and the synthetic sample mixed in one store.

    Parameters
    ----------
    paths : files and directories to ingest (ignored when ``manifest`` is given).
    db : the store directory (created if missing).
    progress : where bars and notes go (default: a bar on a terminal).
    meta : metadata for every file (META_FIELDS: task, visual_category, ...; ``model`` for one file).
    manifest : a CSV with a ``path`` column and META_FIELDS, one row per file.
    skip_bad : skip and report a file that fails its checks instead of failing the ingest.
    refit : the commit's refit of the global basis: "auto" (the store's policy), "always" or
        "never" (the new layers projected on the basis as it is; docs/method.md#refit).
    allow_missing : ingest a model file whose task, visual category or training dataset is not
        given (ingest/values.REQUIRED_FIELDS); by default that is an IngestError saying which.
    new_value : take a categorical value that is another spelling of one the store holds (by
        default refused: ingest/values.check_spellings).

    Returns
    -------
    dict with ``db``, ``models_added``, ``filters_added``, ``version`` (the store version committed;
    None: nothing added), ``basis_version`` (its global basis), ``refitted`` (whether this commit
    refitted it), ``files`` (one entry per file: path, kind, models, filters, status, ...),
    ``skipped`` (path, reason), ``ignored`` (files that are no filter source, and stores inside a
    folder), ``warnings``.
    IngestError for a bad input (a StoreError: nothing was written).
    """
    check_refit(refit)  # before any work
    progress = progress or Progress()
    meta = {k: v.strip() if isinstance(v, str) else v for k, v in (meta or {}).items() if v is not None}
    if "model" in meta and len(paths) > 1:
        raise IngestError("--model names one model; for several files use a manifest")
    sources, skipped, ignored = [], [], []
    for s in _sources(paths, meta, manifest, ignored):
        if not s.path.is_file():
            if skip_bad:
                skipped.append({"path": str(s.path), "reason": "no such file"})
                continue
            raise IngestError(f"{s.path}: no such file")
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
                raise IngestError(f"{s.path}: not a recognized filter source (dataset.h5, ONNX, PyTorch, safetensors or .npz)")
            except IngestError as e:
                if not skip_bad:
                    raise
                skipped.append({"path": str(s.path), "reason": str(e).removeprefix(f"{s.path}: ")})
                continue
        sources.append(s)

    added_models = added_filters = 0
    files, notes, warnings = [], [], []
    total_bytes = sum(s.path.stat().st_size for s in sources)
    db_arg = None if Path(db).resolve() == default_db().resolve() else Path(db)  # for the commands suggested
    with threadpool_limits(limits=1, user_api="blas"), StoreTransaction(db) as tx:
        # The ingest runs its own threads (shard writer, scans); BLAS threads on top of them
        # only oversubscribe the cores for the small products of the statistics.
        before = sample_and_real(tx.con)
        # Every value given is checked against the store's before any file is read.
        check_spellings(tx.con, tx.base_version, [(k, v, str(s.path)) for s in sources for k, v in s.meta.items()],
                        set(), new_value)
        bar = progress.bar(total_bytes, "files", unit="B")
        writer: ShardWriter | None = None
        try:
            for s in sources:
                entry: dict = {}  # what the file's result says besides its counts
                try:
                    if s.kind == "dataset.h5":
                        if writer is not None:  # the h5 reader numbers its filters after all registered shards
                            writer.close()
                            writer = None
                        h5 = ingest_h5(s.path, tx, progress)
                        models, filters = len(h5.added), h5.n_filters
                        entry.update(_h5_entry(s.path, h5, notes))
                    else:
                        sha = file_sha256(s.path)
                        stored = stored_model_with(tx, sha)
                        if stored is not None:
                            models, filters = 0, 0  # the same file again: nothing to write
                            entry.update(_known_file_entry(s.path, stored, metadata_differences(tx, stored, s.meta),
                                                           db_arg, notes))
                        else:
                            if not allow_missing:
                                check_required(s.meta, str(s.path))
                            m = read_model(s.path, s.kind)  # every check, before anything of it is written
                            if writer is None:
                                writer = ShardWriter(tx, batch_rows=MODEL_BATCH_ROWS)
                            models, filters = ingest_model_file(s.path, s.kind, m, s.meta, tx, writer, sha)
                except IngestError as e:
                    if not skip_bad:
                        raise
                    skipped.append({"path": str(s.path), "reason": str(e).removeprefix(f"{s.path}: ")})
                    continue
                status = entry.pop("status", None) or ("added" if models else "already in the store")
                files.append({"path": str(s.path), "kind": s.kind, "models": models, "filters": filters,
                              "status": status, **entry})
                added_models += models
                added_filters += filters
                bar.update(s.path.stat().st_size)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        version = None
        if added_models:
            warnings = mixing_warnings(before, sample_and_real(tx.con))
            version = tx.commit(refit=refit)
        else:
            tx.basis_version = basis_version_at(tx.con, tx.base_version)
            if refit == "always":
                notes.append("nothing was added, so nothing was committed: `cnnfilterdb refit` refits the basis")
    for sk in skipped:
        progress.note(f"skipped {sk['path']}: {sk['reason']}")
    for note in notes:
        progress.note(note)
    for w in warnings:
        progress.note(f"warning: {w}")
    return {"db": str(Path(db).resolve()), "models_added": added_models, "filters_added": added_filters,
            "version": version, "basis_version": tx.basis_version, "refitted": tx.refitted,
            "files": files, "skipped": skipped, "ignored": ignored, "warnings": warnings}


def _known_file_entry(path: Path, model: str, differences: dict, db: Path | None, notes: list[str]) -> dict:
    """The result entry of a model file already in the store (same sha256) as ``model``."""
    if not differences:
        return {"model": model}
    hint = relabel_hint(model, differences, db)
    said = ", ".join(f"{k} {d['stored']!r} (given {d['given']!r})" for k, d in differences.items())
    notes.append(f"{path}: already in the store as model {model!r}, with other metadata: {said}; to relabel: {hint}")
    return {"model": model, "status": "already in the store, with other metadata",
            "metadata_differs": differences, "relabel": hint}


def _h5_entry(path: Path, h5, notes: list[str]) -> dict:
    """The result entry of a dataset.h5: its models added, present, and present but different."""
    entry = h5.summary()
    n_present, n_differ = len(h5.present), len(h5.differs)
    if h5.added and n_present:
        entry["status"] = f"added {len(h5.added)} model(s); {n_present} already in the store"
        notes.append(f"{path}: added {len(h5.added)} model(s); {n_present} of its {len(h5.added) + n_present} "
                     f"models were already in the store (e.g. {h5.present[0]!r}) and are left as stored")
    if n_differ:
        d = h5.differs[0]
        said = ", ".join(f"{k} {v['stored']!r} (file {v['file']!r})" for k, v in d["fields"].items())
        notes.append(f"{path}: {n_differ} model(s) of the file are in the store with other metadata or filter "
                     f"counts, left as stored (e.g. {d['model']!r}: stored {said})")
    return entry


__all__ = ["ingest_paths", "detect_kind", "read_contents", "sample_and_real", "Progress", "IngestError"]
