"""A seeded, synthetic dataset.h5 in the original layout, for the demo, the tests and the benchmarks.

It is not real data: filters are drawn from a few 3x3 prototypes whose mixture depends on the
model's task and visual category and on the layer depth, so that groupings differ measurably.
Every metadata column of docs/method.md#dataset-h5 is present, and a few layers are degenerate on purpose
(all zero, mostly sparse, rank one, white noise). Like the authors' later pipeline, a v1.0.0 sample
gives layers ``in_channels`` and ``out_channels`` where the layer's size factors into a plausible
(out, in) weight (``layer_shape``); the others' are missing (NaN), as in a file that mixes both. The file carries a root attribute
``cnnfilterdb_sample`` so that the ingest marks its models as a sample in ``models.source``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

SAMPLE_ATTR = "cnnfilterdb_sample"

ARCHITECTURES = ["ResNet-18", "ResNet-50", "VGG-16", "MobileNetV2", "DenseNet-121", "U-Net", "YOLOv3", "EfficientNet-B0"]
TASKS = ["Classification", "Object Detection", "Semantic Segmentation", "Instance Segmentation", "GAN", "Face Detection"]
CATEGORIES = ["natural", "medical ct", "fractals", "sketches", "textures", "remote sensing", "faces"]
DATASETS = ["ImageNet1k", "CIFAR-10", "COCO", "CelebA", "LIDC", "FractalDB-1k", "Sketchy", "DTD"]
OPERATORS = ["Conv", "Relu", "Add", "BatchNormalization", "MaxPool", "Gemm", "Concat"]


def _prototypes() -> np.ndarray:
    """Eight 3x3 patterns (rows of length 9): blob, center spike, edges, corners, checker."""
    g = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], float)
    e = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    spike = np.zeros((3, 3))
    spike[1, 1] = 1
    corner = np.array([[1, 1, 0], [1, 0, -1], [0, -1, -1]], float)
    checker = np.array([[1, -1, 1], [-1, 1, -1], [1, -1, 1]], float)
    P = np.stack([g, spike, e, e.T, corner, corner[::-1], checker, -g + 2 * spike]).reshape(8, 9)
    return P / np.abs(P).max(axis=1, keepdims=True)


def _layer_filters(rng: np.random.Generator, n: int, task: int, cat: int, depth: float) -> np.ndarray:
    P = _prototypes()
    weights = np.ones(len(P))
    weights[task % len(P)] += 3.0
    weights[(cat + 3) % len(P)] += 2.0
    weights[:2] += 2.0 * (1.0 - depth)  # shallow layers: smoother
    weights /= weights.sum()
    which = rng.choice(len(P), size=n, p=weights)
    amp = rng.normal(0.0, 1.0, size=(n, 1))
    noise = 0.15 + 0.6 * depth  # deeper layers: noisier
    W = amp * P[which] + noise * rng.standard_normal((n, 9))
    return (W * (0.05 + 0.1 * rng.random())).astype(np.float32)


def _layer_sizes(rng: np.random.Generator, budget: int, n_layers: int) -> list[int]:
    shares = rng.dirichlet(np.full(n_layers, 2.0))
    sizes = np.maximum(1, np.round(shares * budget)).astype(int)
    return sizes.tolist()


def layer_shape(n: int, max_ratio: int = 8) -> tuple[int, int] | None:
    """(in_channels, out_channels) of a layer of n filters: out the largest divisor of n with
    2 <= out <= sqrt(n), in = n / out, if in <= max_ratio * out; else None (no plausible weight)."""
    import math

    for out in range(math.isqrt(n), 1, -1):
        if n % out == 0:
            return (n // out, out) if n // out <= max_ratio * out else None
    return None


def write_sample_h5(path: str | Path, n_models: int = 40, n_filters: int = 1_000_000, seed: int = 0,
                    version: str = "1.0.0", dtype=np.float32, shape: str = "3x3",
                    degenerate: bool = True, filters_name: str | None = None,
                    block_rows: int = 1 << 21, extra_models: int = 0, shapes: bool | None = None) -> Path:
    """Write a synthetic dataset.h5 of about ``n_filters`` filters over ``n_models`` models.

    ``version`` "1.0.0" or "0.1.0" picks the column names (``Visual Category``/``Datatype``,
    ``fractals``/``formula``) and the dataset name (``/filters``/``/filter``) unless
    ``filters_name`` is given; ``shape`` "3x3" or "9" picks (N, 3, 3) or (N, 9).
    ``extra_models``: a newer release of the same dataset: the file written without them
    (the same models, metadata and filters, in the same places), then as many models more,
    of about ``n_filters / n_models`` filters each (drawn from a random stream of their own).
    ``shapes``: write the ``in_channels``/``out_channels`` columns (default: for version "1.0.0";
    they draw nothing from the random streams, so the filters are the same either way).
    """
    path = Path(path)
    if shapes is None:
        shapes = version != "0.1.0"
    rng_base, rng_extra = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    budget = max(1, n_filters // n_models)
    rows, plan = [], []
    next_id = 0
    for mid in range(n_models + extra_models):
        rng = rng_base if mid < n_models else rng_extra
        arch = ARCHITECTURES[mid % len(ARCHITECTURES)]
        task = int(rng.integers(len(TASKS)))
        cat = int(rng.integers(len(CATEGORIES)))
        n_layers = int(rng.integers(4, 24))
        sizes = _layer_sizes(rng, budget, n_layers)
        if mid == n_models - 1:  # the last model takes up the rest, so the total is exact
            sizes[-1] = max(1, n_filters - next_id - sum(sizes[:-1]))
        n_levels = n_layers - int(rng.integers(0, 3))  # a few parallel convolutions share a depth
        depths = sorted(rng.choice(np.arange(n_levels), size=n_layers, replace=True).tolist())
        depths[0], depths[-1] = 0, n_levels - 1
        depths = sorted(depths)
        n3 = sum(sizes)
        ops = {op: int(rng.integers(0, 60)) for op in OPERATORS}
        ops["Conv"] = n_layers + int(rng.integers(0, 10))
        k11, k55, k77 = int(rng.integers(0, 5000)), int(rng.integers(0, 300)), int(rng.integers(0, 200))
        total = n3 + k55 + k77
        model_meta = {
            "model": f"sample-s{seed}-{mid:04d}-{arch.lower()}",
            "producer": "pytorch 1.10",
            "op_set": int(rng.choice([9, 11, 13])),
            "depth": n_layers,
            "Name": arch,
            "Paper": "synthetic sample (cnnfilterdb demo), not real data",
            "Pretraining-Dataset": None if rng.random() < 0.6 else "ImageNet1k",
            "Training-Dataset": DATASETS[(task + cat) % len(DATASETS)],
            "Visual Category": CATEGORIES[cat],
            "Task": TASKS[task],
            "Accessible": "yes" if rng.random() < 0.8 else "no",
            "Dataset URL": f"https://example.org/datasets/{mid}",
            "total_filters": total,
            "3x3_filter_share": n3 / total,
            "(1, 1) filters": k11,
            "(3, 3) filters": n3,
            "(5, 5) filters": k55,
            "(7, 7) filters": k77,
            **ops,
            "comment": f"seed {seed}",
        }
        for li, (size, depth) in enumerate(zip(sizes, depths)):
            depth_norm = depth / (n_levels - 1) if n_levels > 1 else 0.0
            row = {"model_id": mid, "conv_depth": depth, "conv_depth_norm": depth_norm,
                   **model_meta, "filter_ids": f"{next_id}:{next_id + size - 1}"}
            if shapes:
                in_out = layer_shape(size)
                row["in_channels"], row["out_channels"] = in_out if in_out else (None, None)
            rows.append(row)
            plan.append((next_id, size, task, cat, depth_norm, mid, li, rng))
            next_id += size

    meta = pd.DataFrame(rows).set_index(["model_id", "conv_depth", "conv_depth_norm"])
    if version == "0.1.0":
        meta = meta.rename(columns={"Visual Category": "Datatype"})
        meta["Datatype"] = meta["Datatype"].replace({"fractals": "formula"})
    # Plain object columns, as pandas wrote them when the dataset was made.
    meta = meta.astype({c: object for c in meta.columns if meta[c].dtype.kind not in "iufb"})
    path.unlink(missing_ok=True)
    with warnings.catch_warnings():  # PyTables pickles mixed object columns; so did the original
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        meta.to_hdf(path, key="meta", mode="w")

    name = filters_name or ("filter" if version == "0.1.0" else "filters")
    tail = (3, 3) if shape == "3x3" else (9,)
    degenerate_kinds = {3: "zero", 7: "sparse", 11: "rank1", 15: "noise"} if degenerate else {}
    with h5py.File(path, "a") as f:
        f.attrs[SAMPLE_ATTR] = f"synthetic sample written by cnnfilterdb, seed {seed}; not real data"
        ds = f.create_dataset(name, shape=(next_id, *tail), dtype=dtype,
                              chunks=(min(next_id, 1 << 16), *tail))
        buf, buf_start = [], 0
        for k, (_start, size, task, cat, depth_norm, _model, _layer, rng) in enumerate(plan):
            W = _layer_filters(rng, size, task, cat, depth_norm)
            kind = degenerate_kinds.get(k)
            if kind == "zero":
                W[:] = 0
            elif kind == "sparse":
                W[: int(0.9 * size)] *= 1e-4
            elif kind == "rank1":
                W = (rng.normal(size=(size, 1)) * _prototypes()[2]).astype(np.float32)
            elif kind == "noise":
                W = rng.uniform(-0.1, 0.1, size=(size, 9)).astype(np.float32)
            buf.append(W)
            if sum(len(b) for b in buf) >= block_rows or k == len(plan) - 1:
                block = np.concatenate(buf)
                ds[buf_start:buf_start + len(block)] = block.reshape(len(block), *tail).astype(dtype)
                buf_start += len(block)
                buf = []
    return path
