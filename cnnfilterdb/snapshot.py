"""One committed store version as the engine reads it (docs/method.md#statistics): its global basis,
shards, row group checksums, per-layer moments and per-layer histograms, read once and kept.

A version never changes once committed, so whoever holds a ``Snapshot`` (the service and the Python
API: per catalog generation and version, reader.py; the CLI: per command) reads each part on first
use and keeps it. What it keeps:

- ``StoredHistograms``: the stored histograms of the version's basis (segments.py): per layer (default
  bins, as prefix sums), per unit (a model's layers of one depth bin, FINE_BINS) and per model (the
  density figure's 2-D), so that the counts of any group of layers (units, models) are sums (exact,
  in integers: refit.py writes them);
- ``LayerMoments``: every layer's moments of its peak-scaled filters (count, mean, scatter), which
  the PCA basis of any selection of layers is pooled from (stats/moments.py), without a scan.

Guarantees: a file is used only once it is checked against the catalog, when first used (a shard:
its size; a histogram segment: size, sha256, shapes, and its layers the version's, its bytes read
into memory so that the bytes checked are the bytes used); a missing or damaged one raises StoreDamaged naming it
relative to the store, never a wrong answer from it. A version the store does not hold is a
VersionError (catalog.py).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalog import basis_version_at, check_version, current_version, histogram_segments, load_basis
from .checksums import Checksums
from .layout import StoreDamaged, file_problem
from .scan import HeldShards
from .segments import Segment, StoredHistograms
from .selection import select
from .stats.basis import Basis

# The stored histograms most recently used, at most STORED_KEPT (a basis's are 1.3 GB at the real
# dataset's size): a service asked `as_of` versions of many bases holds two, not one per version.
STORED_KEPT = 2
_stored: OrderedDict = OrderedDict()
_stored_lock = threading.Lock()


def _stored_of(root: Path, bv: int, files: list[tuple]) -> StoredHistograms:
    key = (str(root), bv, tuple(files))
    with _stored_lock:
        if key in _stored:
            _stored.move_to_end(key)
            return _stored[key]
    bins = {b for *_, b in files}
    if len(bins) != 1:
        raise StoreDamaged(files[0][0], f"the segments of basis {bv} differ in bins ({sorted(bins)})")
    (bins,) = bins
    stored = StoredHistograms(bv, bins, [Segment.load(root, rel, size, sha256, bins) for rel, size, sha256, _ in files])
    with _stored_lock:
        _stored[key] = stored
        while len(_stored) > STORED_KEPT:
            _stored.popitem(last=False)
    return stored


def load_stored_histograms(cur, root: Path, store_version: int) -> StoredHistograms | None:
    """The stored histograms of store version ``store_version``'s basis (None: it has none, fewer
    than 2 filters), every segment checked (segments.Segment.load) and every layer of the version in
    one of them; otherwise StoreDamaged naming the file. The last STORED_KEPT used are kept."""
    bv = basis_version_at(cur, store_version)
    files = [] if bv is None else histogram_segments(cur, bv, store_version)
    if not files:
        return None
    stored = _stored_of(root, bv, files)
    # The ids from the catalog: every layer of the version has its histograms in a segment.
    t = cur.execute(f"SELECT layer_id, n_filters FROM layers_at({int(store_version)}) ORDER BY layer_id").fetchnumpy()
    ids = np.asarray(t["layer_id"], dtype=np.int64)
    pos = np.searchsorted(stored.layer_ids, ids)
    if len(ids) and (pos[-1] >= len(stored.layer_ids) or not np.array_equal(stored.layer_ids[pos], ids)):
        raise StoreDamaged(files[-1][0], "its layer ids are not the catalog's")
    if (problem := stored.problem(pos, np.asarray(t["n_filters"], dtype=np.int64))) is not None:
        raise StoreDamaged(files[-1][0], problem)
    return stored


@dataclass
class LayerMoments:
    """Every layer's moments of its peak-scaled filters (count, mean, scatter), in layer_id order:
    the basis of any selection of layers is their pooled moments' PCA."""
    layer_ids: np.ndarray  # (n_layers,)
    n: np.ndarray          # (n_layers,)
    mean: np.ndarray       # (n_layers, 9)
    scatter: np.ndarray    # (n_layers, 9, 9)

    @classmethod
    def load(cls, cur) -> LayerMoments:
        t = cur.execute("SELECT layer_id, n, mean, scatter FROM _layer_moments ORDER BY layer_id").to_arrow_table()
        flat = lambda name, width: t.column(name).combine_chunks().flatten().to_numpy().reshape(-1, width)  # noqa: E731
        return cls(t.column("layer_id").to_numpy().astype(np.int64), t.column("n").to_numpy().astype(np.float64),
                   flat("mean", 9), flat("scatter", 81).reshape(-1, 9, 9))


class Snapshot:
    """One store version as a catalog holds it: its global basis, the shard files, the largest
    layer id, the per-layer moments and histograms. A version never changes once committed, so
    each is read on first use and then kept, by whoever holds the snapshot (the service: per
    catalog generation and version; the CLI: per command). Files are checked against the catalog
    when first used (shards: their size; histograms: their sha256): a missing or damaged one
    raises StoreDamaged naming it."""

    def __init__(self, root: Path, version: int):
        self.root = Path(root)
        self.version = int(version)
        self._cache: dict = {}

    @classmethod
    def at(cls, cur, root: Path, as_of: int | None = None) -> Snapshot:
        """The snapshot of store version ``as_of`` (default the current one); VersionError if the
        store does not hold it."""
        return cls(root, current_version(cur) if as_of is None else check_version(cur, as_of))

    def _get(self, key: str, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def basis(self, cur) -> Basis | None:
        return self._get("basis", lambda: load_basis(cur, self.version))

    def shard_paths(self, cur) -> list[Path]:
        """The shards in filter_id order, each there with the size the catalog recorded (a stat;
        their sha256 is ``cnnfilterdb verify``'s, their row groups' checksums the readers'), or
        StoreDamaged naming the first that is not."""
        def load():
            rows = cur.execute("SELECT path, bytes FROM _shards ORDER BY filter_id_first").fetchall()
            for rel, size in rows:
                if (problem := file_problem(self.root, rel, size)) is not None:
                    raise StoreDamaged(rel, problem)
            return [self.root / rel for rel, _ in rows]

        return self._get("shards", load)

    def held_shards(self, cur) -> HeldShards:
        """The shards, open for as long as this snapshot lives: every scan of a request (a
        selection's basis scans twice) reads the files its catalog names, even if `compact`
        unlinks them meanwhile (their space returns when the last snapshot holding them goes)."""
        return self._get("held", lambda: HeldShards(self.shard_paths(cur), self.checksums(cur)))

    def checksums(self, cur) -> Checksums | None:
        """The catalog's row group checksums of the shards (None: a catalog of a layout before 6)."""
        return self._get("checksums", lambda: Checksums.load(cur))

    def max_layer_id(self, cur) -> int:
        return self._get("max_layer_id", lambda: int(cur.execute(
            "SELECT coalesce(max(layer_id), 0) FROM _layers").fetchone()[0]))  # of every version: ids are never reused

    def stored_histograms(self, cur) -> StoredHistograms | None:
        """Checked against the catalog once per snapshot; held by the module's few kept (STORED_KEPT),
        not by the snapshot: the service keeps many snapshots."""
        if not self._get("stored_checked", lambda: load_stored_histograms(cur, self.root, self.version) is not None):
            return None
        bv = basis_version_at(cur, self.version)
        return _stored_of(self.root, bv, self._get("stored_files", lambda: histogram_segments(cur, bv, self.version)))

    def layer_moments(self, cur) -> LayerMoments:
        return self._get("layer_moments", lambda: LayerMoments.load(cur))

    def prepare(self, cur) -> None:
        """Read everything now (the service, when a catalog generation opens), so that its first
        query costs what a repeated one does: it also runs DuckDB's first plan of the selection."""
        self.basis(cur), self.held_shards(cur), self.max_layer_id(cur), self.stored_histograms(cur)
        self.layer_moments(cur)
        select(cur, None, None, self.version)
