"""POST /v1/check and Client.check (issue 25, the HTTP front end): the same report as
``FilterDB.check`` for real models; every hostile upload a 4xx with the service's JSON error
body; the bounds (max_checks, max_check_bytes, check_upload_timeout_s) on a real server; and after
each, nothing of the upload left in the temporary directory and the store byte-identical."""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cnnfilterdb
from cnnfilterdb.service.main import create_app
from cnnfilterdb.service.schemas import CheckResponse
from cnnfilterdb.service.settings import Settings

from .helpers import REPO, serving

MODELS = REPO / "tests" / "data" / "models"
ONNX = MODELS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
PT = MODELS / "rnet.pt"
PNG = b"\x89PNG\r\n\x1a\n"


def _store_files(db: Path) -> dict[str, str]:
    """Every file under the store and the SHA-256 of its bytes."""
    return {str(p.relative_to(db)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(db.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("check-uploads")


@pytest.fixture(scope="module")
def db(v1_store):
    with cnnfilterdb.open(v1_store) as d:
        yield d


@pytest.fixture(scope="module")
def client(v1_store, tmp_root):
    from fastapi.testclient import TestClient

    return TestClient(create_app(Settings(db=v1_store, check_tmp_dir=tmp_root)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def small(v1_store, tmp_root):
    """A service with small caps: a body of 200 kB, a zip unpacking to 5 MB, 3 layers, 1,000 filters,
    1e7 multiply-adds of orthogonality."""
    from fastapi.testclient import TestClient

    return TestClient(create_app(Settings(db=v1_store, check_tmp_dir=tmp_root, max_check_bytes=200_000,
                                          max_check_unpacked=5_000_000, max_check_layers=3,
                                          max_check_filters=1000, max_check_work=10**7)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def live(v1_store, tmp_root):
    """A real server: one check at a time, an upload within 2 s."""
    app = create_app(Settings(db=v1_store, check_tmp_dir=tmp_root, max_checks=1, check_upload_timeout_s=2.0,
                              max_check_bytes=64 << 20))
    with serving(app) as (url, port):
        yield url, port


@pytest.fixture(scope="module")
def guarded(v1_store, tmp_root):
    """A real server behind the connection guard: one check at a time, an upload within 1.5 s and,
    after 0.3 s, at 1,000 bytes/s on average at least."""
    app = create_app(Settings(db=v1_store, check_tmp_dir=tmp_root, max_checks=1, check_upload_timeout_s=1.5,
                              check_min_upload_bytes_per_s=1000, check_upload_grace_s=0.3))
    from cnnfilterdb.service.connections import GuardedH11Protocol

    with serving(app, http=GuardedH11Protocol) as (url, port):  # as `cnnfilterdb serve` serves it
        yield url, port


@pytest.fixture(autouse=True)
def nothing_left(v1_store, tmp_root):
    """After every test: no file of an upload left, the store byte-identical."""
    before = _store_files(v1_store)
    yield
    deadline = time.monotonic() + 5  # a real server may still be cleaning up after a cut connection
    while list(tmp_root.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_root.iterdir()) == []
    assert _store_files(v1_store) == before


def _expected(db, path: Path, **options) -> dict:
    out = db.check(path, **options).to_dict()
    out.pop("elapsed_ms")
    return json.loads(json.dumps(out))


def _post(client, path: Path | None = None, content: bytes | None = None, filename: str | None = None, **fields):
    files = {"file": (filename or path.name, content if content is not None else path.read_bytes(),
                      "application/octet-stream")}
    return client.post("/v1/check", files=files, data={k: str(v) for k, v in fields.items()})


def _error(r, status: int, code: str | None = None) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert "Traceback" not in r.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]["message"]


# ---- the same report as FilterDB.check ----------------------------------------------------------
@pytest.mark.parametrize("path", [ONNX, pytest.param(PT, marks=pytest.mark.requires("torch"))], ids=["onnx", "pt"])
def test_post_gives_db_check(client, db, path):
    r = _post(client, path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    out = r.json()
    assert out.pop("elapsed_ms") >= 0
    assert out == _expected(db, path)
    assert r.headers["X-Store-Version"] == str(out["store_version"]) and r.headers["X-Store-Id"] == out["store_id"]
    # The response model describes every key (none dropped) and every value's type.
    full = r.json()
    assert CheckResponse.model_validate(full).model_dump(mode="json") == full


def test_post_takes_the_parameters_as_form_fields(client, db):
    where = {"task": "Classification"}
    options = dict(k=3, sparsity_gt=0.25, entropy_norm_lt=0.6, entropy_norm_gt=None, name="mine", task="OCR",
                   visual_category="text", training_dataset="ICDAR")
    fields = {k: ("null" if v is None else v) for k, v in options.items()}
    r = _post(client, ONNX, where=json.dumps(where), as_of=1, **fields)
    assert r.status_code == 200, r.text
    out = r.json()
    out.pop("elapsed_ms")
    assert out == _expected(db, ONNX, where=where, as_of=1, **options)
    assert out["parameters"]["thresholds"]["entropy_norm_gt"] is None
    assert len(out["nearest_models"]) == min(3, out["population"]["n_models"]) and out["model"]["name"] == "mine"
    assert out["model"]["file"] == ONNX.name and out["model"]["task"] == "OCR"
    # A field sent empty is as if absent.
    r = _post(client, ONNX, k="", where="", format="")
    assert r.status_code == 200 and r.json()["parameters"]["k"] == 5


def test_client_check_equals_db_check(live, db):
    url, _ = live
    with cnnfilterdb.Client(url) as c:
        got = c.check(ONNX, {"task": "Classification"}, k=2, entropy_norm_gt=None, name="cls")
    want = db.check(ONNX, {"task": "Classification"}, k=2, entropy_norm_gt=None, name="cls")
    a, b = got.to_dict(), want.to_dict()
    a.pop("elapsed_ms"), b.pop("elapsed_ms")
    assert a == json.loads(json.dumps(b))
    assert type(got) is type(want)
    assert got.layers.equals(want.layers) and got.nearest_models.equals(want.nearest_models)


def test_client_check_errors_as_the_local_api(live, db, tmp_path):
    from cnnfilterdb.client import InvalidModel, InvalidRequest, UnknownVersion
    from cnnfilterdb.errors import UserError
    from cnnfilterdb.ingest.errors import IngestError

    url, _ = live
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"not a model at all")
    with cnnfilterdb.Client(url) as c:
        with pytest.raises(InvalidModel) as e:
            c.check(bad)
        assert isinstance(e.value, UserError) and e.value.status == 422 and "notes.txt: not a model" in str(e.value)
        with pytest.raises(IngestError) as local:
            db.check(bad)
        assert isinstance(local.value, UserError) and e.value.message == str(local.value).replace(str(bad), bad.name)
        with pytest.raises(InvalidRequest, match="k must be"):  # checked before anything is sent
            c.check(ONNX, k=0)
        with pytest.raises(UnknownVersion):
            c.check(ONNX, as_of=99)
        with pytest.raises(FileNotFoundError):
            c.check(tmp_path / "absent.onnx")


@pytest.mark.parametrize("fmt, media, magic", [("html", "text/html", b"<!DOCTYPE html"), ("png", "image/png", PNG),
                                               ("svg", "image/svg+xml", b"<?xml"), ("pdf", "application/pdf", b"%PDF")])
def test_formats(client, fmt, media, magic):
    r = _post(client, ONNX, format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == media
    assert r.content.lstrip()[:len(magic)].lower() == magic.lower()
    assert r.headers["X-Store-Version"] == "1" and r.headers["X-Store-Id"]
    if fmt == "html":
        assert "ch_ppocr_mobile_v2.0_cls_infer" in r.text


# ---- hostile uploads: each a 4xx with a JSON error ------------------------------------------------
def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_not_a_model(client, tmp_root):
    message = _error(_post(client, content=b"hello, world" * 100, filename="weights.pt"), 422, "invalid_model")
    assert message.startswith("weights.pt: ") and "not a model" in message
    assert str(tmp_root) not in message and "upload" not in message.split(":")[0]
    # A folder in the file name is not shown (nor trusted); an empty file is no model either.
    message = _error(_post(client, content=b"", filename="../../etc/passwd"), 422, "invalid_model")
    assert message.startswith("passwd: ")


def test_no_3x3_convolution(client):
    rng = np.random.default_rng(0)
    content = _npz(a=rng.normal(size=(8, 4, 1, 1)).astype(np.float32), b=rng.normal(size=(8, 8, 5, 5)).astype(np.float32))
    message = _error(_post(client, content=content, filename="wide.npz"), 422, "invalid_model")
    assert message.startswith("wide.npz: ") and "no 3x3 convolution" in message


def test_nan_weights(client):
    w = np.random.default_rng(1).normal(size=(8, 4, 3, 3)).astype(np.float32)
    w[3, 2, 1, 1] = np.nan
    message = _error(_post(client, content=_npz(conv=w), filename="nan.npz"), 422, "invalid_model")
    assert message.startswith("nan.npz: ") and "NaN" in message


def _bomb_pt(unpacked: int) -> bytes:
    """A .pt (a zip with data.pkl) holding ``unpacked`` bytes of zeros, deflated to little."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with z.open("archive/data/0", "w") as f:
            zeros = bytes(1 << 20)
            for _ in range(unpacked >> 20):
                f.write(zeros)
    return buf.getvalue()


def test_zip_bomb(small, client):
    content = _bomb_pt(64 << 20)  # 64 MB of zeros in ~64 kB: over small's max_check_unpacked
    assert len(content) < 200_000
    message = _error(_post(small, content=content, filename="bomb.pt"), 422, "invalid_model")
    assert message.startswith("bomb.pt: ") and "would unpack to 67,108,8" in message
    # The default (max_check_unpacked: max_check_bytes, 512 MiB; the ingest's own floor is 1 GiB): a
    # member recorded as 600 MB is refused before anything is unpacked.
    data = bytearray(_bomb_pt(1 << 20))
    central = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)  # the second member's central record
    data[central + 24:central + 28] = struct.pack("<I", 600_000_000)  # its uncompressed size, as recorded
    message = _error(_post(client, content=bytes(data), filename="bomb.pt"), 422, "invalid_model")
    assert message.startswith("bomb.pt: ") and "would unpack to 600,000," in message and "zip bomb" in message
    assert "536,870,912" in message


def test_onnx_external_data_is_refused(client):
    """An upload is one file: an initializer kept in external data (here pointing at the upload
    itself, which the service names upload.onnx: read once per such tensor) is a 422 saying so."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(2).normal(size=(4, 1, 3, 3)).astype(np.float32), "w")
    ext = TensorProto(name="e", data_type=TensorProto.UINT8, dims=[1000], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "upload.onnx"), ("offset", "0"), ("length", "1000")):
        ext.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w, ext])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    message = _error(_post(client, content=model.SerializeToString(), filename="ext.onnx"), 422, "invalid_model")
    assert message.startswith("ext.onnx: ") and "external data" in message


def test_caps_on_layers_and_filters(small):
    """max_check_layers and max_check_filters, counted from the shapes before anything is computed."""
    rng = np.random.default_rng(3)
    layers = {f"conv{i}": rng.normal(size=(2, 2, 3, 3)).astype(np.float32) for i in range(4)}
    message = _error(_post(small, content=_npz(**layers), filename="deep.npz"), 422, "invalid_model")
    assert message.startswith("deep.npz: ") and "4 layers of 3x3 filters" in message and "3 a check" in message
    wide = _npz(conv=rng.normal(size=(40, 30, 3, 3)).astype(np.float32))
    message = _error(_post(small, content=wide, filename="wide.npz"), 422, "invalid_model")
    assert message.startswith("wide.npz: ") and "1,200 3x3 filters" in message and "1,000" in message
    # max_check_work: 300 channels of 1 x 3 x 3 are 300^2 x (9 + 256) = 2.4e7 multiply-adds of orthogonality
    many_channels = _npz(conv=rng.normal(size=(300, 1, 3, 3)).astype(np.float32))
    message = _error(_post(small, content=many_channels, filename="channels.npz"), 422, "invalid_model")
    assert message.startswith("channels.npz: ") and "2.4e+07 multiply-adds, more than the 1e+07" in message


def test_one_address_holds_at_most_max_checks_per_client():
    """Two slow uploads from one address cannot hold both slots (the hostile re-check): the
    second from it is a 429 naming max_checks_per_client; another address still gets one."""
    from cnnfilterdb.service.routers.check import CheckSlots

    slots = CheckSlots(2, 1)
    assert slots.take("10.0.0.1") is None
    assert "max_checks_per_client" in slots.take("10.0.0.1")
    assert slots.take("10.0.0.2") is None
    assert "max_checks" in slots.take("10.0.0.3")
    slots.give_back("10.0.0.1")
    assert slots.take("10.0.0.3") is None


def test_uploads_of_a_killed_process_are_removed_at_start(v1_store, tmp_path):
    """A service process killed mid-check cannot remove its upload: the next one does, and leaves
    those of running processes (another worker's) alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"cnnfilterdb-check-{dead.pid}-abc"
    alive = tmp_path / f"cnnfilterdb-check-{os.getpid()}-def"
    for d in (stale, alive):
        d.mkdir()
        (d / "upload.onnx").write_bytes(b"x")
    create_app(Settings(db=v1_store, check_tmp_dir=tmp_path))
    assert not stale.exists() and (alive / "upload.onnx").exists()


def test_over_the_cap(small):
    # Declared over the cap: refused before it is read.
    r = small.post("/v1/check", files={"file": ("big.onnx", ONNX.read_bytes())})
    assert "200000 bytes" in _error(r, 413, "request_too_large")

    # Sent without a length (chunked), refused as it crosses the cap.
    def chunks():
        boundary = b"b0undary"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.onnx"\r\n\r\n'
        for _ in range(100):
            yield bytes(10_000)
        yield b"\r\n--" + boundary + b"--\r\n"

    r = small.post("/v1/check", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    _error(r, 413, "request_too_large")


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> tuple[bytes, dict]:
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_truncated_multipart(client):
    body, headers = _multipart([("k", None, b"3"), ("file", "cls.onnx", ONNX.read_bytes())])
    for cut in (body[:len(body) // 2], body[:-len(b"--XyZ--\r\n")], body[:-5]):
        message = _error(client.post("/v1/check", content=cut, headers=headers), 400, "invalid_upload")
        assert "truncated" in message or "malformed" in message


def test_malformed_requests(client):
    onnx = ONNX.read_bytes()
    # No file part; two files; a field that is a file; a field given twice; unknown fields.
    body, headers = _multipart([("k", None, b"3")])
    assert "file is required" in _error(client.post("/v1/check", content=body, headers=headers), 422)
    r = client.post("/v1/check", files=[("file", ("a.onnx", onnx)), ("file", ("b.onnx", onnx))])
    assert "two files" in _error(r, 400)
    body, headers = _multipart([("file", "a.onnx", onnx), ("task", "t.txt", b"x")])
    assert "is a file" in _error(client.post("/v1/check", content=body, headers=headers), 400)
    body, headers = _multipart([("k", None, b"3"), ("k", None, b"4"), ("file", "a.onnx", onnx)])
    assert "more than once" in _error(client.post("/v1/check", content=body, headers=headers), 400)
    message = _error(_post(client, ONNX, kk=3), 400, "invalid_request")
    assert "unknown form field 'kk'" in message and "did you mean 'k'" in message
    assert "this endpoint takes none" in _error(client.post("/v1/check?k=3", files={"file": ("a.onnx", onnx)}), 400)
    # Not multipart; multipart without a boundary; a part without a name; not UTF-8.
    _error(client.post("/v1/check", json={"k": 3}), 415)
    _error(client.post("/v1/check", content=b"x", headers={"Content-Type": "multipart/form-data"}), 400)
    body = b'--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--\r\n'
    _error(client.post("/v1/check", content=body, headers=headers), 400, "invalid_upload")
    body, headers = _multipart([("task", None, b"\xff\xfe"), ("file", "a.onnx", onnx)])
    assert "UTF-8" in _error(client.post("/v1/check", content=body, headers=headers), 400)


@pytest.mark.parametrize("fields, status, words", [
    ({"where": "{"}, 400, "where is not JSON"),
    ({"where": '{"tsk": "x"}'}, 400, "did you mean 'task'"),
    ({"where": '{"task": "no such task"}'}, 404, None),
    ({"k": 0}, 422, "k must be an integer from 1"),
    ({"k": "٣"}, 422, "k must be an integer"),
    ({"k": "3.5"}, 422, "k must be an integer"),
    ({"sparsity_gt": "nan"}, 422, "sparsity_gt must be a finite number"),
    ({"entropy_norm_lt": "1e999"}, 422, "entropy_norm_lt must be a finite number"),
    ({"as_of": 99}, 404, "no store version 99"),
    ({"as_of": "null"}, 200, None),
    ({"name": "x" * 201}, 422, "name"),
    ({"format": "jsn"}, 400, "did you mean 'json'"),
])
def test_bad_values(client, fields, status, words):
    r = _post(client, ONNX, **fields)
    if status == 200:
        assert r.status_code == 200, r.text
        return
    message = _error(r, status)
    assert words is None or words in message, message


@pytest.mark.parametrize("name", ["k", "as_of", "sparsity_gt", "entropy_norm_lt", "entropy_norm_gt", "name", "where"])
def test_a_number_of_5000_digits_is_a_4xx(client, name):
    """Python reads no int of more than 4,300 digits (ValueError): each field's value is worded
    as any other wrong value, never a 500."""
    huge = "9" * 5000
    text = '{"model_id": ' + huge + "}" if name == "where" else huge
    message = _error(_post(client, content=b"x", filename="a.onnx", **{name: text}), 400 if name == "where" else 422)
    assert message.startswith(name), message
    assert len(message) < 400  # the value quoted, cut


# ---- a browser's request from another site: refused ------------------------------------------------
@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Origin": "http://testserver:8080"}, {"Origin": "http://testserver.evil.example"},
                                     {"Origin": "http://testserver:x"}, {"Sec-Fetch-Site": "cross-site"},
                                     {"Origin": "http://testserver", "Sec-Fetch-Site": "cross-site"}])
def test_cross_origin_uploads_are_refused(client, headers):
    r = client.post("/v1/check", files={"file": ("a.onnx", b"x")}, headers=headers)
    message = _error(r, 403, "cross_origin")
    assert "another" in message and ("curl" in message and "Client" in message)


@pytest.mark.parametrize("headers", [{}, {"Origin": "http://testserver"}, {"Origin": "https://testserver"},
                                     {"Origin": "http://TestServer:80"},
                                     {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
                                     {"Sec-Fetch-Site": "none"}])
def test_same_origin_and_no_origin_uploads_are_taken(client, headers):
    # Past the origin check: the file is read (and is no model).
    r = client.post("/v1/check", files={"file": ("a.onnx", b"x")}, headers=headers)
    assert "not a model" in _error(r, 422, "invalid_model")


def test_every_message_is_cut(client, monkeypatch):
    """A client's names and values are quoted cut, and no message is longer than MESSAGE_CHARS
    (with its length said), whatever its source (here an ingest error naming a long file)."""
    from cnnfilterdb.ingest.errors import IngestError
    from cnnfilterdb.limits import MESSAGE_CHARS

    long = "n" * 5000
    cut = MESSAGE_CHARS + len("... (99,999 characters)")
    name = long[:3000]  # a part's headers are at most 4 kB (python_multipart: a 400 beyond)
    messages = [_error(_post(client, content=b"x", filename=name + ".onnx"), 422),
                _error(_post(client, content=b"x", filename="a.onnx", **{name: "1"}), 400),
                _error(_post(client, content=b"x", filename="a.onnx", where=json.dumps({long: 1})), 400),
                _error(client.post("/v1/check", files={"file": ("a.onnx", b"x")}, headers={"Origin": long}), 403),
                _error(client.post("/v1/check", content=b"x", headers={"Content-Type": long}), 415)]
    assert all(len(m) < 500 for m in messages), [len(m) for m in messages]

    def fails(*_, **__):
        raise IngestError("upload.onnx: " + long)

    monkeypatch.setattr("cnnfilterdb.ingest.model_files.read_checked", fails)
    message = _error(_post(client, content=b"x", filename="a.onnx"), 422, "invalid_model")
    assert len(message) <= cut and message.endswith("characters)") and "5,0" in message


# ---- the bounds on a real server --------------------------------------------------------------------
def _head(port: int, length: int, boundary: str = "XyZ") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
              f"Content-Length: {length}\r\n\r\n".encode())
    return s


def _response(s: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    while len(rest) < int(headers.get("content-length", 0)):
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def test_one_check_at_a_time_then_429_and_a_slow_upload_408(live):
    url, port = live
    body, _ = _multipart([("file", "cls.onnx", ONNX.read_bytes())])
    slow = _head(port, len(body))
    try:
        slow.sendall(body[:1000])  # the upload has started: it holds the one slot
        time.sleep(0.3)
        import httpx

        t0 = time.monotonic()
        r = httpx.post(url + "/v1/check", files={"file": ("cls.onnx", ONNX.read_bytes())}, timeout=10)
        assert time.monotonic() - t0 < 1.5  # at once, not after the slow one
        assert r.status_code == 429 and r.headers["Retry-After"] == "1", r.text
        assert r.json()["error"]["code"] == "check_busy"
        # The slow upload does not arrive within check_upload_timeout_s: a 408, its slot freed.
        status, _, answer = _response(slow)
        assert status == 408 and json.loads(answer)["error"]["code"] == "request_timeout"
        assert time.monotonic() - t0 < 4
    finally:
        slow.close()
    r = httpx.post(url + "/v1/check", files={"file": ("cls.onnx", ONNX.read_bytes())}, timeout=30)
    assert r.status_code == 200, r.text


def test_small_and_chunked_uploads_have_the_check_bounds_behind_the_connection_guard(guarded):
    """`serve`'s connection guard reads a small (<= max_body_bytes) or chunked body before the
    route runs, within body_timeout_s (30 s); not POST /v1/check's: its slot is taken before its
    upload is read (a 429 at once for the next, however small its body), and its own timeout
    applies (a 408 after check_upload_timeout_s, 1.5 s, not 30)."""
    import httpx

    url, port = guarded
    body, _ = _multipart([("file", "cls.onnx", ONNX.read_bytes())])
    assert len(body) < 1_000_000  # a body the guard would read first
    holder = _head(port, len(body))
    try:
        t0 = time.monotonic()
        holder.sendall(body[:20_000])  # fast enough for the minimum rate for 20 s: the timeout comes first
        time.sleep(0.2)
        s = _head(port, len(body))
        s.sendall(body[:100])  # incomplete: a 429 all the same, its body never read
        status, headers, answer = _response(s)
        s.close()
        assert status == 429 and json.loads(answer)["error"]["code"] == "check_busy" and headers["retry-after"]
        status, _, answer = _response(holder)
        elapsed = time.monotonic() - t0
        error = json.loads(answer)["error"]
        assert status == 408 and error["message"] == "the request body did not arrive within 1.5 s", error
        assert 1.2 < elapsed < 5, elapsed
    finally:
        holder.close()
    # Chunked: the same.
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        t0 = time.monotonic()
        s.sendall(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 20_000 + body[:20_000] + b"\r\n")
        status, _, answer = _response(s)
        assert status == 408 and "within 1.5 s" in json.loads(answer)["error"]["message"]
        assert time.monotonic() - t0 < 5
    finally:
        s.close()
    r = httpx.post(url + "/v1/check", files={"file": ("cls.onnx", ONNX.read_bytes())}, timeout=30)
    assert r.status_code == 200, r.text


def test_an_upload_under_the_minimum_rate_is_a_408(guarded):
    """Two uploads trickling a byte now and then cannot hold the check slots for
    check_upload_timeout_s: past check_upload_grace_s, an average under
    check_min_upload_bytes_per_s since the start is a 408 that says the rate; the slot and the
    temporary file are freed."""
    import httpx

    url, port = guarded
    body, _ = _multipart([("file", "cls.onnx", ONNX.read_bytes())])
    s = _head(port, len(body))
    try:
        t0 = time.monotonic()
        s.sendall(body[:200])
        for i in range(3):
            time.sleep(0.05)
            s.sendall(body[200 + i:201 + i])
        status, _, answer = _response(s)
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    message = json.loads(answer)["error"]["message"]
    assert status == 408 and "bytes/s on average" in message, message
    assert "check_min_upload_bytes_per_s of 1,000 bytes/s" in message and "slot" in message
    assert elapsed < 1.2, elapsed  # at the grace period's end, not the timeout (1.5 s)
    r = httpx.post(url + "/v1/check", files={"file": ("cls.onnx", ONNX.read_bytes())}, timeout=30)
    assert r.status_code == 200, r.text  # the slot is free; the fixture: no file left


def test_a_truncated_upload_leaves_nothing(live):
    import httpx

    url, port = live
    body, _ = _multipart([("file", "cls.onnx", ONNX.read_bytes())])
    # The client stops sending before Content-Length bytes have come, and says so (a half-close):
    # the server takes it as the client gone (uvicorn closes the connection on its end of input),
    # so the 400 (invalid_upload) has no one to go to; nothing is left behind.
    s = _head(port, len(body) + 10_000)
    s.sendall(body)
    s.shutdown(socket.SHUT_WR)
    try:
        answer = s.recv(65536)
    finally:
        s.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer
    # A Content-Length larger than what arrives, the connection kept open: a 408 once
    # check_upload_timeout_s has passed.
    s = _head(port, len(body) + 10_000)
    s.sendall(body)
    try:
        status, _, answer = _response(s)
    finally:
        s.close()
    assert status == 408 and json.loads(answer)["error"]["code"] == "request_timeout"
    # Closed mid-file, abruptly.
    s = _head(port, len(body))
    s.sendall(body[:len(body) // 2])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    # The slot is free again (the fixture checks the temporary directory and the store).
    deadline = time.monotonic() + 5
    while True:
        r = httpx.post(url + "/v1/check", files={"file": ("cls.onnx", ONNX.read_bytes())}, timeout=30)
        if r.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text


def test_the_temporary_directory_is_outside_the_store(v1_store):
    with pytest.raises(ValueError, match="inside the store"):
        create_app(Settings(db=v1_store, check_tmp_dir=v1_store / "tmp"))


def test_openapi_shows_the_upload(client):
    op = client.get("/openapi.json").json()["paths"]["/v1/check"]["post"]
    schema = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"] and schema["properties"]["file"]["format"] == "binary"
    assert set(schema["properties"]) == {"file", "as_of", "where", "k", "sparsity_gt", "entropy_norm_lt",
                                         "entropy_norm_gt", "name", "task", "visual_category", "training_dataset",
                                         "format"}
    assert {"200", "400", "408", "413", "415", "422", "429"} <= set(op["responses"])
    assert {"403"} <= set(op["responses"])
    limits = client.get("/v1/stats").json()["limits"]
    assert limits["max_checks"] == 2 and limits["max_check_bytes"] == 512 << 20
    assert limits["check_upload_timeout_s"] == 120
    assert limits["max_check_unpacked"] == 512 << 20  # follows max_check_bytes when not given
    assert limits["max_check_layers"] == 5000 and limits["max_check_filters"] == 20_000_000
    assert limits["check_min_upload_bytes_per_s"] == 65536 and limits["check_upload_grace_s"] == 10
    assert Settings(db="x", max_check_bytes="1MiB").max_check_unpacked == 1 << 20
    assert Settings(db="x", max_check_unpacked=5).max_check_unpacked == 5


def test_no_upload_left_behind_by_a_failing_check(client, tmp_root, monkeypatch):
    """An error inside the check itself (here an empty population) also removes the upload."""
    r = _post(client, ONNX, where='{"model_id": {"min": 100000}}')
    assert r.status_code in (400, 404, 422), r.text
    assert os.listdir(tmp_root) == []


def test_form_fields_capped(small):
    body, headers = _multipart([("task", None, b"x" * 1_100_000), ("file", "a.onnx", b"x")])
    from fastapi.testclient import TestClient

    big = TestClient(create_app(Settings(db=small.app.state.settings.db,
                                         check_tmp_dir=small.app.state.settings.check_tmp_dir)),
                     raise_server_exceptions=False)
    assert "max_body_bytes" in _error(big.post("/v1/check", content=body, headers=headers), 413, "request_too_large")


def test_a_429_reaches_a_client_sending_a_large_file(live, tmp_path):
    """The service drops the rest of a refused upload rather than resetting the connection: the
    client sending a file of megabytes reads the 429 (Client.check retries it)."""
    import httpx

    url, port = live
    big = ONNX.read_bytes() * 40  # 23 MB
    holder = _head(port, 100_000)
    try:
        holder.sendall(b"--XyZ\r\n")
        time.sleep(0.3)
        r = httpx.post(url + "/v1/check", files={"file": ("big.onnx", big)}, timeout=30)
        assert r.status_code == 429, r.text
        path = tmp_path / "big.onnx"
        path.write_bytes(big)
        with cnnfilterdb.Client(url, retries=0) as c, pytest.raises(cnnfilterdb.client.ServiceBusy):
            c.check(path)
    finally:
        holder.close()
