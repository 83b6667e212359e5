"""What the benchmarks' child processes share."""
from __future__ import annotations


def peak_rss() -> int:
    """This process's own peak resident memory in bytes: VmHWM, the high-water mark of this
    process image (ru_maxrss also counts the parent's memory at fork, which exec keeps on Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
