"""One committed store version as the engine reads it (docs/method.md#statistics): its global basis,
shards, row group checksums, per-layer moments and per-layer histograms, read once and kept.

A version never changes once committed, so whoever holds a ``Snapshot`` (the service and the Python
API: per catalog generation and version, reader.py; the CLI: per command) reads each part on first
use and keeps it. What it keeps:

- ``LayerHistograms``: the per-layer coefficient histograms of the version's basis (global basis,
  default bins) as prefix sums over the layers in layer_id order, so that the counts of any group of
  layers are sums of rows (exact, in integers: refit.py writes the file);
- ``LayerMoments``: every layer's moments of its peak-scaled filters (count, mean, scatter), which
  the PCA basis of any selection of layers is pooled from (stats/moments.py), without a scan.

Guarantees: a file is used only once it is checked against the catalog, when first used (a shard:
its size; the histogram file: size, sha256, shape and layer ids, its bytes read into memory so that
the bytes checked are the bytes used); a missing or damaged one raises StoreDamaged naming it
relative to the store, never a wrong answer from it. A version the store does not hold is a
VersionError (catalog.py).
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalog import basis_version_at, check_version, current_version, load_basis
from .checksums import Checksums
from .layout import StoreDamaged, file_problem, unreadable
from .scan import HeldShards
from .selection import select
from .stats.basis import Basis


@dataclass
class LayerHistograms:
    """The store's per-layer histograms (global basis, default bins) as prefix sums over the layers
    in layer_id order: the counts (9, bins) of layers layer_ids[i:j] sum to cumulative[j] - cumulative[i].
    """
    basis_version: int
    bins: int
    layer_ids: np.ndarray   # (n_layers,), ascending
    cumulative: np.ndarray  # (n_layers + 1, 9 * bins) int64; row 0 is zeros

    @classmethod
    def load(cls, cur, root: Path, store_version: int) -> LayerHistograms | None:
        """Read the store's file into memory and check it: its size and sha256 those the catalog
        recorded, its shape and layer ids those of the catalog; otherwise raise StoreDamaged naming
        it. Those of store version ``store_version``'s basis; None if it has none (fewer than 2 filters).
        Read, not mapped: the bytes checked
        are the bytes used, whatever happens to the file later (a mapping of a file truncated
        underneath ends the process with SIGBUS). 13 MB for 2e7 filters; ~0.5 GB for 1e5 layers."""
        row = cur.execute("SELECT basis_version, bins, n_layers, path, bytes, sha256 FROM _layer_histograms "
                          "WHERE basis_version = ?", [basis_version_at(cur, store_version)]).fetchone()
        if row is None:
            return None
        version, bins, n, rel, size, sha256 = row
        try:
            data = (Path(root) / rel).read_bytes()
        except OSError as e:
            raise unreadable(Path(root) / rel, e) from None
        if len(data) != size:
            raise StoreDamaged(rel, f"size differs ({len(data):,} bytes, the catalog recorded {size:,})")
        if (digest := hashlib.sha256(data).hexdigest()) != sha256:
            raise StoreDamaged(rel, f"checksum differs (sha256 {digest[:16]}..., the catalog recorded {sha256[:16]}...)")
        try:
            packed = np.load(io.BytesIO(data))
        except ValueError as e:
            raise StoreDamaged(rel, f"not a .npy array ({e})") from None
        del data
        if packed.dtype != np.int64 or packed.shape != (n + 1, 1 + 9 * bins):
            raise StoreDamaged(rel, f"{packed.dtype} {packed.shape}, the catalog has int64 {(n + 1, 1 + 9 * bins)}")
        # The ids from the catalog, which commits them with the file: column 0 of the file read
        # down its rows would touch every page of it. Its ends are checked against them.
        ids = np.asarray(cur.execute(f"SELECT layer_id FROM layers_at({int(store_version)}) ORDER BY layer_id").fetchnumpy()["layer_id"],
                         dtype=np.int64)
        if len(ids) != n or (n and (packed[1, 0] != ids[0] or packed[n, 0] != ids[-1])):
            raise StoreDamaged(rel, "its layer ids are not the catalog's")
        return cls(version, bins, ids, packed[:, 1:])

    def group_sums(self, layer_ids: np.ndarray, layer_group: np.ndarray, n_groups: int) -> np.ndarray:
        """Counts (n_groups, 9, bins) of the given layers (ascending ids), summed per group: exact,
        in integers. Each run of consecutive layers of one group costs one subtraction of rows."""
        pos = np.searchsorted(self.layer_ids, layer_ids)
        if len(pos) and (pos[-1] >= len(self.layer_ids) or not np.array_equal(self.layer_ids[pos], layer_ids)):
            raise LookupError("a selected layer has no stored histogram")
        cut = np.flatnonzero((np.diff(pos) != 1) | (np.diff(layer_group) != 0)) + 1
        first = np.concatenate([[0], cut]).astype(np.intp)
        last = np.concatenate([cut, [len(pos)]]).astype(np.intp) - 1
        runs = self.cumulative[pos[last] + 1] - self.cumulative[pos[first]]  # (n_runs, 9 * bins)
        out = np.zeros((n_groups, runs.shape[1]), dtype=np.int64)
        if len(runs):  # the runs sorted by group, then one reduction per group
            order = np.argsort(layer_group[first], kind="stable")
            g_sorted = layer_group[first][order]
            starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
            out[g_sorted[starts]] = np.add.reduceat(runs[order], starts, axis=0)
        return out.reshape(n_groups, 9, self.bins)


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

    def layer_histograms(self, cur) -> LayerHistograms | None:
        return self._get("layer_histograms", lambda: LayerHistograms.load(cur, self.root, self.version))

    def layer_moments(self, cur) -> LayerMoments:
        return self._get("layer_moments", lambda: LayerMoments.load(cur))

    def prepare(self, cur) -> None:
        """Read everything now (the service, when a catalog generation opens), so that its first
        query costs what a repeated one does: it also runs DuckDB's first plan of the selection."""
        self.basis(cur), self.held_shards(cur), self.max_layer_id(cur), self.layer_histograms(cur)
        self.layer_moments(cur)
        select(cur, None, None, self.version)
