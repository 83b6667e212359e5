"""Checksums of the shards' row groups, recorded at commit and checked by the engine's own reads
(docs/method.md#checksums).

For every shard, the catalog (``_row_groups``, layout 6) and the Parquet tables of each commit
(``row_groups.parquet``) record one xxh3_64 per row group, over the row group's bytes as they lie
in the file: the span of its column chunks (from the first chunk's dictionary or data page to the
end of the last chunk: every page header and page, as written), and one for the footer (row group
``FOOTER``, -1: the Thrift metadata, its length and the closing magic). The values are stored as
signed 64-bit integers (``signed64``: Spark and DuckDB's BIGINT), the bits of the unsigned hash.

Guarantees:
- the engine's reads (the exact scans, the exports, ``db.filters()``, the layer pages and filter
  lookups of the service, the plots of a layer's filters, the refit, Spark's tasks) hash the row
  group's bytes before they decode them, every time they read it (nothing is cached), and the
  footer whenever it is parsed (and, before DuckDB reads the shards for the engine, every footer as
  it is in the file then); a difference raises ``StoreDamaged`` naming the shard relative to the
  store and the row group. The (offset, length) recorded for each row group must be the span the
  checked footer gives (else ``StoreDamaged`` naming the catalog). A commit that rewrites a shard
  (``compact``) reads it through the same checks. A wrong answer would need an xxh3 collision of the damaged bytes
  (2^-64 for random damage; xxh3 is no defence against someone forging a shard on purpose: the
  catalog's sha256, ``cnnfilterdb verify``, is the check of that);
- a shard the catalog records no checksums of, in a catalog of layout 6, is ``StoreDamaged`` too;
  a catalog of an older layout has none (its reads are unchecked) until its next commit records
  them, after checking each shard's sha256 against the catalog, so that a checksum never certifies
  bytes that were already damaged;
- what reads the shards through DuckDB's own SQL (the ``filters`` view in ``cnnfilterdb sql``, the
  DuckDB shell, ``db.sql()``, POST /v1/sql) is not checked by these: DuckDB verifies no checksum of
  Parquet pages.
"""
from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from .layout import CATALOG, StoreDamaged, store_name, unreadable

FOOTER = -1  # the row_group number of a shard's footer in _row_groups
MAGIC = b"PAR1"


def signed64(h: int) -> int:
    """The unsigned 64-bit hash ``h`` as the signed integer of the same bits (a BIGINT)."""
    return h - (1 << 64) if h >= 1 << 63 else h


def xxh3(data) -> int:
    """xxh3_64 of a buffer (bytes, memoryview, pyarrow Buffer: never copied; the GIL is released),
    as a signed 64-bit integer."""
    return signed64(xxhash.xxh3_64_intdigest(data))


def footer_span(data, size: int) -> tuple[int, int]:
    """(offset, length) of the footer of a Parquet file of ``size`` bytes whose last 8 bytes are
    ``data``: the Thrift metadata, its 4-byte length and the magic. ValueError if it is not one."""
    tail = bytes(memoryview(data)[-8:])
    if size < 12 or tail[4:] != MAGIC:
        raise ValueError("not a Parquet file (no PAR1 at its end)")
    (n,) = struct.unpack("<i", tail[:4])
    if not 0 < n <= size - 12:
        raise ValueError(f"its footer length ({n}) does not fit the file")
    return size - 8 - n, n + 8


def parse_footer(footer):
    """The FileMetaData of a footer's bytes (as ``footer_span`` delimits them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_metadata(pa.BufferReader(MAGIC + bytes(footer)))


def read_footer(path: Path):
    """(FileMetaData, xxh3 of the footer's bytes) of the Parquet file at ``path``, parsed from the
    very bytes hashed. OSError or pyarrow's error if it cannot be read."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            if size < 12:
                raise ValueError("not a Parquet file (shorter than its magic numbers)")
            f.seek(size - 8)
            offset, length = footer_span(f.read(8), size)
        except ValueError as e:  # as the OS's errors: the readers turn them into StoreDamaged
            raise OSError(str(e)) from None
        f.seek(offset)
        footer = f.read(length)
    return parse_footer(footer), xxh3(footer)


def footer_hash(path: Path) -> int:
    """The xxh3 of the footer's bytes of the Parquet file at ``path``, read now and not parsed (a
    few microseconds): the check of the footer that a reader other than ours (DuckDB) is about to
    parse. OSError if it cannot be read or is not a Parquet file's."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            if size < 12:
                raise ValueError("not a Parquet file (shorter than its magic numbers)")
            offset, length = footer_span(os.pread(f.fileno(), 8, size - 8), size)
        except ValueError as e:
            raise OSError(str(e)) from None
        return xxh3(os.pread(f.fileno(), length, offset))


def row_group_span(md, i: int) -> tuple[int, int]:
    """(offset, length) of row group ``i``'s bytes in the file: from the first page of its first
    column chunk (dictionary or data page) to the end of its last one."""
    rg = md.row_group(i)
    start, end = None, None
    for c in range(rg.num_columns):
        col = rg.column(c)
        first = col.data_page_offset
        if col.has_dictionary_page and col.dictionary_page_offset is not None and col.dictionary_page_offset > 0:
            first = min(first, col.dictionary_page_offset)
        last = first + col.total_compressed_size
        start = first if start is None else min(start, first)
        end = last if end is None else max(end, last)
    return (0, 0) if start is None else (int(start), int(end - start))


def shard_checksums(path: Path, sha256: str | None = None) -> list[tuple[int, int, int, int]]:
    """The rows of ``_row_groups`` for the shard at ``path``: (row_group, offset, length, xxh3), the
    footer's (``FOOTER``) first. With ``sha256`` (the catalog's, of a shard committed before its
    checksums were recorded) the whole file's sha256 is checked in the same pass, and a difference
    raises StoreDamaged: the checksums never certify damaged bytes."""
    import pyarrow as pa

    rel = store_name(path)
    try:
        mm = pa.memory_map(str(path))
        try:
            size = mm.size()
            if size < 12:
                raise ValueError("not a Parquet file (shorter than its magic numbers)")
            whole = mm.read_buffer()  # the mapping, not a copy
            if sha256 is not None and (digest := hashlib.sha256(whole).hexdigest()) != sha256:
                raise StoreDamaged(rel, f"checksum differs (sha256 {digest[:16]}..., the catalog recorded "
                                        f"{sha256[:16]}...): its row groups' checksums are not recorded")
            offset, length = footer_span(whole.slice(size - 8), size)
            footer = whole.slice(offset, length)
            md = parse_footer(footer)
            rows = [(FOOTER, offset, length, xxh3(footer))]
            for i in range(md.num_row_groups):
                o, n = row_group_span(md, i)
                if o < 0 or o + n > offset:
                    raise ValueError(f"row group {i}'s column chunks lie outside the file's data")
                rows.append((i, o, n, xxh3(whole.slice(o, n))))
        finally:
            mm.close()
    except StoreDamaged:
        raise
    except (OSError, ValueError, pa.ArrowException) as e:
        raise StoreDamaged(rel, f"unreadable ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    return rows


@dataclass(frozen=True)
class ShardChecks:
    """One shard's recorded checksums: its footer's xxh3, and (offset, length, xxh3) int64 per row group."""
    rel: str
    footer: int
    row_groups: np.ndarray  # (n_row_groups, 3) int64

    def check_footer(self, actual: int) -> None:
        check_footer(self.rel, self.footer, actual)

    def span(self, row_group: int) -> tuple[int, int, int]:
        """(offset, length, xxh3) recorded for ``row_group``; StoreDamaged if the shard had no such row group."""
        if not 0 <= row_group < len(self.row_groups):
            raise StoreDamaged(self.rel, f"row group {row_group}: not one of the {len(self.row_groups)} recorded at commit")
        o, n, h = self.row_groups[row_group]
        return int(o), int(n), int(h)

    def check(self, row_group: int, data) -> None:
        """StoreDamaged unless ``data`` (the bytes of ``span(row_group)``) hash as recorded."""
        check_row_group(self.rel, row_group, self.span(row_group)[2], data)

    def check_spans(self, spans: np.ndarray) -> None:
        """StoreDamaged naming the catalog unless the recorded (offset, length) of every row group
        are ``spans`` ((n, 2) int64: ``footer_spans`` of the shard's footer, checked against its
        checksum first): a span recorded wrong would hash other bytes than the row group's."""
        check_spans(self.rel, self.row_groups[:, :2], spans)


def footer_spans(md) -> np.ndarray:
    """(offset, length) of every row group of a parsed footer (``row_group_span``), (n, 2) int64."""
    return np.array([row_group_span(md, i) for i in range(md.num_row_groups)], dtype=np.int64).reshape(-1, 2)


def check_spans(rel: str, recorded, spans, first: int = 0) -> None:
    """StoreDamaged naming the catalog unless the (offset, length) it records of the row groups
    ``first``, ``first + 1``, ... of the shard ``rel`` (``recorded``, (n, 2)) are the spans its
    (checksum-checked) footer gives."""
    recorded, spans = np.asarray(recorded, dtype=np.int64).reshape(-1, 2), np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if recorded.shape != spans.shape:
        raise StoreDamaged(CATALOG, f"it records {len(recorded)} row groups of {rel}, whose footer holds {len(spans)}")
    if not np.array_equal(recorded, spans):
        i = int(np.flatnonzero((recorded != spans).any(axis=1))[0])
        raise StoreDamaged(CATALOG, f"the span it records of {rel}'s row group {first + i} (offset {recorded[i, 0]}, "
                                    f"{recorded[i, 1]} bytes) is not the one its footer gives (offset {spans[i, 0]}, "
                                    f"{spans[i, 1]} bytes)")


def check_footer(rel: str, expected: int, actual: int) -> None:
    """StoreDamaged naming the shard ``rel`` unless its footer's xxh3 ``actual`` is ``expected``."""
    if actual != expected:
        raise StoreDamaged(rel, "footer: checksum differs from the one recorded at commit (xxh3 "
                                f"{actual & (2**64 - 1):016x}, recorded {expected & (2**64 - 1):016x})")


def check_row_group(rel: str, row_group: int, expected: int, data) -> None:
    """StoreDamaged naming the shard ``rel`` and ``row_group`` unless ``data`` hashes to ``expected``."""
    if (actual := xxh3(data)) != expected:
        raise StoreDamaged(rel, f"row group {row_group}: checksum differs from the one recorded at commit "
                                f"(xxh3 {actual & (2**64 - 1):016x}, recorded {expected & (2**64 - 1):016x})")


def read_footer_from(f):
    """(FileMetaData, xxh3 of the footer's bytes) of an open pyarrow file (any filesystem's):
    two reads at its end, parsed from the bytes hashed."""
    size = f.size()
    if size < 12:
        raise OSError("not a Parquet file (shorter than its magic numbers)")
    try:
        offset, length = footer_span(f.read_at(8, size - 8), size)
    except ValueError as e:
        raise OSError(str(e)) from None
    footer = f.read_at(length, offset)
    return parse_footer(footer), xxh3(footer)


_DAMAGE = re.compile(r"StoreDamaged: (\S+): (.+?); the store is damaged")


def damage_of(e: BaseException) -> StoreDamaged | None:
    """The StoreDamaged a Spark task raised, from the error Spark reports of it (a Python traceback
    inside a Java one), or None if it is not one."""
    m = _DAMAGE.search(str(e))
    return None if m is None else StoreDamaged(m.group(1), m.group(2))


class Checksums:
    """The recorded checksums of a store's shards, by shard path relative to the store."""

    def __init__(self, shards: dict[str, ShardChecks]):
        self.shards = shards

    @classmethod
    def from_rows(cls, rows, shards: list[str]) -> Checksums:
        """From ``_row_groups`` rows (path, row_group, offset, length, xxh3) for the shards ``shards``
        (relative paths): StoreDamaged naming the catalog if it lacks any's."""
        by: dict[str, list] = {}
        for path, i, o, n, h in rows:
            by.setdefault(path, []).append((int(i), int(o), int(n), int(h)))
        out = {}
        for rel in shards:
            entries = sorted(by.get(rel, []))
            if not entries or entries[0][0] != FOOTER or [e[0] for e in entries[1:]] != list(range(len(entries) - 1)):
                raise StoreDamaged(CATALOG, f"it records no complete checksums of {rel}; run `cnnfilterdb verify`")
            out[rel] = ShardChecks(rel, entries[0][3], np.array([e[1:] for e in entries[1:]], dtype=np.int64).reshape(-1, 3))
        return cls(out)

    @classmethod
    def load(cls, con) -> Checksums | None:
        """The checksums of every shard the catalog lists (None: a catalog of a layout before 6,
        which records none until its next commit)."""
        if not has_row_groups(con):
            return None
        shards = [p for (p,) in con.execute("SELECT path FROM _shards").fetchall()]
        rows = con.execute("SELECT path, row_group, byte_offset, byte_length, xxh3 FROM _row_groups "
                           "WHERE path IN (SELECT path FROM _shards)").fetchall()
        return cls.from_rows(rows, shards)

    def of(self, path: Path) -> ShardChecks:
        rel = store_name(path)
        try:
            return self.shards[rel]
        except KeyError:
            raise StoreDamaged(CATALOG, f"it records no checksums of {rel}; run `cnnfilterdb verify`") from None


def has_row_groups(con) -> bool:
    """Whether the catalog records row group checksums (layout 6 and later: ``_row_groups``)."""
    return bool(con.execute("SELECT max(schema_version) >= 6 FROM _store").fetchone()[0])


def verify_row_groups(path: Path, checks: ShardChecks, row_groups, fd: int | None = None) -> None:
    """Hash the given row groups of the shard at ``path`` (through the open descriptor ``fd`` if
    given: the file held, not the name) against ``checks``; StoreDamaged at the first that differs."""
    import pyarrow as pa

    source = f"/proc/self/fd/{fd}" if fd is not None else str(path)
    try:
        mm = pa.memory_map(source)
    except (OSError, pa.ArrowException) as e:
        raise unreadable(Path(path), e) from None
    try:
        size = mm.size()
        for i in row_groups:
            o, n, _ = checks.span(i)
            if o + n > size:
                raise StoreDamaged(checks.rel, f"row group {i}: ends past the end of the file")
            mm.seek(o)
            checks.check(i, mm.read_buffer(n))
    finally:
        mm.close()
