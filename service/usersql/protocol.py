"""The frames between the service and a SQL worker: a 4-byte big-endian length, then that many
bytes of JSON. JSON, not pickle: the service never unpickles what a process running user SQL sent."""
from __future__ import annotations

import json
import os
import select
import struct
import time

MAX_FRAME = 1 << 30


class WorkerGone(Exception):
    """The worker closed its end or did not answer by the deadline."""


def send(fd: int, message: dict | bytes) -> None:
    body = message if isinstance(message, bytes) else json.dumps(message, separators=(",", ":")).encode()
    data = struct.pack(">I", len(body)) + body
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    parts, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WorkerGone("deadline")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise WorkerGone("closed")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def recv_bytes(fd: int, deadline: float | None = None) -> bytes:
    (n,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    if n > MAX_FRAME:
        raise WorkerGone(f"frame of {n} bytes")
    return _read_exact(fd, n, deadline)


def recv(fd: int, deadline: float | None = None) -> dict:
    return json.loads(recv_bytes(fd, deadline))
