"""The stored histograms of a global basis (docs/method.md#stored-histograms): written by commits,
summed by queries, so that the analyses and figures of the default parameters read no filter.

A basis's histograms are kept in segment files (``shards/<ingest id>-histograms.npz``), each written
by one commit for a set of layers: the commit that fits a basis writes one for every layer of its
version; a later commit that keeps the basis and adds layers writes one for those, their filters
projected on the basis (refit.py). A segment is an uncompressed ``.npz`` (numpy can open it):

    layer_ids      (L,) int64, ascending
    layer_counts   (L, 9, bins) int64   per layer and component: np.histogram(c, bins, (lo, hi)), the
                                        basis range; bins = DEFAULT_BINS (the divergence's)
    outside        (L, 9) int64         coefficients outside [lo, hi], dropped from the counts (none in
                                        the segment of the commit that fitted the range)
    layer_units    (L,) int64           each layer's stored unit (a model's layers of one depth bin), -1 if
                                        its unit holds fewer than FINE_MIN_FILTERS filters (not stored)
    unit_models    (U,) int64, unit_depth_bins (U,) str
    unit_counts    (U, 9, FINE_BINS)    per stored unit and component, np.histogram(c, FINE_BINS, (lo, hi)):
                                        the ridge plots' KDE (stats/kde.py)
    layer_models   (L,) int64           each layer's index in model_ids, -1 if its model holds fewer
                                        than DENSITY_MIN_FILTERS filters (not stored)
    model_ids      (M,) int64
    model_density  (M, DENSITY_BINS, DENSITY_BINS)  per stored model, np.histogram2d(c0, c1,
                                        DENSITY_BINS, [DENSITY_RANGE] * 2): the density figure's
    (unit and model counts int32, or int64 if a model holds 2**31 filters or more)

A selection's histograms are sums of these when it is made of whole units (fine: any grouping by a
model field or by depth_bin, with any selection by them) or whole models (density), plus a scan of
the filters of its units (models) too small to be stored; integers, so any sum equals numpy's
counts of the union of those filters, bit for bit. Sizes: per layer 9 * 70 int64 (5 KB); per
stored unit 9 * 2048 int32 (72 KiB, at most 72 bytes a filter); per stored model 512^2 int32
(1 MiB, at most 32 bytes a filter): for the real dataset's 647 models (about 6,500 units, 31,700
layers) about 1.3 GB, whatever its number of filters; a store of many small models stores little
beyond its layers' 5 KB.

Guarantees: a segment is used only once its size and sha256 are those the catalog recorded, parsed
from the bytes that were checked (read, not mapped: a file truncated underneath cannot end the
process); its arrays are views of those bytes, shared by every snapshot that uses the segment
(``_LOADED``), so a new store version loads only the segments it added. A damaged one raises
StoreDamaged naming it.
"""
from __future__ import annotations

import hashlib
import io
import struct
import weakref
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import fsync_path
from .layout import StoreDamaged, read_store_file
from .limits import DEFAULT_KDE_BINS, DENSITY_BINS, DENSITY_MIN_FILTERS, DENSITY_RANGE, FINE_MIN_FILTERS

FINE_BINS = DEFAULT_KDE_BINS        # the ridge plots' histogram (the notebook's KDE grid)
DENSITY_COMPONENTS = (0, 1)         # the density figure's (c0, c1), over DENSITY_RANGE in DENSITY_BINS bins each
__all__ = ["DENSITY_BINS", "DENSITY_RANGE", "FINE_BINS", "DENSITY_COMPONENTS", "SegmentPlan", "SegmentCounts",
           "Segment", "StoredHistograms"]
ARRAYS = ("layer_ids", "layer_counts", "outside", "layer_units", "unit_models", "unit_depth_bins", "unit_counts",
          "layer_models", "model_ids", "model_density")


@dataclass
class SegmentPlan:
    """The layers a segment covers, in layer_id order, with their units and models."""
    layer_ids: np.ndarray        # (L,) int64 ascending
    n_filters: np.ndarray        # (L,) int64, each layer's filters (the catalog's)
    layer_units: np.ndarray      # (L,) int64 into unit_models
    unit_models: np.ndarray      # (U,) int64
    unit_depth_bins: np.ndarray  # (U,) str
    layer_models: np.ndarray     # (L,) int64 into model_ids
    model_ids: np.ndarray        # (M,) int64
    max_layer_id: int
    bins: int
    count_dtype: type            # of unit_counts and model_density

    @classmethod
    def of(cls, cur, layers_sql: str, params: list, max_layer_id: int, bins: int) -> SegmentPlan:
        """The plan of the layers a query gives (columns layer_id, model_id, depth_bin, n_filters)."""
        t = cur.execute(f"SELECT layer_id, model_id, depth_bin, n_filters FROM ({layers_sql}) ORDER BY layer_id",
                        params).fetchnumpy()
        layer_ids = np.asarray(t["layer_id"], dtype=np.int64)
        models = np.asarray(t["model_id"], dtype=np.int64)
        depth = np.asarray(t["depth_bin"]).astype(str)
        n = np.asarray(t["n_filters"], dtype=np.int64)
        model_ids, layer_models = np.unique(models, return_inverse=True)
        keys = np.char.add(np.char.add(models.astype(str), "|"), depth)
        _, first, layer_units = np.unique(keys, return_index=True, return_inverse=True)
        per_model = np.bincount(layer_models, weights=n, minlength=len(model_ids)).astype(np.int64)
        per_unit = np.bincount(layer_units, weights=n, minlength=len(first)).astype(np.int64)
        # A model's filters, the most any count of a unit or model can reach, fix the stored width.
        dtype = np.int32 if per_model.max(initial=0) < 2 ** 31 else np.int64
        units = per_unit >= FINE_MIN_FILTERS     # the units and models stored; the others are -1
        stored_models = per_model >= DENSITY_MIN_FILTERS
        return cls(layer_ids, n, _renumber(layer_units, units), models[first][units], depth[first][units],
                   _renumber(layer_models, stored_models), model_ids[stored_models], max_layer_id, bins, dtype)

    def maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slot, unit, model) of each layer id (max_layer_id + 2,) int64, -1 for layers not in the plan."""
        out = []
        for values in (np.arange(len(self.layer_ids)), self.layer_units, self.layer_models):
            m = np.full(self.max_layer_id + 2, -1, dtype=np.int64)
            m[self.layer_ids] = values
            out.append(m)
        return tuple(out)


def _renumber(of_layer: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Each layer's index among the kept units (models), -1 for a layer of one not kept."""
    new = np.where(kept, np.cumsum(kept) - 1, -1)
    return new[of_layer].astype(np.int64)


@dataclass
class SegmentCounts:
    """What a scan of a plan's layers counted (scan.scan_segment)."""
    plan: SegmentPlan
    layer_counts: np.ndarray    # (L, 9, bins) int64
    outside: np.ndarray         # (L, 9) int64
    unit_counts: np.ndarray     # (U, 9, FINE_BINS)
    model_density: np.ndarray   # (M, DENSITY_BINS, DENSITY_BINS)

    @classmethod
    def zeros(cls, plan: SegmentPlan, density: bool = True) -> SegmentCounts:
        """Zero counts of the plan's layers, units and (``density``) models; else model_density None."""
        L, U, M = len(plan.layer_ids), len(plan.unit_models), len(plan.model_ids)
        return cls(plan, np.zeros((L, 9, plan.bins), dtype=np.int64), np.zeros((L, 9), dtype=np.int64),
                   np.zeros((U, 9, FINE_BINS), dtype=plan.count_dtype),
                   np.zeros((M, DENSITY_BINS, DENSITY_BINS), dtype=plan.count_dtype) if density else None)

    def write(self, path: Path) -> None:
        """The segment file, fsynced (without the models' arrays if model_density is None)."""
        p = self.plan
        models = {} if self.model_density is None else {"layer_models": p.layer_models, "model_ids": p.model_ids,
                                                        "model_density": self.model_density}
        with open(path, "wb") as f:
            np.savez(f, layer_ids=p.layer_ids, layer_counts=self.layer_counts, outside=self.outside,
                     layer_units=p.layer_units, unit_models=p.unit_models, unit_depth_bins=p.unit_depth_bins,
                     unit_counts=self.unit_counts, **models)
        fsync_path(path)


def _npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed .npz held in ``data``, as read-only views of it (no copy)."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not a stored .npy")
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            member = io.BytesIO(data[start:start + min(info.file_size, 1 << 16)])
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"member {info.filename!r}: .npy format {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(member)
            if fortran or dtype.hasobject:
                raise ValueError(f"member {info.filename!r} is not a C-ordered plain array")
            count = int(np.prod(shape, dtype=np.int64))
            if member.tell() + count * dtype.itemsize != info.file_size:
                raise ValueError(f"member {info.filename!r}: its size is not its shape's")
            out[info.filename[:-4]] = np.frombuffer(data, dtype, count, start + member.tell()).reshape(shape)
    return out


class Segment:
    """One segment file's arrays (read-only views of its checked bytes)."""

    def __init__(self, rel: str, arrays: dict[str, np.ndarray], bins: int):
        self.rel, self.bins = rel, bins
        self.layer_ids = arrays["layer_ids"]
        self.layer_counts = arrays["layer_counts"]
        self.outside = arrays["outside"]
        self.layer_units = arrays.get("layer_units")
        self.unit_counts = arrays.get("unit_counts")
        self.unit_models = arrays.get("unit_models")
        self.layer_models = arrays.get("layer_models")
        self.model_density = arrays.get("model_density")

    @classmethod
    def load(cls, root: Path, rel: str, size: int, sha256: str, bins: int) -> Segment:
        key = (str(root), rel, sha256)
        if (seg := _LOADED.get(key)) is not None:
            return seg
        data = read_store_file(root, rel, size)  # a link, a FIFO, another size: StoreDamaged, nothing read
        if (digest := hashlib.sha256(data).hexdigest()) != sha256:
            raise StoreDamaged(rel, f"checksum differs (sha256 {digest[:16]}..., the catalog recorded {sha256[:16]}...)")
        try:
            seg = cls(rel, cls._arrays(rel, data, bins), bins)
        except (ValueError, KeyError, zipfile.BadZipFile, struct.error) as e:
            raise StoreDamaged(rel, f"not a histogram segment ({e})") from None
        _LOADED[key] = seg
        return seg

    @staticmethod
    def _arrays(rel: str, data: bytes, bins: int) -> dict[str, np.ndarray]:
        if rel.endswith(".npy"):  # a store of layout 6 or before: prefix sums of the per-layer counts only
            packed = np.load(io.BytesIO(data))
            if packed.dtype != np.int64 or packed.ndim != 2 or packed.shape[1] != 1 + 9 * bins:
                raise ValueError(f"{packed.dtype} {packed.shape}")
            counts = np.diff(packed[:, 1:], axis=0).reshape(-1, 9, bins)
            return {"layer_ids": packed[1:, 0].copy(), "layer_counts": counts,
                    "outside": np.zeros((len(counts), 9), dtype=np.int64)}
        a = _npz_arrays(data)
        L, U = len(a["layer_ids"]), len(a["unit_models"])
        shapes = {"layer_ids": (L,), "layer_counts": (L, 9, bins), "outside": (L, 9), "layer_units": (L,),
                  "unit_models": (U,), "unit_counts": (U, 9, FINE_BINS)}
        if "model_density" in a:  # none from a refit on Spark
            shapes |= {"layer_models": (L,), "model_density": (len(a["model_ids"]), DENSITY_BINS, DENSITY_BINS)}
        for name, shape in shapes.items():
            if a[name].shape != shape or a[name].dtype.kind != "i":
                raise ValueError(f"{name} is {a[name].dtype} {a[name].shape}, not integers {shape}")
        index = [(a["layer_units"], U)] + ([(a["layer_models"], len(a["model_ids"]))] if "model_density" in a else [])
        if L and (any(i.min() < -1 or i.max() >= n for i, n in index) or np.any(np.diff(a["layer_ids"]) <= 0)):
            raise ValueError("its layer index is inconsistent")
        return a


_LOADED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # (store, path, sha256) -> Segment in use


class StoredHistograms:
    """The segments of one basis a store version uses, joined: per layer (in layer_id order) its
    counts as prefix sums, its coefficients outside the range, its unit and model.

    Parameters are those of every sum: ``layer_ids`` (n,) ascending, the selected layers (all among
    the segments'), ``layer_group`` (n,) their groups 0..n_groups-1.
    """

    def __init__(self, basis_version: int, bins: int, segments: list[Segment]):
        self.basis_version, self.bins, self.segments = basis_version, bins, segments
        ids = [s.layer_ids for s in segments]
        self.layer_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        if np.any(np.diff(self.layer_ids) <= 0):
            raise StoreDamaged(segments[0].rel, "the segments of its basis overlap")
        counts = [s.layer_counts.reshape(len(s.layer_ids), -1) for s in segments]
        self.cumulative = np.zeros((len(self.layer_ids) + 1, 9 * bins), dtype=np.int64)
        if counts:
            np.cumsum(np.concatenate(counts), axis=0, out=self.cumulative[1:])
        self.outside = np.concatenate([s.outside for s in segments]) if segments else np.zeros((0, 9), np.int64)
        # A layout-6 file has no fine histograms, a refit on Spark no 2-D ones: those analyses scan.
        # (and none stored: every unit, every model below the size worth storing: a scan it is)
        self.fine = bool(segments) and all(s.unit_counts is not None for s in segments) \
            and any(len(s.unit_counts) for s in segments)
        self.density = bool(segments) and all(s.model_density is not None for s in segments) \
            and any(len(s.model_density) for s in segments)
        if self.fine:
            self.layer_units, self.unit_size, self._units = _index(segments, "layer_units", "unit_counts")
            # Each model's units summed (a model's units are consecutive): a grouping by a model
            # field reads these, a tenth of the bytes of the units.
            unit_models = np.concatenate([s.unit_models for s in segments])
            starts = np.flatnonzero(np.r_[True, unit_models[1:] != unit_models[:-1]])
            self.unit_model = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(unit_models)]).astype(np.int64))
            self.model_units = np.bincount(self.unit_model, minlength=len(starts))
            self._model_fine = [(0, np.concatenate([np.add.reduceat(c, st, axis=0, dtype=np.int64) if len(c) else
                                                    np.zeros((0, 9, FINE_BINS), np.int64)
                                                    for c, st in _segment_starts(self._units, starts)]))]
        if self.density:
            self.layer_models, self.model_size, self._models = _index(segments, "layer_models", "model_density")

    def problem(self, pos: np.ndarray, n_filters: np.ndarray) -> str | None:
        """What is wrong with the counts of the layers at ``pos`` holding ``n_filters`` each (the
        catalog's), if anything: every count is >= 0, a layer's counts and values outside add up to
        its filters in each component, a stored unit's counts to its layers' in range."""
        per_layer = (self.cumulative[pos + 1] - self.cumulative[pos]).reshape(len(pos), 9, self.bins)
        if (per_layer < 0).any() or (self.outside[pos] < 0).any():
            return "negative counts"
        in_range = per_layer.sum(axis=2)
        if not np.array_equal(in_range + self.outside[pos], np.broadcast_to(n_filters[:, None], in_range.shape)):
            return "its per-layer counts do not add up to the catalog's filters"
        if self.fine:
            units = self.layer_units[pos]
            want = np.zeros((len(self.unit_size), 9), dtype=np.int64)
            np.add.at(want, units[units >= 0], in_range[units >= 0])
            got = np.concatenate([c.sum(axis=2, dtype=np.int64) for _, c in self._units]) if self._units else want
            used = np.zeros(len(self.unit_size), dtype=bool)
            used[units[units >= 0]] = True
            if (got[used] != want[used]).any():
                return "its per-unit counts are not its layers'"
        if self.density:  # a model's 2-D counts: none negative, at most its filters
            models = self.layer_models[pos]
            most = np.zeros(len(self.model_size), dtype=np.int64)
            np.add.at(most, models[models >= 0], n_filters[models >= 0])
            used = np.zeros(len(self.model_size), dtype=bool)
            used[models[models >= 0]] = True
            got = np.concatenate([c.sum(axis=(1, 2), dtype=np.int64) for _, c in self._models])
            if (got[used] > most[used]).any() or any((c < 0).any() for _, c in self._models):
                return "its per-model 2-D counts are not its layers'"
        return None

    @property
    def nbytes(self) -> int:
        return int(sum(sum(a.nbytes for a in (s.layer_counts, s.unit_counts, s.model_density) if a is not None)
                       for s in self.segments) + self.cumulative.nbytes)

    def positions(self, layer_ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.layer_ids, layer_ids)
        if len(pos) and (pos[-1] >= len(self.layer_ids) or not np.array_equal(self.layer_ids[pos], layer_ids)):
            raise LookupError("a selected layer has no stored histogram")
        return pos

    def group_sums(self, layer_ids: np.ndarray, layer_group: np.ndarray, n_groups: int) -> np.ndarray:
        """Counts (n_groups, 9, bins) of the given layers, summed per group: exact, in integers.
        Each run of consecutive layers of one group costs one subtraction of rows."""
        pos = self.positions(layer_ids)
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

    def outside_sums(self, layer_ids: np.ndarray, layer_group: np.ndarray, n_groups: int) -> np.ndarray:
        """(n_groups, 9) int64: the coefficients outside the basis range, per group and component."""
        out = np.zeros((n_groups, 9), dtype=np.int64)
        np.add.at(out, layer_group, self.outside[self.positions(layer_ids)])
        return out

    def _whole(self, of_layer: np.ndarray, size: np.ndarray, layer_ids, layer_group):
        """The stored units (or models) the layers make up, with their group, and the mask of the
        layers of units not stored; None if a stored one is not whole, or not of one group, or if
        none is stored."""
        idx = of_layer[self.positions(layer_ids)]
        rest = idx < 0
        idx, grp = idx[~rest], layer_group[~rest]
        if not len(idx) or np.any(np.bincount(idx, minlength=len(size))[idx] != size[idx]):
            return None  # none stored (a scan it is), or one split
        group = np.full(len(size), -1, dtype=np.int64)
        group[idx] = grp
        if np.any(group[idx] != grp):
            return None
        chosen = np.flatnonzero(group >= 0)
        return chosen, group[chosen], rest

    def fine_sums(self, layer_ids: np.ndarray, layer_group: np.ndarray, n_groups: int):
        """(counts (n_groups, 9, FINE_BINS) int64 of the layers of stored units per group, from
        their stored fine histograms; the mask of the layers whose units are not stored, to scan);
        None if a stored unit is not whole in the selection or not of one group (or none are stored)."""
        if not self.fine or (whole := self._whole(self.layer_units, self.unit_size, layer_ids, layer_group)) is None:
            return None
        chosen, groups, rest = whole
        models = self.unit_model[chosen]
        model_group = np.full(len(self.model_units), -1, dtype=np.int64)
        model_group[models] = groups
        if np.array_equal(np.bincount(models, minlength=len(self.model_units))[models], self.model_units[models]) \
                and np.array_equal(model_group[models], groups):  # whole models, one group each: their sums
            picked = np.unique(models)
            return _sum_rows(self._model_fine, picked, model_group[picked], n_groups, (9, FINE_BINS)), rest
        return _sum_rows(self._units, chosen, groups, n_groups, (9, FINE_BINS)), rest

    def density_sum(self, layer_ids: np.ndarray):
        """(counts (DENSITY_BINS, DENSITY_BINS) int64 of the (c0, c1) of the layers of stored models,
        from their 2-D histograms; the mask of the layers whose models are not stored, to scan); None
        if a stored model is not whole in the selection (or none are stored)."""
        zeros = np.zeros(len(layer_ids), dtype=np.int64)
        if not self.density or (whole := self._whole(self.layer_models, self.model_size, layer_ids, zeros)) is None:
            return None
        chosen, groups, rest = whole
        return _sum_rows(self._models, chosen, groups, 1, (DENSITY_BINS, DENSITY_BINS))[0], rest


def _index(segments: list[Segment], of_layer: str, counts: str):
    """Each layer's global unit (or model), each unit's layer count, and the (offset, counts) parts."""
    offsets = np.cumsum([0] + [len(getattr(s, counts)) for s in segments])
    index = np.concatenate([np.where(getattr(s, of_layer) >= 0, getattr(s, of_layer) + o, -1)
                            for s, o in zip(segments, offsets)])
    return index, np.bincount(index[index >= 0], minlength=offsets[-1]), \
        [(int(o), getattr(s, counts)) for s, o in zip(segments, offsets)]


def _segment_starts(parts: list[tuple[int, np.ndarray]], starts) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per part (offset, array of rows), its rows and the starts (local) of the runs beginning in it;
    a model's units never straddle two parts (a model is in one segment)."""
    starts = np.asarray(starts, dtype=np.int64)
    out = []
    for offset, arr in parts:
        local = starts[(starts >= offset) & (starts < offset + len(arr))] - offset
        out.append((arr, local))
    return out


def _sum_rows(parts: list[tuple[int, np.ndarray]], rows: np.ndarray, groups: np.ndarray, n_groups: int,
              shape: tuple) -> np.ndarray:
    """out[g] = sum of the rows (global indices, ascending) of group g, over arrays split in parts
    (offset, array): each run of consecutive rows of one group summed in one pass over memory."""
    out = np.zeros((n_groups, *shape), dtype=np.int64)
    if not len(rows):
        return out
    cut = np.flatnonzero((np.diff(rows) != 1) | (np.diff(groups) != 0)) + 1
    runs = list(zip(np.r_[0, cut], np.r_[cut, len(rows)]))

    def add(runs, out):
        for a, b in runs:
            first, last, g = int(rows[a]), int(rows[b - 1]), int(groups[a])
            for offset, arr in parts:
                lo, hi = max(first, offset), min(last + 1, offset + len(arr))
                if lo < hi:
                    out[g] += arr[lo - offset:hi - offset].sum(axis=0, dtype=np.int64)
        return out

    if len(rows) < 256:
        return add(runs, out)
    # numpy's sums release the GIL: two threads read the two halves (the sum takes memory bandwidth,
    # 0.5 GB of units at the real dataset's size); integers, so the order does not matter.
    half = int(np.searchsorted(np.cumsum([b - a for a, b in runs]), len(rows) // 2))
    with ThreadPoolExecutor(2) as pool:
        other = pool.submit(add, runs[half:], np.zeros_like(out))
        add(runs[:half], out)
        out += other.result()
    return out
