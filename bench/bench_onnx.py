"""ONNX ingest benchmark (issue 5): a model of >= 100 MB built here, `cnnfilterdb ingest` of it
into an empty store against a plain `onnx.load` of the same file (both with the file in the page
cache). Target: at most 3x.   python bench/bench_onnx.py [--mb 100]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(path: Path, mb: float) -> int:
    """A VGG-like chain of 3x3 convolutions (and a 1x1 every fourth layer) of about ``mb`` MB."""
    rng = np.random.default_rng(0)
    nodes, inits, x, c = [], [], "x", 3
    size = 0
    i = 0
    while size < mb * 1e6:
        out = 512 if i else 64
        k = 1 if i % 4 == 3 else 3
        w = (rng.standard_normal((out, c, k, k)) * 0.05).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[k // 2] * 4))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x, c, size, i = f"r{i}", out, size + w.nbytes, i + 1
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return i


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=100)
    args = ap.parse_args()
    from cnnfilterdb.ingest import ingest_paths
    from cnnfilterdb.ingest.progress import Progress
    from cnnfilterdb.runtime import tune_allocator

    tune_allocator()
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-onnx-"))
    try:
        src = work / "big.onnx"
        n_convs = build(src, args.mb)
        onnx.load(str(src))  # page cache
        t_load = min(_time(lambda: onnx.load(str(src))) for _ in range(3))
        times = []
        for k in range(3):
            db = work / f"db{k}"
            times.append(_time(lambda db=db: ingest_paths([src], db, Progress(enabled=False), allow_missing=True)))
        t_ingest = min(times)
        from cnnfilterdb.store import FilterStore

        with FilterStore(db).connect() as con:  # resolves the views' store-relative shard paths
            n = con.execute("SELECT count(*) FROM filters").fetchone()[0]
        print(f"model: {src.stat().st_size / 1e6:.0f} MB, {n_convs} convolutions, {n:,} 3x3 filters")
        print(f"onnx.load          : {t_load:7.3f} s")
        print(f"cnnfilterdb ingest : {t_ingest:7.3f} s   (best of 3; into an empty store, commit included)")
        print(f"ratio              : {t_ingest / t_load:.2f}x   (target <= 3x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
