"""A SparkSession for the store's jobs, and Spark's failures as one-line errors."""
from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError, first_line

# Rows per Arrow batch handed to a task's kernels: large enough that the per-batch cost (a
# Python call, the kernels' dispatch) is small against 6 ns a row, small enough (5 MB) to stay
# in cache-friendly pieces.
ARROW_BATCH_ROWS = 131_072

DEFAULTS = {
    "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH_ROWS),
    "spark.ui.showConsoleProgress": "false",   # no progress bars over the CLI's output
    "spark.sql.session.timeZone": "UTC",       # the catalog's timestamps are UTC
    "spark.log.level": "ERROR",                # the driver's log: errors only
}
LOCAL_DEFAULTS = {
    "spark.ui.enabled": "false",               # no web UI (and its port) for a local run
    "spark.driver.bindAddress": "127.0.0.1",
}


# The master URLs Spark 4 accepts (SparkSubmit refuses anything else with a Java stack trace).
MASTER_URL = re.compile(r"local(\[([1-9]\d*|\*)(,\s*\d+)?\])?|local-cluster\[\d+,\s*\d+,\s*\d+\]|(spark|k8s)://\S+|yarn")
LOCAL_LOG4J_URI = Path(__file__).with_name("log4j2.properties").as_uri()


class SparkError(UserError):
    """Spark is missing, could not start, or failed a job: one line saying which and what to do."""


def require_pyspark():
    """The pyspark module, or SparkError saying how to install it."""
    try:
        import pyspark
    except ImportError:
        raise SparkError("the Spark jobs need PySpark: pip install 'cnnfilterdb[spark]' (and a Java runtime, "
                         "e.g. apt-get install openjdk-17-jre-headless)") from None
    return pyspark


def session(master: str, app_name: str = "cnnfilterdb", conf: dict[str, str] | None = None):
    """A SparkSession on ``master`` (``local[2]``, ``spark://host:7077``, ``yarn``, ...).

    Parameters
    ----------
    master : the Spark master URL.
    app_name : the application's name in the cluster's UI.
    conf : Spark settings over DEFAULTS (and, for a local master, LOCAL_DEFAULTS).

    Returns
    -------
    pyspark.sql.SparkSession (the active one if it already runs: Spark allows one per process).
    SparkError if PySpark is missing or Spark cannot start (no Java runtime, a bad master URL).
    """
    require_pyspark()
    from pyspark.sql import SparkSession

    if not MASTER_URL.fullmatch(master):
        raise SparkError(f"--master {master!r} is not a Spark master URL: local[N], local[*], spark://host:7077, yarn "
                         "or k8s://https://host:port")
    # The executors' Python must be one where cnnfilterdb is installed: on this machine, this
    # interpreter; on a cluster, set PYSPARK_PYTHON (or spark.pyspark.python) to the nodes' one.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    local = master.startswith("local")
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        cores = master[len("local["):-1] if master.startswith("local[") else "1"
        partitions = {"spark.sql.shuffle.partitions": cores if cores.isdigit() else str(os.cpu_count() or 1)}
    settings = {**DEFAULTS, **(LOCAL_DEFAULTS | partitions if local else {}),
                "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOCAL_LOG4J_URI}", **(conf or {})}
    # PySpark warns about pandas >= 3 on import of its pandas helpers; these jobs exchange Arrow
    # batches only (mapInArrow, toArrow) and never convert through pandas.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # PySpark's, py4j's and Java's errors alike
        java = shutil.which("java") or os.environ.get("JAVA_HOME")
        hint = "Spark's own message is above" if java else "no Java runtime found: Spark 4 needs Java 17 or 21"
        raise SparkError(f"Spark did not start on master {master!r}: {job_error(e)} ({hint})") from None
    return spark


def job_error(e: BaseException) -> str:
    """What a failed Spark job's error says, in one line: the Python exception a worker raised
    (the last "SomethingError: ..." line of the traceback Spark wraps), else the first line.
    An executor whose Python lacks this package says how to give it one."""
    text = str(e)
    if "No module named 'cnnfilterdb'" in text:
        return ("the executors' Python has no cnnfilterdb: set PYSPARK_PYTHON (or spark.pyspark.python) to a Python "
                "where cnnfilterdb[spark] is installed; cnnfilterdb.spark.session(master) does it on one machine")
    if "S3AFileSystem not found" in text:
        return ("Spark has no s3a filesystem: add --conf spark.jars.packages=org.apache.hadoop:hadoop-aws:<the version "
                "of Spark's Hadoop: pyspark/jars/hadoop-client-api-<version>.jar>")
    raised = re.findall(r"^\s*(\w+(?:Error|Exception): .+)$", text, re.M)
    python = [line for line in raised if not line.startswith(("org.", "java.", "py4j"))]
    return (python or [first_line(e)])[-1].strip()


@contextmanager
def running(master: str, conf: dict[str, str] | None = None) -> Iterator:
    """``session(master, conf=conf)`` for a block, stopped after it unless it was already running
    (a notebook's, a test's: Spark allows one session per process, and that one is theirs)."""
    require_pyspark()
    from pyspark.sql import SparkSession

    mine = SparkSession.getActiveSession() is None
    spark = session(master, conf=conf)
    try:
        yield spark
    finally:
        if mine:
            spark.stop()
