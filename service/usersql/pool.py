"""A bounded pool of SQL worker processes (``worker.py``), each running one statement at a time.

- **Bounded**: ``size`` workers; a request that finds none idle is refused at once (``PoolBusy``,
  the service answers 429 with ``Retry-After``) rather than queued behind slow queries.
- **Hard deadline**: a worker that has not answered ``grace_s`` after the time limit (an operator
  that ignores DuckDB's interrupt) is killed with SIGKILL and replaced; so is one that died (its
  address-space cap, its CPU-time limit). The caller gets a 4xx naming the limit either way.
- A worker is replaced in a background thread; the slot stays busy until the new one is ready.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from . import protocol

START_TIMEOUT_S = 30.0
# What a worker reports of its confinement (worker.main, confine.Confinement), shown by /v1/stats.
SANDBOX_KEYS = ("statement_check", "python_object_scans", "chroot", "read_only_mount", "no_capabilities",
                "no_new_privs", "landlock_abi", "address_space_bytes")
log = logging.getLogger("cnnfilterdb.service")


@dataclass(frozen=True)
class SqlLimits:
    timeout_s: float
    memory_limit: str          # DuckDB's memory_limit inside each worker
    address_space_bytes: int   # RLIMIT_AS of each worker: the hard cap on its memory
    threads: int = 1
    grace_s: float = 0.5       # after the time limit, before the worker is killed
    # Tests only, never from settings: layers the workers leave off ("statement_check",
    # "read_only_mount", "landlock") to show that the others hold alone.
    switched_off_for_tests: tuple[str, ...] = ()


@dataclass
class SqlResult:
    columns: list[str]
    types: list[str]
    n_rows: int
    rows_json: bytes           # the rows as one JSON array, encoded by the worker
    truncated: bool
    truncated_reason: str | None
    elapsed_ms: float


class SqlFailed(Exception):
    """A statement refused or failed: ``status`` (4xx/503), ``code``, a one-line ``message``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class PoolBusy(SqlFailed):
    def __init__(self, size: int, retry_after_s: int):
        super().__init__(429, "sql_busy", f"all {size} SQL workers are busy; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def _ended(returncode: int | None, lim: SqlLimits, timed_out: bool = True) -> SqlFailed:
    """What to tell the client whose query ended its worker (now replaced): ``timed_out``, the
    statement's deadline had passed (the pool killed the worker); else it died of itself, or was
    killed by someone else, before or while it ran the statement."""
    if returncode == -signal.SIGXCPU or (timed_out and (returncode is None or returncode == -signal.SIGKILL)):
        return SqlFailed(400, "sql_timeout", f"the query ran longer than the time limit of {lim.timeout_s:g} s "
                                             "and was stopped")
    how = "it did not exit when killed" if returncode is None else \
        f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    return SqlFailed(400, "sql_worker_crashed",
                     f"the query crashed the process that ran it ({how}; its memory cap is "
                     f"{lim.address_space_bytes / 2**30:.2f} GiB); the process was replaced")


class _Worker:
    def __init__(self, store: Path, limits: SqlLimits, starting: set | None = None):
        config = {"memory_limit": limits.memory_limit, "threads": limits.threads,
                  "address_space_bytes": limits.address_space_bytes,
                  "switched_off_for_tests": list(limits.switched_off_for_tests)}
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNNFILTERDB_")}
        env["MALLOC_ARENA_MAX"] = "2"  # glibc reserves 64 MiB of address space per arena otherwise
        # -P: the worker imports the installed package, never a `cnnfilterdb` folder in the working
        # directory (the Docker image's /app holds the source tree, which has no `service`).
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "cnnfilterdb.service.usersql.boot", str(store), json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True,
            start_new_session=True)
        self.to_fd, self.from_fd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        # What the worker prints (DuckDB's last words before a crash, with store paths) is the
        # operator's, not the client's: logged, a line at a time, cut to a length.
        threading.Thread(target=_log_stderr, args=(self.proc.stderr, self.proc.pid), daemon=True).start()
        if starting is not None:
            starting.add(self)  # the pool's close() kills it while it starts
        try:
            self.hello = protocol.recv(self.from_fd, time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            self.kill()  # never left running, to write its hello into a pipe nobody reads (a BrokenPipeError)
            raise
        finally:
            if starting is not None:
                starting.discard(self)

    def call(self, request: dict, deadline: float) -> tuple[dict, bytes | None]:
        protocol.send(self.to_fd, request)
        header = protocol.recv(self.from_fd, deadline)
        rows = protocol.recv_bytes(self.from_fd, deadline) if header.get("ok") else None
        return header, rows

    def kill(self) -> int | None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None


def _log_stderr(stream, pid: int, max_line: int = 500) -> None:
    """Log each line the worker ``pid`` writes to stderr (at most ``max_line`` characters of it)."""
    with stream:
        while line := stream.readline(64 * 1024):
            log.warning("SQL worker %d: %s", pid, line.decode("utf-8", "replace").rstrip()[:max_line])


def _kill_all(workers: set) -> None:
    for w in list(workers):
        w.kill()


class SqlPool:
    """Run user SQL on ``size`` confined worker processes of the store at ``store``."""

    def __init__(self, store: str | os.PathLike, size: int, limits: SqlLimits):
        self.store, self.size, self.limits = Path(store).resolve(), size, limits
        self._idle: queue.Queue[tuple[int, _Worker]] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._started = False
        self._epoch = 0     # incremented by close(): workers of an older epoch are discarded
        self._busy = 0      # requests holding or waiting for a worker
        self._spawning = 0  # workers being started
        self._starting: set[_Worker] = set()  # started, their hello not read yet
        self._threads: set[threading.Thread] = set()  # starting workers in the background
        self.sandbox: dict | None = None  # what the first worker reported of its confinement
        self._finalizer = weakref.finalize(self, _kill_all, self._all)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, wait: bool = False) -> None:
        """Start the workers (in the background unless ``wait``); idempotent."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._spawning += self.size
            epoch = self._epoch
        for i in range(self.size):
            if wait and i == 0:
                self._spawn(epoch)
            else:
                self._spawn_in_background(epoch)

    def close(self) -> None:
        """Stop every worker, those starting too (a replacement of one that crashed), and wait for
        the threads starting them: none is left to write into a pipe nobody reads any more (the
        BrokenPipeError of a worker outliving ``cnnfilterdb sql``). A later ``run`` starts the pool again."""
        with self._lock:
            self._epoch += 1
            self._started = False
            workers = list(self._all) + list(self._starting)
            self._all.clear()
            threads = list(self._threads)
        for w in workers:
            w.kill()
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=START_TIMEOUT_S)

    def _spawn_in_background(self, epoch: int) -> None:
        t = threading.Thread(target=self._spawn, args=(epoch,), daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def _spawn_more(self) -> None:
        """Start workers for the slots that have none (a failed start is retried here)."""
        with self._lock:
            missing = self.size - len(self._all) - self._spawning
            self._spawning += max(missing, 0)
            epoch = self._epoch
        for _ in range(missing):
            self._spawn_in_background(epoch)

    def _spawn(self, epoch: int) -> None:
        """Start one worker (the caller has counted it in ``_spawning``); none once the pool is closed."""
        w = None
        try:
            if epoch == self._epoch:
                w = _Worker(self.store, self.limits, self._starting)
        except (OSError, protocol.WorkerGone, ValueError) as e:
            if epoch == self._epoch:  # not one that close() stopped
                log.error("a SQL worker did not start: %s", e)
        with self._lock:
            self._threads.discard(threading.current_thread())
            self._spawning -= 1
            if w is not None and epoch == self._epoch:
                self._all.add(w)
                if self.sandbox is None:
                    self.sandbox = {k: w.hello[k] for k in SANDBOX_KEYS}
                self._idle.put((epoch, w))
                return
        if w is not None:  # the pool was closed meanwhile
            w.kill()

    # -- one statement ---------------------------------------------------------------------------
    def run(self, sql: str, params: list | dict | None, max_rows: int, max_bytes: int) -> SqlResult:
        """Run one statement on an idle worker: its result, or SqlFailed (PoolBusy when none is idle)."""
        if not self._started:
            self.start(wait=True)
        w = self._acquire()
        try:
            return self._run_on(w, sql, params, max_rows, max_bytes)
        finally:
            with self._lock:
                self._busy -= 1

    def _acquire(self) -> _Worker:
        """An idle worker; PoolBusy at once when every worker runs a statement (a slot whose
        worker is being replaced is waited for: it will be free in well under a second)."""
        with self._lock:
            if self._busy >= self.size:
                raise PoolBusy(self.size, max(1, round(self.limits.timeout_s / 2)))
            self._busy += 1
        self._spawn_more()
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                epoch, w = self._idle.get(timeout=max(deadline - time.monotonic(), 0))
                if epoch == self._epoch:
                    return w
                w.kill()  # left over from before a close()
        except queue.Empty:
            with self._lock:
                self._busy -= 1
            raise SqlFailed(503, "sql_unavailable", "no SQL worker could be started; see the service log") from None

    def _run_on(self, w: _Worker, sql: str, params, max_rows: int, max_bytes: int) -> SqlResult:
        lim = self.limits
        request = {"sql": sql, "params": params, "max_rows": max_rows, "max_bytes": max_bytes,
                   "timeout_s": lim.timeout_s}
        deadline = time.monotonic() + lim.timeout_s + lim.grace_s
        try:
            header, rows = w.call(request, deadline)
        except (protocol.WorkerGone, OSError, ValueError):  # a broken pipe, a closed one, the deadline
            self._replace(w)
            raise _ended(w.proc.returncode, lim, timed_out=time.monotonic() >= deadline) from None
        self._idle.put((self._epoch, w))
        if not header.get("ok"):
            raise SqlFailed(int(header["status"]), str(header["code"]), str(header["message"]))
        return SqlResult(header["columns"], header["types"], header["n_rows"], rows, header["truncated"],
                         header["truncated_reason"], header["elapsed_ms"])

    def _replace(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            self._all.discard(w)
        self._spawn_more()
