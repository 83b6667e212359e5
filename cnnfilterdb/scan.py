"""Exact scans over the filter shards: coefficient range, and histograms per group of layers.

A selection is a set of layers, each mapped to a group (``LayerGroups``): every field a query can
filter or group on is an attribute of a layer or of its model. A scan reads only the row groups
whose layer_id statistics overlap the selection, one whole row group at a time per thread, and
hands it to the compiled kernels of ``stats/histogram.py`` (they release the GIL). Nothing is held
but one row group per thread and the result. A shard that cannot be read (missing, truncated,
corrupt) raises StoreDamaged naming it. Given the catalog's checksums (``checksums.Checksums``: the
engine always passes them, through a snapshot's ``HeldShards`` or ``ShardScanner``), each row
group's bytes are hashed before they are decoded, on every read, and a shard whose footer or row
group differs from what was committed raises StoreDamaged naming it and the row group.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .checksums import Checksums, ShardChecks, footer_hash, footer_spans, read_footer, verify_row_groups
from .layout import SHARDS, WEIGHT_COLUMNS, StoreDamaged, store_name, unreadable
from .stats.basis import Basis
from .stats.histogram import (
    bin_edges,
    coefficient_range,
    histogram2d_counts,
    histogram_counts,
    histogram_range,
    segment_counts,
)

REMAP_ROW_GROUPS = 16  # 80 MB of a shard mapped per thread at most


@dataclass
class LayerGroups:
    """group_of_layer[layer_id] = group index (0..n_groups-1) or -1 for layers not selected."""
    group_of_layer: np.ndarray
    n_groups: int

    @classmethod
    def of(cls, layer_ids, group_idx, n_groups: int, max_layer_id: int) -> LayerGroups:
        g = np.full(max_layer_id + 2, -1, dtype=np.int64)
        g[np.asarray(layer_ids, dtype=np.int64)] = np.asarray(group_idx, dtype=np.int64)
        return cls(g, n_groups)


@contextmanager
def _reading(path: Path):
    """The errors of reading a shard (the OS's, pyarrow's) as StoreDamaged naming it."""
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        raise unreadable(path, e) from None


@lru_cache(maxsize=1024)
def _footer_and_hash(path: Path) -> tuple[pq.FileMetaData, int]:
    """A shard's footer, parsed once per process (~1 ms each time otherwise): shards are
    immutable and their names never reused; and the xxh3 of the bytes it was parsed from, which
    every holder of checksums compares with the catalog's (``HeldShards``)."""
    return read_footer(path)


def _footer(path: Path) -> pq.FileMetaData:
    return _footer_and_hash(path)[0]


@lru_cache(maxsize=1024)
def _spans(path: Path) -> np.ndarray:
    """(offset, length) of each row group of a shard, from its footer (``checksums.footer_spans``)."""
    return footer_spans(_footer(path))


def _column_spans(path: Path, column: str) -> tuple[tuple[int, int], ...]:
    """(min, max) of an integer ``column`` in each row group of a shard, from its footer
    statistics ((0, -1): unknown)."""
    md = _footer(path)
    ci = md.schema.to_arrow_schema().get_field_index(column)
    spans = []
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(ci).statistics
        spans.append((int(st.min), int(st.max)) if st is not None and st.has_min_max else (0, -1))
    return tuple(spans)


@lru_cache(maxsize=1024)
def _layer_spans(path: Path) -> tuple[tuple[int, int], ...]:
    """(min, max) layer_id of each row group, read once per process (shards are immutable)."""
    return _column_spans(path, "layer_id")


@lru_cache(maxsize=1024)
def _filter_id_spans(path: Path) -> tuple[tuple[int, int], ...]:
    """(min, max) filter_id of each row group, read once per process (shards are immutable)."""
    return _column_spans(path, "filter_id")


def _clear_footers() -> None:
    for cached in (_footer_and_hash, _spans, _layer_spans, _filter_id_spans):
        cached.cache_clear()


_footer.cache_clear = _clear_footers  # as if a new process: the footers are read again


class HeldShards:
    """The shard files of one scan or export, each opened once (a descriptor) for as long as it
    runs, and mapped through that descriptor: a shard unlinked meanwhile (`cnnfilterdb compact`
    replacing it, a reader of an older catalog still at work) stays readable to the end.

    With ``checksums`` (the catalog's), every footer is checked when the shards are opened and
    whenever a reader is made, and every row group a reader reads is hashed before it is decoded;
    None (a catalog of a layout before 6) reads unchecked."""

    def __init__(self, paths: list[Path], checksums: Checksums | None = None):
        self.fds: dict[Path, int] = {}
        self.checksums = checksums
        # Closed by close(), or else when the holder is collected (an export never iterated).
        self._finalizer = weakref.finalize(self, _close_fds, self.fds)
        try:
            for path in dict.fromkeys(paths):
                with _reading(path):
                    self.fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self.checks(path)
        except BaseException:
            self.close()
            raise

    def checks(self, path: Path) -> ShardChecks | None:
        """The shard's recorded checksums, its parsed footer checked against them (None: unchecked)."""
        if self.checksums is None:
            return None
        checks = self.checksums.of(path)
        with _reading(path):
            footer_hash = _footer_and_hash(path)[1]
        checks.check_footer(footer_hash)
        checks.check_spans(_spans(path))  # the recorded spans are the footer's: else other bytes are hashed
        return checks

    def open(self, path: Path) -> ShardReader:
        """The shard, memory-mapped (through /proc/self/fd: the open file, not the name)."""
        return ShardReader(path, self.fds[path], self.checks(path))

    def verify(self, path: Path, row_groups) -> None:
        """Hash the shard's ``row_groups`` against the catalog's checksums (no decoding): what a
        reader other than ours (DuckDB's SQL) is about to read. Nothing if unchecked."""
        if (checks := self.checks(path)) is not None:
            verify_row_groups(path, checks, row_groups, self.fds[path])

    def verify_filter_ids(self, first: int, last: int) -> None:
        """``verify`` the row groups of every held shard whose filter_id statistics overlap
        [first, last] (a row group without statistics counts as overlapping): those DuckDB reads
        for the filters of that range; and first the footer of every held shard, read from the file
        now (DuckDB parses each footer on every query: a footer damaged since it was parsed here
        must not reach it)."""
        if self.checksums is None:
            return
        for path in self.fds:
            checks = self.checksums.of(path)
            with _reading(path):
                checks.check_footer(footer_hash(path))
        for path in self.fds:
            with _reading(path):
                spans = _filter_id_spans(path)
            touched = [i for i, (lo, hi) in enumerate(spans) if hi < lo or (lo <= last and hi >= first)]
            if touched:
                self.verify(path, touched)

    def close(self) -> None:
        self._finalizer()


class ShardReader:
    """One shard memory-mapped for reading whole row groups, each hashed (``checks``: the recorded
    checksums; None: unchecked) on the very mapping that is then decoded: the hash faults the pages
    in, the decoding finds them mapped, nothing is copied."""

    def __init__(self, path: Path, fd: int, checks: ShardChecks | None):
        self.path, self.checks = path, checks
        self.source = pa.memory_map(f"/proc/self/fd/{fd}")
        try:
            self.file = pq.ParquetFile(self.source, metadata=_footer(path))
        except BaseException:
            self.source.close()
            raise

    def read_row_group(self, row_group: int, columns: list[str], use_threads: bool = False) -> pa.Table:
        if self.checks is not None:
            offset, length, _ = self.checks.span(row_group)
            if offset + length > self.source.size():
                raise StoreDamaged(self.checks.rel, f"row group {row_group}: ends past the end of the file")
            self.source.seek(offset)
            self.checks.check(row_group, self.source.read_buffer(length))
        return self.file.read_row_group(row_group, columns=columns, use_threads=use_threads)

    def close(self) -> None:
        self.file.close()
        self.source.close()


def _close_fds(fds: dict) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _units(paths: list[Path], groups: LayerGroups) -> list[tuple[Path, int, int, int]]:
    """(path, row group, first group, last group) of the row groups holding selected layers."""
    units = []
    n_layers = len(groups.group_of_layer)
    for path in paths:
        with _reading(path):
            spans = _layer_spans(path)
        for i, (lo, hi) in enumerate(spans):
            if hi < lo:
                lo, hi = 0, n_layers - 1
            g = groups.group_of_layer[max(lo, 0):min(hi, n_layers - 1) + 1]
            g = g[g >= 0]
            if len(g):
                units.append((path, i, int(g.min()), int(g.max())))
    return units


def _map_units(paths, groups, work: Callable, threads: int | None, held: HeldShards | None = None,
               checksums: Checksums | None = None):
    """work(layer_id, weight columns, first group, last group) over the selected row groups, in
    threads; yields the results in order.

    Each row group is read whole (128K rows, 5 MB), memory-mapped: the required PLAIN columns
    decode at about 6 ns per row here (twice that for nullable columns or small batches). The
    mapping is renewed every REMAP_ROW_GROUPS row groups, so that the mapped pages never add up
    in the process's memory whatever the size of the store (unmapping after every row group
    measured 10% slower: each munmap stops the other threads' CPUs to flush their TLBs).
    """
    local = threading.local()
    n_layer_slots = len(groups.group_of_layer)

    def read_and_work(path, row_group, g_lo, g_hi):
        with _reading(path):
            f = getattr(local, "file", None)
            if f is None or local.path != path or local.uses >= REMAP_ROW_GROUPS:
                if f is not None:
                    f.close()
                f = local.file = held.open(path)
                local.path, local.uses = path, 0
            local.uses += 1
            table = f.read_row_group(row_group, columns=["layer_id"] + WEIGHT_COLUMNS, use_threads=False)
        cols = [table.column(i).to_numpy() for i in range(10)]  # one chunk each: zero-copy views
        # The kernels index group_of_layer by these ids unchecked (numba): ids a damaged shard
        # holds outside the store's range would read and write out of bounds.
        if len(cols[0]) and not (0 <= cols[0].min() and cols[0].max() < n_layer_slots):
            raise StoreDamaged(store_name(path), f"row group {row_group} holds layer ids outside the store's "
                                                 f"[0, {n_layer_slots - 1}]")
        return work(cols[0], tuple(cols[1:]), g_lo, g_hi)

    units = _units(paths, groups)
    own = held is None  # else the caller's (a snapshot's), open for longer than this scan
    held = HeldShards([u[0] for u in units], checksums) if own else held
    threads = threads or min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        yield from pool.map(lambda u: read_and_work(*u), units)
    finally:
        pool.shutdown(cancel_futures=True)  # after an error (a damaged shard), nothing more is read
        if own:
            held.close()


class ShardScanner:
    """The exact scans of this module over local shard files, as the refit (refit.py) and the
    analyses (analysis.py) call them. ``cnnfilterdb.spark.SparkScanner`` has the same two methods
    and runs the same kernels as Spark jobs.

    Parameters
    ----------
    paths : the shard files, in filter_id order.
    held : the shards held open by a snapshot (snapshot.Snapshot.held_shards), or None: each scan
        opens them for its own duration.
    checksums : the catalog's row group checksums (checksums.Checksums), when ``held`` is None
        (a held one carries its own); None: unchecked.
    """

    method = "scan"  # how the analyses' results name where their histograms came from

    def __init__(self, paths: list[Path], held: HeldShards | None = None, checksums: Checksums | None = None):
        self.paths, self.held, self.checksums = list(paths), held, checksums

    def range(self, groups: LayerGroups, basis: Basis) -> tuple[float, float, int]:
        """``scan_range``: (min, max) of the selected filters' coefficients, and their count."""
        return scan_range(self.paths, groups, basis, held=self.held, checksums=self.checksums)

    def histograms(self, groups: LayerGroups, basis: Basis, lo: float, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
        """``scan_histograms``: counts (n_groups, 9, bins) and outside (n_groups, 9), int64."""
        return scan_histograms(self.paths, groups, basis, lo, hi, bins, held=self.held, checksums=self.checksums)

    def segment(self, plan, basis: Basis, lo: float, hi: float):
        """``scan_segment``: the stored histograms of ``plan``'s layers (segments.SegmentCounts)."""
        return scan_segment(self.paths, plan, basis, lo, hi, held=self.held, checksums=self.checksums)


def check_counts(counts: np.ndarray, outside: np.ndarray, expected: np.ndarray) -> None:
    """StoreDamaged unless each group's histograms and values outside (component 0) hold
    ``expected`` (n_groups,) filters: a shortfall or an excess is a shard that does not hold what
    the catalog committed (a scan must not answer from it)."""
    found = counts[:, 0, :].sum(axis=1) + outside[:, 0]
    if not np.array_equal(found, np.asarray(expected, dtype=np.int64)):
        g = int(np.flatnonzero(found != expected)[0])
        raise StoreDamaged(SHARDS, f"the scan found {int(found.sum()):,} filters of the selection where the catalog "
                                   f"holds {int(np.sum(expected)):,} (group {g}: {int(found[g]):,}, not "
                                   f"{int(expected[g]):,}): a shard is not as committed")


def kernel_basis(basis: Basis) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' form of a basis: components C (9, 9) float64, C-contiguous, and shift C @ mean (9,)."""
    C = np.ascontiguousarray(basis.components, dtype=np.float64)
    return C, C @ basis.mean


def scan_range(paths: list[Path], groups: LayerGroups, basis: Basis, threads: int | None = None,
               held: HeldShards | None = None, checksums: Checksums | None = None) -> tuple[float, float, int]:
    """(min, max) of all 9 coefficients of the selected filters, and their count."""
    C, shift = kernel_basis(basis)

    def work(layer, cols, g_lo, g_hi):
        return coefficient_range(layer, cols, groups.group_of_layer, C, shift)

    lo, hi, n = np.inf, -np.inf, 0
    for a, b, k in _map_units(paths, groups, work, threads, held, checksums):
        lo, hi, n = min(lo, a), max(hi, b), n + k
    return lo, hi, n


def scan_histograms(paths: list[Path], groups: LayerGroups, basis: Basis, lo: float, hi: float, bins: int,
                    threads: int | None = None, held: HeldShards | None = None,
                    checksums: Checksums | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Counts (n_groups, 9, bins), int64: per group and component, np.histogram(c, bins, (lo, hi));
    and outside (n_groups, 9), int64: the coefficients outside [lo, hi] it drops."""
    C, shift = kernel_basis(basis)
    lo, hi = histogram_range(lo, hi)
    edges = bin_edges(lo, hi, bins)

    def work(layer, cols, g_lo, g_hi):
        counts = np.zeros((g_hi - g_lo + 1, 9, bins), dtype=np.int64)
        outside = np.zeros((g_hi - g_lo + 1, 9), dtype=np.int64)
        histogram_counts(layer, cols, groups.group_of_layer, g_lo, C, shift, lo, hi, edges, counts, outside)
        return g_lo, counts, outside

    out = np.zeros((groups.n_groups, 9, bins), dtype=np.int64)
    out_outside = np.zeros((groups.n_groups, 9), dtype=np.int64)
    for g_lo, counts, outside in _map_units(paths, groups, work, threads, held, checksums):
        out[g_lo:g_lo + len(counts)] += counts
        out_outside[g_lo:g_lo + len(counts)] += outside
    return out, out_outside


def scan_histogram2d(paths: list[Path], groups: LayerGroups, basis: Basis, lo: float, hi: float, bins: int,
                     components: tuple[int, int], threads: int | None = None,
                     held: HeldShards | None = None, checksums: Checksums | None = None) -> np.ndarray:
    """Counts (bins, bins), int64, of the selected filters' coefficients (components[0], components[1]):
    np.histogram2d(c_i, c_j, bins, range=[(lo, hi), (lo, hi)]), a value outside on either axis dropped."""
    C, shift = kernel_basis(basis)
    lo, hi = histogram_range(lo, hi)
    edges = bin_edges(lo, hi, bins)
    i, j = components

    def work(layer, cols, g_lo, g_hi):
        counts = np.zeros((bins, bins), dtype=np.int64)
        histogram2d_counts(layer, cols, groups.group_of_layer, C, shift, lo, hi, edges, i, j, counts)
        return counts

    out = np.zeros((bins, bins), dtype=np.int64)
    for counts in _map_units(paths, groups, work, threads, held, checksums):
        out += counts
    return out


def scan_segment(paths: list[Path], plan, basis: Basis, lo: float, hi: float, threads: int | None = None,
                 held: HeldShards | None = None, checksums: Checksums | None = None):
    """The stored histograms of the layers of ``plan`` (segments.SegmentPlan) in ``basis`` over the
    range [lo, hi], in one pass (``stats.histogram.segment_counts``): per layer DEFAULT_BINS bins and
    the coefficients outside the range, per unit FINE_BINS bins, per model the DENSITY_BINS^2 bins of
    (c0, c1) over DENSITY_RANGE. Returns segments.SegmentCounts."""
    from .segments import DENSITY_BINS, DENSITY_RANGE, FINE_BINS, SegmentCounts

    C, shift = kernel_basis(basis)
    lo, hi = histogram_range(lo, hi)
    edges, fine_edges = bin_edges(lo, hi, plan.bins), bin_edges(lo, hi, FINE_BINS)
    d_lo, d_hi = DENSITY_RANGE
    d_edges = bin_edges(d_lo, d_hi, DENSITY_BINS)
    slot, unit, model = plan.maps()

    def span(ids, row_layer):  # (first, last) of the ids of the rows; (0, -1): none (a partial of size 0)
        v = ids[row_layer]
        v = v[v >= 0]
        return (int(v.min()), int(v.max())) if len(v) else (0, -1)

    def work(layer, cols, g_lo, g_hi):
        (s_lo, s_hi), (u_lo, u_hi), (m_lo, m_hi) = span(slot, layer), span(unit, layer), span(model, layer)
        part = (np.zeros((s_hi - s_lo + 1, 9, plan.bins), dtype=np.int64), np.zeros((s_hi - s_lo + 1, 9), dtype=np.int64),
                np.zeros((u_hi - u_lo + 1, 9, FINE_BINS), dtype=np.int64),
                np.zeros((m_hi - m_lo + 1, DENSITY_BINS, DENSITY_BINS), dtype=np.int64))
        segment_counts(layer, cols, slot, unit, model, s_lo, u_lo, m_lo, C, shift, lo, hi, edges, fine_edges,
                       d_lo, d_hi, d_edges, *part)
        return (s_lo, u_lo, m_lo), part

    out = SegmentCounts.zeros(plan)
    for (s_lo, u_lo, m_lo), (lc, oc, uc, mc) in _map_units(paths, LayerGroups(slot, len(plan.layer_ids)), work,
                                                            threads, held, checksums):
        out.layer_counts[s_lo:s_lo + len(lc)] += lc
        out.outside[s_lo:s_lo + len(oc)] += oc
        out.unit_counts[u_lo:u_lo + len(uc)] += uc   # int64 partial counts into the stored width (plan checked it)
        out.model_density[m_lo:m_lo + len(mc)] += mc
    return out
