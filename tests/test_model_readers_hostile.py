"""Model files built to break the readers (issue 25's hostile review): each is one IngestError
naming the file (a 422 over HTTP, one line on the command line), never a traceback, and never
an allocation far beyond the file's own size; the odd but valid ones (bfloat16 weights, wide
layers) are read as a float32 conversion would read them."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnnfilterdb.ingest.errors import IngestError
from cnnfilterdb.ingest.model_files import read_checked
from cnnfilterdb.ingest.models import read_model
from cnnfilterdb.stats import quality

from .helpers import REPO


def _graph_model(nodes, initializers, tmp_path, name="m.onnx", inputs=None) -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", inputs or [x], [y], initializer=initializers)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / name
    path.write_bytes(m.SerializeToString())
    return path


def _weight(name="w", shape=(4, 4, 3, 3), seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).normal(size=shape).astype(np.float32), name)


def _one_line(exc: pytest.ExceptionInfo, path) -> str:
    text = str(exc.value)
    assert "\n" not in text and str(path) in text, text
    return text


def test_raw_data_of_the_wrong_size_is_one_error(tmp_path):
    w = _weight()
    w.raw_data = w.raw_data[:-8]  # dims say 144 floats, the bytes hold 142
    path = _graph_model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [w], tmp_path)
    with pytest.raises(IngestError) as e:
        read_model(path, "onnx")
    assert "cannot be read as onnx" in _one_line(e, path)


def test_a_cast_without_its_type_and_an_identity_cycle_are_one_error_each(tmp_path):
    cast = [helper.make_node("Cast", ["w"], ["wc"], name="cast"), helper.make_node("Conv", ["x", "wc"], ["y"], name="c")]
    path = _graph_model(cast, [_weight()], tmp_path, "cast.onnx")
    with pytest.raises(IngestError) as e:
        read_model(path, "onnx")
    _one_line(e, path)
    cycle = [helper.make_node("Identity", ["b"], ["a"], name="i1"), helper.make_node("Identity", ["a"], ["b"], name="i2"),
             helper.make_node("Conv", ["x", "a"], ["y"], name="c")]
    path = _graph_model(cycle, [], tmp_path, "cycle.onnx")
    with pytest.raises(IngestError) as e:
        read_model(path, "onnx")
    _one_line(e, path)


def test_a_dequantization_scale_never_broadcasts_wider_than_the_weight(tmp_path):
    """A 4-D scale (1, M, 3, 3) against a weight (N, 1, 3, 3) would make an (N, M, 3, 3) array:
    an outer product of a few KB of file into gigabytes. Per tensor or per channel only."""
    q = numpy_helper.from_array(np.ones((64, 1, 3, 3), np.int8), "q")
    scale = numpy_helper.from_array(np.ones((1, 64, 3, 3), np.float32), "s")
    zp = numpy_helper.from_array(np.zeros((), np.int8), "z")
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], name="dq", axis=0),
             helper.make_node("Conv", ["x", "w"], ["y"], name="c")]
    path = _graph_model(nodes, [q, scale, zp], tmp_path)
    with pytest.raises(IngestError) as e:
        read_model(path, "onnx")
    assert "dequantization scale of shape (1, 64, 3, 3)" in _one_line(e, path)
    # per channel of the axis still reads, as (q - z) * s
    per_channel = numpy_helper.from_array(np.arange(1, 65, dtype=np.float32), "s")
    path = _graph_model(nodes, [q, per_channel, zp], tmp_path, "ok.onnx")
    (conv,) = read_model(path, "onnx").convs
    assert np.array_equal(conv.weight[:, 0, 0, 0], np.arange(1, 65, dtype=np.float32))


@pytest.mark.parametrize("group", [0, -3, 3])
def test_a_group_that_does_not_divide_the_output_channels_is_refused(tmp_path, group):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c", group=group)]
    path = _graph_model(nodes, [_weight(shape=(4, 1, 3, 3))], tmp_path)
    with pytest.raises(IngestError) as e:
        read_model(path, "onnx")
    assert f"group {group} does not divide its 4 output channels" in _one_line(e, path)


def test_external_data_is_refused_for_an_upload_and_read_for_a_local_file(tmp_path):
    w = np.random.default_rng(1).normal(size=(4, 4, 3, 3)).astype(np.float32)
    path = _graph_model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [numpy_helper.from_array(w, "w")],
                        tmp_path)
    m = onnx.load(str(path))
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    assert (tmp_path / "w.bin").exists()
    (conv,) = read_model(path, "onnx").convs  # a model on disk with its data beside it: as ingest reads it
    assert np.array_equal(conv.weight, w)
    with pytest.raises(IngestError) as e:
        read_checked(path, shown="upload.onnx", external_data=False)
    assert str(e.value).startswith("upload.onnx: keeps tensors in external data files")


def test_bfloat16_weights_are_read_as_their_float32_values(tmp_path):
    torch = pytest.importorskip("torch")
    w = torch.randn(8, 3, 3, 3).to(torch.bfloat16)
    torch.save({"conv.weight": w}, tmp_path / "bf16.pt")
    (conv,) = read_model(tmp_path / "bf16.pt", "torch").convs
    assert conv.weight.dtype == np.float32 and np.array_equal(conv.weight, w.float().numpy())
    from safetensors.torch import save_file

    save_file({"conv.weight": w}, str(tmp_path / "bf16.safetensors"))
    (conv,) = read_model(tmp_path / "bf16.safetensors", "safetensors").convs
    assert np.array_equal(conv.weight, w.float().numpy())


def test_the_checks_caps_count_layers_and_filters_before_computing(tmp_path):
    arrays = {f"l{i}": np.full((2, 1, 3, 3), i + 1.0, np.float32) for i in range(30)}
    np.savez(tmp_path / "many.npz", **arrays)
    with pytest.raises(IngestError, match="holds 30 layers of 3x3 filters, more than the 10 a check takes here"):
        read_checked(tmp_path / "many.npz", max_layers=10)
    with pytest.raises(IngestError, match="holds 60 3x3 filters, more than the 59 a check takes here"):
        read_checked(tmp_path / "many.npz", max_filters=59)
    assert len(read_checked(tmp_path / "many.npz", max_layers=30, max_filters=60).layers) == 30
    # orthogonality's out^2 pairs: one layer of 1,000 channels of 1 x 3 x 3 is 1e6 x (9 + PAIR_COST)
    np.savez(tmp_path / "wide.npz", w=np.ones((1000, 1, 3, 3), np.float32))
    work = 1000 * 1000 * (9 + quality.PAIR_COST)
    with pytest.raises(IngestError) as e:
        read_checked(tmp_path / "wide.npz", max_work=10**8)
    assert f"orthogonality (every pair of output channels) is {work:.2g} multiply-adds, more than the 1e+08" in str(e.value)
    assert abs(read_checked(tmp_path / "wide.npz", max_work=work).layers[0].metrics["orthogonality"]) < 1e-12  # all parallel


def test_a_quantized_weight_shared_by_many_nodes_is_dequantized_once(tmp_path):
    q = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.int8), "q")
    zp = numpy_helper.from_array(np.zeros((), np.int8), "z")
    x8 = helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4, 8, 8])
    nodes = [helper.make_node("ConvInteger", ["x" if i == 0 else f"y{i - 1}", "q", "", "z"], [f"y{i}" if i < 9 else "y"],
                              name=f"c{i}") for i in range(10)]
    path = _graph_model(nodes, [q, zp], tmp_path, inputs=[x8])
    convs = read_model(path, "onnx").convs
    assert len(convs) == 10 and all(c.weight is convs[0].weight for c in convs)


def test_a_wide_layers_orthogonality_in_blocks_equals_the_whole_gram_matrix(monkeypatch):
    w = np.random.default_rng(2).normal(size=(300, 2, 3, 3)).astype(np.float32)
    whole = quality.orthogonality(w)
    V = w.reshape(300, -1).astype(np.float64)
    U = V / np.linalg.norm(V, axis=1, keepdims=True)
    naive = 1 - np.mean([abs(U[i] @ U[j]) for i in range(300) for j in range(i + 1, 300)])
    monkeypatch.setattr(quality, "ORTHOGONALITY_BLOCK", 300 * 64)  # blocks of 64 rows
    blocked = quality.orthogonality(w)
    assert abs(blocked - whole) <= 1e-12 and abs(whole - naive) <= 1e-12
    monkeypatch.setattr(quality, "MAX_ORTHOGONALITY_CHANNELS", 299)  # wider: none, and no work budgeted
    assert quality.orthogonality(w) is None and quality.orthogonality_work(300, 18) == 0
    assert quality.orthogonality_work(299, 18) == 299 * 299 * (18 + quality.PAIR_COST)


def test_the_cli_says_a_malformed_model_in_one_line(tmp_path):
    w = _weight()
    w.raw_data = w.raw_data[:-8]
    path = _graph_model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [w], tmp_path)
    p = subprocess.run([sys.executable, "-m", "cnnfilterdb.cli", "check", str(path), "--db", str(tmp_path / "none")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("cnnfilterdb: error: ") and "cannot be read as onnx" in p.stderr
