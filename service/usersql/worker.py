"""A SQL worker: the process that runs user SQL, one statement at a time.

Started by ``pool.py`` through ``boot.py`` (which enters the worker's own namespaces first). It lowers its
priority, confines itself to the store (``confine.py``: chroot, no writes, capped memory), then
answers requests on stdin/stdout (``protocol.py``), each on the catalog opened read-only as the only
database of a DuckDB instance of its own (``Catalog``):

request  ``{"sql", "params", "max_rows", "max_bytes", "timeout_s"}``
reply    ``{"ok": true, "columns", "types", "n_rows", "truncated", "truncated_reason", "elapsed_ms"}``
         followed by one frame holding the rows as a JSON array; or
         ``{"ok": false, "status", "code", "message"}``.

The rows are encoded here, under both caps (rows and bytes), so neither process ever holds more
than the cap of them. The instance is closed with its request: nothing one request creates or
switches on is seen by the next.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

from cnnfilterdb.errors import first_line, first_paragraph
from cnnfilterdb.layout import CATALOG, SHARDS, damage_in

from ..jsonable import NestingError, jsonable
from . import protocol
from .confine import Confinement, confine, limit_cpu_seconds, lower_priority
from .guard import SqlRefused, check_functions, check_reading

FETCH_ROWS = 1024


def _json_row(row: tuple) -> bytes:
    return json.dumps(jsonable(list(row)), separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


class Catalog:
    """Opens the catalog as committed now: a new DuckDB instance for each request (~10 ms).

    Nothing of one request reaches the next, not even what DuckDB keeps per instance rather than
    per connection and what ``lock_configuration`` does not cover (its query log switched on by
    ``enable_logging()``, its file cache, secrets): the instance is closed with the request."""

    def __init__(self, base: Path, config: dict):
        self.base, self.config = base, config

    def open(self):
        import duckdb

        if not (self.base / CATALOG).is_file():
            raise SqlRefused(503, "store_unavailable", "the store has no catalog yet (run `cnnfilterdb ingest`)")
        cfg = self.config
        con = duckdb.connect(str(self.base / CATALOG), read_only=True, config={
            "autoload_known_extensions": False, "autoinstall_known_extensions": False,
            "allow_community_extensions": False, "allow_persistent_secrets": False,
            "secret_directory": "/nonexistent", "extension_directory": "/nonexistent",
            "temp_directory": "",  # no spilling: a query that needs more memory fails instead
            # no scans of the worker's own Python variables (replacement scans)
            "python_enable_replacements": False, "python_scan_all_frames": False,
            "memory_limit": cfg["memory_limit"], "threads": cfg["threads"],
        })
        try:
            con.execute("SET GLOBAL file_search_path = ?", [str(self.base)])
            con.execute("SET allowed_directories = ?", [[str(self.base / SHARDS) + os.sep]])
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        except Exception:
            con.close()
            raise
        return con


def run(catalog: Catalog, req: dict, threads: int, statement_check: bool = True) -> tuple[dict, bytes | None]:
    """Run one request; ``statement_check=False`` (tests only) skips ``check_reading``, never
    ``check_functions``: the Python-object scans stay off whatever else is switched off."""
    import duckdb

    timeout = float(req["timeout_s"])
    cur = timer = None
    t0 = time.perf_counter()
    try:
        try:
            cur = catalog.open()
        except duckdb.Error as e:
            raise SqlRefused(503, "store_unavailable", f"cannot open the catalog: {first_line(e)}") from None
        timer = threading.Timer(timeout, cur.interrupt)
        if statement_check:
            check_reading(cur, req["sql"])
        check_functions(req["sql"])
        # The kernel's backstop for operators that ignore the interrupt: CPU time of this query.
        limit_cpu_seconds(timeout * threads + 2)
        timer.start()
        cur.execute(req["sql"], req.get("params") or None)
        description = cur.description or []
        columns, types = [d[0] for d in description], [str(d[1]) for d in description]
        max_rows, max_bytes = int(req["max_rows"]), int(req["max_bytes"])
        # The cap covers the whole body: names and types first (a PIVOT can make them huge).
        size = len(json.dumps([columns, types])) + 2
        if size > max_bytes:
            raise SqlRefused(400, "sql_result_too_large", f"the result's column names and types alone take {size} "
                                                          f"bytes of JSON, over the cap of {max_bytes}")
        parts, truncated, reason = [], False, None
        while description and not truncated:
            batch = cur.fetchmany(FETCH_ROWS)
            if not batch:
                break
            for row in batch:
                if len(parts) == max_rows:
                    truncated, reason = True, f"max_rows: more than {max_rows} rows"
                    break
                encoded = _json_row(row)
                if size + len(encoded) + 1 > max_bytes:
                    truncated, reason = True, f"max_bytes: the rows would exceed {max_bytes} bytes of JSON"
                    break
                parts.append(encoded)
                size += len(encoded) + 1
        elapsed = (time.perf_counter() - t0) * 1000
        header = {"ok": True, "columns": columns, "types": types,
                  "n_rows": len(parts), "truncated": truncated, "truncated_reason": reason,
                  "elapsed_ms": round(elapsed, 3)}
        return header, b"[" + b",".join(parts) + b"]"
    except SqlRefused as e:
        return {"ok": False, "status": e.status, "code": e.code, "message": e.message}, None
    except duckdb.InterruptException:
        return _fail(400, "sql_timeout", f"the query ran longer than the time limit of {timeout:g} s and was interrupted")
    except (duckdb.OutOfMemoryException, MemoryError) as e:
        return _fail(400, "sql_out_of_memory",
                     f"the query exceeded the memory limit ({catalog.config['memory_limit']}): {first_line(e)}")
    except duckdb.PermissionException as e:
        return _fail(403, "sql_forbidden", first_line(e))
    except NestingError as e:
        return _fail(400, "sql_result_too_deep", f"a result value cannot be sent as JSON: {first_line(e)}")
    except duckdb.Error as e:
        damage = _damaged_shard(cur, e)
        if damage is not None:
            return _fail(503, "store_damaged", str(damage))
        return _fail(400, "sql_error", first_paragraph(e))
    except (ValueError, TypeError, OverflowError) as e:  # a value Python or JSON cannot hold
        return _fail(400, "sql_error", f"cannot encode a result value: {first_line(e)}")
    except Exception as e:
        # parameter it cannot convert) is about this request; the worker stays up for the next
        return _fail(400, "sql_error", f"{type(e).__name__}: {first_line(e)}")
    finally:
        if timer is not None:
            timer.cancel()
        if cur is not None:
            cur.close()


def _damaged_shard(con, e):
    """StoreDamaged when ``e`` is DuckDB failing to read one of the store's own shards (a name the
    catalog lists: a query of some other path under shards/ is the user's own error)."""
    damage = None if con is None else damage_in(Path("/"), e)
    if damage is None:
        return None
    try:
        listed = con.cursor().execute("SELECT count(*) FROM _shards WHERE path = ?", [damage.rel]).fetchone()[0]
    except Exception:
        return None
    return damage if listed else None


def _fail(status: int, code: str, message: str) -> tuple[dict, None]:
    return {"ok": False, "status": status, "code": code, "message": message}, None


def preload() -> None:
    """Import now what a query may need later: after ``confine`` the installation is out of reach.
    The imports are unused here on purpose: each loads a module into ``sys.modules`` for later."""
    import datetime  # noqa: F401 - preload: DuckDB converts DATE, TIME, TIMESTAMP and INTERVAL values with it
    import decimal  # noqa: F401 - preload: DuckDB converts DECIMAL values and parameters with it
    import uuid  # noqa: F401 - preload: DuckDB converts UUID values with it

    import duckdb  # noqa: F401 - preload: the extension module and its libraries, before the chroot
    import pytz  # TIMESTAMPTZ results: DuckDB converts them with pytz, which reads its zone files lazily

    for tz in ("UTC", "Etc/UTC"):
        pytz.timezone(tz)


def end_with(parent: int, every_s: float = 0.5) -> None:
    """End this process as soon as ``parent`` is no longer its parent (the service or the CLI was
    killed): a query must not outlive the one who waits for it. PR_SET_PDEATHSIG would follow the
    thread that started the worker, which the pool ends at once."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str], namespaced: bool | None = None, parent: int | None = None) -> int:
    store, config = Path(argv[0]), json.loads(argv[1])
    parent = os.getppid() if parent is None else parent
    out = os.dup(1)
    # Nothing but the frames leaves through stdout, and nothing a query makes DuckDB print
    # (enable_logging(storage='stdout')) reaches the service's log: fd 1 goes nowhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    lower_priority()  # before DuckDB starts threads: they inherit it
    preload()
    # Tests only (tests/test_sql_sandbox.py): layers switched off to show the others hold alone.
    off = frozenset(config.get("switched_off_for_tests", ()))
    conf: Confinement = confine(store, int(config["address_space_bytes"]), without=off - {"statement_check"},
                                   namespaced=namespaced)
    end_with(parent)  # (a thread: started once the namespaces no longer need a single one)
    base = Path("/") if conf.chroot else store.resolve()
    if not conf.chroot:
        os.chdir(base)
    catalog = Catalog(base, config)
    statement_check = "statement_check" not in off
    protocol.send(out, {"ok": True, "ready": True, **dataclasses.asdict(conf), "statement_check": statement_check,
                        "python_object_scans": False, "pid": os.getpid()})
    while True:
        try:
            req = protocol.recv(0)
        except protocol.WorkerGone:
            return 0
        header, rows = run(catalog, req, int(config["threads"]), statement_check)
        try:
            protocol.send(out, header)
            if rows is not None:
                protocol.send(out, rows)
        except OSError:  # the service stopped waiting (past the deadline) or is gone
            return 0

