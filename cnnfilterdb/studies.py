"""The follow-up studies' model-level numbers (SPEC 14): model metrics and the values a correlation pairs.

Model metrics of a model (or of a model's layers of one depth decile), over the layers a selection
holds (``layers="first"``: its conv_depth 0 layer only), as weighted means of the layer metrics
(docs/method.md#layer-quality) over the layers where the metric and its weight are known:

    sparsity                  sum(s_l * f_l) / sum(f_l)                f_l: the layer's filters
    variance_entropy(_norm, _clean)
                              sum(e_l * g_l) / sum(g_l)                g_l = f_l * (1 - s_l): non-sparse filters
    orthogonality             sum(o_l * c_l) / sum(c_l)                c_l: out_channels (null where unknown)

plus n_layers and n_filters; a mean whose weights sum to 0 (no layer knows it) is null. The sums
run in layer_id order in numpy (np.bincount), so a result repeats bit for bit.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .properties import ident
from .requests import MODEL_METRICS
from .selection import InvalidValue, field_sql, natural_order

ENTROPIES = ("variance_entropy", "variance_entropy_norm", "variance_entropy_clean")
_LAYER_COLUMNS = ("layer_id", "model_id", "model", "n_filters", "out_channels", "sparsity", *ENTROPIES,
                  "orthogonality")


def model_metrics(cur, relation: str, cond: str, params: list, layers: str, by: str | None,
                  extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per model (and value of the layer field ``by``, e.g. depth_decile) of the layers of
    ``relation`` (a layers_with_models_at(v)) meeting ``cond``: model_id, model, [by], n_layers,
    n_filters and the metrics (module docstring), then the model fields ``extra`` (first value),
    in model_id (and natural ``by``) order."""
    first = " AND conv_depth = 0" if layers == "first" else ""
    own = (*_LAYER_COLUMNS, *((by,) if by else ()))
    columns = ", ".join([*(f"{field_sql(c)} AS {ident(c)}" for c in own), *map(ident, extra)])
    t = cur.execute(f"SELECT {columns} FROM {relation} WHERE ({cond}){first} ORDER BY layer_id", params).fetchnumpy()
    keys = ["model_id", by] if by else ["model_id"]
    frame = pd.DataFrame({k: _plain(t[k]) for k in (*own, *extra)})
    if frame.empty:
        return pd.DataFrame(columns=["model_id", "model", *keys[1:], *MODEL_METRICS, *extra])
    group = frame.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
    firsts = np.unique(group, return_index=True)[1]  # each group's first row (layer_id order)
    out = frame.iloc[firsts][["model_id", "model", *keys[1:], *extra]].reset_index(drop=True)
    out = pd.concat([out, metrics_of(frame, group, int(group.max()) + 1)], axis=1)
    out = out[["model_id", "model", *keys[1:], *MODEL_METRICS, *extra]]
    if by:
        rank = {v: i for i, v in enumerate(natural_order(list(dict.fromkeys(out[by]))))}
        out = out.assign(_r=out[by].map(rank)).sort_values(["model_id", "_r"], kind="stable").drop(columns="_r")
    else:
        out = out.sort_values("model_id", kind="stable")
    return out.reset_index(drop=True)


def metrics_of(layers: pd.DataFrame, group: np.ndarray, n: int) -> pd.DataFrame:
    """The model metrics (MODEL_METRICS, module docstring) of ``n`` groups of layers.

    Parameters
    ----------
    layers : one row per layer, in layer order: n_filters, out_channels, sparsity, the entropies
        and orthogonality (NaN where unknown).
    group : (len(layers),) int, each layer's group, 0 .. n-1.

    Returns
    -------
    DataFrame of n rows, the columns MODEL_METRICS.
    """
    f = layers["n_filters"].to_numpy(np.float64)
    s = layers["sparsity"].to_numpy(np.float64)

    def mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        known = np.isfinite(values) & np.isfinite(weights)
        num = np.bincount(group, weights=np.where(known, values * weights, 0.0), minlength=n)
        den = np.bincount(group, weights=np.where(known, weights, 0.0), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)

    out = pd.DataFrame({"n_layers": np.bincount(group, minlength=n),
                        "n_filters": np.bincount(group, weights=f, minlength=n).astype(np.int64),
                        "sparsity": mean(s, f)})
    for e in ENTROPIES:
        out[e] = mean(layers[e].to_numpy(np.float64), f * (1.0 - s))
    out["orthogonality"] = mean(layers["orthogonality"].to_numpy(np.float64),
                                layers["out_channels"].to_numpy(np.float64))
    return out[list(MODEL_METRICS)]


def _plain(a):
    """A fetchnumpy column as a plain array: NULLs of a number as NaN, of text as None."""
    if hasattr(a, "mask"):
        if a.dtype.kind in "fiu":
            return np.where(a.mask, np.nan, a.data.astype(np.float64))
        return np.where(a.mask, None, a.data.astype(object))
    return a


def check_variable(name: str, properties: dict[str, str]) -> str:
    """``name`` if it is a model metric or a numeric or boolean property; InvalidValue saying why not."""
    if name in MODEL_METRICS:
        return name
    if name not in properties:
        from .selection import UnknownName, nearest

        near = nearest(name, [*MODEL_METRICS, *properties])
        hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
        raise UnknownName(f"unknown variable {name!r}{hint}; a model metric ({', '.join(MODEL_METRICS)}) or a numeric "
                          f"or boolean model property ({', '.join(k for k, t in properties.items() if t != 'text') or 'none'})")
    if properties[name] == "text":
        raise InvalidValue(f"variable {name!r} is a text property; a correlation takes model metrics and numeric or "
                           "boolean properties")
    return name


__all__ = ["model_metrics", "metrics_of", "check_variable"]
