"""The store's exact scans on Apache Spark (docs/method.md#spark): for stores that outgrow one machine.

A store is Parquet shards plus per-layer statistics that add up (moments, integer histograms):
what a map-reduce engine needs. Here each scan is a Spark job over the shard files: Spark
distributes the shards' row groups, each task reads its own with pyarrow (or gets Spark's rows as
Arrow batches: ``read="spark"``) and hands them to the compiled kernels of ``stats/histogram.py``
(the local engine's) in ``mapInArrow``, each task yields its partial result, and Spark sums the
partials (integer counts, extremes, Chan et al.'s merge of moments). The driver reads the store through its Parquet tables
(``tables/``, cnnfilterdb/tables.py), so a store on any storage Spark reads (``file://``,
``s3a://``, ``hdfs://``) works without DuckDB on the cluster.

- ``session(master)``: a SparkSession configured for these jobs.
- ``SparkStore.open(spark, uri)``: a store as the driver sees it through its tables;
  ``.divergence(...)`` is the local engine's ``Analysis.divergence`` with its scans on Spark.
- ``SparkScanner``: the jobs (``layer_moments``, ``range``, ``histograms``).
- ``refresh(db, spark)``: the basis and per-layer histograms refitted on Spark, committed as a new
  store version.

Needs the extra ``cnnfilterdb[spark]`` (PySpark) on the driver and on every executor, and a Java
runtime (Spark 4: Java 17 or 21).
"""
from __future__ import annotations

from .jobs import SparkScanner
from .session import session
from .store import SparkStore, refresh, store_uri

__all__ = ["SparkScanner", "SparkStore", "refresh", "session", "store_uri"]
