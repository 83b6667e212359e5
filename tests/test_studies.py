"""Issue 24.6: the robustness study (Gavrikov & Keuper, CVPR-W 2022; SPEC 14) reproduced on a fixture.

A dataset.h5 of robust/normal model pairs (tests/study_fixture.py: CIFAR-10, CIFAR-100, ImageNet and
one SVHN pair, layer shapes, degenerate layers) is ingested and labelled with a meta.csv keyed by
Name; every number of the three new analyses is checked against an independent reference written
from the study's notebooks (correlation.ipynb): the layer metrics from the filters
(tests/reference.py's layer_quality, orthogonality from the weight), depth deciles by
``pd.cut(conv_depth_norm, np.linspace(0, 1, 11))``, model metrics as pandas weighted means,
``groupby(...).apply(spearmanr)`` with a bootstrap written as a plain loop over resamples, and the
divergence per depth decile by the naive in-memory method (scikit-learn PCA, np.histogram,
scipy.stats.entropy) on the global basis. Tolerances: 1e-12 for the correlations and the model
metrics, 1e-9 relative for the divergences (and 1e-9 for the layer metrics, as tests/test_ingest_h5.py).
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import cnnfilterdb
from cnnfilterdb.ingest import ingest_paths

from . import reference
from .helpers import cli_main, open_catalog
from .study_fixture import DATASETS, write_study

STUDY_DATASETS = ["CIFAR-10", "CIFAR-100", "ImageNet"]
ENTROPIES = ["variance_entropy", "variance_entropy_norm", "variance_entropy_clean"]
METRICS = ["sparsity", *ENTROPIES, "orthogonality"]
EDGES = np.linspace(0, 1, 11)
DECILES = ["0", *(str(pd.Interval(round(a, 1), round(b, 1))) for a, b in zip(EDGES[:-1], EDGES[1:]))]
SCIPY = {"spearman": scipy.stats.spearmanr, "pearson": scipy.stats.pearsonr, "kendall": scipy.stats.kendalltau}


# -- the reference ---------------------------------------------------------------------------------
def ref_orthogonality(W: np.ndarray, out_channels: float) -> float:
    """SPEC 6.4: 1 - mean |cosine| over pairs of distinct output channels, each flattened to in*9
    (a channel of zeros has no direction: its cosines are 0); NaN if unknown or fewer than 2."""
    if not np.isfinite(out_channels) or out_channels < 2:
        return np.nan
    V = np.asarray(W, np.float64).reshape(int(out_channels), -1)
    cos = []
    for a in range(len(V)):
        for b in range(a + 1, len(V)):
            na, nb = np.linalg.norm(V[a]), np.linalg.norm(V[b])
            cos.append(0.0 if na == 0 or nb == 0 else abs(V[a] @ V[b]) / (na * nb))
    return 1.0 - float(np.mean(cos))


def ref_decile(conv_depth: pd.Series, conv_depth_norm: pd.Series) -> pd.Series:
    """The study's depth decile: '0' for the first layer, else pd.cut's label over linspace(0, 1, 11)."""
    cut = pd.cut(conv_depth_norm, np.linspace(0, 1, 11)).astype(str)
    return cut.where(conv_depth != 0, "0")


def wmean(g: pd.DataFrame, value: str, weight: str) -> float:
    known = g[value].notna() & g[weight].notna()
    w = g.loc[known, weight]
    return float((g.loc[known, value] * w).sum() / w.sum()) if w.sum() > 0 else np.nan


def ref_model_metrics(layers: pd.DataFrame, by: str | None = None, first: bool = False) -> pd.DataFrame:
    """correlation.ipynb's sparsity_mean, entropy_mean, ortho_mean (and _first): weighted means of
    the layer metrics per model (and decile)."""
    if first:
        layers = layers[layers.conv_depth == 0]
    layers = layers.assign(nonsparse=layers.n_filters * (1 - layers.sparsity))
    keys = ["model", by] if by else ["model"]

    def one(g: pd.DataFrame) -> pd.Series:
        return pd.Series({"n_layers": len(g), "n_filters": g.n_filters.sum(), "sparsity": wmean(g, "sparsity", "n_filters"),
                          **{e: wmean(g, e, "nonsparse") for e in ENTROPIES},
                          "orthogonality": wmean(g, "orthogonality", "out_channels")})

    return layers.groupby(keys, sort=False)[["n_filters", "out_channels", "nonsparse", *METRICS]].apply(one)


def ref_bootstrap(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the statistic over 2000 resamples drawn with default_rng(0),
    one scipy call per resample, undefined ones dropped."""
    n = len(x)
    idx = np.random.default_rng(0).integers(0, n, size=(2000, n))
    boot = []
    for b in range(2000):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = SCIPY[method](x[idx[b]], y[idx[b]]).statistic
        if np.isfinite(r):
            boot.append(r)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def ref_correlation(table: pd.DataFrame, x: str, y: str, group_by: str | None, method: str) -> pd.DataFrame:
    """groupby(group_by).apply(spearmanr) over the models having both values, with the bootstrap
    (a group of the selection none of whose models has both: n 0)."""
    key = table[group_by] if group_by else pd.Series("all", index=table.index)

    def one(g: pd.DataFrame) -> pd.Series:
        g = g.dropna(subset=[x, y])
        xs, ys = g[x].to_numpy(np.float64), g[y].to_numpy(np.float64)
        if len(g) < 3:
            return pd.Series({"n": len(g), "statistic": np.nan, "p_value": np.nan, "ci_low": np.nan, "ci_high": np.nan})
        r = SCIPY[method](xs, ys)
        lo, hi = ref_bootstrap(xs, ys, method)
        return pd.Series({"n": len(g), "statistic": r.statistic, "p_value": r.pvalue, "ci_low": lo, "ci_high": hi})

    return table.groupby(key, sort=False).apply(one)


# -- the fixture -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The fixture's dataset.h5 ingested and labelled; the reference's layers and models."""
    work = tmp_path_factory.mktemp("study")
    s = write_study(work)
    db = work / "db"
    result = ingest_paths([s["h5"]], db)
    assert result["models_added"] == len(s["models"]) and result["filters_added"] == len(s["filters"])
    assert cli_main(["label", "--manifest", str(s["meta_csv"]), "--key", "Name", "--db", str(db)]) == 0
    fdb = cnnfilterdb.open(db)
    X = s["filters"]
    models = s["models"]
    ref = s["layers"].copy()
    ref["n_filters"] = ref["last"] - ref["first"] + 1
    ref["depth_decile"] = ref_decile(ref.conv_depth, ref.conv_depth_norm)
    quality = [reference.layer_quality(X[a:b + 1]) for a, b in zip(ref["first"], ref["last"])]
    for k in ("sparsity", *ENTROPIES):
        ref[k] = np.array([np.nan if q[k] is None else q[k] for q in quality], np.float64)
    ref["orthogonality"] = [ref_orthogonality(X[a:b + 1], o) for a, b, o in zip(ref["first"], ref["last"],
                                                                                 ref["out_channels"])]
    for c in ("robust", "clean_accuracy", "robust_accuracy"):
        ref[c] = ref.model.map(models[c])
    # the store's layers, in layer_id order = the file's order (filter_ids ascending)
    stored = fdb.layers()
    assert stored.filter_id_first.tolist() == ref["first"].tolist()
    assert stored.model.tolist() == ref.model.tolist()
    model_ids = dict(zip(stored.model, stored.model_id))
    # the store's layer metrics with the reference's layer facts: model metrics from these are exact
    from_store = ref[["model", "conv_depth", "conv_depth_norm", "depth_decile", "n_filters", "out_channels",
                      "training_dataset"]].assign(**{k: stored[k].astype(np.float64).to_numpy() for k in METRICS})
    return SimpleNamespace(db=db, fdb=fdb, X=X, models=models, ref=ref, stored=stored, from_store=from_store,
                           model_ids=model_ids, zero_first=s["zero_first"])


def model_table(study, by: str | None = None, first: bool = False, source: str = "store") -> pd.DataFrame:
    """The reference's model metrics (from the store's layer metrics, or the reference's) joined
    with the meta.csv's properties."""
    t = ref_model_metrics(study.from_store if source == "store" else study.ref, by, first).reset_index()
    return t.join(study.models, on="model")


# -- the store holds the study ---------------------------------------------------------------------
def test_the_store_holds_the_studys_metadata_and_layer_shapes(study):
    fdb, ref, models = study.fdb, study.ref, study.models
    m = fdb.models().set_index("model")
    assert m.index.tolist() == models.index.tolist()
    assert m.robust.dtype == bool and m.clean_accuracy.dtype == np.float64
    assert (m.robust == models.robust).all() and (m.training_dataset == models.training_dataset).all()
    for c in ("clean_accuracy", "robust_accuracy"):
        pd.testing.assert_series_equal(m[c], models[c].astype(np.float64), check_names=False)
    assert m.robust_accuracy[~m.robust].isna().all() and m.robust_accuracy[m.robust].notna().all()
    assert (m.backbone == models.backbone).all()
    # the layer shapes as the file gives them
    stored = study.stored
    for c in ("conv_depth", "conv_depth_norm", "n_filters"):
        np.testing.assert_array_equal(stored[c].to_numpy(np.float64), ref[c].to_numpy(np.float64))
    for c in ("in_channels", "out_channels"):
        np.testing.assert_array_equal(stored[c].astype(np.float64).to_numpy(), ref[c].to_numpy())
    assert ref.out_channels.isna().any() and (ref.out_channels == 1).any() and (ref.n_filters == 1).any()
    # the store's filters are the file's, bit for bit
    W = fdb.filters().reshape(-1, 9)
    assert W.dtype == np.float32 and np.array_equal(W, study.X)


def test_depth_decile_of_every_layer_is_pandas_cut(study):
    got = study.fdb.sql("SELECT layer_id, depth_decile FROM layers_with_models ORDER BY layer_id")
    assert got.depth_decile.tolist() == study.ref.depth_decile.tolist()
    # every decile is there, the boundaries among them: conv_depth_norm 0.3 and 0.7 (linspace's
    # 0.30000000000000004 and 0.7000000000000001) fall in (0.2, 0.3] and (0.6, 0.7]
    assert set(got.depth_decile) == set(DECILES)
    ref = study.ref
    assert (ref.depth_decile[ref.conv_depth_norm == 0.3] == "(0.2, 0.3]").all() and (ref.conv_depth_norm == 0.3).any()
    assert (ref.depth_decile[ref.conv_depth_norm == 0.7] == "(0.6, 0.7]").all() and (ref.conv_depth_norm == 0.7).any()
    assert ((ref.conv_depth == 0) == (ref.depth_decile == "0")).all()
    # a where on it selects the same layers
    for value in ("0", "(0.2, 0.3]", "(0.9, 1.0]"):
        ids = study.fdb.layers({"depth_decile": value}).layer_id.tolist()
        assert ids == np.flatnonzero(ref.depth_decile == value).tolist()


def test_layer_metrics_against_the_reference(study):
    """Every layer's quality from its filters (reference.layer_quality; orthogonality from the
    (out, in*9) weight): the store's to 1e-9 (1e-12 for orthogonality), nulls alike."""
    stored, ref = study.stored, study.ref
    for k in METRICS:
        got, want = stored[k].astype(np.float64).to_numpy(), ref[k].to_numpy(np.float64)
        assert np.array_equal(np.isnan(got), np.isnan(want)), k
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 if k == "orthogonality" else 1e-9, err_msg=k)
    # the fixture's degenerate layers are there
    assert (ref.sparsity == 1).sum() >= 3 and ((ref.sparsity > 0) & (ref.sparsity < 1)).sum() > 50
    assert ref.variance_entropy.isna().any() and ref.orthogonality.isna().any()


# -- (3) model metrics, per model and per depth decile ------------------------------------------------
@pytest.mark.parametrize("by, layers", [(None, "all"), (None, "first"), ("depth_decile", "all"),
                                        ("depth_decile", "first")])
def test_model_metrics_against_pandas(study, by, layers):
    got = study.fdb.model_metrics(layers=layers, by=by)
    keys = ["model", "depth_decile"] if by else ["model"]
    assert got.index.names == keys
    for source, tol in (("store", 1e-12), ("reference", 1e-9)):
        want = model_table(study, by, layers == "first", source).set_index(keys)
        assert sorted(got.index) == sorted(want.index)
        w = want.loc[got.index]
        np.testing.assert_array_equal(got.n_layers.to_numpy(), w.n_layers.to_numpy(np.int64))
        np.testing.assert_array_equal(got.n_filters.to_numpy(), w.n_filters.to_numpy(np.int64))
        for k in METRICS:
            a, b = got[k].to_numpy(np.float64), w[k].to_numpy(np.float64)
            assert np.array_equal(np.isnan(a), np.isnan(b)), (source, k)
            np.testing.assert_allclose(a, b, rtol=0, atol=tol, err_msg=f"{source} {k}")
    # model_id order, then the deciles in their natural order
    assert got.model_id.is_monotonic_increasing
    assert got.model_id.tolist() == [study.model_ids[m] for m in got.index.get_level_values("model")]
    if by:
        for _, g in got.groupby("model_id"):
            d = g.index.get_level_values("depth_decile").tolist()
            assert d == sorted(d, key=DECILES.index)
        assert set(got.index.get_level_values("depth_decile")) == ({"0"} if layers == "first" else set(DECILES))
    # the all-zero first layer: sparsity 1, its entropies without weight (null), its orthogonality known
    row = got.loc[study.zero_first] if not by else got.loc[(study.zero_first, "0")]
    if layers == "first":
        assert row.sparsity == 1.0 and np.isnan(row.variance_entropy) and np.isnan(row.variance_entropy_clean)


def test_model_metrics_of_a_selection(study):
    fdb = study.fdb
    got = fdb.model_metrics(where={"training_dataset": "ImageNet"}, by="depth_decile")
    want = model_table(study, "depth_decile")
    want = want[want.training_dataset == "ImageNet"].set_index(["model", "depth_decile"]).loc[got.index]
    assert len(got) == len(want) and set(got.index.get_level_values(0)) == set(
        study.models.index[study.models.training_dataset == "ImageNet"])
    for k in METRICS:
        np.testing.assert_allclose(got[k].to_numpy(np.float64), want[k].to_numpy(np.float64), rtol=0, atol=1e-12)
    # where depth_decile "0" is the first layers
    pd.testing.assert_frame_equal(fdb.model_metrics(where={"depth_decile": "0"}), fdb.model_metrics(layers="first"),
                                  check_exact=True)
    # a model's metrics over some of its deciles
    sel = ["(0.0, 0.1]", "(0.5, 0.6]"]
    got = fdb.model_metrics(where={"depth_decile": sel})
    layers = study.from_store[study.from_store.depth_decile.isin(sel)]
    want = ref_model_metrics(layers).loc[got.index]
    for k in METRICS:
        np.testing.assert_allclose(got[k].to_numpy(np.float64), want[k].to_numpy(np.float64), rtol=0, atol=1e-12)


def test_cohort_metric_per_decile(study):
    """The study's box plots (entropy_normal_vs_robust.pdf): per training dataset and decile, the
    robust and the normal models' variance entropy: the same values as pandas gives, per cohort."""
    got = study.fdb.model_metrics(by="depth_decile").reset_index().join(study.models, on="model")
    want = model_table(study, "depth_decile")
    for (ds, decile, robust), g in got.groupby(["training_dataset", "depth_decile", "robust"]):
        w = want[(want.training_dataset == ds) & (want.depth_decile == decile) & (want.robust == robust)]
        assert sorted(g.model) == sorted(w.model)
        a = g.set_index("model").variance_entropy.sort_index().to_numpy()
        b = w.set_index("model").variance_entropy.sort_index().to_numpy()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
        assert np.array_equal(np.isnan(a), np.isnan(b))
    # both cohorts in every decile of every training dataset of the study
    cohorts = got[got.training_dataset.isin(STUDY_DATASETS)].groupby(["training_dataset", "depth_decile"]).robust.nunique()
    assert len(cohorts) == 3 * len(DECILES) and (cohorts == 2).all()


# -- (1) correlation per training dataset ---------------------------------------------------------------
CASES = [
    ("variance_entropy", "robust_accuracy", "all", "spearman"),
    ("sparsity", "robust_accuracy", "all", "spearman"),
    ("orthogonality", "robust_accuracy", "all", "spearman"),
    ("variance_entropy", "clean_accuracy", "all", "spearman"),
    ("variance_entropy", "robust_accuracy", "first", "spearman"),
    ("sparsity", "clean_accuracy", "first", "spearman"),
    ("variance_entropy_norm", "robust_accuracy", "all", "pearson"),
    ("orthogonality", "clean_accuracy", "first", "pearson"),
    ("variance_entropy", "robust_accuracy", "all", "kendall"),
    ("robust", "variance_entropy", "all", "spearman"),
]


def check_correlation(got, want: pd.DataFrame) -> None:
    assert got.index.tolist() == want.index.tolist()
    np.testing.assert_array_equal(got.n.to_numpy(), want.n.to_numpy(np.int64))
    for k in ("statistic", "p_value", "ci_low", "ci_high"):
        a, b = got[k].to_numpy(np.float64), want[k].to_numpy(np.float64)
        assert np.array_equal(np.isnan(a), np.isnan(b)), k
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("x, y, layers, method", CASES)
def test_correlation_per_training_dataset(study, x, y, layers, method):
    got = study.fdb.correlation(x, y, group_by="training_dataset", method=method, layers=layers)
    table = model_table(study, first=layers == "first")
    want = ref_correlation(table, x, y, "training_dataset", method)
    assert got.index.name == "training_dataset" and got.index.tolist() == [*STUDY_DATASETS, "SVHN"]
    check_correlation(got, want)
    # the SVHN pair is too small (< 3 models): all undefined; the others are defined
    assert got.loc["SVHN"].n < 3 and got.loc["SVHN", ["statistic", "p_value", "ci_low", "ci_high"]].isna().all()
    assert got.loc[STUDY_DATASETS, "statistic"].notna().all()
    # the models used: those having both values (normal models have no robust accuracy; one robust
    # model has no clean accuracy), with their values
    used = table.dropna(subset=[x, y])
    if "robust_accuracy" in (x, y):
        assert set(used.model) <= set(study.models.index[study.models.robust])
    if "clean_accuracy" in (x, y):
        assert study.models.clean_accuracy.isna().sum() == 1 and len(used) == len(table.dropna(subset=[x])) - 1
    pts = got.points
    assert pts.model.tolist() == used.model.tolist()
    assert pts.group.tolist() == used.training_dataset.tolist()
    np.testing.assert_allclose(pts.x.to_numpy(), used[x].to_numpy(np.float64), rtol=0, atol=1e-12)
    np.testing.assert_allclose(pts.y.to_numpy(), used[y].to_numpy(np.float64), rtol=0, atol=1e-12)


def test_correlation_repeats_exactly_and_without_groups(study):
    fdb = study.fdb
    a = fdb.correlation("variance_entropy", "robust_accuracy", group_by="training_dataset")
    b = fdb.correlation("variance_entropy", "robust_accuracy", group_by="training_dataset")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    pd.testing.assert_frame_equal(a.points, b.points, check_exact=True)
    assert a.to_result() == b.to_result()
    # no group_by: one group of all the models having both values
    got = fdb.correlation("variance_entropy", "clean_accuracy", method="pearson")
    want = ref_correlation(model_table(study), "variance_entropy", "clean_accuracy", None, "pearson")
    assert got.index.tolist() == ["all"] and got.n.iloc[0] == len(study.models) - 1
    check_correlation(got, want)


def test_correlation_of_a_selection(study):
    """A where on the model's layers: the metrics over those layers; on a model field: those models."""
    fdb = study.fdb
    got = fdb.correlation("variance_entropy", "robust_accuracy", group_by="training_dataset",
                          where={"conv_depth": {"lte": 3}})
    layers = study.from_store[study.from_store.conv_depth <= 3]
    table = ref_model_metrics(layers).reset_index().join(study.models, on="model")
    check_correlation(got, ref_correlation(table, "variance_entropy", "robust_accuracy", "training_dataset", "spearman"))
    got = fdb.correlation("sparsity", "clean_accuracy", group_by="robust", where={"training_dataset": STUDY_DATASETS},
                          method="kendall")
    table = model_table(study)
    table = table[table.training_dataset.isin(STUDY_DATASETS)]
    want = ref_correlation(table, "sparsity", "clean_accuracy", "robust", "kendall").sort_index()
    check_correlation(got, want)


def test_correlation_per_depth_decile(study):
    """group_by depth_decile: a model's metrics per decile, one correlation per decile."""
    got = study.fdb.correlation("variance_entropy", "robust_accuracy", group_by="depth_decile",
                                where={"training_dataset": "CIFAR-10"}, method="pearson")
    table = model_table(study, "depth_decile")
    table = table[table.training_dataset == "CIFAR-10"]
    want = ref_correlation(table, "variance_entropy", "robust_accuracy", "depth_decile", "pearson")
    want = want.loc[[d for d in DECILES if d in want.index]]
    check_correlation(got, want)


def test_a_group_too_small_is_undefined(study):
    got = study.fdb.correlation("variance_entropy", "clean_accuracy", group_by="training_dataset",
                                where={"training_dataset": ["SVHN", "CIFAR-10"]})
    values = ["statistic", "p_value", "ci_low", "ci_high"]
    assert got.loc["SVHN"].n == 2 and got.loc["SVHN", values].isna().all()  # a pair: < 3 models
    assert got.loc["SVHN"].n_resamples == 0  # no interval: no resample
    assert got.loc["CIFAR-10"].n == 2 * DATASETS["CIFAR-10"] - 1 and got.loc["CIFAR-10", values].notna().all()
    assert 0 < got.loc["CIFAR-10"].n_resamples <= 2000


# -- (2) KL robust vs normal per depth decile -----------------------------------------------------------
@pytest.mark.parametrize("ds", STUDY_DATASETS)
def test_divergence_robust_vs_normal_per_depth_decile(study, ds):
    got = study.fdb.divergence("robust", where={"training_dataset": ds}, within="depth_decile")
    ref, X = study.ref, study.X

    def filters(mask: pd.Series) -> np.ndarray:
        return np.concatenate([X[a:b + 1] for a, b in zip(ref["first"][mask], ref["last"][mask])])

    in_ds = ref.training_dataset == ds
    # the whole selection: robust vs normal over all its layers, on the global basis (all filters)
    want = reference.divergence([filters(in_ds & ~ref.robust), filters(in_ds & ref.robust)], X)
    assert got.labels == [False, True]
    np.testing.assert_allclose(np.asarray(got.matrix), want["matrix"], rtol=1e-9, atol=1e-15)
    # per decile, in their natural order, the groups its layers hold
    present = [d for d in DECILES if (in_ds & (ref.depth_decile == d)).any()]
    assert list(got.facets) == present
    facets = {f["value"]: f for f in got.to_dict()["facets"]}
    n_two = 0
    for d in present:
        here = in_ds & (ref.depth_decile == d)
        labels = [r for r in (False, True) if (here & (ref.robust == r)).any()]
        facet = got.facets[d]
        assert facet.index.tolist() == labels and facet.columns.tolist() == labels
        want = reference.divergence([filters(here & (ref.robust == r)) for r in labels], X)
        np.testing.assert_allclose(facet.to_numpy(np.float64), want["matrix"], rtol=1e-9, atol=1e-15, err_msg=d)
        n_two += len(labels) == 2
        f = facets[d]
        assert f["n_filters"] == [int(ref.n_filters[here & (ref.robust == r)].sum()) for r in labels]
        assert f["n_models"] == [ref.model[here & (ref.robust == r)].nunique() for r in labels]
    assert n_two == len(present) == len(DECILES)


def test_correlation_per_model_is_a_group_of_one(study):
    """group_by model or model_id (the table's own columns): one model a group, too few to
    correlate (a hostile review found a 500 here: the column was taken twice)."""
    for field in ("model", "model_id"):
        got = study.fdb.correlation("sparsity", "clean_accuracy", group_by=field)
        assert len(got) == len(study.models) and (got.n <= 1).all() and got.statistic.isna().all()


def test_the_hostile_reviews_findings(study):
    """A null group is a group of its own (last), holding its models; a within beyond the group
    cap is refused; depths take no bounds; pearson's interval holds for values near a double's ends."""
    from cnnfilterdb.analysis import Analysis
    from cnnfilterdb.requests import DivergenceRequest
    from cnnfilterdb.selection import InvalidValue, SelectionError
    from cnnfilterdb.stats.correlation import correlation

    fdb = study.fdb
    got = fdb.correlation("variance_entropy", "clean_accuracy", group_by="pretraining_dataset")
    models = fdb.models()
    assert got.n.sum() == models.clean_accuracy.notna().sum()  # every model with both values counted once
    if models.pretraining_dataset.isna().any():
        assert got.index[-1] is None and got.n.iloc[-1] > 0
    with pytest.raises(InvalidValue, match="no bounds"):
        fdb.histograms(where={"depth_decile": {"gte": "(0.2, 0.3]"}})
    with open_catalog(study.db) as con:
        a = Analysis(con, study.db)
        with pytest.raises(SelectionError, match="group_by layer_id gives .* groups; at most 10"):
            a.divergence(DivergenceRequest(group_by="layer_id", within="training_dataset"), max_groups=10)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=30), rng.normal(size=30)
    base = correlation(x, y, "pearson")
    for scale in (1e200, 1e-200):
        far = correlation(x * scale, y, "pearson")
        assert far["n_resamples"] == base["n_resamples"] == 2000
        np.testing.assert_allclose([far["ci_low"], far["ci_high"]], [base["ci_low"], base["ci_high"]], rtol=1e-12)


def test_the_shells_depth_decile_macro_is_the_engines():
    """depth_decile is written twice, on purpose: sql/macros.sql's macro for the DuckDB shell, and
    selection.COMPUTED_FIELDS for the engine (any store, whatever macros it persisted): the same
    label for every value, edges and their neighbours included."""
    import duckdb

    from cnnfilterdb import sql
    from cnnfilterdb.selection import COMPUTED_FIELDS

    edges = np.linspace(0, 1, 11)
    xs = np.concatenate([np.random.default_rng(0).random(2000), edges, np.nextafter(edges, 2), np.nextafter(edges, -1)])
    con = duckdb.connect()
    con.execute(sql.read("macros").split("-- A filter's nine weights")[0])
    rows = [(d, float(x)) for x in xs for d in (0, 1)]
    got = con.execute(f"SELECT depth_decile(conv_depth, conv_depth_norm), {COMPUTED_FIELDS['depth_decile']} "
                      "FROM (SELECT unnest(?::INTEGER[]) AS conv_depth, unnest(?::DOUBLE[]) AS conv_depth_norm)",
                      [[d for d, _ in rows], [x for _, x in rows]]).fetchall()
    assert all(a == b for a, b in got) and len(got) == len(rows)
