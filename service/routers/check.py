"""POST /v1/check: a model file uploaded and checked against the population (SPEC 15;
``cnnfilterdb/check.py``), nothing written to the store.

The request is ``multipart/form-data``: the model file as the part ``file``, the parameters of
``cnnfilterdb.requests.CheckRequest`` as form fields (``where`` as JSON text, numbers as JSON
numbers; a field sent empty is as if absent; ``entropy_norm_gt=null`` turns the random_like flag
off), and ``format`` (json, html, png, svg, pdf). What it costs the service is bounded:

* **Origin.** A browser sends a multipart POST to any site without asking first (a "simple"
  request): a page elsewhere could make its visitors' browsers upload to the service. A request
  whose ``Origin`` is present and names another host or port than its ``Host`` header, or whose
  ``Sec-Fetch-Site`` is ``cross-site``, is a 403 ``cross_origin`` before anything else; the
  dashboard (same origin) and clients sending no Origin (curl, ``Client``) are not concerned.
* **Slots.** At most ``max_checks`` checks at once (per worker process), counted from the moment
  the upload starts: the slot is taken before the body is read, and a request finding none free is
  a 429 at once (Retry-After), its upload never read. (``serve``'s connection guard,
  ``service/connections.py``, reads other requests' small or chunked bodies before the route runs;
  not this route's: its upload is bounded here.) The computation then runs as the analyses' (in a
  thread, under an analysis slot: ``routers/analysis.analysis``), off the event loop.
* **Size and time.** The body is capped at ``max_check_bytes`` and must arrive within
  ``check_upload_timeout_s``, and, once it has run ``check_upload_grace_s``, at an average of at
  least ``check_min_upload_bytes_per_s`` since its start (``body_limit.BodyLimit``'s bounds for
  this route, instead of ``max_body_bytes`` and ``body_timeout_s``): a Content-Length over the cap
  is a 413 before any of it is read, a body crossing it a 413 as it does, a slow one a 408 (two
  uploads trickling cannot hold both slots for the whole timeout); the form fields together are at
  most ``max_body_bytes``, as a JSON body is.
* **What the file may cost.** It is one file: an ONNX model keeping tensors in external data
  files is refused (they would be read from the upload's directory: the upload itself, N times).
  A zip (.pt, .npz) that would unpack to more than ``max_check_unpacked`` (default
  ``max_check_bytes``) is refused before it is unpacked; a model of more than ``max_check_layers``
  layers of 3x3 filters or ``max_check_filters`` filters before any is computed on (each a 422).
* **The temporary file.** The upload is streamed (never held in memory) into a file in a private
  subdirectory (``tempfile.mkdtemp``, mode 0700) of ``check_tmp_dir`` (default the system's
  temporary directory; the service refuses to start with one inside the store), removed with its
  subdirectory whatever happens: an answer, an error, a 408, a 413, the client leaving.
* **Errors.** Every error is a 4xx with the service's JSON error body, its message at most
  MESSAGE_CHARS (``errors._body``; a client's names and values quoted in it are cut shorter, by
  ``echo`` or MAX_NAME_CHARS): a file that is no model, holds no 3x3 convolution or a NaN weight,
  cannot be read, is a zip bomb, keeps external data or is over the caps is a **422**
  ``invalid_model`` with the ingest's one-line message naming the uploaded file's name (never the
  temporary path); a body that is not multipart/form-data a 415; a multipart body that is
  malformed, or ends before its closing boundary (a truncated upload), a 400 ``invalid_upload``;
  a form field the endpoint does not take, one given twice, or a second file a 400; no ``file``
  part a 422; the parameters' values (whatever their text: a number of 5,000 digits included) are
  worded by ``build(CheckRequest, ...)`` as the other analyses' (service/errors.py).

Why its own parser: Starlette's ``request.form()`` spools a file part into a
``SpooledTemporaryFile`` of the system's temporary directory (neither ``check_tmp_dir`` nor a
private subdirectory can be asked for), caps only the non-file parts (``max_part_size``), and
takes a body that ends before the closing boundary as complete. ``python_multipart``'s streaming
``MultipartParser`` (the one Starlette uses) is fed ``request.stream()`` chunk by chunk here: the
file's bytes go to the temporary file as they arrive (written in a thread every WRITE_CHUNK
bytes), the fields into a bounded buffer, and the end of the multipart is checked (its
``on_end``). The OpenAPI body is then declared by hand (``openapi_extra``), from CheckRequest's
own schema, so that /docs shows the ``file`` part and every field.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from cnnfilterdb.plots import FORMATS as FIGURE_FORMATS
from cnnfilterdb.plots import MEDIA_TYPES
from cnnfilterdb.requests import CheckRequest, build, parse_where, plain_type
from cnnfilterdb.selection import echo, nearest

from ..catalog import LiveCatalog
from ..deps import get_catalog
from ..errors import ApiError
from ..jsonable import jsonable
from ..schemas import CheckResponse, ErrorResponse, error_responses
from ..settings import Settings
from .analysis import analysis

log = logging.getLogger("cnnfilterdb.service")

PATH = "/v1/check"
FORMATS = ("json", "html", *FIGURE_FORMATS)
FIELDS = tuple(CheckRequest.model_fields)        # the request's parameters, as form fields
FORM_FIELDS = ("file", *FIELDS, "format")        # every part the endpoint takes


def _kinds(name: str) -> set:
    """The plain types a CheckRequest field takes (``int | None`` -> {int, NoneType})."""
    t = plain_type(CheckRequest.model_fields[name].annotation)
    return set(getattr(t, "__args__", None) or (t,))


# Fields whose value is a number (JSON's grammar, ASCII digits); those that may be null take `null`.
NUMBERS = tuple(f for f in FIELDS if f != "where" and {int, float} & _kinds(f))
NULLABLE = tuple(f for f in NUMBERS if type(None) in _kinds(f))
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
WRITE_CHUNK = 1 << 20       # file bytes buffered before a write to the temporary file (in a thread)
MAX_NAME_CHARS = 200        # of an upload's file name, as shown in the report and in messages
SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")  # a file name's suffix kept on the temporary file (.pt, .onnx, ...)


class CheckSlots:
    """The checks running in this process: at most ``n``, and at most ``per_client`` from one
    client address (two slow uploads from one address cannot hold every slot), taken without
    waiting (a 429 beyond)."""

    def __init__(self, n: int, per_client: int | None = None):
        self.n, self.per_client = n, per_client or n
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}

    def take(self, client: str) -> str | None:
        """None: taken (give it back with ``give_back(client)``); else why not, for the 429."""
        with self._lock:
            if sum(self._running.values()) >= self.n:
                return f"{self.n} checks are running (max_checks); retry soon"
            if self._running.get(client, 0) >= self.per_client:
                return (f"{self.per_client} check(s) from this address are running (max_checks_per_client); retry "
                        "when it is done")
            self._running[client] = self._running.get(client, 0) + 1
            return None

    def give_back(self, client: str) -> None:
        with self._lock:
            self._running[client] -= 1
            if not self._running[client]:
                del self._running[client]


PREFIX = "cnnfilterdb-check-"  # the uploads' directories: PREFIX<pid>-<random>


def remove_stale_uploads(base: Path) -> int:
    """Remove the upload directories left in ``base`` by service processes that no longer run (a
    process killed mid-check cannot remove its own); returns how many. A directory of a running
    process (another worker's upload) is left alone."""
    removed = 0
    for d in base.glob(PREFIX + "*-*"):
        pid = d.name[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not d.is_dir() or d.is_symlink():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or not ours to signal: then not ours to remove either)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
        except OSError:
            continue
    return removed


def check_tmp_dir(settings: Settings) -> Path:
    """The directory uploads are written under: ``check_tmp_dir`` or the system's temporary
    directory; ValueError if it lies inside the store (nothing of a check may be in the store)."""
    base = Path(settings.check_tmp_dir or tempfile.gettempdir()).resolve()
    store = Path(settings.db).resolve()
    if base == store or store in base.parents:
        raise ValueError(f"check_tmp_dir {base} lies inside the store {store}: give a directory outside it")
    return base


def _openapi() -> dict:
    """The multipart body of the route as OpenAPI says it: CheckRequest's fields (the schema of
    each value, a null alternative left out: a form field says null as `null` where it takes one),
    ``where`` as JSON text, the file, the format."""
    schema = CheckRequest.model_json_schema()
    props: dict = {"file": {"type": "string", "format": "binary",
                            "description": "the model file: ONNX, PyTorch (.pt/.pth), safetensors or .npz, read by "
                                           "content as `cnnfilterdb ingest` reads it"}}
    for name in FIELDS:
        p = dict(schema["properties"][name])
        p.pop("title", None)
        if name == "where":
            p = {"type": "string", "description": p["description"] + "; as JSON text, e.g. {\"task\": "
                 "\"Classification\"}", "examples": ['{"task": "Classification"}']}
        elif "anyOf" in p:
            (value,) = [a for a in p.pop("anyOf") if a.get("type") != "null"]
            p |= value
            if name in NULLABLE:
                p["description"] += "; null: the value `null`"
        if p.get("default", "") is None:
            p.pop("default")
        props[name] = p
    props["format"] = {"type": "string", "enum": list(FORMATS), "default": "json",
                       "description": "json: the report as JSON (CheckResponse); html: the report as a self-contained "
                                      "page (figures inline); png, svg, pdf: the check figure"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": props, "additionalProperties": False},
        "encoding": {"file": {"contentType": "application/octet-stream"}}}}}}


router = APIRouter(tags=["analysis"], responses=error_responses(
    400, 403, 404, 422, 429, 503,
    said={403: "Cross-origin: the request's Origin names another host or port than its Host, or its "
               "Sec-Fetch-Site is cross-site (a page of another site cannot make a browser upload here)",
          400: "Bad request: a form field the endpoint does not take or given twice, a second file, a value outside "
               "its allowed set; a multipart body that is malformed or ends before its closing boundary (a "
               "truncated upload)",
          422: "Invalid: the file is not a model, holds no 3x3 convolution or a NaN weight, cannot be read, "
               "keeps tensors in external data files, would unpack to more than max_check_unpacked (a zip bomb), "
               "or holds more than max_check_layers layers or max_check_filters filters: the message names the "
               "uploaded file; or no `file` part, or a value of the wrong type or out of its range",
          429: "Busy: max_checks checks are running (or the analyses' slots are taken); retry after Retry-After "
               "seconds"}))


@router.post(PATH, response_model=CheckResponse, summary="Check a model file against the population",
             openapi_extra=_openapi(),
             responses={200: {"description": "the report: JSON (CheckResponse), or as format asks, an HTML page or "
                                             "the check figure; X-Store-Id and X-Store-Version name the store and "
                                             "version compared with",
                              "content": {"text/html": {"schema": {"type": "string"}},
                                          **{MEDIA_TYPES[f]: {"schema": {"type": "string", "format": "binary"}}
                                             for f in FIGURE_FORMATS}}},
                        408: {"model": ErrorResponse, "description": "the upload did not arrive within "
                                                                     "check_upload_timeout_s, or arrived slower than "
                                                                     "check_min_upload_bytes_per_s on average after "
                                                                     "check_upload_grace_s"},
                        413: {"model": ErrorResponse, "description": "the upload is over max_check_bytes (or its form "
                                                                     "fields over max_body_bytes)"},
                        415: {"model": ErrorResponse, "description": "the body is not multipart/form-data"}})
async def check_model(request: Request, catalog: LiveCatalog = Depends(get_catalog)):
    """How a model's filters compare with those of the store's models, depth decile by depth
    decile: per 3x3 layer, its quality metrics (as an ingest stores them), `kl_to_population` (the
    divergence of its coefficient histograms from those of the population's layers of the same
    depth decile), each value's percentile among those layers, and flags (sparse, low_entropy,
    random_like, unusual); the model's metrics with their percentiles among the population's
    models, its divergence from the population and the k nearest models. The file is read exactly
    as `cnnfilterdb ingest` reads it, into a temporary file outside the store, removed after;
    nothing is written to the store. Bounded: at most max_checks at once (429 beyond, before the
    upload is read), max_check_bytes (413), check_upload_timeout_s for the whole upload and
    check_min_upload_bytes_per_s after check_upload_grace_s (408), max_check_unpacked,
    max_check_layers and max_check_filters (422); one file (no ONNX external data); a browser's
    request from another origin is a 403."""
    settings: Settings = request.app.state.settings
    slots: CheckSlots = request.app.state.check_slots
    _same_origin(request)
    boundary = _boundary(request.headers.get("content-type", ""))
    client = request.client.host if request.client else ""
    if (busy := slots.take(client)) is not None:
        # No Connection: close: the server reads and drops the rest of the upload (within its
        # keep-alive timeout), so that a client sending its file reads the 429 rather than a reset.
        raise ApiError(429, "check_busy", busy, headers={"Retry-After": "1"})
    try:
        folder = _private_dir(settings)
        try:
            upload = await _receive(request, boundary, folder, settings)
            req, fmt = _request(upload.fields)
            return await run_in_threadpool(_answer, catalog, req, fmt, upload, settings)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        slots.give_back(client)


DEFAULT_PORTS = {"http": 80, "https": 443}


def _same_origin(request: Request) -> None:
    """ApiError 403 for a browser's request from another site: ``Sec-Fetch-Site: cross-site``, or
    an ``Origin`` (any, ``null`` included) whose host and port are not those of the ``Host``
    header (a Host without a port: the Origin scheme's default one). The scheme is not compared:
    a TLS-terminating proxy makes an https page's request an http one here, and nothing but the
    service answers on its own host and port. No Origin (curl, Client): nothing to check."""
    site = request.headers.get("sec-fetch-site", "").strip().lower()
    origin = request.headers.get("origin")
    if site == "cross-site":
        raise ApiError(403, "cross_origin", "a request from another site (Sec-Fetch-Site: cross-site): POST /v1/check "
                                            "takes uploads from the service's own pages or from clients that are not "
                                            "browsers (curl, cnnfilterdb.Client)")
    if origin is None:
        return
    host = request.headers.get("host", "")
    try:
        o, h = urlsplit(origin.strip()), urlsplit("//" + host.strip())
        same = (o.scheme in DEFAULT_PORTS and not o.path.strip("/") and o.hostname is not None
                and o.hostname == h.hostname and (o.port or DEFAULT_PORTS[o.scheme]) == (h.port or DEFAULT_PORTS[o.scheme]))
    except ValueError:  # a port that is no number
        same = False
    if not same:
        raise ApiError(403, "cross_origin", f"a request from another origin (Origin {echo(origin)}, Host {echo(host)}): "
                                            "POST /v1/check takes uploads from the service's own pages or from clients "
                                            "that send no Origin (curl, cnnfilterdb.Client)")


def _boundary(content_type: str) -> bytes:
    from python_multipart.multipart import parse_options_header

    media, options = parse_options_header(content_type)
    if media.strip().lower() != b"multipart/form-data":
        raise ApiError(415, "invalid_request", "the body must be multipart/form-data, the model file as the part "
                                               f"`file` (got {echo(media.decode('latin-1')) if media else 'no content type'})")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 70:
        raise ApiError(400, "invalid_upload", "the multipart/form-data Content-Type has no boundary (or one over 70 "
                                              "characters)")
    return boundary


def _private_dir(settings: Settings) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=check_tmp_dir(settings)))
    except OSError as e:
        log.warning("POST /v1/check: cannot make a temporary directory: %s", e)
        raise ApiError(503, "check_unavailable", "the service cannot write the upload's temporary file; see its log",
                       headers={"Connection": "close"}) from None


class _Upload:
    """One upload as it arrives: the file into ``path`` (in a private directory), the fields."""

    def __init__(self, folder: Path, max_field_bytes: int):
        self.folder, self.max_field_bytes = folder, max_field_bytes
        self.path: Path | None = None
        self.shown = "upload"          # the file's name as the client gave it (its last component)
        self.file = None
        self.fields: dict[str, str] = {}
        self.field_bytes = 0
        self.ended = False
        self.pending: list[bytes] = []  # file bytes not yet written
        self.pending_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = self._value = b""
        self._part: str | None = None   # the current part's field name
        self._data = bytearray()        # the current field's value

    # python_multipart's callbacks
    def on_part_begin(self) -> None:
        self._headers, self._part, self._data = [], None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((self._name.strip().lower(), self._value))
        self._name = self._value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        disposition = next((v for k, v in self._headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise ApiError(400, "invalid_upload", "a multipart part has no name (Content-Disposition: form-data; "
                                                  "name=\"...\")")
        name = options[b"name"].decode("utf-8", "replace")
        if name not in FORM_FIELDS:
            near = nearest(name, list(FORM_FIELDS))
            hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
            raise ApiError(400, "invalid_request", f"unknown form field {echo(name)}{hint}; known: "
                                                   f"{', '.join(FORM_FIELDS)}")
        if name == "file":
            if self.path is not None:
                raise ApiError(400, "invalid_request", "two files: POST /v1/check takes one, as the part `file`")
            self.shown = _shown(options.get(b"filename"))
            suffix = Path(self.shown).suffix
            self.path = self.folder / ("upload" + (suffix if SUFFIX.fullmatch(suffix) else ""))
            self.file = open(self.path, "xb")  # closed by close(), whatever happens
        elif name in self.fields:
            raise ApiError(400, "invalid_request", f"form field {name!r} given more than once; each takes one value")
        elif b"filename" in options:
            raise ApiError(400, "invalid_request", f"form field {name!r} is a file: only `file` is one")
        self._part = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self.pending.append(data[start:end])
            self.pending_bytes += end - start
            return
        self.field_bytes += end - start
        if self.field_bytes > self.max_field_bytes:
            raise ApiError(413, "request_too_large", f"the form fields are larger than the limit of "
                                                     f"{self.max_field_bytes} bytes (max_body_bytes)",
                           headers={"Connection": "close"})
        self._data += data[start:end]

    def on_part_end(self) -> None:
        if self._part is not None and self._part != "file":
            try:
                self.fields[self._part] = self._data.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "invalid_request", f"form field {self._part!r} is not UTF-8 text") from None
        self._part = None

    def on_end(self) -> None:
        self.ended = True

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished", "on_end")}

    def flush(self) -> None:
        """Write the pending file bytes (in a thread)."""
        data, self.pending, self.pending_bytes = b"".join(self.pending), [], 0
        if data and self.file is not None:
            self.file.write(data)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _shown(filename: bytes | None) -> str:
    """An upload's file name as the report and the messages show it: its last component (either
    slash), printable characters only, at most MAX_NAME_CHARS; "upload" if nothing is left."""
    if not filename:
        return "upload"
    text = filename.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if c.isprintable()).strip()[:MAX_NAME_CHARS]
    return text if text not in ("", ".", "..") else "upload"


async def _receive(request: Request, boundary: bytes, folder: Path, settings: Settings) -> _Upload:
    """The upload, its file written to ``folder``; ApiError for a malformed or truncated one,
    ClientDisconnect answered as a truncated upload. The body's size and time are bounded by
    BodyLimit (an HTTPException 413/408 raised from the stream)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser

    upload = _Upload(folder, settings.max_body_bytes)
    parser = MultipartParser(boundary, upload.callbacks())
    try:
        try:
            async for chunk in request.stream():
                if chunk:
                    parser.write(chunk)
                if upload.pending_bytes >= WRITE_CHUNK:
                    await run_in_threadpool(upload.flush)
            await run_in_threadpool(upload.flush)
        finally:
            upload.close()
    except FormParserError as e:
        raise ApiError(400, "invalid_upload", f"the multipart/form-data body is malformed ({str(e)[:200]})") from None
    except ClientDisconnect:
        raise ApiError(400, "invalid_upload", "the upload ended before its body was complete (the client closed the "
                                              "connection)", headers={"Connection": "close"}) from None
    except OSError as e:
        log.warning("POST /v1/check: cannot write the upload's temporary file: %s", e)
        raise ApiError(503, "check_unavailable", "the service cannot write the upload's temporary file (no room?); "
                                                 "see its log", headers={"Connection": "close"}) from None
    if not upload.ended:
        raise ApiError(400, "invalid_upload", "the upload is truncated: the multipart/form-data body ended before its "
                                              "closing boundary")
    if upload.path is None:
        raise ApiError(422, "invalid_request", "file is required: the model file as the multipart part `file` (curl -F "
                                               "file=@model.onnx)")
    return upload


def _request(fields: dict[str, str]) -> tuple[CheckRequest, str]:
    """The CheckRequest of the form's fields (an empty field is as if absent) and the format."""
    fmt = fields.pop("format", "") or "json"
    if fmt not in FORMATS:
        near = nearest(fmt, list(FORMATS))
        hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
        raise ApiError(400, "invalid_request", f"unknown format {echo(fmt)}{hint}; valid: "
                                               f"{', '.join(map(repr, FORMATS))}")
    values: dict = {}
    for name, text in fields.items():
        if text == "":
            continue
        if name == "where":
            values[name] = parse_where(text)
        elif name in NUMBERS:
            if text == "null" and name in NULLABLE:
                values[name] = None
            else:  # a JSON number; anything else goes to the request type, which says what it must be
                values[name] = _number(text)
        else:
            values[name] = text
    return build(CheckRequest, **values), fmt


def _number(text: str):
    """A form field's JSON number, or its text when it is none Python reads (a number of more
    digits than Python converts, sys.get_int_max_str_digits: ValueError): the request type then
    says what the value must be, as for any other text."""
    if not JSON_NUMBER.fullmatch(text):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _answer(catalog: LiveCatalog, req: CheckRequest, fmt: str, upload: _Upload, settings: Settings) -> Response:
    """The check of the uploaded file, in the format asked (run in a thread)."""
    from cnnfilterdb.check import check
    from cnnfilterdb.ingest.errors import IngestError
    from cnnfilterdb.ingest.model_files import read_checked

    assert upload.path is not None
    try:
        model = read_checked(upload.path, shown=upload.shown, max_unpacked=settings.max_check_unpacked,
                             max_layers=settings.max_check_layers, max_filters=settings.max_check_filters,
                             max_work=settings.max_check_work,
                             external_data=False)  # an upload is one file
    except IngestError as e:
        message = str(e).replace(str(upload.path), upload.shown).replace(str(upload.folder), "")
        raise ApiError(422, "invalid_model", message) from None
    with analysis(catalog, as_of=req.as_of) as a:
        out = check(a, req, model)
        headers = {"X-Store-Id": str(out["store_id"]), "X-Store-Version": str(out["store_version"])}
        if fmt == "json":
            return Response(json.dumps(jsonable(out), allow_nan=False), media_type="application/json",
                            headers=headers)
        from cnnfilterdb.plots import Provenance

        provenance = Provenance.of(a)
        if fmt == "html":
            from cnnfilterdb.check_report import check_html

            html = check_html(out, provenance)
            # A page of the service's origin showing a client's values: it may load and run nothing.
            return Response(html, media_type="text/html; charset=utf-8", headers={
                **headers, "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'"})
        from cnnfilterdb.check_report import check_figure

        data = check_figure(out, fmt, provenance)
        return Response(data, media_type=MEDIA_TYPES[fmt], headers={
            **headers, "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})
