"""The figures (cnnfilterdb/figures.py, plots.py) and GET /v1/plots: the data each figure draws is
the JSON endpoint's for the same request (compared on the artists: image arrays in display order,
line and box data, KDE curves), the ridge KDE agrees with KDEpy on the raw coefficients, and the
HTTP surface (bytes, ETag/304, text as text, errors) holds."""
from __future__ import annotations

import io
import json
import math
import re
import xml.etree.ElementTree as ET
from urllib.parse import quote

import numpy as np
import pytest
from KDEpy import FFTKDE
from KDEpy.bw_selection import silvermans_rule
from matplotlib.collections import PathCollection
from matplotlib.image import imread

from cnnfilterdb.analysis import Analysis
from cnnfilterdb.plots import FIGURES, MAX_PIXELS, NOTEBOOK_FIGURES, PlotRequest, Provenance, draw, render


@pytest.fixture(scope="module")
def analysis(con, v1_store):
    return Analysis(con, v1_store)


@pytest.fixture(scope="module")
def client(v1_client):
    return v1_client


def _fig(analysis, figure, **params):
    return draw(analysis, PlotRequest.of(figure, **params))


def _labels(result):
    return [f"{v} ({n})" for v, n in zip(result["labels"], result["n_models"])]


def _shown(img) -> np.ndarray:
    """An image artist's data as drawn (masked cells as NaN)."""
    return np.ma.filled(np.ma.asarray(img.get_array(), dtype=np.float64), np.nan)


# ---- the data drawn is the endpoint's ------------------------------------------------------------
@pytest.mark.parametrize("group_by,where", [("task", None), ("visual_category", None), ("depth_bin", None),
                                            ("training_dataset", {"task": ["Classification", "Segmentation", "GAN"]})])
def test_divergence_heatmap_draws_the_endpoints_matrix(analysis, client, group_by, where):
    body = {"group_by": group_by, "metric": "js", **({"where": where} if where else {})}
    want = client.post("/v1/divergence", json=body).json()
    fig = _fig(analysis, "divergence", group_by=group_by, where=where, metric="js")
    ax = fig.axes[0]
    D = np.array(want["matrix"])
    # the notebook's order: ascending column mean; depth bins in their natural order
    order = np.arange(len(D)) if group_by == "depth_bin" else np.argsort(D.mean(axis=0), kind="stable")
    assert np.array_equal(_shown(ax.images[0]), D[np.ix_(order, order)])
    labels = [_labels(want)[i] for i in order]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())
    assert ax.images[0].get_cmap().name == "fire"
    if group_by == "depth_bin":
        assert labels[0].startswith("[0.0, 0.1] (")


def test_kl_combined_is_three_heatmaps_with_the_papers_titles(analysis, client):
    fig = _fig(analysis, "kl_combined")
    assert fig.get_suptitle() == "Distribution shifts of trained 3x3 convolution filters"
    heatmaps = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in heatmaps] == ["Task", "Visual Category", "Relative Depth of Convolution Layer"]
    for ax, g in zip(heatmaps, ["task", "visual_category", "depth_bin"]):
        want = client.post("/v1/divergence", json={"group_by": g}).json()
        D = np.array(want["matrix"])
        order = np.arange(len(D)) if g == "depth_bin" else np.argsort(D.mean(axis=0), kind="stable")
        assert np.array_equal(_shown(ax.images[0]), D[np.ix_(order, order)])
        assert [t.get_text() for t in ax.get_yticklabels()] == [_labels(want)[i] for i in order]


def test_drift_box_draws_the_upper_triangles(analysis, client):
    fig = _fig(analysis, "drift_box")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Drift D"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Visual Category", "Task"]  # Task on top
    drawn = {a.get_gid(): a for a in ax.get_children() if a.get_gid()}
    for k, g in enumerate(["visual_category", "task"]):  # boxes bottom to top
        want = client.post("/v1/divergence", json={"group_by": g}).json()
        D = np.array(want["matrix"])
        upper = D[np.triu_indices(len(D), k=1)]
        assert want["drift"]["median"] == pytest.approx(np.median(upper), rel=1e-12)
        assert drawn[f"medians-{k}"].get_xdata()[0] == pytest.approx(want["drift"]["median"], rel=1e-12)
        assert drawn[f"means-{k}"].get_xdata()[0] == pytest.approx(want["drift"]["mean"], rel=1e-12)
        q1, q3 = sorted(set(drawn[f"boxes-{k}"].get_xdata()))
        assert (q1, q3) == pytest.approx((want["drift"]["q1"], want["drift"]["q3"]), rel=1e-12)


def test_ridge_draws_the_kde_endpoints_curves(analysis, client):
    """A column of rows per coefficient, one collection of paths in drawing order: row r's fill then
    its outline, the curve being the group's density standing on the baseline n - 1 - r and scaled
    to 2 units at 1.05 x its peak (the notebook's overlapping panels, each autoscaled from 0 with a
    5% margin), drawn at every step-th grid point; lower rows in front."""
    from matplotlib.colors import to_rgba

    from cnnfilterdb.limits import MAX_CURVE_POINTS

    want = client.post("/v1/kde", json={"group_by": "visual_category"}).json()
    fig = _fig(analysis, "ridge", group_by="visual_category")
    n = len(want["groups"])
    step = -(-len(want["grid"]) // MAX_CURVE_POINTS)
    x = np.asarray(want["grid"])[::step]
    assert len(fig.axes) == 9
    for col, ax in enumerate(fig.axes):
        assert ax.get_ylim() == (0, n + 1) and len(ax.collections) == 1
        coll = ax.collections[0]
        paths, faces, edges = coll.get_paths(), coll.get_facecolors(), coll.get_edgecolors()
        assert len(paths) == 2 * n
        for row, g in enumerate(want["groups"]):
            d = np.asarray(g["density"][col])[::step]
            curve = (n - 1 - row) + 2 * d / (1.05 * d.max())
            fill, outline = paths[2 * row].vertices, paths[2 * row + 1].vertices
            np.testing.assert_allclose(outline[:len(x)], np.column_stack([x, curve]), rtol=1e-15)
            np.testing.assert_allclose(fill[:len(x)], np.column_stack([x, curve]), rtol=1e-15)
            assert fill[len(x)].tolist() == [x[-1], n - 1 - row] and fill[len(x) + 1].tolist() == [x[0], n - 1 - row]
            assert tuple(faces[2 * row]) == to_rgba(f"C{row % 10}", 0.7) and faces[2 * row + 1][3] == 0
            assert tuple(edges[2 * row + 1]) == to_rgba("#f0f0f0")
    assert [t.get_text() for t in fig.axes[0].texts] == _labels({"labels": [g["label"] for g in want["groups"]],
                                                                 "n_models": [g["n_models"] for g in want["groups"]]})
    assert [ax.get_title() for ax in fig.axes] == [f"c{c}" for c in range(9)]


def test_ridge_kde_agrees_with_kdepy_on_the_raw_coefficients(client, con):
    """Tolerances, and why: the quartiles are located inside a bin of the fine histogram (2048
    bins, width h = 2.8e-3 here), so each lies within h of np.percentile's (measured: 0.4 h at
    most); the bandwidth takes min(std, IQR / 1.349) and so inherits at most 2 h / IQR relative
    error through the IQR (asserted: 1e-2; measured: 3.7e-3 for a group of 5,000 values, 1e-3 for
    25,000). The densities: each value is binned at its bin's centre (KDEpy: linearly between grid
    points), a shift below h / 2 against bandwidths of 0.05..0.15, plus the bandwidth's difference:
    asserted within 5e-3 of the curve's peak (measured: 1.7e-3 at most)."""
    want = client.post("/v1/kde", json={"group_by": "task"}).json()
    mean, comp = con.execute("SELECT mean, components FROM basis").fetchone()
    mean, C = np.array(mean), np.array(comp).reshape(9, 9)
    grid = np.array(want["grid"])
    h = grid[1] - grid[0]
    pad = 50  # KDEpy wants a grid wider than the data
    ext = np.concatenate([grid[0] - h * np.arange(pad, 0, -1), grid, grid[-1] + h * np.arange(1, pad + 1)])
    for g in want["groups"]:
        W = con.execute("SELECT w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM filters JOIN models USING (model_id) "
                        "WHERE task = ?", [g["label"]]).fetchnumpy()
        X = np.stack([W[f"w{i}"] for i in range(9)], axis=1).astype(np.float64)
        peak = np.abs(X).max(axis=1)
        c = (X / np.where(peak > 0, peak, 1.0)[:, None] - mean) @ C.T
        assert g["n_filters"] == len(c)
        for i in range(9):
            assert g["std"][i] == pytest.approx(np.std(c[:, i], ddof=1), rel=1e-9)
            assert np.abs(np.array(g["quartiles"][i]) - np.percentile(c[:, i], [25, 75])).max() <= h
            assert g["bandwidth"][i] == pytest.approx(silvermans_rule(c[:, i:i + 1]), rel=1e-2)
            ref = FFTKDE(kernel="gaussian", bw="silverman").fit(c[:, i]).evaluate(ext)[pad:-pad]
            assert np.abs(np.array(g["density"][i]) - ref).max() <= 5e-3 * ref.max()


def test_eigenimages_explained_variance_covariance_draw_the_pca(analysis, client, con):
    where = {"visual_category": ["natural", "fractals"]}
    pca = client.post("/v1/pca", json={"where": where}).json()
    fig = _fig(analysis, "eigenimages", where=where)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 9
    for i, ax in enumerate(images):
        assert np.array_equal(_shown(ax.images[0]), np.array(pca["components"][i]))
        assert ax.get_title() == f"$v_{i}$"
        assert ax.get_xlabel() == f"{pca['explained_variance_ratio'][i]:.2f}"
        assert ax.images[0].get_cmap().name == "seismic" and ax.images[0].get_clim() == (-1, 1)

    fig = _fig(analysis, "explained_variance", where=where)
    ax = fig.axes[0]
    everything = client.post("/v1/pca", json={}).json()
    assert np.array_equal(ax.lines[0].get_ydata(), np.cumsum(everything["explained_variance_ratio"]))
    assert np.array_equal(ax.lines[1].get_ydata(), np.cumsum(pca["explained_variance_ratio"]))
    assert ax.get_xlabel() == "most-significant n components"
    assert ax.get_ylabel() == "cumulative explained variance ratio"

    fig = _fig(analysis, "covariance")
    drawn = _shown(fig.axes[0].images[0])
    assert np.array_equal(drawn, np.array(everything["covariance"]))
    # ... which is the sample covariance of the peak-scaled filters (scikit-learn's get_covariance)
    W = con.execute("SELECT w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM filters").fetchnumpy()
    X = np.stack([W[f"w{i}"] for i in range(9)], axis=1).astype(np.float64)
    peak = np.abs(X).max(axis=1)
    X /= np.where(peak > 0, peak, 1.0)[:, None]
    from sklearn.decomposition import PCA

    assert drawn == pytest.approx(PCA(9).fit(X).get_covariance(), abs=1e-12)
    # its rows and columns are the 9 weights, and its axes say so (the notebook's say "Principal Component")
    ax = fig.axes[0]
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        assert [t.get_text() for t in ticks] == [f"w{i}" for i in range(9)]
    assert ax.get_xlabel() == ax.get_ylabel() == "filter weight (3x3, row-major)"
    assert ax.get_title() == "Covariance of the peak-scaled filters' 9 weights"


def _luminance(png: bytes) -> np.ndarray:
    rgb = imread(io.BytesIO(png), format="png")[..., :3]
    return rgb @ np.array([0.2126, 0.7152, 0.0722])


def _cell_edges(lum: np.ndarray, ax, n: int, r: int, c: int) -> tuple[float, dict[str, float]]:
    """Cell (r, c) of an n x n heatmap filling ``ax``, in the rendered image's luminance: its
    centre's, and each side's darkest pixel within 3 of the edge across the middle half of it."""
    H, W = lum.shape
    x0, y0, x1, y1 = ax.get_position().extents  # the image fills its axes
    cw, ch = (x1 - x0) * W / n, (y1 - y0) * H / n
    left, top = x0 * W + c * cw, (1 - y1) * H + r * ch
    xs, ys = slice(round(left + cw / 4), round(left + 3 * cw / 4)), slice(round(top + ch / 4), round(top + 3 * ch / 4))
    sides = {}
    for side, x in (("left", left), ("right", left + cw)):
        sides[side] = lum[ys, round(x) - 3:round(x) + 4].min()
    for side, y in (("top", top), ("bottom", top + ch)):
        sides[side] = lum[round(y) - 3:round(y) + 4, xs].min()
    return lum[round(top + ch / 2), round(left + cw / 2)], sides


@pytest.mark.parametrize("figure", ["divergence", "kl_combined"])
def test_fires_white_maximum_is_outlined_on_the_white_page(figure):
    """Each heatmap cell is outlined in a dark line (the frame at the image's edge): fire's white
    maximum, in a corner and beside a near-white cell, vanished into the page and into its neighbour."""
    from cnnfilterdb import figures

    D = np.array([[0, .3, .4, 1.0], [.3, 0, .5, .98], [.4, .5, 0, .2], [1.0, .98, .2, 0]])
    result = {"matrix": D.tolist(), "labels": ["a", "b", "c", "d"], "n_models": [1, 1, 1, 1],
              "group_by": "depth_bin", "metric": "kl_sym"}  # an ordered field: drawn in this order
    fig = figures.divergence(result) if figure == "divergence" else figures.kl_combined([result, result])
    lum = _luminance(render(fig, "png", 100))
    heatmaps = [a for a in fig.axes if a.images]
    assert len(heatmaps) == (1 if figure == "divergence" else 2)
    for ax in heatmaps:
        for r, c in [(0, 3), (3, 0), (1, 3)]:  # the maxima (white) in the corners, and the near-white cell
            centre, sides = _cell_edges(lum, ax, len(D), r, c)
            assert centre > 0.95 and max(sides.values()) < 0.35, (r, c, sides)


def test_density2d_draws_the_endpoints_counts_with_cj_upwards(analysis, client):
    body = {"components": [2, 0], "bins": 64, "range": [-2.0, 2.5], "where": {"task": "Classification"}}
    want = client.post("/v1/density2d", json=body).json()
    fig = _fig(analysis, "density2d", components=(2, 0), bins=64, range=(-2.0, 2.5), where={"task": "Classification"})
    img = fig.axes[0].images[0]
    counts = np.array(want["counts"], dtype=np.float64)
    expect = (counts / counts.max()).T  # rows: c0 (the second component), increasing upwards
    assert img.origin == "lower" and tuple(img.get_extent()) == (-2.0, 2.5, -2.0, 2.5)
    shown = _shown(img)
    assert np.array_equal(np.isnan(shown), expect == 0)  # empty cells masked: the map's "bad" colour
    assert np.array_equal(shown[expect > 0], expect[expect > 0])
    cmap = img.get_cmap()
    assert tuple(cmap.get_bad()) == tuple(cmap(0.0)) == tuple(cmap.get_under())
    assert img.norm.vmin == 1e-5 and img.norm.vmax == 1
    # the notebook's defaults: c0 against c1, 512 bins over (-3.3, 3.3)
    assert PlotRequest.of("density2d").resolved()["bins"] == 512
    assert PlotRequest.of("density2d").resolved()["range"] == [-3.3, 3.3]


def test_layer_filters_draws_the_layers_filters_each_scaled_to_its_peak(analysis, client):
    layer = client.get("/v1/layers/3").json()
    page = client.get("/v1/layers/3/filters", params={"limit": 1000}).json()
    fig = _fig(analysis, "layer_filters", layer_id=3)
    shown = _shown(fig.axes[0].images[0])
    F = np.array([f["w"] for f in page["items"]], dtype=np.float64)[:256]
    for k, f in enumerate(F):
        r, c = divmod(k, 16)
        peak = np.abs(f).max()
        assert np.array_equal(shown[4 * r:4 * r + 3, 4 * c:4 * c + 3], f / peak if peak > 0 else f)
    assert np.isnan(shown[3::4, :]).all() and np.isnan(shown[:, 3::4]).all()
    assert str(layer["layer_id"]) in fig.axes[0].get_title() and layer["model"] in fig.axes[0].get_title()


def test_quality_draws_every_layers_metrics_by_field(analysis, con):
    fig = _fig(analysis, "quality", where={"conv_depth": {"lte": 6}}, color_by="visual_category")
    ax = fig.axes[0]
    rows = con.execute("SELECT visual_category, count(DISTINCT model_id), list(sparsity ORDER BY layer_id), "
                       "list(variance_entropy_norm ORDER BY layer_id) FROM layers_with_models "
                       "WHERE conv_depth <= 6 GROUP BY 1 ORDER BY lower(visual_category)").fetchall()
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [s.get_label() for s in scatters] == [f"{v} ({n})" for v, n, _, _ in rows]
    for s, (_, _, x, y) in zip(scatters, rows):
        assert np.array_equal(s.get_offsets(), np.column_stack([np.array(x, float), np.array(y, float)]))
    vertical = [ln.get_xdata()[0] for ln in ax.lines if ln.get_xdata()[0] == ln.get_xdata()[1]]
    horizontal = [ln.get_ydata()[0] for ln in ax.lines if ln.get_ydata()[0] == ln.get_ydata()[1]]
    assert vertical == [0.5] and sorted(horizontal) == [0.5, 1.0]  # the degenerate thresholds


# ---- bytes, formats, ETag -----------------------------------------------------------------------
@pytest.mark.parametrize("figure", FIGURES)
def test_every_figure_renders_with_no_parameters(client, figure):
    r = client.get(f"/v1/plots/{figure}.png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    img = imread(io.BytesIO(r.content), format="png")
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # not a blank canvas


def test_same_request_same_bytes_and_a_304(v1_store, client, analysis):
    for fmt in ("png", "svg", "pdf"):
        provenance = Provenance.of(analysis)  # the store and version, in the file's metadata
        a = render(_fig(analysis, "divergence", group_by="visual_category"), fmt, provenance=provenance)
        b = render(_fig(analysis, "divergence", group_by="visual_category"), fmt, provenance=provenance)
        assert a == b, fmt  # reproducible without any cache
        r = client.get(f"/v1/plots/divergence.{fmt}?group_by=visual_category")
        assert r.content == a
        assert (r.headers["x-store-id"], int(r.headers["x-store-version"])) == (provenance.store_id, 1)
        etag = r.headers["etag"]
        assert r.headers["cache-control"] == "no-cache"
        again = client.get(f"/v1/plots/divergence.{fmt}?group_by=visual_category", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        listed = client.get(f"/v1/plots/divergence.{fmt}?group_by=visual_category",
                            headers={"If-None-Match": f'"other", W/{etag}'})
        assert listed.status_code == 304
    # another parameter, another ETag; defaults spelled out give the default's ETag
    e1 = client.get("/v1/plots/divergence.png").headers["etag"]
    assert client.get("/v1/plots/divergence.png?group_by=task&metric=kl_sym&bins=70").headers["etag"] == e1
    assert client.get("/v1/plots/divergence.png?metric=js").headers["etag"] != e1
    assert client.head("/v1/plots/divergence.png").headers["etag"] == e1


def test_svg_and_pdf_keep_text_as_text(client, con):
    tasks = [t for (t,) in con.execute("SELECT DISTINCT task FROM models").fetchall()]
    svg = client.get("/v1/plots/kl_combined.svg").content
    texts = [el.text or "" for el in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert any("Distribution shifts of trained 3x3 convolution filters" in t for t in texts)
    assert all(any(t.startswith(f"{task} (") for t in texts) for task in tasks)
    pdf = client.get("/v1/plots/kl_combined.pdf").content
    assert pdf.startswith(b"%PDF")
    # TrueType outlines embedded (pdf.fonttype 42: a CIDFontType2 with its FontFile2), not Type 3 glyph procedures
    assert b"/FontFile2" in pdf and b"/CIDFontType2" in pdf
    assert b"/Type3" not in pdf and b"/CreationDate" not in pdf


def test_notebook_figures_are_all_figures():
    assert set(NOTEBOOK_FIGURES) <= set(FIGURES)


# ---- errors -----------------------------------------------------------------------------------
def _error(r):
    return r.json()["error"]


def test_unknown_figure_or_format_is_a_404_listing_them(client):
    r = client.get("/v1/plots/heatmap.png")
    assert r.status_code == 404 and all(f in _error(r)["message"] for f in FIGURES)
    r = client.get("/v1/plots/divergence.jpg")
    assert r.status_code == 404 and "png, svg, pdf" in _error(r)["message"]


def test_bad_parameters_get_the_analysis_endpoints_errors(client):
    for where in ({"taskk": "x"}, {"task": {"foo": 1}}, {"conv_depth": "deep"}, {"task": [[1]]}):
        body = client.post("/v1/divergence", json={"group_by": "task", "where": where})
        plot = client.get(f"/v1/plots/divergence.png?where={quote(json.dumps(where))}")
        assert (plot.status_code, _error(plot)) == (body.status_code, _error(body)), where
    for param, value in (("metric", "kl"), ("basis", "local"), ("weights", "none")):
        body = client.post("/v1/divergence", json={"group_by": "task", param: value})
        plot = client.get(f"/v1/plots/divergence.png?{param}={value}")
        assert plot.status_code == body.status_code == 400
        assert _error(plot)["message"] == _error(body)["message"]
    r = client.get("/v1/plots/divergence.png?group_by=nope")
    assert r.status_code == 400 and "known" in _error(r)["message"] and "visual_category" in _error(r)["message"]
    r = client.get('/v1/plots/divergence.png?where={"task": "nothing-like-this"}')
    assert r.status_code == 404 and _error(r)["code"] == "empty_selection"


def test_more_groups_than_a_figure_labels_is_a_400_with_the_limit(client, con):
    n_layers = con.execute("SELECT count(*) FROM layers").fetchone()[0]
    assert n_layers > 80
    r = client.get("/v1/plots/divergence.png?group_by=layer_id")
    assert r.status_code == 400 and f"gives {n_layers} groups; at most 80" in _error(r)["message"]
    r = client.get("/v1/plots/ridge.png?group_by=layer_id")
    assert r.status_code == 400 and "at most 40" in _error(r)["message"]
    r = client.get("/v1/plots/quality.png?color_by=layer_id")
    assert r.status_code == 400 and "at most 20" in _error(r)["message"]


@pytest.mark.parametrize("query,words", [
    ("groupby=task", "unknown query parameter(s) 'groupby'"),
    ("layer_id=3", "divergence takes no layer_id"),
    ("group_by=task,visual_category", "takes one group_by"),
    ("dpi=5", "dpi"),
    ("dpi=600&width=100&height=100", f"over the limit of {MAX_PIXELS:,}"),
    ("width=1e308", "width"),
    ("width=nan", "width"),
    ("bins=0", "bins"),
    ("bins=99999999999999999999999", "bins"),
    ("where=" + quote('{"task": "\\ud800"}'), "lone surrogate"),
    ("where=" + "x" * 5000, "not JSON"),
    ("where=" + quote("[" * 10_000 + "]" * 10_000), "where: nested too deeply"),
])
def test_hostile_parameters_are_4xx_with_a_message(client, query, words):
    r = client.get(f"/v1/plots/divergence.png?{query}")
    assert 400 <= r.status_code < 500, (query, r.status_code, r.text[:300])
    assert words in _error(r)["message"], _error(r)["message"]
    assert len(r.content) < 3000


@pytest.mark.parametrize("path", ["/v1/plots/density2d.png?components=0,9", "/v1/plots/density2d.png?components=0",
                                  "/v1/plots/density2d.png?range=nan,1", "/v1/plots/density2d.png?range=1,2,3",
                                  "/v1/plots/density2d.png?range=-inf,inf", "/v1/plots/layer_filters.png?layer_id=-1",
                                  "/v1/plots/layer_filters.png?layer_id=99999999", "/v1/plots/../sql.png",
                                  "/v1/plots/%2e%2e%2fsql.png", "/v1/plots/divergence.png%00.svg",
                                  "/v1/plots/" + "a" * 10_000 + ".png",
                                  "/v1/plots/drift_box.png?group_by=" + ",".join(
                                      ["task", "visual_category", "depth_bin", "training_dataset", "pretraining_dataset", "name",
                                       "producer"]),
                                  "/v1/plots/quality.png?color_by=nope", "/v1/plots/ridge.png?bins=99999"])
def test_hostile_paths_are_4xx(client, path):
    r = client.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text and len(r.content) < 3000


def test_kde_endpoint_limits(client):
    r = client.post("/v1/kde", json={"group_by": "layer_id", "bins": 8192})
    assert r.status_code == 400 and "over the limit" in _error(r)["message"]
    for body in ({"bins": 8}, {"bins": 10**9}, {"bins": "x"}, {"group_by": "nope"}, {"basis": "x"}, {"where": []}):
        r = client.post("/v1/kde", json=body)
        assert r.status_code in (400, 422), body
    r = client.post("/v1/kde", json={"where": {"task": "nothing-like-this"}})
    assert r.status_code == 404


def test_figures_do_not_touch_pyplot():
    import cnnfilterdb.figures
    import cnnfilterdb.plots

    src = open(cnnfilterdb.figures.__file__).read() + open(cnnfilterdb.plots.__file__).read()
    assert not re.search(r"^\s*(import matplotlib\.pyplot|from matplotlib import pyplot)", src, re.M)


# ---- found by a hostile review ------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_labels_client(tmp_path_factory, sample_v01):
    """A store whose labels are mathtext, HTML and very long text."""
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    from .helpers import cli_main

    work = tmp_path_factory.mktemp("hostile-labels")
    db = work / "db"
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    rng = np.random.default_rng(7)
    for k, (task, category) in enumerate([("$\\foo$", "$x^{$"), ("<script>alert(1)</script>", "{" * 500 + "$" * 3),
                                          ("a" * 5000, "$\\alpha$")]):
        np.savez(work / f"m{k}.npz", conv=rng.normal(size=(8, 4, 3, 3)).astype(np.float32))
        assert cli_main(["ingest", "--allow-missing", str(work / f"m{k}.npz"), "--db", str(db), "--model", f"hostile-{k}-$\\bar$",
                         "--task", task, "--visual-category", category]) == 0
    return TestClient(create_app(Settings(db=db)), raise_server_exceptions=False)


@pytest.mark.parametrize("url", ["/v1/plots/kl_combined.png", "/v1/plots/kl_combined.svg", "/v1/plots/divergence.pdf",
                                 "/v1/plots/ridge.png", "/v1/plots/quality.png", "/v1/plots/drift_box.png",
                                 "/v1/plots/divergence.png?group_by=model",
                                 "/v1/plots/eigenimages.png?where="
                                 + quote(json.dumps({"task": ["$\\foo$", "<script>alert(1)</script>"]}))])
def test_labels_are_drawn_as_text_not_mathtext(hostile_labels_client, url):
    r = hostile_labels_client.get(url)
    assert r.status_code == 200, r.text[:300]
    if url.endswith(".svg"):
        texts = [el.text or "" for el in ET.fromstring(r.content).iter("{http://www.w3.org/2000/svg}text")]
        assert any(t.startswith("$\\foo$ (") for t in texts)  # literally, dollars and backslash
        assert any(t.startswith("<script>alert(1)</script> (") for t in texts)  # text (escaped by the XML writer)
        assert max(len(t) for t in texts) < 100  # 5000 characters cut


def test_a_queue_of_waiting_analyses_is_bounded(v1_store):
    """Requests beyond analysis_concurrency running + analysis_queue waiting get a 429 at once,
    rather than each holding a server thread for analysis_wait_s."""
    import threading
    import time

    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    client = TestClient(create_app(Settings(db=v1_store, analysis_concurrency=1, analysis_queue=1,
                                            analysis_wait_s=30)), raise_server_exceptions=False)
    catalog = client.app.state.catalog
    assert catalog.analysis_slots.acquire()  # the one turn, taken
    try:
        waiting = []
        t = threading.Thread(target=lambda: waiting.append(client.get("/v1/plots/divergence.png?metric=js")))
        t.start()
        deadline = time.monotonic() + 10
        while catalog.analysis_queue._value != 0 and time.monotonic() < deadline:  # the waiter is queued
            time.sleep(0.01)
        t0 = time.monotonic()
        r = client.post("/v1/divergence", json={"group_by": "task"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "1 waiting" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 5  # at once, not after analysis_wait_s
    finally:
        catalog.analysis_slots.release()
    t.join(30)
    assert waiting[0].status_code == 200  # the queued request got its turn


def test_many_groupings_share_one_requests_budget(client, con, monkeypatch):
    import cnnfilterdb.analysis as analysis

    n = con.execute("SELECT count(DISTINCT visual_category) FROM models").fetchone()[0]
    one = n * (n - 1) // 2 * 9 * 70
    monkeypatch.setattr(analysis, "MAX_PAIR_CELLS", 2 * one)  # one grouping fits, the same twice would too...
    assert client.get("/v1/plots/drift_box.png?group_by=visual_category,visual_category").status_code == 200  # drawn once
    monkeypatch.setattr(analysis, "MAX_PAIR_CELLS", one + one // 2)  # ...but two distinct ones share the budget
    r = client.get("/v1/plots/drift_box.png?group_by=visual_category,task&metric=js")
    assert r.status_code == 400 and "cells to compare" in _error(r)["message"]


@pytest.mark.parametrize("path", ["/v1/plots/ridge.png?height=0.5", "/v1/plots/ridge.png?height=0.6&width=0.5"])
def test_tiny_figures_draw(client, path):
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("body,status,words", [
    ({"range": [1e308, 1e308]}, 422, "range"), ({"range": [1e16, 1e16]}, 422, "range"),
    ({"range": [-1.7976931348623157e308, 1.7976931348623157e308]}, 422, "range"),
    ({"range": [1e5, math.nextafter(1e5, 2e5)], "bins": 1000}, 400, "cannot hold"),
    ({"range": [5e-324, 5e-324], "bins": 4}, 200, None)])
def test_density2d_ranges_that_hold_no_bins_are_a_4xx(client, body, status, words):
    r = client.post("/v1/density2d", json=body)
    assert r.status_code == status, r.text[:300]
    if status == 200:  # widened by numpy's rule, and the response says so
        assert r.json()["range"] == [-0.5, 0.5]
    else:
        assert words in _error(r)["message"]
    lo, hi = body["range"]
    plot = client.get(f"/v1/plots/density2d.png?range={lo!r},{hi!r}&bins={body.get('bins', 512)}")
    assert plot.status_code == (200 if status == 200 else 400), plot.text[:300]


def test_ridge_and_kde_take_the_same_bins(client):
    for bins in (1, 15, 8193, 10_000):
        assert client.get(f"/v1/plots/ridge.png?bins={bins}").status_code == 400
        assert client.post("/v1/kde", json={"bins": bins}).status_code in (400, 422)
    assert client.get("/v1/plots/ridge.png?bins=16").status_code == 200


def test_figure_cache_keeps_no_entry_over_an_eighth_of_it():
    from cnnfilterdb.service.figure_cache import FigureCache

    cache = FigureCache(800)
    cache.put("a", b"x" * 100)
    cache.put("big", b"x" * 101)
    assert cache.get("a") is not None and cache.get("big") is None


def test_if_none_match_star_and_security_headers(client):
    r = client.get("/v1/plots/divergence.svg", headers={"If-None-Match": "*"})
    assert r.status_code == 304
    r = client.get("/v1/plots/divergence.svg")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    page = client.get("/static/index.html")
    assert page.headers["content-security-policy"] == client.get("/").headers["content-security-policy"]


def test_kde_std_of_many_groups_equals_a_direct_computation(client, con):
    """The per-group standard deviations, pooled from moments in one vectorized pass, equal
    np.std of the coefficients, group by group (here: every model)."""
    want = client.post("/v1/kde", json={"group_by": "model_id", "bins": 16}).json()
    mean, comp = con.execute("SELECT mean, components FROM basis").fetchone()
    mean, C = np.array(mean), np.array(comp).reshape(9, 9)
    for g in want["groups"][:6]:
        W = con.execute("SELECT w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM filters WHERE model_id = ?",
                        [g["label"]]).fetchnumpy()
        X = np.stack([W[f"w{i}"] for i in range(9)], axis=1).astype(np.float64)
        peak = np.abs(X).max(axis=1)
        c = (X / np.where(peak > 0, peak, 1.0)[:, None] - mean) @ C.T
        assert g["std"] == pytest.approx(np.std(c, axis=0, ddof=1), rel=1e-9)
