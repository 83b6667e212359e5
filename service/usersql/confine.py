"""Operating-system limits for the process that runs user SQL, applied once, before it opens the
catalog and reads any request.

- **The store is the whole filesystem** (``chroot``): the catalog is ``/catalog.duckdb``, the shards
  ``/shards/...``; no other file exists for the process, and every path it can report (in
  ``duckdb_databases()``, settings, error messages) is relative to the store. As root the process
  chroots directly; otherwise it first enters a user namespace of its own, where it may.
- **No writes** (Landlock, Linux >= 5.13): the process may not create, write, truncate, rename,
  link or remove any file or directory, anywhere; it may read only beneath the directories it is
  given (the store, the Python installation); with Landlock ABI >= 4 it may neither bind nor
  connect TCP sockets. The restriction is irrevocable and inherited by every thread.
- **Memory**: ``RLIMIT_AS`` caps the address space; an allocation past it fails (DuckDB reports it
  as out of memory) or the process dies, and the pool replaces it.
- **CPU**: ``RLIMIT_CPU`` is raised per query to the CPU time the query may take; a query that
  ignores DuckDB's interrupt is killed by the kernel (SIGXCPU/SIGKILL) even if nothing else acts.
- **Priority**: nice 19: user SQL yields the CPU to the service's other endpoints.
- ``RLIMIT_CORE = 0``: a crash leaves no core file.

Landlock is the layer that makes writes impossible; where the kernel lacks it, ``confine`` says so
(``Confinement.landlock_abi == 0``) and the other layers (DuckDB's read-only catalog, disabled
external access, the statement check) remain.
"""
from __future__ import annotations

import ctypes
import os
import resource
from dataclasses import dataclass
from pathlib import Path

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on x86_64 and aarch64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWUSER = 0x10000000

# LANDLOCK_ACCESS_FS_* bits and the ABI that introduced them
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_BITS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_READ_ONLY = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True)
class Confinement:
    chroot: bool               # False: the process could not chroot (paths outside the store exist)
    landlock_abi: int          # 0: the kernel has no Landlock (writes are then not blocked by the OS)
    address_space_bytes: int


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 if it has none."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(abi), 0)


def _landlock(readable: list[Path]) -> int:
    abi = landlock_abi()
    if abi == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _RulesetAttr(_FS_BITS_BY_ABI.get(abi, _FS_BITS_BY_ABI[5]),
                        (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 4 else ctypes.sizeof(ctypes.c_uint64)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for directory in readable:
            fd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(_READ_ONLY, fd)
                if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {directory}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def lower_priority() -> None:
    """The lowest scheduling priority of the normal class (nice 19) for this process's threads,
    present and future (call before DuckDB starts threads: they inherit it). Against a process at
    nice 0 it gets about 1.5% of a contended core, so the service's other endpoints keep theirs;
    SCHED_IDLE was tried and starves the worker entirely whenever the machine is busy (it could
    not even start)."""
    os.setpriority(os.PRIO_PROCESS, 0, 19)


def _chroot(root: Path) -> bool:
    """chroot into ``root`` (as root, or in a new user namespace mapping this user to root)."""
    uid, gid = os.getuid(), os.getgid()
    if uid != 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWUSER) != 0:
            return False
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    try:
        os.chroot(root)
    except OSError:
        return False
    os.chdir("/")
    return True


def confine(root: Path, address_space_bytes: int) -> Confinement:
    """Confine this process to the store ``root``, irrevocably (see the module docstring).

    Parameters
    ----------
    root : the store directory; it becomes ``/`` for this process, the only place it may read.
    address_space_bytes : the ``RLIMIT_AS`` cap.
    """
    root = Path(root).resolve()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    chrooted = _chroot(root)
    abi = _landlock([Path("/") if chrooted else root])
    resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
    return Confinement(chrooted, abi, address_space_bytes)


def limit_cpu_seconds(seconds: float) -> None:
    """Let this process use at most ``seconds`` more CPU time (all threads together): past it the
    kernel sends SIGXCPU, whose default action ends the process."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = used.ru_utime + used.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(spent + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
