"""The store's files on disk (docs/method.md#store): where each lies, and whether it is the one committed.

Layout of a store directory ``<db>``::

    catalog.duckdb        models, layers, basis, versions, views and macros (the SQL entry point)
    shards/*.parquet      the filters, immutable, sorted by filter_id, named after their ingest
    shards/*-histograms.npz   the stored histograms of each kept basis, a segment per commit that wrote some (segments.py)
    tables/<id>-v<N>/*.parquet  the catalog's tables at version N for any engine (tables.py)
    tables/LATEST         names the current version's tables directory
    .ingest.lock          held (flock) by the one writer (ingest, label, remove, refit, compact) at a time
    catalog.duckdb.<ingest id>.staging   a writer's copy of the catalog until its commit (store.py)

Integrity: the catalog records the size and sha256 of every file it references (catalog.py:
``referenced_files``), computed when the file was written; ``file_problem`` compares a file with
them. What this module guarantees of the store's files:

- a store file is named relative to the store (``store_name``, ``relative_to_store``): no message
  a client or user sees holds the store's absolute path;
- a missing or unreadable file, or one not as committed, is ``StoreDamaged`` naming it and what is
  wrong (``unreadable``, ``damage_in`` for a DuckDB error reading a shard), never an answer from it;
- what cannot be a store is refused with one line before anything is opened (``check_store_path``:
  ``lstat`` only, so a FIFO catalog cannot block its reader);
- a store's files and directories are its own: a symbolic link among them is damage and is never
  followed (``symlinks_in``, ``check_no_symlinks``).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import duckdb

from .errors import UserError, first_line, shown_path

CATALOG = "catalog.duckdb"
SHARDS = "shards"
LOCK = ".ingest.lock"
STAGING_SUFFIX = ".staging"
WEIGHT_COLUMNS = [f"w{i}" for i in range(9)]  # the shards' weight columns, w0..w8 row-major over the 3x3 filter
ENV_DB = "CNNFILTERDB_DB"
DEMO_DB = "filterdb-sample"  # where `cnnfilterdb demo` builds its sample store: never with real data
HASH_READ_BYTES = 1 << 20


class StoreError(UserError):
    """A fault of the store (missing, damaged, locked, an unknown version or model): one line
    naming what and where."""


class StoreDamaged(StoreError):
    """A file the catalog references is missing or not as committed."""

    def __init__(self, rel: str, problem: str):
        super().__init__(f"{rel}: {problem}; the store is damaged: run `cnnfilterdb verify` to check every file")
        self.rel, self.problem = rel, problem


def default_db() -> Path:
    """The store a command reads when given none: $CNNFILTERDB_DB, else ./filterdb."""
    return Path(os.environ.get(ENV_DB, "./filterdb"))


def relative_to_store(root: Path, message: str) -> str:
    """``message`` with the store's absolute path taken out: files named relative to the store,
    as clients and users see them."""
    return message.replace(str(root) + os.sep, "")


def store_name(path: Path) -> str:
    """A store file's name as the catalog records it, relative to the store: every file the
    catalog references is in ``shards/``."""
    return f"{SHARDS}/{Path(path).name}"


def sha256_update(digest, path: Path, offset: int = 0) -> int:
    """Feed the bytes of the file from ``offset`` to its end to ``digest`` (a hashlib sha256), read
    in blocks of HASH_READ_BYTES (hashlib releases the GIL); returns the offset of the end."""
    block = bytearray(HASH_READ_BYTES)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while n := f.readinto(block):
            digest.update(view[:n])
            offset += n
    return offset


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex)."""
    digest = hashlib.sha256()
    sha256_update(digest, path)
    return digest.hexdigest()


def file_problem(root: Path, rel: str, size: int, sha256: str | None = None) -> str | None:
    """What is wrong with the store file ``rel`` against what the catalog recorded: its size, and
    its checksum when ``sha256`` is given (that reads the whole file); None if nothing is."""
    path = Path(root) / rel
    try:
        actual = path.stat().st_size
        if actual != size:
            return f"size differs ({actual:,} bytes, the catalog recorded {size:,})"
        if sha256 is not None and (digest := file_sha256(path)) != sha256:
            return f"checksum differs (sha256 {digest[:16]}..., the catalog recorded {sha256[:16]}...)"
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or first_line(e)})"
    return None


_STORE_FILE = re.compile(r"[^\s'\"]*\b" + SHARDS + r"/([^\s'\"/]+)")  # a path to a store file in a message


def read_store_file(root: Path, rel: str, size: int) -> bytes:
    """The bytes of the store file ``rel``, read only if it is a regular file of the store's own
    (opened without following a link or blocking on a FIFO, then checked with fstat) of the size
    the catalog recorded; else StoreDamaged naming it. Read whole: the bytes checked are the bytes used."""
    path = Path(root) / rel
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreDamaged(rel, SYMLINK_PROBLEM) from None
        raise unreadable(path, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreDamaged(rel, f"{file_kind(st.st_mode)}, not a regular file; not read")
        if st.st_size != size:
            raise StoreDamaged(rel, f"size differs ({st.st_size:,} bytes, the catalog recorded {size:,})")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(size + 1)
    except OSError as e:
        raise unreadable(path, e) from None
    finally:
        os.close(fd)
    if len(data) != size:
        raise StoreDamaged(rel, f"size differs ({len(data):,} bytes read, the catalog recorded {size:,})")
    return data


def unreadable(path: Path, e: BaseException) -> StoreDamaged:
    """StoreDamaged for the store file at ``path`` that a reader failed on: "missing", or the
    reader's message with every store file in it named relative to the store (no absolute path)."""
    rel = store_name(path)
    if not Path(path).exists():
        return StoreDamaged(rel, "missing")
    return StoreDamaged(rel, f"unreadable ({_STORE_FILE.sub(lambda m: f'{SHARDS}/{m.group(1)}', first_line(e))})")


def damage_in(root: Path, e: duckdb.Error) -> StoreDamaged | None:
    """The StoreDamaged that a DuckDB error stands for when it is one of reading a shard (through
    the filters view: a missing file, a truncated or corrupt one); None for any other error."""
    if not isinstance(e, (duckdb.IOException, duckdb.InvalidInputException, duckdb.PermissionException)):
        return None
    m = _STORE_FILE.search(first_line(e))
    return None if m is None else unreadable(Path(root) / SHARDS / m.group(1), e)


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
               (stat.S_ISREG, "a regular file"))


def file_kind(mode: int) -> str:
    """What a file of ``mode`` (st_mode) is, in words: "a FIFO", "a directory", ..."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "of an unknown kind")


def check_store_path(root: str | os.PathLike) -> None:
    """One-line StoreError, before anything opens a file of the store, for a path that cannot be
    one: too long for the system, not a directory, unreadable; StoreDamaged for a catalog that is
    not a regular file of the store's own (a FIFO would block its reader forever, a device or a
    socket is no catalog, a symbolic link may point into another store). Only ``lstat`` is called:
    nothing is opened. A missing catalog passes (the caller says how to create a store)."""
    try:
        st = os.stat(root)  # the store directory itself may be reached through a link
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"{shown_path(root)}: {e.strerror or first_line(e)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{shown_path(root)}: not a store directory ({file_kind(st.st_mode)}; a store is a "
                         f"directory holding {CATALOG})")
    try:
        st = os.lstat(Path(root) / CATALOG)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"{shown_path(Path(root) / CATALOG)}: {e.strerror or first_line(e)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StoreDamaged(CATALOG, f"{file_kind(st.st_mode)}, not a regular file; not read")


SYMLINK_PROBLEM = "a symbolic link; a store's files and directories are its own, links are not followed"


def symlinks_in(root: Path, rels) -> Iterator[str]:
    """The paths (relative to the store) that are symbolic links among the store files ``rels``
    and the directories they lie in (what lies under a link is not looked into). A store's files
    are its own: a link (a ``tables/`` pointing at another store's) is damage, never followed.
    Missing paths pass (the size and checksum checks say they are missing). Only ``lstat`` is called."""
    seen: set[str] = set()   # checked: not links
    links: set[str] = set()
    for rel in rels:
        parts = Path(rel).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in links:
                break
            if sub in seen:
                continue
            try:
                is_link = stat.S_ISLNK(os.lstat(Path(root) / sub).st_mode)
            except OSError:
                break
            if is_link:
                links.add(sub)
                yield sub
                break
            seen.add(sub)


def check_no_symlinks(root: Path, rels) -> None:
    """StoreDamaged naming the first symbolic link among the store files ``rels`` (``symlinks_in``)."""
    if (link := next(symlinks_in(root, rels), None)) is not None:
        raise StoreDamaged(link, SYMLINK_PROBLEM)
