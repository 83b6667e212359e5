"""GET /v1/filters: any selection of filters, streamed as Parquet, Arrow IPC, .npy or CSV.

No row cap: the response streams in bounded memory (cnnfilterdb/export.py) and names the store
and the store version it was read from (``X-Store-Id``, ``X-Store-Version``, and the Parquet/Arrow
schema metadata's ``store_id``, ``store_version``, with the selection in ``where``). The
selection is resolved before the first byte, so a bad ``where``, an unknown version or a missing
shard, or damage in the row groups of the first chunk of rows (read before the status is sent), is
an ordinary JSON error (503 store_damaged); a fault found part-way (a shard damaged under a running
export, a damaged later row group) cuts the response off, never completes it wrongly, and the
service's log says why in one line. At most ``export_concurrency`` exports run at
once (each holds a disk stream and a few reading threads); more get a 429 -- unless a running
export's client has taken no data for ``export_stall_s``: that export is cut off and its slot goes
to the new one, so clients that stop reading cannot hold every slot.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from cnnfilterdb.catalog import store_id
from cnnfilterdb.errors import first_line
from cnnfilterdb.export import FORMATS, export_chunks
from cnnfilterdb.layout import StoreDamaged
from cnnfilterdb.requests import ExportFormat, ExportRequest, build

from ..catalog import LiveCatalog
from ..deps import get_catalog
from ..errors import ApiError
from ..head import HEAD_FLAG
from ..params import AS_OF, WHERE_TEXT, query
from ..schemas import error_responses
from .analysis import analysis, where_query

log = logging.getLogger("cnnfilterdb.service")

router = APIRouter(tags=["filters"], responses=error_responses(400, 404, 422, 429, 503))


@router.get("/v1/filters",
            responses={200: {"content": {media: {} for media, _ in FORMATS.values()},
                             "description": "filter_id, model_id, layer_id, w0..w8 of every selected filter, in "
                                            "filter_id order; X-Store-Id, X-Store-Version and X-Rows name the store, "
                                            "the version and the count"}},
            response_class=StreamingResponse, summary="Every filter of a selection, as one file")
def export_filters(
    request: Request,
    # The example keeps /docs' "Try it out" from downloading the whole store into the browser.
    where: str | None = Query(None, openapi_examples={"one layer": {"value": '{"layer_id": 0}'}},
                              description=f"the filters to export: {WHERE_TEXT}; none: every filter"),
    format: ExportFormat = query(ExportRequest, "format"),
    as_of: int | None = AS_OF,
    catalog: LiveCatalog = Depends(get_catalog),
):
    """The selected filters with their ids, in filter_id order, streamed as a download, with no row
    cap: columns filter_id, model_id, layer_id and the weights w0..w8 (row-major 3x3). The
    `X-Store-Id`, `X-Store-Version` and `X-Rows` headers give the store and the version read and the number
    of filters (the Parquet and Arrow files' schema metadata names the store, version and selection too). At most
    export_concurrency exports run at once (GET /v1/stats limits); more get a 429."""
    selection = where_query(where)  # as checked (2.0 of an integer field is 2): the file's metadata names it
    req = build(ExportRequest, where=selection, format=format, as_of=as_of)
    if not catalog.export_slots.acquire(blocking=False) and not _take_a_stalled_slot(catalog):
        raise ApiError(429, "export_busy", f"{catalog.settings.export_concurrency} exports are running; retry later",
                       headers={"Retry-After": "5"})
    try:
        with analysis(catalog, as_of=req.as_of) as a:  # the selection only: the stream runs outside the slot
            plan = a.export_plan(selection)
            sid = store_id(a.cur)
        version = plan.pop("store_version")
        metadata = {"store_id": sid, "store_version": str(version), "where": json.dumps(selection)}
        chunks = export_chunks(**plan, fmt=req.format, metadata=metadata)
    except BaseException:
        catalog.export_slots.release()
        raise
    media, suffix = FORMATS[req.format]
    headers = {"Content-Disposition": f'attachment; filename="filters-v{version}{suffix}"',
               "X-Store-Id": sid, "X-Store-Version": str(version), "X-Rows": str(plan["n_rows"]),
               "X-Content-Type-Options": "nosniff"}
    if request.scope.get(HEAD_FLAG):  # the headers only: nothing is read
        chunks.close()
        catalog.export_slots.release()
        return Response(media_type=media, headers=headers)
    return ClosingStream(_Pump(_releasing(chunks, catalog), catalog.settings.export_nice),
                         catalog.settings.export_send_timeout_s, catalog.exports_sending, media_type=media,
                         headers=headers)


def _take_a_stalled_slot(catalog: LiveCatalog, slots=None, sending: set | None = None) -> bool:
    """Every slot is taken: cut off the export whose client has held up its data longest, if that
    is export_stall_s or more, and take its slot (it comes back once that stream is closed).
    ``slots`` and ``sending``: another kind of answer's (the layer filter pages'), not the exports'."""
    slots = catalog.export_slots if slots is None else slots
    now = time.monotonic()
    stalled = [s for s in list(catalog.exports_sending if sending is None else sending)
               if s.blocked_since is not None and now - s.blocked_since >= catalog.settings.export_stall_s]
    if not stalled:
        return False
    victim = min(stalled, key=lambda s: s.blocked_since)
    try:
        anyio.from_thread.run_sync(victim.cut_off)  # this route runs in a worker thread of the event loop
    except RuntimeError:  # not in one (called directly): no slot taken back
        return False
    return slots.acquire(timeout=STALLED_RELEASE_S)


STALLED_RELEASE_S = 10.0  # how long a request waits for the slot of the export it cut off to come back
SEND_PIECE = 1 << 18  # bytes handed to the server at a time: progress is seen per piece, and the
# event loop never copies a whole chunk (up to 16 MB of CSV) in one go


class StreamCut(Exception):
    """An export's stream ended by an error after its status was sent (logged in one line where it
    happened): the response stops short, and the client sees the connection close mid-body."""


class _Pump:
    """An export's chunks produced in a thread of its own, run at CPU niceness ``nice``: its reading
    threads (started from it) inherit the niceness, so under load the cheap requests get the cores
    first and the export the rest (a review measured /health's p99 at 238 ms with two CSV exports
    running at equal priority). Iterated by the response (a chunk or two ahead); ``close`` stops
    the thread and closes the chunks."""

    def __init__(self, chunks: Iterator[bytes], nice: int):
        self._chunks = chunks
        self._nice = nice
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.produced = 0  # bytes handed to the response

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="export-pump", daemon=True)
            self._thread.start()
        kind, item = self._queue.get()
        if kind == "chunk":
            return item
        if kind == "error":
            raise StreamCut() from item  # already logged, in one line, by _run
        raise StopIteration

    def _run(self) -> None:
        try:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except (AttributeError, OSError):  # not Linux, or not allowed: at the usual priority
                pass
            for chunk in self._chunks:
                if not self._put("chunk", chunk):
                    return
                self.produced += len(chunk)
            self._put("end", None)
        except BaseException as e:  # handed to the response, which cuts the download off
            # Its status was sent: the client sees a cut stream only, the log says why (one line).
            why = str(e) if isinstance(e, StoreDamaged) else f"{type(e).__name__}: {first_line(e)}"
            log.error("GET /v1/filters: the stream was cut after %s bytes: %s", f"{self.produced:,}", why)
            self._put("error", e)
        finally:
            self._chunks.close()

    def _put(self, kind: str, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((kind, item), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread is None:
            self._chunks.close()
        else:
            self._thread.join()


def _releasing(chunks: Iterator[bytes], catalog: LiveCatalog, slots=None) -> Iterator[bytes]:
    """The chunks; the export's slot (or one of ``slots``) is released when the stream ends, fails
    or is closed."""
    try:
        yield from chunks
    finally:
        chunks.close()
        (catalog.export_slots if slots is None else slots).release()


class ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its iterator however the response ends. Starlette leaves
    the sync iterator of a response whose client went away to the garbage collector, and with it
    the export's slot, reading threads and open files (a review found every slot taken for good
    after two abandoned downloads). A client that stops reading is dropped after
    ``send_timeout_s`` without progress: it would hold its slot (and shards) forever; and sooner,
    after export_stall_s, if a new export needs its slot (``cut_off``). The body goes out in pieces
    of SEND_PIECE bytes; ``blocked_since`` is when the piece being sent started to wait for the
    client (None when none waits)."""

    def __init__(self, chunks: Iterator[bytes], send_timeout_s: float, sending: set, **kwargs):
        super().__init__(chunks, **kwargs)
        self._chunks = chunks
        self._send_timeout_s = send_timeout_s
        self._sending = sending
        self._cancel: anyio.CancelScope | None = None
        self.blocked_since: float | None = None

    def cut_off(self) -> None:
        """End the response now (in the event loop's thread)."""
        if self._cancel is not None:
            self._cancel.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message) -> None:
            body = message.get("body", b"")
            if message["type"] != "http.response.body" or len(body) <= SEND_PIECE:
                pieces = [message]
            else:
                view = memoryview(body)
                pieces = [{"type": "http.response.body", "body": view[i:i + SEND_PIECE], "more_body": True}
                          for i in range(0, len(body), SEND_PIECE)]
                pieces[-1]["more_body"] = message.get("more_body", False)
            for piece in pieces:
                self.blocked_since = time.monotonic()
                with anyio.fail_after(self._send_timeout_s):
                    await send(piece)
                self.blocked_since = None

        try:
            with anyio.CancelScope() as self._cancel:
                self._sending.add(self)
                await super().__call__(scope, receive, timed_send)
        except* TimeoutError:
            pass  # the client stopped reading: the response is cut off, the stream closed below
        except* StreamCut:
            pass  # the stream failed after the status went out (logged once): cut off, no traceback
        finally:
            self._sending.discard(self)
            self.blocked_since = None
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(_close, self._chunks)


def _close(chunks) -> None:
    """Close a generator that another thread may still be advancing (the read of the chunk that
    was being sent when the client left): retried until that step is over."""
    while True:
        try:
            chunks.close()
            return
        except ValueError:  # "generator already executing"
            time.sleep(0.01)
