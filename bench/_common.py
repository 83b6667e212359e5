"""What the benchmarks' child processes share."""
from __future__ import annotations


def peak_rss() -> int:
    """This process's own peak resident memory in bytes: VmHWM, the high-water mark of this
    process image (ru_maxrss also counts the parent's memory at fork, which exec keeps on Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def build_sample_store(db, n: int, seed: int) -> None:
    """A store of ``n`` filters of the synthetic sample (max(40, n / 1e5) models) at ``db``."""
    from cnnfilterdb.ingest import ingest_paths
    from cnnfilterdb.ingest.sample import write_sample_h5

    src = db.parent / f"bench-sample-{seed}.h5"
    write_sample_h5(src, n_models=max(40, n // 100_000), n_filters=n, seed=seed)
    ingest_paths([src], db)
    src.unlink()


def bench_store(db, work, n: int, seed: int):
    """The store to benchmark: ``db`` if given, else a sample store of ``n`` filters built in ``work``."""
    import time

    if db is not None:
        return db
    db = work / "db"
    t = time.perf_counter()
    build_sample_store(db, n, seed)
    print(f"built a store of {n:,} filters in {time.perf_counter() - t:.1f} s")
    return db


def start_service(db, env: dict | None = None, repo=None):
    """`cnnfilterdb serve` on a free loopback port, answering /health: (process, base URL); the
    code of ``repo`` (default this checkout: another revision's worktree, to compare)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    repo = Path(repo or Path(__file__).resolve().parents[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "cnnfilterdb.cli", "serve", "--db", str(Path(db).resolve()), "--port", str(port)],
                              env={**os.environ, "PYTHONPATH": str(repo), **(env or {})}, cwd=repo,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return server, base
