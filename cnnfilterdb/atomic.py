"""Files written all or nothing (figures, reports, exports).

A write goes to a temporary file beside the destination (created as ``open`` creates files: mode
0666 less the umask), is fsynced, then renamed over it, and the directory fsynced: the path holds
the complete new file or what it held before, never a part; the temporary file is removed on any
failure or interruption. The destination must be a regular file or nothing: a symbolic link is
written through (its target replaced, the link kept), and a device, a directory or a missing
directory is refused before anything is written (`-o /dev/null` must not replace /dev/null), as
are a loop of links and a path ending in ``/``. A replaced file keeps its permissions.

``fsync_path`` makes a written file, or the names in a directory, survive a power cut; the store's
writers call it too, on what they write (shards, histograms, tables, the staging catalog, renames).
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_path(path: Path) -> None:
    """fsync the file or directory at ``path`` (a directory: the names added, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def destination(path: str | os.PathLike) -> Path:
    """The regular file a write to ``path`` replaces; OSError naming ``path`` if it cannot be one."""
    if str(path).endswith(os.sep):
        raise OSError(errno.EISDIR, "names a directory (a trailing /)", str(path))
    asked = Path(path)
    if asked.is_symlink():
        try:
            os.stat(asked)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "a loop of symbolic links", str(path)) from None
    target = Path(os.path.realpath(asked)) if asked.is_symlink() else asked
    if target.exists() and not target.is_file():
        raise OSError(errno.EEXIST, "exists and is not a regular file", str(asked))
    if not target.parent.is_dir():
        raise OSError(errno.ENOENT, f"no such directory {str(target.parent)!r}", str(asked))
    return target


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_file(path) as f: f.write(...)``: ``path`` replaced when the block ends
    without an error, untouched otherwise. OSErrors name ``path``, not the temporary file."""
    target = destination(path)
    tmp = target.with_name(f".cnnfilterdb-{secrets.token_hex(6)}.partial")  # short: fits beside any name
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            if target.exists():  # a replaced file keeps its permissions (a new inode would not)
                os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(target.parent)  # the rename itself must survive a power cut
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
