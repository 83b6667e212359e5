"""A small dataset.h5 with the robustness study's shape (Gavrikov & Keuper, CVPR-W 2022; SPEC 14),
and its meta.csv, for tests/test_studies.py.

Pairs of models (robust, normally trained) of one architecture and training dataset: CIFAR-10,
CIFAR-100 and ImageNet (six pairs each), plus one SVHN pair (a group too small for a correlation).
The two models of a pair share their layer structure (10 to 30 layers, depths with parallel
convolutions, conv_depth_norm on linspace's edges for some, in_channels/out_channels for most
layers, none for some, out_channels 1 for a few); the filters differ (robust ones smoother and
sparser). Degenerate on purpose: all-zero layers (one of them a model's only first layer),
single-filter layers, filters scaled by 1e-4 (sparse) in varied shares.

The meta.csv is keyed by ``Name`` (the model's id, as the study's is): Robust True/False, Clean
Accuracy and Robust Accuracy in percent (the robust accuracy only of robust models; one robust
model without a clean accuracy), Backbone, Training-Dataset (as the file says).

Everything the reference needs is returned as plain pandas/numpy: the layers table (one row per
layer: model, conv_depth, conv_depth_norm, first, last, in_channels, out_channels, training_dataset)
and the filters (float32, (N, 9)), as written.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

DATASETS = {"CIFAR-10": 9, "CIFAR-100": 8, "ImageNet": 7, "SVHN": 1}
ACCURACY = {"CIFAR-10": (84.0, 94.0, 50.0, 68.0), "CIFAR-100": (55.0, 72.0, 24.0, 38.0),
            "ImageNet": (58.0, 78.0, 28.0, 48.0), "SVHN": (90.0, 97.0, 60.0, 70.0)}  # clean lo, hi; robust lo, hi
BACKBONES = ["ResNet-18", "WRN-28-10", "WRN-34-10", "PreActResNet-18", "ResNet-50", "WRN-70-16"]
META_HEADER = ["Name", "Robust", "Clean Accuracy", "Robust Accuracy", "Backbone", "Training-Dataset"]


def _prototypes() -> np.ndarray:
    g = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], float)
    e = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    spike = np.zeros((3, 3))
    spike[1, 1] = 1
    checker = np.array([[1, -1, 1], [-1, 1, -1], [1, -1, 1]], float)
    P = np.stack([g, spike, e, e.T, checker]).reshape(5, 9)
    return P / np.abs(P).max(axis=1, keepdims=True)


def _structure(rng: np.random.Generator, k: int) -> list[dict]:
    """The layers of an architecture: conv_depth, conv_depth_norm, in_channels, out_channels
    (None: unknown shape), n_filters."""
    n_layers = int(rng.integers(10, 31))
    if k % 3 == 0:  # depths 0..10: conv_depth_norm = d / 10, on linspace's edges (0.3, 0.7: pd.cut's boundaries)
        n_levels = 11
    else:
        n_levels = n_layers - int(rng.integers(0, 4))
    depths = sorted(rng.choice(np.arange(n_levels), size=n_layers, replace=True).tolist())
    depths[0], depths[-1] = 0, n_levels - 1
    depths = sorted(depths)
    # one first layer, but two parallel ones in every fourth architecture
    depths[1:] = [0 if (i == 0 and k % 4 == 1) else max(d, 1) for i, d in enumerate(depths[1:])]
    layers = []
    for i, d in enumerate(depths):
        out_c, in_c = int(rng.integers(1, 17)), int(rng.integers(1, 13))
        if i == 0:
            in_c = 3 if k % 5 else 1
        if rng.random() < 0.08:
            out_c = 1  # orthogonality undefined, weight known
        if rng.random() < 0.04:
            out_c, in_c = 1, 1  # one filter: no variance entropy
        shaped = rng.random() > 0.15
        layers.append({"conv_depth": d, "conv_depth_norm": d / (n_levels - 1),
                       "in_channels": in_c if shaped else None, "out_channels": out_c if shaped else None,
                       "n_filters": in_c * out_c})
    return layers


def _filters(rng: np.random.Generator, n: int, depth: float, robust: bool) -> np.ndarray:
    P = _prototypes()
    weights = np.ones(len(P)) + (3.0 if robust else 0.5) * np.array([1, 0.5, 0, 0, 0]) * (1 - depth)
    which = rng.choice(len(P), size=n, p=weights / weights.sum())
    noise = (0.1 if robust else 0.3) + 0.5 * depth
    W = rng.normal(0, 1, size=(n, 1)) * P[which] + noise * rng.standard_normal((n, 9))
    share = rng.uniform(0.0, 0.7 if robust else 0.3) if rng.random() < 0.6 else 0.0
    W[rng.random(n) < share] *= 1e-4  # sparse filters
    return (W * rng.uniform(0.02, 0.3)).astype(np.float32)


def write_study(work: Path, seed: int = 24) -> dict:
    """Write ``work/dataset.h5`` and ``work/meta.csv``; return {"h5", "meta_csv", "layers" (DataFrame),
    "filters" (float32 (N, 9)), "models" (DataFrame of the meta.csv's values, typed)}."""
    rng = np.random.default_rng(seed)
    rows, blocks, models, meta_rows = [], [], [], []
    next_id, mid, k = 0, 0, 0
    zero_first = None
    for ds, n_pairs in DATASETS.items():
        c_lo, c_hi, r_lo, r_hi = ACCURACY[ds]
        for _ in range(n_pairs):
            arch = BACKBONES[k % len(BACKBONES)]
            structure = _structure(rng, k)
            for robust in (True, False):
                model = f"{ds.lower()}-{arch.lower()}-{k:02d}-{'robust' if robust else 'normal'}"
                clean = float(np.round(rng.uniform(c_lo, c_hi) - (8 if robust else 0), 2))
                racc = float(np.round(rng.uniform(r_lo, r_hi), 2)) if robust else None
                if k == 4 and robust:
                    clean = None  # a robust model the study could not evaluate cleanly
                meta = {"model": model, "producer": "pytorch 1.11", "Name": arch, "Paper": "synthetic study fixture",
                        "Training-Dataset": ds, "Pretraining-Dataset": None, "Visual Category": "natural",
                        "Task": "Classification", "depth": len(structure)}
                for li, layer in enumerate(structure):
                    W = _filters(rng, layer["n_filters"], layer["conv_depth_norm"], robust)
                    if (k, li) in ((2, 5), (7, 12)) or (k == 6 and li == 0 and robust):
                        W[:] = 0  # all-zero layers (the last: a robust model's only first layer)
                        if li == 0:
                            zero_first = model
                    blocks.append(W)
                    row = {"model_id": mid, "conv_depth": layer["conv_depth"],
                           "conv_depth_norm": layer["conv_depth_norm"], **meta,
                           "filter_ids": f"{next_id}:{next_id + len(W) - 1}",
                           "in_channels": layer["in_channels"], "out_channels": layer["out_channels"]}
                    rows.append(row)
                    next_id += len(W)
                models.append({"model": model, "robust": robust, "clean_accuracy": clean, "robust_accuracy": racc,
                               "backbone": arch, "training_dataset": ds})
                meta_rows.append([model, "True" if robust else "False", "" if clean is None else f"{clean:.2f}",
                                  "" if racc is None else f"{racc:.2f}", arch, ds])
                mid += 1
            k += 1
    assert zero_first is not None
    table = pd.DataFrame(rows)
    for c in ("in_channels", "out_channels"):
        table[c] = table[c].astype("float64")  # NaN where unknown, as pandas keeps a column with gaps
    meta = table.set_index(["model_id", "conv_depth", "conv_depth_norm"])
    meta = meta.astype({c: object for c in meta.columns if meta[c].dtype.kind not in "iufb"})
    h5 = work / "dataset.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        meta.to_hdf(h5, key="meta", mode="w")
    X = np.concatenate(blocks)
    with h5py.File(h5, "a") as f:
        f.create_dataset("filters", data=X.reshape(-1, 3, 3))
    meta_csv = work / "meta.csv"
    with open(meta_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(META_HEADER)
        w.writerows(meta_rows)
    ids = table["filter_ids"].str.split(":", expand=True).astype(np.int64)
    layers = pd.DataFrame({"model": table["model"], "conv_depth": table["conv_depth"],
                           "conv_depth_norm": table["conv_depth_norm"], "first": ids[0], "last": ids[1],
                           "in_channels": table["in_channels"], "out_channels": table["out_channels"],
                           "training_dataset": table["Training-Dataset"]})
    return {"h5": h5, "meta_csv": meta_csv, "layers": layers, "filters": X, "zero_first": zero_first,
            "models": pd.DataFrame(models).set_index("model")}
