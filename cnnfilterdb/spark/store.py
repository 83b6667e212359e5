"""A store as a Spark driver sees it, through its Parquet tables; and its refresh on Spark.

``SparkStore.open`` reads ``tables/LATEST`` and the tables of the version it names (or of
``as_of``) through Spark, so the store may be anywhere Spark reads; the driver keeps them in an
in-memory DuckDB database shaped as the engine's catalog (``_versions``, ``_basis``,
``_layer_moments``, ``layers_with_models_at(v)``), and runs the local engine's ``Analysis`` on it
with the scans on Spark (``SparkScanner``). So a divergence on Spark is the local one's code: the
same selection, basis, checks and JSON, with ``method`` "spark".
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ..analysis import Analysis
from ..catalog import VersionError
from ..errors import UserError
from ..layout import CATALOG, SHARDS, StoreDamaged, StoreError, check_no_symlinks
from ..requests import DivergenceRequest, takes
from ..snapshot import Snapshot
from ..store import StoreTransaction
from ..tables import LATEST, TABLES
from .jobs import SparkScanner
from .session import SparkError, job_error

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
GLOB = "[]{}*?\\"  # Hadoop's glob characters
# What the tables may name, relative to the store (store.py, tables.py): anything else (a path out
# of the store, an absolute one) is a damaged or forged file, not read.
_TABLES_DIR = re.compile(rf"{TABLES}/[0-9A-Za-z]+-[0-9a-f]+-v[0-9]+")
_SHARD = re.compile(rf"{SHARDS}/[0-9A-Za-z-]+\.parquet")


def store_uri(location: str | os.PathLike) -> str:
    """A store's location as Spark reads it: a URI (``s3a://bucket/store``, ``hdfs://nn/store``,
    ``file:///data/store``) as given, a local path as ``file://`` and its absolute path."""
    text = str(location)
    if any(c in text for c in GLOB):
        raise SparkError(f"{text!r}: a store location with any of {' '.join(GLOB)} cannot go to Spark, whose Hadoop "
                         "paths expand them as a pattern (another directory could match): rename it or link to it")
    # Not Path.as_uri(): Hadoop's paths take a file URI's path as written, so "%20" would stay
    # three characters; a space or a quote is kept as it is (Spark and pyarrow read it so).
    return text.rstrip("/") if _URI.match(text) else "file://" + str(Path(text).resolve())


class SparkStore:
    """One store version, read through its Parquet tables by Spark.

    Attributes: ``uri``, ``version``, ``directory`` (its tables, relative to the store),
    ``shards`` (relative paths, filter_id order), ``catalog`` (the in-memory DuckDB connection),
    ``scanner`` (SparkScanner).
    """

    def __init__(self, spark, uri: str, directory: str, tables: dict, read: str = "arrow"):
        import duckdb

        self.spark, self.uri, self.directory = spark, uri, directory
        con = duckdb.connect(":memory:")
        for name, table in tables.items():
            con.register(f"_arrow_{name}", table)
        con.execute("CREATE TABLE _versions AS SELECT * EXCLUDE (tables) FROM _arrow_versions")
        con.execute("CREATE TABLE _basis AS SELECT * FROM _arrow_basis")
        con.execute("CREATE TABLE _layer_moments AS SELECT * FROM _arrow_layer_moments")
        con.execute("CREATE TABLE _lwm AS SELECT * FROM _arrow_layers_with_models")
        con.execute("CREATE VIEW _layers AS SELECT layer_id FROM _lwm")  # what the engine asks of it: the largest id
        # The file holds the one version it was written for: the macro's argument is that version.
        con.execute("CREATE MACRO layers_with_models_at(v) AS TABLE SELECT * FROM _lwm")
        for name in tables:
            con.unregister(f"_arrow_{name}")
        self.catalog = con
        self.version = int(con.execute("SELECT max(version) FROM _versions").fetchone()[0])
        self.shards = tables["shards"].sort_by("filter_id_first").column("path").to_pylist()
        # Layer ids index an array of max_layer_id + 2 groups: a forged id must not size it. Every
        # layer holds a filter, and ids grow with the filters', so no id exceeds the last filter_id.
        last_filter = max(tables["shards"].column("filter_id_last").to_pylist(), default=-1)
        if con.execute("SELECT coalesce(max(layer_id), -1) FROM _lwm").fetchone()[0] > last_filter:
            raise StoreDamaged(f"{directory}/layers_with_models.parquet", "holds a layer id past the shards' last filter id")
        if bad := [p for p in self.shards if not isinstance(p, str) or not _SHARD.fullmatch(p)]:
            raise StoreDamaged(f"{directory}/shards.parquet", f"names {bad[0]!r}, not a shard of the store")
        _no_links(uri, self.shards)
        self.scanner = SparkScanner(spark, uri, self.shards, read, checksums=_checksums(directory, tables))

    @classmethod
    def open(cls, spark, location: str | os.PathLike, as_of: int | None = None, read: str = "arrow") -> SparkStore:
        """The store at ``location`` (a URI or a local path, ``store_uri``) as of store version
        ``as_of`` (default the current one), its jobs reading the shards as ``read`` says
        (SparkScanner); StoreError if it has no tables, VersionError if it does not hold ``as_of``."""
        uri = store_uri(location)
        if uri.startswith("file://") and not Path(uri[len("file://"):]).is_dir():
            raise StoreError(f"{uri[len('file://'):]}: no such directory")
        _no_links(uri, [CATALOG, SHARDS, f"{TABLES}/{LATEST}"])  # before Spark follows any
        latest = _read(spark, uri, f"{TABLES}/{LATEST}", "text",
                       f"{uri}: no {TABLES}/{LATEST}: not a store, or one whose last commit predates its Parquet "
                       "tables (catalog layout 4); any commit writes them, e.g. `cnnfilterdb spark refresh`")
        directory = latest.column(0)[0].as_py().strip() if latest.num_rows else ""
        if not _TABLES_DIR.fullmatch(directory):
            raise StoreDamaged(f"{TABLES}/{LATEST}", f"names {directory[:100]!r}, not a tables directory of the store")
        if as_of is not None:
            versions = _read(spark, uri, f"{directory}/versions.parquet")
            tables_of = dict(zip(versions.column("version").to_pylist(), versions.column("tables").to_pylist()))
            kept = sorted(v for v, t in tables_of.items() if t is not None)  # null: compacted away
            held = f"{kept[0]} to {kept[-1]}" if kept else "none"
            if as_of not in tables_of:
                raise VersionError(f"no store version {as_of}; this store holds versions {held} (`cnnfilterdb log`)")
            compacted = dict(zip(versions.column("version").to_pylist(), versions.column("compacted").to_pylist()))
            if tables_of[as_of] is None and not compacted[as_of]:
                raise VersionError(f"store version {as_of} predates the store's Parquet tables (its catalog was "
                                   f"upgraded later): `cnnfilterdb drift --as-of {as_of}` reads it from the catalog; "
                                   f"Spark reads versions {held}")
            if tables_of[as_of] is None:
                raise VersionError(f"store version {as_of} was compacted away (`cnnfilterdb compact`); this store "
                                   f"holds versions {held}")
            if not _TABLES_DIR.fullmatch(tables_of[as_of]):
                raise StoreDamaged(f"{directory}/versions.parquet",
                                   f"names {tables_of[as_of][:100]!r}, not a tables directory of the store")
            directory = tables_of[as_of]
        names = ["versions", "basis", "layer_moments", "layers_with_models", "shards"]
        _no_links(uri, [f"{directory}/{n}.parquet" for n in names])
        tables = {n: _read(spark, uri, f"{directory}/{n}.parquet") for n in names}
        if "row_groups" in tables["shards"].column_names:  # tables of layout 6 on: the checksums are there
            tables["row_groups"] = _read(spark, uri, f"{directory}/row_groups.parquet")
        return cls(spark, uri, directory, tables, read)

    def analysis(self) -> Analysis:
        """The local engine's analyses on this version, their scans on Spark."""
        cur = self.catalog.cursor()
        return Analysis(cur, Path("."), snapshot=Snapshot(Path("."), self.version), use_stored=False,
                        scanner=self.scanner)

    @takes(DivergenceRequest)
    def divergence(self, req: DivergenceRequest) -> dict:
        """``Analysis.divergence`` (docs/method.md#divergence) with its scans as Spark jobs: the same
        keys and values as ``cnnfilterdb drift --json``; ``method`` is "spark". The store version
        is the one opened (``as_of`` may only repeat it)."""
        if req.as_of is not None and req.as_of != self.version:
            raise VersionError(f"this SparkStore reads store version {self.version}; open it as_of {req.as_of}")
        try:
            return self.analysis().divergence(req)
        except UserError:  # a bad selection, a damaged store, Spark's own
            raise
        except Exception as e:  # a failed job (a shard missing or unreadable where Spark reads it)
            raise SparkError(f"a Spark job failed: {job_error(e)}") from None


def _no_links(uri: str, rels: list[str]) -> None:
    """StoreDamaged naming the first symbolic link among the store files ``rels`` and their
    directories, for a store on this machine's filesystem (``file://``), before Spark reads them:
    Spark would follow a linked ``tables/`` into another store's. (Object stores have no links.)"""
    if uri.startswith("file://"):
        check_no_symlinks(Path(uri[len("file://"):]), rels)


def _checksums(directory: str, tables: dict):
    """The row group checksums of the version's shards (checksums.Checksums), from its
    row_groups.parquet; None for tables written before layout 6 (their shards.parquet has no
    ``row_groups`` column): the scans are unchecked until the next commit writes them."""
    from ..checksums import Checksums

    if "row_groups" not in tables:
        return None
    t = tables["row_groups"]
    rows = zip(*(t.column(c).to_pylist() for c in ("path", "row_group", "byte_offset", "byte_length", "xxh3")))
    try:
        return Checksums.from_rows(rows, tables["shards"].column("path").to_pylist())
    except StoreDamaged as e:
        raise StoreDamaged(f"{directory}/row_groups.parquet", e.problem) from None


def _read(spark, uri: str, rel: str, kind: str = "parquet", missing: str | None = None):
    """The table at ``uri/rel`` read by Spark, as an Arrow table; StoreError if it is missing."""
    from pyspark.errors import AnalysisException

    try:
        reader = spark.read.text if kind == "text" else spark.read.parquet
        return reader(f"{uri}/{rel}").toArrow()
    except AnalysisException as e:
        if "PATH_NOT_FOUND" in str(e) or "does not exist" in str(e):
            raise StoreError(missing or f"{uri}: {rel} is missing; the store is damaged: run `cnnfilterdb verify`") from None
        raise SparkError(f"Spark could not read {uri}/{rel}: {job_error(e)}") from None
    except Exception as e:  # Java's (a filesystem Spark lacks, a refused connection)
        raise SparkError(f"Spark could not read {uri}/{rel}: {job_error(e)}") from None


def refresh(db: str | os.PathLike, spark, uri: str | None = None, read: str = "arrow") -> dict:
    """Refit the current version's global basis and per-layer histograms with the scans on Spark,
    and commit them as a new store version (action "refresh"), all or nothing, as an ingest would.

    The basis is fitted from the catalog's per-layer moments (refit.py, step 1, as on one
    machine); its range and the histograms come from the two scans, run as Spark jobs over the
    shards: so the version's basis, range and stored histograms are those a local refit writes, but for
    the per-model 2-D histograms, not computed on Spark (the density figure scans after a refresh).

    Parameters
    ----------
    db : the store directory the catalog is committed in (local or mounted on the driver).
    spark : a SparkSession.
    uri : where the executors read the same store (default: ``db`` as a file:// URI), e.g.
        ``s3a://bucket/store`` for a store synchronised there.
    read : how the jobs read the shards (SparkScanner).

    Returns
    -------
    dict: db, version (the new one), basis_version, n_filters, range [lo, hi], uri, master,
    elapsed_s.
    """
    t0 = time.perf_counter()
    master = spark.sparkContext.master
    with StoreTransaction(db) as tx:
        if tx.base_version == 0:
            raise StoreError(f"{tx.root}: the store has no version to refresh")
        target = store_uri(uri or tx.root)
        _no_links(store_uri(tx.root), [CATALOG, *tx.shard_rel_paths()])
        _no_links(target, [CATALOG, SHARDS, TABLES, *tx.shard_rel_paths()])
        scanner = SparkScanner(spark, target, tx.shard_rel_paths(), read, checksums=tx.checksums())
        try:
            version = tx.commit("refresh", scanner=scanner,
                                summary=f"basis and per-layer histograms refitted on Spark ({master}, read={read})")
        except UserError:
            raise
        except OSError as e:
            if isinstance(e, ConnectionError):  # the JVM's gateway gone
                raise SparkError(f"a Spark job failed: {job_error(e)}; the store is unchanged") from None
            raise  # writing the store (a full disk): the CLI names it; the transaction rolls back
        except Exception as e:
            raise SparkError(f"a Spark job failed: {job_error(e)}; the store is unchanged") from None
    from ..catalog import load_basis
    from ..store import FilterStore

    with FilterStore(db).connect() as con:
        b = load_basis(con, version)
    return {"db": str(Path(db).resolve()), "version": version, "basis_version": None if b is None else b.version,
            "n_filters": None if b is None else b.n_filters, "range": None if b is None else [b.range_min, b.range_max],
            "uri": target, "master": master, "elapsed_s": round(time.perf_counter() - t0, 3)}
