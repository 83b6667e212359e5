"""Operating-system limits for the process that runs user SQL, applied once, before it opens the
catalog and reads any request. Two kernel mechanisms forbid writing, each on its own:

- **The store is the whole filesystem, read-only** (a mount namespace of the process's own): the
  store is bind-mounted onto itself read-only (``nosuid``, ``nodev``, ``noexec``; every mount
  beneath it too), then made the root (``chroot``): the catalog is ``/catalog.duckdb``, the shards
  ``/shards/...``; no other file exists for the process, every path it can report (in
  ``duckdb_databases()``, settings, error messages) is relative to the store, and every write is
  ``EROFS`` whatever the files' permissions. The namespace's mounts are private: nothing done in
  it reaches the host. As root the process unshares the mount namespace directly; otherwise it
  first enters a user namespace of its own, where it may.
- **No capabilities, no new privileges**: then every capability is dropped (effective, permitted,
  inheritable, ambient and the bounding set) and ``no_new_privs`` set, so the process can neither
  remount the store writable, nor mount, nor leave the chroot, nor gain rights by executing
  anything.
- **No writes** (Landlock, Linux >= 5.13), independent of the two above: the process may not
  create, write, truncate, rename, link or remove any file or directory, anywhere; it may read
  only beneath the directories it is given; with Landlock ABI >= 4 it may neither bind nor
  connect TCP sockets, with ABI >= 6 neither signal a process outside its domain (the service)
  nor reach an abstract unix socket. The restriction is irrevocable and inherited by every thread.
- **Memory**: ``RLIMIT_AS`` caps the address space; an allocation past it fails (DuckDB reports it
  as out of memory) or the process dies, and the pool replaces it.
- **CPU**: ``RLIMIT_CPU`` is raised per query to the CPU time the query may take; a query that
  ignores DuckDB's interrupt is killed by the kernel (SIGXCPU/SIGKILL) even if nothing else acts.
- **Priority**: nice 19: user SQL yields the CPU to the service's other endpoints.
- ``RLIMIT_CORE = 0``: a crash leaves no core file.

Where the kernel lacks a mechanism (no Landlock, user namespaces disabled), ``confine`` says so in
its ``Confinement`` and the others remain (with DuckDB's read-only catalog, disabled external
access and the statement check). ``without`` switches the read-only mount or Landlock off: for
the tests that show each holds alone, never set by the service's settings.
"""
from __future__ import annotations

import ctypes
import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on x86_64 and aarch64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS, _PR_GET_NO_NEW_PRIVS, _PR_CAPBSET_READ, _PR_CAPBSET_DROP = 38, 39, 23, 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_IS_SET, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 1, 4
_CLONE_NEWUSER, _CLONE_NEWNS = 0x10000000, 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
# statvfs f_flag bits (ST_*) of the atime options a remount must keep, and their MS_* values
_ATIME_FLAGS = ((1024, 1024), (2048, 2048), (4096, 1 << 21))  # NOATIME, NODIRATIME, RELATIME
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
LAYERS = ("read_only_mount", "landlock")  # what ``without`` may switch off

# LANDLOCK_ACCESS_FS_* bits and the ABI that introduced them
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_BITS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_READ_ONLY = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True)
class Confinement:
    chroot: bool               # False: the process could not chroot (paths outside the store exist)
    read_only_mount: bool      # the store (its root) is a read-only mount in the process's own namespace
    no_capabilities: bool      # every capability set of the process is empty
    no_new_privs: bool
    landlock_abi: int          # 0: the kernel has no Landlock (or it was switched off)
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
    # ABI 6 scopes: no signal to, and no abstract unix socket of, a process outside the worker's
    # domain (the worker may run as the service's own user)
    attr = _RulesetAttr(_FS_BITS_BY_ABI.get(abi, _FS_BITS_BY_ABI[5]),
                        (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = (ctypes.sizeof(_RulesetAttr) if abi >= 6 else 2 * ctypes.sizeof(ctypes.c_uint64) if abi >= 4
            else ctypes.sizeof(ctypes.c_uint64))
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


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, flags: int) -> None:
    libc = _libc()
    if libc.mount(None if source is None else os.fsencode(source), os.fsencode(target), None,
                  ctypes.c_ulong(flags), None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def _mount_points_beneath(root: Path) -> list[str]:
    """The mount points at or below ``root`` (from /proc/self/mountinfo, octal escapes decoded)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == str(root) or point.startswith(str(root).rstrip("/") + "/"):
            out.append(point)
    return out


def enter_namespaces() -> bool:
    """A mount namespace of this process's own: as root directly; otherwise (or where root lacks
    CAP_SYS_ADMIN, as in a container) inside a user namespace that maps this user to root, where
    mounting and chroot are allowed. The kernel refuses a new user namespace to a process with
    more than one thread, and importing DuckDB starts one: the worker calls this first of all
    (``boot.py``)."""
    uid, gid = os.getuid(), os.getgid()
    libc = _libc()
    if uid == 0 and libc.unshare(_CLONE_NEWNS) == 0:
        return True
    if libc.unshare(_CLONE_NEWNS | _CLONE_NEWUSER) != 0:
        return False
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return True


def _read_only_bind(root: Path) -> bool:
    """Bind-mount ``root`` onto itself, then make it and every mount beneath it read-only (in this
    process's namespace only: the namespace's mounts are made private first)."""
    try:
        _mount(None, "/", _MS_REC | _MS_PRIVATE)
        _mount(str(root), str(root), _MS_BIND | _MS_REC)
        for point in _mount_points_beneath(root):
            keep = os.statvfs(point).f_flag
            atime = sum(ms for st, ms in _ATIME_FLAGS if keep & st)
            _mount(None, point, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | atime)
    except OSError:
        return False
    return bool(os.statvfs(root).f_flag & os.ST_RDONLY)


def _chroot(root: Path) -> bool:
    try:
        os.chroot(root)
    except OSError:
        return False
    os.chdir("/")
    return True


def _drop_capabilities() -> bool:
    """Empty every capability set (ambient, bounding, then effective/permitted/inheritable) and
    set no_new_privs; True if the kernel then reports no capability in any set (asked by system
    call: after the chroot there is no /proc)."""
    libc = _libc()
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL past the last capability the kernel knows (or EPERM: nothing to drop)
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    libc.capset(ctypes.byref(header), data)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    held = any(d.effective or d.permitted or d.inheritable for d in data)
    bounding = any(libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 1 for cap in range(64))
    ambient = any(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1 for cap in range(64))
    return not (held or bounding or ambient)


def no_new_privs() -> bool:
    return _libc().prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1


def confine(root: Path, address_space_bytes: int, without: frozenset[str] = frozenset(),
            namespaced: bool | None = None) -> Confinement:
    """Confine this process to the store ``root``, irrevocably (see the module docstring).

    Parameters
    ----------
    root : the store directory; it becomes ``/`` for this process, the only place it may read.
    address_space_bytes : the ``RLIMIT_AS`` cap.
    without : layers of ``LAYERS`` not to apply (tests only: each layer shown to hold alone).
    namespaced : what ``enter_namespaces`` returned, if the process called it already (None: call it now).
    """
    unknown = set(without) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown confinement layers {sorted(unknown)}; known: {list(LAYERS)}")
    root = Path(root).resolve()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if namespaced is None:
        namespaced = enter_namespaces()
    read_only = namespaced and "read_only_mount" not in without and _read_only_bind(root)
    chrooted = _chroot(root)  # needs only CAP_SYS_CHROOT: tried without a namespace too
    no_caps = _drop_capabilities()
    abi = 0 if "landlock" in without else _landlock([Path("/") if chrooted else root])
    resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
    return Confinement(chrooted, read_only, no_caps, no_new_privs(), abi,
                       address_space_bytes)


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
