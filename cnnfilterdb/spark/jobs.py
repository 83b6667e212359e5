"""The store's scans as Spark jobs: the local engine's kernels on each task's batches, the partial
results summed by Spark (docs/method.md#spark).

Every job gets the columns it needs of the shard files (``layer_id``, ``w0..w8``; the moments
also ``filter_id``) for the rows of the selected layers' id range, by one of two reads
(``SparkScanner``): Spark distributes the row groups whose statistics overlap that range and the
tasks read them whole with pyarrow (``arrow``), or Spark's Parquet reader hands the rows over
(``spark``). Each task (``mapInArrow``) passes its Arrow tables to the compiled kernels of
``stats/histogram.py`` (the coefficients c = C (x / p) - C mu computed by the same function as on
one machine) and yields one partial result per task:

- ``range``: (min, max, count) of the coefficients, reduced with Spark's min, max and sum: exact,
  since extremes do not depend on the order of the work;
- ``histograms``: per group, the counts (9 * bins) int64, summed per group by Spark
  (``aggregate`` + ``zip_with`` over the tasks' arrays): integers, so the sums equal the local
  engine's counts bit for bit, whatever the partitioning;
- ``layer_moments``: per layer, the count, mean and scatter of its peak-scaled filters within
  the task (centered: ``Moments.of_columns``), merged per layer by Spark with Chan et al.'s
  pairwise update (the formula of ``Moments.merge``) in order of the pieces' first filter_id,
  so that the result is deterministic; it equals the moments computed on one machine up to
  rounding (~1e-16 relative).

Only the partial results cross the network: a task's histogram rows, never filters.

Checksums (cnnfilterdb/checksums.py): given the tables' row group checksums, a ``arrow`` task
reads each of its row groups' bytes, hashes them and checks the shard's footer before decoding;
with ``spark`` Spark's own reader decodes the pages, so a job first runs a pass of tasks that hash
the row groups the scan reads (with pyarrow's filesystems, as ``arrow`` reads them: an extra read
of those bytes). A difference is StoreDamaged naming the shard and row group, on the driver.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np

from ..checksums import check_footer, check_row_group, check_spans, damage_of, read_footer_from, row_group_span
from ..errors import first_line
from ..layout import StoreDamaged, StoreError
from ..scan import LayerGroups, kernel_basis
from ..stats.basis import Basis
from ..stats.histogram import bin_edges, histogram_range
from ..stats.moments import Moments
from .session import SparkError

WEIGHT_COLUMNS = [f"w{i}" for i in range(9)]

# Chan et al.'s merge of two pieces a, b of one layer (Moments.merge), as a Spark SQL lambda over
# structs (first filter_id, n, mean (9), scatter (81)).
_MERGE = """(a, b) -> named_struct(
    'first', a.first,
    'n', a.n + b.n,
    'mean', zip_with(a.mean, b.mean, (x, y) -> x + (y - x) * (CAST(b.n AS DOUBLE) / (a.n + b.n))),
    'scatter', transform(sequence(0, 80), k -> a.scatter[k] + b.scatter[k]
        + (b.mean[k div 9] - a.mean[k div 9]) * (b.mean[k % 9] - a.mean[k % 9])
          * (CAST(a.n AS DOUBLE) * b.n / (a.n + b.n))))"""
# The elementwise sum of a group's count arrays.
_SUM = "aggregate(slice(parts, 2, size(parts)), parts[0], (a, b) -> zip_with(a, b, (x, y) -> x + y))"


def _map(df, task, schema: str):
    """``_map(df, task, schema)``, without PySpark's warning about pandas >= 3 (these jobs
    exchange Arrow batches only, never pandas frames)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        return df.mapInArrow(task, schema)


READS = ("arrow", "spark")
FOOTER_THREADS = 16  # the driver reads the shards' footers to list their row groups


def arrow_filesystem_uri(uri: str) -> str:
    """A store URI as pyarrow's filesystems take it: Hadoop's s3a:// and s3n:// are s3://."""
    for hadoop in ("s3a://", "s3n://"):
        if uri.startswith(hadoop):
            return "s3://" + uri[len(hadoop):]
    return uri


def arrow_open(uri: str):
    """The file at ``uri`` opened for reading with pyarrow's filesystems (a file:// URI's path
    taken as written, as Spark takes it: not percent-decoded)."""
    import pyarrow.fs as pafs

    if uri.startswith("file://"):
        return pafs.LocalFileSystem().open_input_file(uri[len("file://"):])
    fs, path = pafs.FileSystem.from_uri(arrow_filesystem_uri(uri))
    return fs.open_input_file(path)


UNITS = "path string, row_group int, rel string, byte_offset long, byte_length long, xxh3 long, footer long"


def _checked_units(units):
    """(open pyarrow file, parsed footer, row group) of each unit of a task ((path URI, row group,
    rel, byte_offset, byte_length, xxh3, footer) rows, UNITS), the footer and the row group's
    bytes checked against the recorded checksums when the unit carries them (xxh3 not null)."""
    opened: dict[str, tuple] = {}
    try:
        for batch in units:
            for path, row_group, rel, offset, length, expected, footer in zip(*(c.to_pylist() for c in batch.columns)):
                if path not in opened:
                    f = arrow_open(path)
                    md, footer_hash = read_footer_from(f)
                    opened[path] = f, md
                    if footer is not None:
                        check_footer(rel, footer, footer_hash)
                f, md = opened[path]
                if expected is not None:
                    # the recorded span is the (checked) footer's: else other bytes would be hashed
                    check_spans(rel, [(offset, length)], [row_group_span(md, row_group) if 0 <= row_group <
                                                          md.num_row_groups else (-1, -1)], row_group)
                    check_row_group(rel, row_group, expected, f.read_at(length, offset))
                yield f, md, row_group
    finally:
        for f, _ in opened.values():
            f.close()


def _row_groups(units, columns: list[str], layer_lo: int, layer_hi: int):
    """The row groups that a task's units name (UNITS rows), read with pyarrow: ``columns`` of the
    rows with layer_lo <= layer_id <= layer_hi, one table per row group, each checked (``_checked_units``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for f, md, row_group in _checked_units(units):
        table = pq.ParquetFile(f, metadata=md).read_row_group(row_group, columns=columns, use_threads=False)
        layer = table.column("layer_id")
        if pc.min(layer).as_py() < layer_lo or pc.max(layer).as_py() > layer_hi:
            table = table.filter(pc.and_(pc.greater_equal(layer, layer_lo), pc.less_equal(layer, layer_hi)))
        yield table


def _verify_task(units):
    """A task of the checksum pass of read='spark': every unit's footer and bytes checked, its count yielded."""
    import pyarrow as pa

    n = sum(1 for _ in _checked_units(units))
    yield pa.RecordBatch.from_pydict({"n": [n]})


@contextmanager
def _damage():
    """A job's failure that is a task's StoreDamaged (a checksum that differs) raised as that
    StoreDamaged, on the driver; any other failure as it is."""
    try:
        yield
    except StoreError:
        raise
    except Exception as e:
        if (damage := damage_of(e)) is not None:
            raise damage from None
        raise


def _columns(batch, names: list[str]) -> list[np.ndarray]:
    """The batch's columns as numpy arrays (zero-copy: the shards' columns hold no nulls)."""
    return [batch.column(batch.schema.get_field_index(n)).to_numpy(zero_copy_only=False) for n in names]


class SparkScanner:
    """The scans of a store's shards as Spark jobs, with the methods of scan.ShardScanner.

    Parameters
    ----------
    spark : a SparkSession (``session``).
    uri : the store's location as Spark reads it (``file:///...``, ``s3a://bucket/store``, ...).
    shards : the shard files' paths relative to the store (the catalog's ``_shards``, the tables'
        shards.parquet), in filter_id order.
    read : how the tasks get the filters (READS):
        ``arrow`` (default): Spark distributes the shards' row groups (those whose layer_id
        statistics overlap the selection), each task reads its row groups with pyarrow's
        filesystems (local, s3 from the AWS environment's credentials, hdfs, gcs): the kernels get
        whole row groups, as on one machine;
        ``spark``: Spark's Parquet reader (its Hadoop filesystems and their spark.hadoop.*
        settings) hands each task's rows to the kernels as Arrow batches: any storage Spark
        reads, but the rows cross from the JVM to Python, about 6x the time of read='arrow'
        (bench/bench_spark.py). The checksums are checked by a pass of pyarrow tasks first.
    checksums : the row group checksums of the shards (checksums.Checksums, from the tables'
        row_groups.parquet or a transaction's catalog); None: unchecked (tables written before
        catalog layout 6).
    """

    method = "spark"  # the analyses' results say where their histograms came from

    def __init__(self, spark, uri: str, shards: list[str], read: str = "arrow", checksums=None):
        if read not in READS:
            raise SparkError(f"unknown read {read!r}; known: {list(READS)}")
        self.spark, self.uri, self.shards, self.read = spark, uri.rstrip("/"), list(shards), read
        self.checksums = checksums

    def _job(self, columns: list[str], layer_lo: int, layer_hi: int, task, schema: str):
        """The DataFrame of ``task``'s partial results: ``task`` gets an iterator of Arrow tables or
        batches holding ``columns`` of the rows with layer_lo <= layer_id <= layer_hi."""
        from pyspark.sql import functions as F

        lo, hi = int(layer_lo), int(layer_hi)
        if self.read == "spark":
            if self.checksums is not None:
                self._verify(lo, hi)
            df = self.spark.read.parquet(*[f"{self.uri}/{rel}" for rel in self.shards]).select(*columns)
            return _map(df.where(F.col("layer_id").between(lo, hi)), task, schema)
        units = self._units(lo, hi)
        # One partition per row group at most, a few per core: tasks of similar size. Each task
        # takes a contiguous run of row groups (parallelize slices a list in order; a shuffle
        # would deal them round-robin), so it meets a contiguous run of layers: a task's
        # per-layer partial spans its own layers, not the store's.
        return _map(self._units_df(units), lambda batches: task(_row_groups(batches, columns, lo, hi)), schema)

    def _units_df(self, units: list[tuple]):
        sc = self.spark.sparkContext
        parts = max(1, min(len(units), 4 * sc.defaultParallelism))
        return self.spark.createDataFrame(sc.parallelize(units, parts), UNITS)

    def _verify(self, layer_lo: int, layer_hi: int) -> None:
        """The checksum pass of read='spark': the footers and bytes of the row groups whose
        statistics overlap [layer_lo, layer_hi] (those Spark's reader decodes), hashed in tasks."""
        from pyspark.sql import functions as F

        units = self._units(layer_lo, layer_hi)
        if units:
            with _damage():
                _map(self._units_df(units), _verify_task, "n long").agg(F.sum("n")).first()

    def _units(self, layer_lo: int, layer_hi: int) -> list[tuple]:
        """The row groups whose layer_id statistics overlap [layer_lo, layer_hi]: (shard URI, row
        group, shard path relative to the store, and the row group's byte offset, length and xxh3
        and the footer's xxh3 as recorded, or nulls without checksums) (UNITS)."""
        from concurrent.futures import ThreadPoolExecutor

        def footer(uri: str):
            try:
                with arrow_open(uri) as f:
                    return read_footer_from(f)
            except FileNotFoundError:
                raise StoreError(f"{uri}: missing; the store is damaged, or is not at this location (--store): "
                                 "run `cnnfilterdb verify`") from None
            except (OSError, ValueError) as e:
                raise SparkError(f"{uri}: {first_line(e)} (read='arrow' reads the shards with pyarrow's filesystems; "
                                 "read='spark', `--read spark`, through Spark's)") from None

        uris = [f"{self.uri}/{rel}" for rel in self.shards]
        with ThreadPoolExecutor(FOOTER_THREADS) as pool:  # on object storage a footer is a round trip
            footers = list(pool.map(footer, uris))
        units = []
        for rel, uri, (md, footer_hash) in zip(self.shards, uris, footers):
            checks = None if self.checksums is None else self.checksums.shards.get(rel)
            if self.checksums is not None:
                if checks is None:
                    raise StoreDamaged(rel, "no checksums of it are recorded in the tables' row_groups.parquet")
                checks.check_footer(footer_hash)  # the statistics below are the committed ones
            li = md.schema.to_arrow_schema().get_field_index("layer_id")
            for i in range(md.num_row_groups):
                st = md.row_group(i).column(li).statistics
                if st is None or not st.has_min_max or (st.min <= layer_hi and st.max >= layer_lo):
                    units.append((uri, i, rel, *(checks.span(i) if checks else (None, None, None)),
                                  checks.footer if checks else None))
        return units

    def _selected(self, groups: LayerGroups) -> tuple[int, int]:
        ids = np.flatnonzero(groups.group_of_layer >= 0)
        if len(ids) == 0:
            raise SparkError("no layer is selected: nothing to scan")
        return int(ids[0]), int(ids[-1])

    # -- the jobs ------------------------------------------------------------------------------
    def range(self, groups: LayerGroups, basis: Basis) -> tuple[float, float, int]:
        """(min, max) of all 9 coefficients of the selected filters, and their count (scan.scan_range)."""
        from pyspark.sql import functions as F

        C, shift = kernel_basis(basis)
        group_of_layer = self.spark.sparkContext.broadcast(groups.group_of_layer)

        def task(batches):
            import pyarrow as pa

            from cnnfilterdb.stats.histogram import coefficient_range

            g = group_of_layer.value
            lo, hi, n = np.inf, -np.inf, 0
            for b in batches:
                layer, *cols = _columns(b, ["layer_id", *WEIGHT_COLUMNS])
                a, z, k = coefficient_range(layer, tuple(cols), g, C, shift)
                lo, hi, n = min(lo, a), max(hi, z), n + k
            yield pa.RecordBatch.from_pydict({"lo": [float(lo)], "hi": [float(hi)], "n": [int(n)]})

        try:
            partial = self._job(["layer_id", *WEIGHT_COLUMNS], *self._selected(groups), task, "lo double, hi double, n long")
            with _damage():
                row = partial.agg(F.min("lo"), F.max("hi"), F.sum("n")).first()
        finally:
            group_of_layer.unpersist()
        if not row[2]:  # nothing selected was read
            return np.inf, -np.inf, 0
        return float(row[0]), float(row[1]), int(row[2])

    def histograms(self, groups: LayerGroups, basis: Basis, lo: float, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
        """Counts (n_groups, 9, bins) int64: per group and component, np.histogram(c, bins, (lo, hi)),
        and the coefficients outside [lo, hi] (n_groups, 9) (scan.scan_histograms)."""
        from pyspark.sql import functions as F

        C, shift = kernel_basis(basis)
        lo, hi = histogram_range(lo, hi)
        edges = bin_edges(lo, hi, bins)
        cells = 9 * bins + 9  # a group's counts, then its 9 values outside
        group_of_layer = self.spark.sparkContext.broadcast(groups.group_of_layer)

        def task(batches):
            import pyarrow as pa

            from cnnfilterdb.stats.histogram import histogram_counts

            g = group_of_layer.value
            first, acc = 0, np.zeros((0, 9, bins), dtype=np.int64)  # the groups first .. first + len(acc) - 1
            out = np.zeros((0, 9), dtype=np.int64)
            for b in batches:
                layer, *cols = _columns(b, ["layer_id", *WEIGHT_COLUMNS])
                gl = g[layer]
                gl = gl[gl >= 0]
                if len(gl) == 0:
                    continue
                g_lo, g_hi = int(gl.min()), int(gl.max())
                if len(acc) == 0:
                    first, acc = g_lo, np.zeros((g_hi - g_lo + 1, 9, bins), dtype=np.int64)
                    out = np.zeros((g_hi - g_lo + 1, 9), dtype=np.int64)
                elif g_lo < first or g_hi >= first + len(acc):  # widen the task's span of groups
                    new_first = min(first, g_lo)
                    span = max(first + len(acc), g_hi + 1) - new_first
                    wider = np.zeros((span, 9, bins), dtype=np.int64)
                    wider[first - new_first:first - new_first + len(acc)] = acc
                    wider_out = np.zeros((span, 9), dtype=np.int64)
                    wider_out[first - new_first:first - new_first + len(out)] = out
                    first, acc, out = new_first, wider, wider_out
                histogram_counts(layer, tuple(cols), g, first, C, shift, lo, hi, edges, acc, out)
            flat = np.concatenate([acc.reshape(len(acc), 9 * bins), out], axis=1)
            rows = np.flatnonzero(flat.any(axis=1))
            values = pa.array(flat[rows].ravel(), pa.int64())
            offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int32) * cells, pa.int32())
            yield pa.RecordBatch.from_arrays([pa.array(rows + first, pa.int32()), pa.ListArray.from_arrays(offsets, values)],
                                             names=["group", "counts"])

        try:
            partial = self._job(["layer_id", *WEIGHT_COLUMNS], *self._selected(groups), task, "group int, counts array<bigint>")
            parts = partial.groupBy("group").agg(F.collect_list("counts").alias("parts"))
            with _damage():
                table = parts.select("group", F.expr(_SUM).alias("counts")).toArrow()
        finally:
            group_of_layer.unpersist()
        both = np.zeros((groups.n_groups, cells), dtype=np.int64)
        if table.num_rows:
            rows = table.column("group").to_numpy()
            both[rows] = table.column("counts").combine_chunks().flatten().to_numpy().reshape(-1, cells)
        return both[:, :9 * bins].reshape(-1, 9, bins), both[:, 9 * bins:].copy()

    def segment(self, plan, basis: Basis, lo: float, hi: float):
        """The stored histograms of ``plan``'s layers (scan.scan_segment), from two histogram jobs:
        per layer and per unit. The per-model 2-D histograms are not computed on Spark: they stay
        zero-sized, and the density figure of a store refreshed on Spark scans (segments.py)."""
        from ..segments import FINE_BINS, SegmentCounts

        layers = LayerGroups.of(plan.layer_ids, np.arange(len(plan.layer_ids)), len(plan.layer_ids), plan.max_layer_id)
        layer_counts, outside = self.histograms(layers, basis, lo, hi, plan.bins)
        out = SegmentCounts.zeros(plan, density=False)
        out.layer_counts[...], out.outside[...] = layer_counts, outside
        if len(plan.unit_models):  # the units large enough to be stored, if any (-1: not stored)
            units = LayerGroups.of(plan.layer_ids, plan.layer_units, len(plan.unit_models), plan.max_layer_id)
            out.unit_counts[...] = self.histograms(units, basis, lo, hi, FINE_BINS)[0]
        return out

    def layer_moments(self, layer_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each given layer's moments of its peak-scaled filters, from its filters.

        Parameters
        ----------
        layer_ids : (L,) ascending layer ids.

        Returns
        -------
        (layer_ids (L',), n (L',), mean (L', 9), scatter (L', 9, 9)): float64 but layer_ids and n,
        in layer_id order, for the layers that hold filters (L' <= L).
        """
        from pyspark.sql import functions as F

        layer_ids = np.asarray(layer_ids, dtype=np.int64)
        if len(layer_ids) == 0:
            raise SparkError("no layer is selected: nothing to scan")
        wanted = self.spark.sparkContext.broadcast(layer_ids)

        def task(batches):
            import pyarrow as pa

            from cnnfilterdb.stats.basis import peak_scale_columns
            from cnnfilterdb.stats.quality import column_peaks

            ids = wanted.value
            pieces: dict[int, list] = {}  # layer -> [first filter_id, Moments], in the task's order
            for b in batches:
                fid, layer, *cols = _columns(b, ["filter_id", "layer_id", *WEIGHT_COLUMNS])
                x32 = np.stack(cols)                   # (9, n) float32, the peaks from it (as the ingest)
                peaks = column_peaks(x32).astype(np.float64)
                x = peak_scale_columns(x32.astype(np.float64), peaks)
                cut = np.concatenate([[0], np.flatnonzero(np.diff(layer)) + 1, [len(layer)]])
                for s, e in zip(cut[:-1], cut[1:]):
                    lid = int(layer[s])
                    i = np.searchsorted(ids, lid)
                    if i == len(ids) or ids[i] != lid:
                        continue
                    m = Moments.of_columns(x[:, s:e])
                    if lid in pieces:
                        pieces[lid][1] = pieces[lid][1].merge(m)
                    else:
                        pieces[lid] = [int(fid[s]), m]
            yield pa.RecordBatch.from_pydict({
                "layer_id": pa.array(list(pieces), pa.int32()),
                "first": pa.array([p[0] for p in pieces.values()], pa.int64()),
                "n": pa.array([p[1].n for p in pieces.values()], pa.int64()),
                "mean": pa.array([p[1].mean.tolist() for p in pieces.values()], pa.list_(pa.float64())),
                "scatter": pa.array([p[1].scatter.ravel().tolist() for p in pieces.values()], pa.list_(pa.float64())),
            })

        schema = "layer_id int, first bigint, n bigint, mean array<double>, scatter array<double>"
        try:
            partial = self._job(["filter_id", "layer_id", *WEIGHT_COLUMNS], int(layer_ids[0]), int(layer_ids[-1]), task, schema)
            parts = partial.groupBy("layer_id").agg(
                F.array_sort(F.collect_list(F.struct("first", "n", "mean", "scatter"))).alias("p"))
            merged = parts.select("layer_id", F.expr(f"aggregate(slice(p, 2, size(p)), p[0], {_MERGE})").alias("m"))
            with _damage():
                table = merged.select("layer_id", "m.n", "m.mean", "m.scatter").orderBy("layer_id").toArrow()
        finally:
            wanted.unpersist()
        flat = lambda name, width: table.column(name).combine_chunks().flatten().to_numpy().reshape(-1, width)  # noqa: E731
        return (table.column("layer_id").to_numpy().astype(np.int64), table.column("n").to_numpy().astype(np.int64),
                flat("mean", 9), flat("scatter", 81).reshape(-1, 9, 9))
