"""Model files into the store: the real models of tests/data/models reproduce their README's facts,
and models built here cover branching graphs, quantized and grouped convolutions, external data,
safetensors and npz; bad files leave the store unchanged."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnnfilterdb.ingest import ingest_paths
from cnnfilterdb.ingest.progress import Progress

from . import reference
from .helpers import REPO, cli_main, open_catalog, store_snapshot

# Real pretrained models copied unchanged from PyPI packages, with their licences (README.md there).
MODELS = REPO / "tests" / "data" / "models"

# The facts of tests/data/models/README.md: 3x3 layers, 3x3 filters, conv levels.
FACTS = {
    "pnet.pt": (3, 702, 5), "rnet.pt": (2, 1428, 3), "onet.pt": (3, 6240, 4),
    "ch_PP-OCRv4_det_infer.onnx": (12, 11904, 53), "ch_PP-OCRv4_rec_infer.onnx": (7, 480, 38),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (4, 88, 53),
}


def _con(db: Path):
    return open_catalog(db)


def _ingest(paths, db, **kw):
    """An ingest of model files whose task, visual category and training dataset the test does
    not care about (test_a_model_file_needs_its_metadata checks they are required)."""
    return ingest_paths([Path(p) for p in paths], db, Progress(enabled=False), **{"allow_missing": True, **kw})


def _layer_filters(con, layer_id) -> np.ndarray:
    return np.array([np.asarray(w, dtype=np.float32) for (w,) in
                     con.execute("SELECT w FROM filters WHERE layer_id = ? ORDER BY filter_id", [layer_id]).fetchall()])


def _ingested_layers(src: Path, db: Path) -> list[np.ndarray]:
    """Ingest one model file into a new store; each layer's filters (n, 9), in filter order."""
    _ingest([src], db)
    with _con(db) as con:
        ids = [r[0] for r in con.execute("SELECT layer_id FROM layers ORDER BY filter_id_first").fetchall()]
        return [_layer_filters(con, i) for i in ids]


@pytest.fixture(scope="module")
def torch(need):
    """PyTorch, for the tests that read or write .pt files (the optional extra cnnfilterdb[torch];
    .ci/run installs it): skipped without it, saying how to install the CPU build (tests/conftest.py)."""
    return need("torch")


@pytest.fixture(scope="module")
def real_models_store(tmp_path_factory, torch):
    db = tmp_path_factory.mktemp("real_models") / "db"
    result = _ingest([MODELS], db, meta={"task": "Detection"})
    assert result["ignored"] == [str(MODELS / f) for f in ("LICENSE-facenet-pytorch", "LICENSE-rapidocr", "README.md")]
    return db


@pytest.mark.parametrize("file", sorted(FACTS))
def test_real_models_reproduce_their_facts(real_models_store, file, torch):
    n_layers, n_filters, levels = FACTS[file]
    with _con(real_models_store) as con:
        model_id, stored_layers, stored_filters, depth, sha = con.execute(
            "SELECT model_id, n_layers, n_filters, depth, sha256 FROM models WHERE source = ?",
            [str((MODELS / file).resolve())]).fetchone()
        assert (stored_layers, stored_filters, depth) == (n_layers, n_filters, levels)
        assert con.execute("SELECT count(*), sum(n_filters) FROM layers WHERE model_id = ?", [model_id]).fetchone() == (n_layers, n_filters)
        layers = con.execute("SELECT layer_id, conv_depth, conv_depth_norm, out_channels, in_channels, groups "
                             "FROM layers WHERE model_id = ? ORDER BY filter_id_first", [model_id]).fetchall()
        got = {lid: _layer_filters(con, lid) for lid, *_ in layers}
    import hashlib

    assert sha == hashlib.sha256((MODELS / file).read_bytes()).hexdigest()
    # The stored filters equal the weights read with the formats' own libraries, bit for bit.
    if file.endswith(".onnx"):
        weights = _onnx_3x3_weights(MODELS / file)
    else:
        sd = torch.load(MODELS / file, weights_only=True)
        weights = [v.numpy() for v in sd.values() if v.ndim == 4 and tuple(v.shape[2:]) == (3, 3)]
    assert len(weights) == len(layers)
    for w, (lid, depth_, norm, out_c, in_c, groups) in zip(weights, layers):
        assert got[lid].view(np.uint32).tobytes() == np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).tobytes()
        assert out_c == w.shape[0] and in_c == w.shape[1] * groups
        assert norm == pytest.approx(depth_ / (levels - 1))
    if file == "ch_PP-OCRv4_det_infer.onnx":
        first3 = [(tuple(w.shape), d) for w, (_, d, *_) in zip(weights[:3], layers[:3])]
        assert first3 == [((16, 3, 3, 3), 0), ((16, 1, 3, 3), 1), ((32, 1, 3, 3), 3)]


def _onnx_3x3_weights(path: Path) -> list[np.ndarray]:
    m = onnx.load(str(path))
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"}
    consts.update({t.name: numpy_helper.to_array(t) for t in m.graph.initializer})
    return [consts[n.input[1]] for n in m.graph.node
            if n.op_type == "Conv" and consts[n.input[1]].ndim == 4 and consts[n.input[1]].shape[2:] == (3, 3)]


def test_real_models_metadata_and_quality(real_models_store):
    with _con(real_models_store) as con:
        row = con.execute("SELECT producer, op_set, kernel_counts, op_counts, total_filters, filter_share_3x3, task "
                          "FROM models WHERE model = 'ch_ppocr_mobile_v2.0_cls_infer'").fetchone()
        producer, op_set, kernels, ops, total, share, task = row
        assert producer == "PaddlePaddle" and op_set == 11 and task == "Detection"
        assert kernels["(3, 3) filters"] == 88 and ops["Conv"] == 53
        assert total == sum(v for k, v in kernels.items() if k != "(1, 1) filters") and share == 88 / total
        q = con.execute("SELECT layer_id, sparsity, variance_entropy, variance_entropy_clean, orthogonality, "
                        "out_channels, in_channels, groups FROM layers").fetchall()
        for lid, sparsity, h, _h_clean, ortho, out_c, _in_c, _groups in q:
            W = _layer_filters(con, lid)
            want = reference.layer_quality(W)
            assert abs(sparsity - want["sparsity"]) <= 1e-12
            assert (h is None and want["variance_entropy"] is None) or abs(h - want["variance_entropy"]) <= 1e-9
            V = W.reshape(out_c, -1).astype(np.float64)
            U = V / np.linalg.norm(V, axis=1, keepdims=True)
            cos = np.abs(U @ U.T)[np.triu_indices(out_c, 1)]
            assert ortho == pytest.approx(1 - cos.mean(), abs=1e-9)


# ---- models built here -------------------------------------------------------------------------
def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _save(model, path: Path, **kw) -> Path:
    onnx.save_model(model, str(path), **kw)
    return path


def branching_model(rng) -> tuple[onnx.ModelProto, dict]:
    """x -> A(3x3) -> Relu -> {B(3x3), C(1x1)} -> Add -> D(3x3); and x -> E(3x3) in parallel with A.
    Graph depths by hand: A 1, E 1, Relu 2, B 3, C 3, Add 4, D 5 -> levels {1, 3, 5}."""
    W = {"wA": rng.normal(size=(4, 3, 3, 3)), "wE": rng.normal(size=(2, 3, 3, 3)), "wB": rng.normal(size=(4, 4, 3, 3)),
         "wC": rng.normal(size=(4, 4, 1, 1)), "wD": rng.normal(size=(5, 4, 3, 3))}
    W = {k: v.astype(np.float32) for k, v in W.items()}
    nodes = [
        helper.make_node("Conv", ["x", "wA"], ["a"], name="A", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wE"], ["e"], name="E", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wB"], ["b"], name="B", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["r", "wC"], ["c"], name="C"),
        helper.make_node("Add", ["b", "c"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "wD"], ["y"], name="D", pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(nodes, "branching", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
                          [_init(k, v) for k, v in W.items()])
    return helper.make_model(g, producer_name="tests", producer_version="1.0",
                             opset_imports=[helper.make_opsetid("", 13)]), W


def test_branching_graph_levels_by_hand(tmp_path):
    model, W = branching_model(np.random.default_rng(1))
    src = _save(model, tmp_path / "branching.onnx")
    db = tmp_path / "db"
    _ingest([src], db, meta={"task": "Classification", "name": "Branchy"})
    with _con(db) as con:
        rows = con.execute("SELECT layer_id, conv_depth, conv_depth_norm, n_filters FROM layers ORDER BY filter_id_first").fetchall()
        depth, producer, op_set, name = con.execute("SELECT depth, producer, op_set, name FROM models").fetchone()
        got = [_layer_filters(con, r[0]) for r in rows]
    # 3x3 layers in graph order: A, E, B, D (C is 1x1) at levels 0, 0, 1, 2 of 3.
    assert [(r[1], r[2], r[3]) for r in rows] == [(0, 0.0, 12), (0, 0.0, 6), (1, 0.5, 16), (2, 1.0, 20)]
    assert (depth, producer, op_set, name) == (3, "tests 1.0", 13, "Branchy")
    for w, key in zip(got, ["wA", "wE", "wB", "wD"]):
        assert np.array_equal(w, W[key].reshape(-1, 9))


def test_constants_through_identity_cast_dequantize(tmp_path):
    rng = np.random.default_rng(2)
    w16 = rng.normal(size=(3, 2, 3, 3)).astype(np.float16)
    q = rng.integers(-100, 100, size=(4, 2, 3, 3)).astype(np.int8)
    scale, zp = np.array([0.01, 0.02, 0.03, 0.04], np.float32), np.array([1, -2, 0, 3], np.int8)
    nodes = [
        helper.make_node("Constant", [], ["c16"], value=numpy_helper.from_array(w16)),
        helper.make_node("Cast", ["c16"], ["c32"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["c32"], ["w1"]),
        helper.make_node("Conv", ["x", "w1"], ["y1"], name="cast", pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["q"], value=numpy_helper.from_array(q)),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w2"], axis=0),
        helper.make_node("Conv", ["y1", "w2"], ["y"], name="dq", pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(nodes, "consts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [_init("s", scale), _init("z", zp)])
    src = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "consts.onnx")
    a, b = _ingested_layers(src, tmp_path / "db")
    assert np.array_equal(a, w16.astype(np.float32).reshape(-1, 9))
    want = ((q.astype(np.float64) - zp[:, None, None, None]) * scale[:, None, None, None]).astype(np.float32)
    assert np.array_equal(b, want.reshape(-1, 9))


def test_quantized_conv_integer_and_qlinearconv(tmp_path):
    rng = np.random.default_rng(3)
    w_int = rng.integers(0, 255, size=(4, 3, 3, 3)).astype(np.uint8)
    w_zp = np.array(128, np.uint8)
    w_q = rng.integers(-127, 127, size=(6, 3, 3, 3)).astype(np.int8)
    w_scale = np.linspace(0.01, 0.06, 6).astype(np.float32)
    w_qzp = np.zeros(6, np.int8)
    nodes = [
        helper.make_node("ConvInteger", ["xq", "wi", "xz", "wz"], ["yi"], name="convint", pads=[1, 1, 1, 1]),
        helper.make_node("QLinearConv", ["xq2", "xs", "xz2", "wq", "ws", "wqz", "ys", "yz"], ["yq"], name="qlinear",
                         pads=[1, 1, 1, 1]),
    ]
    inits = [_init("wi", w_int), _init("wz", w_zp), _init("xz", np.array(0, np.uint8)), _init("wq", w_q),
             _init("ws", w_scale), _init("wqz", w_qzp), _init("xs", np.array(0.1, np.float32)),
             _init("xz2", np.array(0, np.int8)), _init("ys", np.array(0.2, np.float32)), _init("yz", np.array(0, np.int8))]
    g = helper.make_graph(nodes, "quant", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 3, 5, 5]),
                                           helper.make_tensor_value_info("xq2", TensorProto.INT8, [1, 3, 5, 5])],
                          [helper.make_tensor_value_info("yi", TensorProto.INT32, None),
                           helper.make_tensor_value_info("yq", TensorProto.INT8, None)], inits)
    src = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "quant.onnx")
    a, b = _ingested_layers(src, tmp_path / "db")
    assert np.array_equal(a, (w_int.astype(np.float32) - 128).reshape(-1, 9))
    want = (w_q.astype(np.float64) * w_scale[:, None, None, None]).astype(np.float32)
    assert np.array_equal(b, want.reshape(-1, 9))


def test_external_data_and_grouped_conv(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.normal(size=(8, 2, 3, 3)).astype(np.float32)  # 8 outputs, 8 inputs in 4 groups of 2
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="grouped", group=4, pads=[1, 1, 1, 1])],
                          "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_init("w", w)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    folder = tmp_path / "ext"
    folder.mkdir()
    src = _save(model, folder / "grouped.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                location="grouped.weights", size_threshold=0)
    assert (folder / "grouped.weights").stat().st_size == w.nbytes
    db = tmp_path / "db"
    _ingest([src], db)
    with _con(db) as con:
        lid, n, in_c, out_c, groups = con.execute("SELECT layer_id, n_filters, in_channels, out_channels, groups FROM layers").fetchone()
        got = _layer_filters(con, lid)
    assert (n, in_c, out_c, groups) == (16, 8, 8, 4)
    assert np.array_equal(got, w.reshape(-1, 9))
    # The external file missing: a clear error.
    (folder / "grouped.weights").unlink()
    code_db = tmp_path / "db2"
    assert cli_main(["ingest", "--allow-missing", str(src), "--db", str(code_db)]) == 1


def test_safetensors_and_npz(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(5)
    ws = {"features.0.weight": rng.normal(size=(6, 3, 3, 3)).astype(np.float32),
          "features.0.bias": rng.normal(size=6).astype(np.float32),
          "features.2.weight": rng.normal(size=(8, 6, 1, 1)).astype(np.float32),
          "features.4.weight": rng.normal(size=(4, 8, 3, 3)).astype(np.float32)}
    save_file(ws, str(tmp_path / "net.safetensors"))
    np.savez(tmp_path / "net.npz", **ws)
    db = tmp_path / "db"
    result = _ingest([tmp_path / "net.safetensors", tmp_path / "net.npz"], db,
                     skip_bad=False)
    assert [f["kind"] for f in result["files"]] == ["safetensors", "npz"]
    with _con(db) as con:
        rows = con.execute("SELECT m.model, l.layer_id, l.conv_depth, l.conv_depth_norm FROM layers l JOIN models m USING (model_id) "
                           "ORDER BY l.filter_id_first").fetchall()
        got = {(m, d): _layer_filters(con, lid) for m, lid, d, _ in rows}
        assert [(d, nrm) for _, _, d, nrm in rows] == [(0, 0.0), (2, 1.0)] * 2  # three 4-D weights: levels 0, 1, 2
    names = sorted({r[0] for r in rows})
    assert names[0] == "net" and names[1].startswith("net-")  # the second file named apart
    for name in names:
        assert np.array_equal(got[(name, 0)], ws["features.0.weight"].reshape(-1, 9))
        assert np.array_equal(got[(name, 2)], ws["features.4.weight"].reshape(-1, 9))


def test_flags_manifest_and_reingest_noop(tmp_path):
    rng = np.random.default_rng(6)
    for k in range(3):
        np.savez(tmp_path / f"m{k}.npz", conv=rng.normal(size=(4, 2, 3, 3)).astype(np.float32))
    manifest = tmp_path / "zoo.csv"
    manifest.write_text("path,model,task,visual_category,training_dataset,name\n"
                        "m0.npz,zoo-a,Semantic Segmentation,medical,LIDC,UNet\n"
                        "m1.npz,zoo-b,Classification,natural,ImageNet1k,ResNet\n")
    db = tmp_path / "db"
    assert cli_main(["ingest", "--manifest", str(manifest), "--db", str(db)]) == 0
    assert cli_main(["ingest", str(tmp_path / "m2.npz"), "--db", str(db), "--task", "GAN", "--model", "zoo-c",
                     "--visual-category", "faces", "--allow-missing"]) == 0
    with _con(db) as con:
        rows = con.execute("SELECT model, task, task_raw, visual_category, training_dataset, name FROM models ORDER BY model").fetchall()
    assert rows == [("zoo-a", "Segmentation", "Semantic Segmentation", "medical", "LIDC", "UNet"),
                    ("zoo-b", "Classification", "Classification", "natural", "ImageNet1k", "ResNet"),
                    ("zoo-c", "GAN", "GAN", "faces", None, None)]
    before = store_snapshot(db)
    result = _ingest([tmp_path], db)  # every file again, by folder: same sha256, nothing to do
    assert result["models_added"] == 0 and {f["status"] for f in result["files"]} == {"already in the store"}
    assert store_snapshot(db) == before


def test_basis_and_histograms_are_refreshed(tmp_path, sample_v01, torch):
    """After a model ingest, the global basis and the per-layer histograms cover the new filters."""
    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    assert cli_main(["ingest", "--allow-missing", str(MODELS / "rnet.pt"), "--db", str(db)]) == 0
    from cnnfilterdb.analysis import Analysis

    with _con(db) as con:
        n, version = con.execute("SELECT n_filters, version FROM basis").fetchone()
        assert (n, version) == (30_000 + 1428, 2)
        fast = Analysis(con, db).divergence("model")
        slow = Analysis(con, db, use_stored=False).divergence("model")
        X = np.array([np.asarray(w, np.float32) for (w,) in con.execute("SELECT w FROM filters ORDER BY filter_id").fetchall()])
    assert fast["method"] == "layer_histograms" and fast["matrix"] == slow["matrix"]
    want = reference.basis(X)
    assert fast["range"] == pytest.approx(list(want["range"]), rel=1e-9)


# ---- bad input ---------------------------------------------------------------------------------------
class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/cnnfilterdb-pwned",))


def _bad_files(tmp: Path, torch) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(7)
    out = {}
    p = tmp / "notes.onnx"
    p.write_text("this is not a model\n")
    out["not a model"] = (p, "not a readable ONNX model")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="pointwise")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [_init("w", rng.normal(size=(4, 3, 1, 1)).astype(np.float32))])
    out["no 3x3"] = (_save(helper.make_model(g), tmp / "pointwise.onnx"), "no 3x3 convolution")
    good, _ = branching_model(rng)
    full = _save(good, tmp / "full.onnx").read_bytes()
    p = tmp / "truncated.onnx"
    p.write_bytes(full[: len(full) // 2])
    out["truncated onnx"] = (p, "not a readable ONNX model")
    p = tmp / "truncated.pt"
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3)}, p)
    p.write_bytes(p.read_bytes()[:300])
    out["truncated torch"] = (p, "cannot be loaded")
    p = tmp / "nan.npz"
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w[1, 2, 0, 0] = np.nan
    np.savez(p, conv=w)
    out["nan"] = (p, "NaN or Inf")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="dynamic")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
                           helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    out["weight is a graph input"] = (_save(helper.make_model(g), tmp / "dynamic.onnx"), "graph input 'w'")
    p = tmp / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"conv.weight": Evil()}, f)
    out["code-running pickle"] = (p, "weights_only=True")
    return out


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, torch):
    return _bad_files(tmp_path_factory.mktemp("bad"), torch)


@pytest.mark.parametrize("case", ["not a model", "no 3x3", "truncated onnx", "truncated torch", "nan",
                                  "weight is a graph input", "code-running pickle"])
def test_bad_model_files(case, bad_files, tmp_path, sample_v01, capsys):
    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    before = store_snapshot(db)
    path, words = bad_files[case]
    capsys.readouterr()
    code = cli_main(["ingest", "--allow-missing", str(path), "--db", str(db)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert str(path) in err and words in err, err
    assert store_snapshot(db) == before
    assert not Path("/tmp/cnnfilterdb-pwned").exists()


def test_skip_bad_ingests_the_good_and_lists_the_bad(bad_files, tmp_path, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    for path, _ in bad_files.values():
        shutil.copy(path, batch / path.name)
    shutil.copy(MODELS / "pnet.pt", batch / "pnet.pt")
    shutil.copy(MODELS / "ch_ppocr_mobile_v2.0_cls_infer.onnx", batch / "cls.onnx")
    (batch / "README.txt").write_text("a zoo of models\n")
    db = tmp_path / "db"
    assert cli_main(["ingest", "--allow-missing", str(batch), "--db", str(db), "--skip-bad"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models_added"] == 2 and out["filters_added"] == 702 + 88
    skipped = {Path(s["path"]).name: s["reason"] for s in out["skipped"]}
    assert set(skipped) == {"notes.onnx", "truncated.onnx", "pointwise.onnx", "truncated.pt", "nan.npz",
                            "dynamic.onnx", "evil.pt"}
    # Files found by walking a folder that are no model file by name nor by content are ignored.
    assert {Path(p).name for p in out["ignored"]} == {"README.txt"}
    assert all(skipped.values())
    # Without --skip-bad the same batch is refused whole.
    db2 = tmp_path / "db2"
    assert cli_main(["ingest", "--allow-missing", str(batch), "--db", str(db2)]) == 1
    assert not (db2 / "catalog.duckdb").exists()


def test_without_torch_the_error_says_how_to_install(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert cli_main(["ingest", "--allow-missing", str(MODELS / "pnet.pt"), "--db", str(tmp_path / "db")]) == 1
    assert "pip install 'cnnfilterdb[torch]'" in capsys.readouterr().err


def test_h5_and_model_files_in_one_ingest(tmp_path, sample_v01, torch):
    """One command, mixed sources: ids stay unique and contiguous, each layer holds its own filters."""
    db = tmp_path / "db"
    result = _ingest([MODELS / "pnet.pt", sample_v01, MODELS / "rnet.pt"], db)
    assert result["models_added"] == 2 + 9 and result["filters_added"] == 702 + 30_000 + 1428
    with _con(db) as con:
        n, lo, hi, distinct = con.execute(
            "SELECT count(*), min(filter_id), max(filter_id), count(DISTINCT filter_id) FROM filters").fetchone()
        assert (n, lo, hi, distinct) == (32_130, 0, 32_129, 32_130)
        assert con.execute("""SELECT count(*) FROM filters f JOIN layers l USING (layer_id)
                              WHERE f.filter_id NOT BETWEEN l.filter_id_first AND l.filter_id_last
                                 OR f.model_id <> l.model_id""").fetchone()[0] == 0
        assert con.execute("SELECT sum(n_filters) FROM layers").fetchone()[0] == 32_130
        assert con.execute("SELECT n_filters FROM basis").fetchone()[0] == 32_130


def test_a_second_ingest_waits_for_no_one(tmp_path, sample_v01, capsys, torch):
    """While one ingest holds the store's lock, another is refused at once with a clear error."""
    import fcntl
    import os

    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    before = store_snapshot(db)
    fd = os.open(db / ".ingest.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert cli_main(["ingest", "--allow-missing", str(MODELS / "pnet.pt"), "--db", str(db)]) == 1
        assert "another writer (ingest, label, remove, refit, compact) is running" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert store_snapshot(db) == before
    assert cli_main(["ingest", "--allow-missing", str(MODELS / "pnet.pt"), "--db", str(db)]) == 0


def test_producer_is_only_what_the_file_states(tmp_path, torch):
    """Not the version of the torch (or numpy) reading the file: null unless the file says."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(11)
    w = lambda: rng.normal(size=(4, 2, 3, 3)).astype(np.float32)  # noqa: E731  (every file its own sha256)
    torch.save({"conv.weight": torch.from_numpy(w())}, tmp_path / "plain.pt")
    torch.save({"state_dict": {"conv.weight": torch.from_numpy(w())}, "epoch": 3,
                "pytorch-lightning_version": "2.1.0"}, tmp_path / "lightning.pt")
    save_file({"conv.weight": w()}, str(tmp_path / "bare.safetensors"))
    save_file({"conv.weight": w()}, str(tmp_path / "hf.safetensors"), metadata={"format": "pt"})
    save_file({"conv.weight": w()}, str(tmp_path / "stated.safetensors"), metadata={"producer": "exporter 3.1"})
    np.savez(tmp_path / "arrays.npz", conv=w())
    db = tmp_path / "db"
    _ingest([tmp_path], db)
    with _con(db) as con:
        got = dict(con.execute("SELECT model, producer FROM models").fetchall())
    assert got == {"plain": None, "lightning": "pytorch-lightning 2.1.0", "bare": None, "hf": None,
                   "stated": "exporter 3.1", "arrays": None}


def test_reingest_with_other_metadata_says_how_to_relabel(tmp_path, capsys):
    import shlex

    np.savez(tmp_path / "m.npz", conv=np.random.default_rng(12).normal(size=(4, 2, 3, 3)).astype(np.float32))
    db = tmp_path / "db"
    assert cli_main(["ingest", "--allow-missing", str(tmp_path / "m.npz"), "--db", str(db), "--task", "Classification"]) == 0
    before = store_snapshot(db)
    capsys.readouterr()
    assert cli_main(["ingest", str(tmp_path / "m.npz"), "--db", str(db), "--task", "Detection",
                     "--visual-category", "natural images"]) == 0
    captured = capsys.readouterr()
    entry, = json.loads(captured.out)["files"]
    assert entry["models"] == 0 and entry["status"] == "already in the store, with other metadata"
    assert entry["model"] == "m"
    assert entry["metadata_differs"] == {"task": {"stored": "Classification", "given": "Detection"},
                                         "visual_category": {"stored": None, "given": "natural images"}}
    hint = f"cnnfilterdb label m --task Detection --visual-category 'natural images' --db {shlex.quote(str(db))}"
    assert entry["relabel"] == hint
    assert "task 'Classification' (given 'Detection')" in captured.err and hint in captured.err
    assert store_snapshot(db) == before
    # The same metadata as stored, or none: plainly already there.
    for flags in (["--task", "Classification"], []):
        assert cli_main(["ingest", "--allow-missing", str(tmp_path / "m.npz"), "--db", str(db), *flags]) == 0
        entry, = json.loads(capsys.readouterr().out)["files"]
        assert entry["status"] == "already in the store" and "metadata_differs" not in entry
    # Another model name is no label: remove it and ingest again.
    assert cli_main(["ingest", "--allow-missing", str(tmp_path / "m.npz"), "--db", str(db), "--model", "m2"]) == 0
    entry, = json.loads(capsys.readouterr().out)["files"]
    assert entry["relabel"] == f"cnnfilterdb remove m --db {shlex.quote(str(db))}, then ingest the file again with --model m2"
    # The command given does relabel it.
    assert cli_main(shlex.split(hint)[1:]) == 0
    capsys.readouterr()
    assert cli_main(["ingest", str(tmp_path / "m.npz"), "--db", str(db), "--task", "Detection",
                     "--visual-category", "natural images"]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["status"] == "already in the store"


def test_real_models_and_the_sample_in_one_store_warn(tmp_path, sample_v01):
    import io

    np.savez(tmp_path / "real.npz", conv=np.random.default_rng(13).normal(size=(4, 2, 3, 3)).astype(np.float32))
    np.savez(tmp_path / "real2.npz", conv=np.random.default_rng(14).normal(size=(4, 2, 3, 3)).astype(np.float32))

    def ingest(path, db):
        err = io.StringIO()
        result = ingest_paths([path], db, Progress(enabled=False, stream=err), allow_missing=True)
        return result["warnings"], err.getvalue()

    # Real models into a store holding the sample.
    assert ingest(sample_v01, tmp_path / "sample") == ([], "")
    warnings, err = ingest(tmp_path / "real.npz", tmp_path / "sample")
    assert warnings == ["this store holds 9 synthetic sample models (from `cnnfilterdb demo`); the 1 real model(s) "
                        "added to it will be compared with them: use a store of their own (--db)"]
    assert err == f"warning: {warnings[0]}\n"
    # The sample into a store of real models.
    assert ingest(tmp_path / "real.npz", tmp_path / "real") == ([], "")
    warnings, err = ingest(sample_v01, tmp_path / "real")
    assert len(warnings) == 1 and warnings[0].startswith("the 9 synthetic sample models (not real data) added here "
                                                         "are in a store holding 1 real model(s)")
    assert err == f"warning: {warnings[0]}\n"
    # Real with real: nothing to say.
    assert ingest(tmp_path / "real.npz", tmp_path / "real2") == ([], "")
    assert ingest(tmp_path / "real2.npz", tmp_path / "real2") == ([], "")
