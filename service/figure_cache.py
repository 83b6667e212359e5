"""The service's cache of rendered figures: bytes by ETag, least recently used first out, within
a byte budget. An ETag names the catalog generation, the store version drawn (``as_of``) and the
store's id, whose provenance the file's metadata carries (plots.figure_metadata), and every parameter
of the figure (service/routers/plots.py), so an entry is never stale: after an ingest, new requests
have new ETags and the old entries age out."""
from __future__ import annotations

import threading
from collections import OrderedDict


class FigureCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes // 8:  # no one figure may push out most of the others
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= len(old)
