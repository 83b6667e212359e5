"""Issue 25, what a check shows: the check figure (figures.check) draws the result's numbers, and the
report (check_report.check_html, ``cnnfilterdb check -o``) is one self-contained, escaped page.

A real model of tests/data/models (the small ONNX classifier) is checked against the session's
sample store; a hostile name (a model named ``<script>...``, a file named ``<img onerror=...>``)
is drawn and written as text.
"""
from __future__ import annotations

import io
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import cnnfilterdb
from cnnfilterdb import figures, plots
from cnnfilterdb.check_report import check_html, write_check_output
from cnnfilterdb.plots import Provenance, render
from cnnfilterdb.selection import SelectionError

from .helpers import REPO

MODELS = REPO / "tests" / "data" / "models"
CLS = MODELS / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
DET = MODELS / "ch_PP-OCRv4_det_infer.onnx"
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def db(v1_store):
    return cnnfilterdb.open(v1_store)


@pytest.fixture(scope="module")
def checked(db):
    return db.check(DET)


@pytest.fixture(scope="module")
def provenance(checked):
    return Provenance(checked.store_id, checked.store_version)


def by_gid(fig, gid: str):
    found = [a for ax in fig.axes for a in ax.findobj(lambda a: a.get_gid() == gid)]
    assert len(found) == 1, (gid, found)
    return found[0]


# ---- the figure ----------------------------------------------------------------------------------

def test_plot_renders_every_format(checked, provenance):
    fig = checked.plot()
    png = render(fig, "png", 100, provenance)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(png))
    assert im.size == (1300, 560) and im.text["store_id"] == checked.store_id
    svg = render(fig, "svg", 100, provenance).decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and checked.model["name"] in svg
    assert render(fig, "pdf", 100, provenance)[:5] == b"%PDF-"


def test_figure_draws_the_result(checked):
    data = checked.to_dict()
    fig = figures.check(data)
    layers, deciles = data["layers"], data["population"]["deciles"]
    assert deciles and len(layers) == len(checked.layers) > 5
    # left: every layer a point at (conv_depth_norm, kl_to_population), the unusual ones apart
    normal, unusual = by_gid(fig, "layers").get_offsets(), by_gid(fig, "layers-unusual").get_offsets()
    assert len(normal) + len(unusual) == len(layers)
    flagged = [r for r in layers if "unusual" in r["flags"]]
    assert len(unusual) == len(flagged)
    want = sorted((r["conv_depth_norm"], r["kl_to_population"]) for r in layers if "unusual" not in r["flags"])
    assert np.allclose(sorted(map(tuple, np.asarray(normal))), want)
    assert np.allclose(sorted(map(tuple, np.asarray(unusual))),
                       sorted((r["conv_depth_norm"], r["kl_to_population"]) for r in flagged))
    # the population's band, median and 95th percentile per decile, over the decile's span
    assert all(d[k] > 0 for d in deciles for k in ("kl_q1", "kl_median", "kl_q3"))  # nothing at the floor here
    for i, d in enumerate(deciles):
        band = by_gid(fig, f"band-{i}")
        a, b = figures.decile_span(d["depth_decile"])
        assert (band.get_x(), band.get_width()) == pytest.approx((a, b - a))
        assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((d["kl_q1"], d["kl_q3"]))
        assert list(by_gid(fig, f"median-{i}").get_ydata()) == pytest.approx([d["kl_median"]] * 2)
        if d.get("kl_unusual_at") is not None:
            assert list(by_gid(fig, f"unusual-{i}").get_ydata()) == pytest.approx([d["kl_unusual_at"]] * 2)
        assert list(by_gid(fig, f"median-{i}").get_xdata()) == pytest.approx([a, b])
    assert figures.decile_span("0") == (-figures.DECILE_ZERO_HALF, figures.DECILE_ZERO_HALF)
    assert figures.decile_span("(0.3, 0.4]") == (0.3, 0.4)
    assert fig.axes[0].get_yscale() == "log"
    # right: the model's layers by quality over the population's density, the thresholds
    q = np.vstack([by_gid(fig, "quality-layers").get_offsets(), by_gid(fig, "quality-layers-unusual").get_offsets()])
    assert np.allclose(sorted(map(tuple, q)), sorted((r["sparsity"], r["variance_entropy_norm"]) for r in layers))
    density = data["population"]["quality_density"]
    mesh = by_gid(fig, "population-density")
    counts = np.asarray(density["counts"])
    assert np.array_equal(np.ma.filled(mesh.get_array(), 0).reshape(counts.T.shape), counts.T)
    assert counts.sum() == data["population"]["n_layers"]
    t = data["parameters"]["thresholds"]
    assert fig.axes[1].get_xlim() == pytest.approx((-0.02, 1.02))  # padded: a marker at sparsity 0 is whole
    assert by_gid(fig, "threshold-sparsity").get_xdata()[0] == t["sparsity_gt"]
    assert by_gid(fig, "threshold-entropy-low").get_ydata()[0] == t["entropy_norm_lt"]
    assert by_gid(fig, "threshold-entropy-high").get_ydata()[0] == t["entropy_norm_gt"]
    # as docs/figures.md says: sparse and low_entropy dashed, random_like dotted, each in the legend
    assert by_gid(fig, "threshold-sparsity").get_linestyle() == "--"
    assert by_gid(fig, "threshold-entropy-high").get_linestyle() == ":"
    # the title names the model and the store version; the legend counts the layers
    title = fig._suptitle.get_text()
    assert data["model"]["name"] in title and f"version {data['store_version']}" in title
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert f"unusual: at or above the 95th percentile ({len(flagged)} of {len(layers)})" in legend
    assert "thresholds: sparse, low_entropy" in legend and "threshold: random_like" in legend
    assert not [t for t in legend if "drawn at" in t]  # no value clipped to the floor


def check_dict(checked) -> dict:
    data = checked.to_dict()
    data["layers"] = [dict(r) for r in data["layers"]]
    data["population"] = {**data["population"], "deciles": [dict(d) for d in data["population"]["deciles"]]}
    return data


def test_figure_keeps_a_log_axis_when_a_median_is_zero(checked):
    """A decile whose layers' median divergence is 0 (and a layer at 0) are drawn at the log axis's
    floor, a decade under the least positive value; the legend says so. The boxes stay boxes."""
    data = check_dict(checked)
    d0 = data["population"]["deciles"][1]
    d0.update(kl_q1=0.0, kl_median=0.0)
    data["layers"][2].update(kl_to_population=0.0)
    positive = [v for d in data["population"]["deciles"] for v in (d["kl_q1"], d["kl_median"], d["kl_q3"]) if v > 0]
    positive += [r["kl_to_population"] for r in data["layers"] if r["kl_to_population"]]
    floor = figures.kl_floor(positive)
    assert floor < min(positive) <= 10 * floor * 10 and floor == 10 ** np.floor(np.log10(floor))
    fig = figures.check(data)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < floor
    band = by_gid(fig, "band-1")
    assert band.get_y() == pytest.approx(floor) and band.get_y() + band.get_height() == pytest.approx(d0["kl_q3"])
    assert list(by_gid(fig, "median-1").get_ydata()) == pytest.approx([floor, floor])
    points = np.vstack([by_gid(fig, "layers").get_offsets(), by_gid(fig, "layers-unusual").get_offsets()])
    assert (np.asarray(points)[:, 1] > 0).all() and floor in np.asarray(points)[:, 1]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert f"a divergence of 0 drawn at {floor:g} (log axis)" in legend
    assert render(fig, "png")[:4] == b"\x89PNG"
    assert figures.kl_floor([0.0, None, float("nan")]) == figures.KL_FLOOR_DEFAULT


def test_figure_zooms_to_layers_near_zero_sparsity(checked):
    """Every layer and occupied cell near sparsity 0: the x axis zoomed to them, padded, the sparse
    threshold beyond it said on the panel; the colour bar's ticks plain integers."""
    data = check_dict(checked)
    q = data["population"]["quality_density"]
    edges = np.asarray(q["sparsity_edges"])
    counts = np.asarray(q["counts"])
    moved = counts.copy()
    moved[:] = 0
    moved[0] = counts.sum(axis=0)  # every population layer in the first sparsity column
    data["population"] = {**data["population"], "quality_density": {**q, "counts": moved.tolist()}}
    for r in data["layers"]:
        r["sparsity"] = min(r["sparsity"], 0.01)
    fig = figures.check(data)
    aq = fig.axes[1]
    x0, x1 = aq.get_xlim()
    hi = max(figures.CHECK_ZOOM_MIN, 1.1 * edges[1])
    assert (x0, x1) == pytest.approx((-0.02 * hi, 1.02 * hi)) and x0 < 0
    assert "zoomed" in aq.get_xlabel()
    assert not [a for a in aq.findobj(lambda a: a.get_gid() == "threshold-sparsity")]
    assert "sparse above 0.5" in by_gid(fig, "threshold-off-axis").get_text()
    assert by_gid(fig, "threshold-entropy-low").get_ydata()[0] == data["parameters"]["thresholds"]["entropy_norm_lt"]
    # the whole range otherwise (the sample's own layers reach past CHECK_ZOOM_BELOW)
    assert figures.quality_xlim([0.0, 0.6], None) == pytest.approx((-0.02, 1.02))
    assert figures.quality_xlim([0.0, 0.01], None) == pytest.approx((-0.002, 0.102))
    # the colour bar: plain integers, no 2x10^0
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    cbar = fig.axes[2]
    labels = [t.get_text() for t in cbar.get_yticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"[\d,]+", t) for t in labels), labels
    assert figures.integer_ticks(2) == [1, 2] and figures.integer_ticks(3) == [1, 2, 3]
    assert figures.integer_ticks(130) == [1, 2, 5, 10, 20, 50, 100]


def test_figure_labels_never_overlap(checked):
    """Flagged layers at (nearly) the same point share one label "3, 7": no two labels' boxes
    intersect, each flagged layer's number is written once per panel."""
    data = check_dict(checked)
    for r in data["layers"]:
        r.update(flags=[])
    for i, r in enumerate(data["layers"][:6]):  # six flagged layers, pairs nearly on top of each other
        r.update(flags=["low_entropy"], sparsity=0.0 if i < 4 else 0.3, variance_entropy_norm=0.3 + 0.001 * i,
                 kl_to_population=2.0 + 0.001 * i)
    fig = figures.check(data)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for gid in ("labels-depth", "labels-quality"):
        texts = [a for ax in fig.axes for a in ax.findobj(lambda a, g=gid: a.get_gid() == g)]
        numbers = sorted(int(n) for t in texts for n in t.get_text().split(", "))
        assert numbers == sorted(int(data["layers"][i]["layer"]) for i in range(6)), (gid, numbers)
        boxes = [t.get_window_extent(renderer) for t in texts]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (gid, [t.get_text() for t in texts])
    quality = [t.get_text() for t in fig.axes[1].findobj(lambda a: a.get_gid() == "labels-quality")]
    assert any(", " in t for t in quality)


def test_numbers_are_exact_integers_and_4_digit_floats():
    from cnnfilterdb.check_report import number_text

    assert number_text(11904) == "11,904" and number_text(4) == "4" and number_text(0) == "0"
    assert number_text(8.401e-05) == "8.401e-05" and number_text(0.0001234) == "0.0001234"
    assert number_text(0.78106008) == "0.7811" and number_text(2.3443615) == "2.344" and number_text(0.0) == "0"
    assert number_text(12345.6) == "12,346" and number_text(-2.887427677) == "-2.887"


def test_figure_without_population_in_a_decile(checked):
    """A layer whose decile the population lacks (no kl) is an x on the axis, not a point."""
    data = checked.to_dict()
    data["layers"] = [dict(r) for r in data["layers"]]
    data["layers"][0].update(kl_to_population=None, flags=[])
    fig = figures.check(data, figsize=(7, 4))
    assert len(by_gid(fig, "layers-no-population").get_offsets()) == 1
    assert len(by_gid(fig, "layers").get_offsets()) + len(by_gid(fig, "layers-unusual").get_offsets()) \
        == len(data["layers"]) - 1
    assert render(fig, "png")[:4] == b"\x89PNG"


# ---- the page ------------------------------------------------------------------------------------

class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(html: str) -> list[tuple[str, dict]]:
    p = Tags()
    p.feed(html)
    return p.tags


def assert_self_contained(html: str):
    tags = parse(html)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed", "base")]
    for tag, attrs in tags:
        for k, v in attrs.items():
            assert not k.startswith("on"), (tag, k)
            if k in ("src", "href", "srcset", "action", "poster"):
                assert v.startswith("data:image/png;base64,") or v.startswith("#"), (tag, k, v[:80])
    assert not re.search(r"https?://", html)
    assert "@import" not in html and "url(" not in html


def test_check_html_is_self_contained_and_complete(checked, provenance):
    html = check_html(checked.to_dict(), provenance)
    assert_self_contained(html)
    assert checked.store_id in html and f"version {checked.store_version}" in html
    assert f"basis version {checked.basis_version}" in html
    assert checked.model["sha256"] in html and checked.model["file"] in html
    # a row per layer, its flags badged; the nearest models; the model's metrics
    assert html.count('<tr class="layer') == len(checked.layers)
    assert html.count('<tr class="layer flagged"') == sum(bool(f) for f in checked.layers["flags"])
    for name in checked.layers["name"]:
        assert name.replace("'", "&#x27;") in html
    assert len(re.findall(r"<tr><td>\d+</td><td>\d+</td>", html.split('id="nearest"')[1])) == len(checked.nearest_models)
    for model in checked.nearest_models["model"]:
        assert model in html
    assert 'id="model-metrics"' in html and "How to read this" in html
    # the figure inline: a PNG carrying the store and version
    src = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]{80,})"', html)
    import base64

    im = Image.open(io.BytesIO(base64.b64decode(src.group(1))))
    assert im.text["store_id"] == checked.store_id and im.text["store_version"] == str(checked.store_version)


def test_check_html_escapes_the_model_and_the_store(db, tmp_path, provenance):
    hostile_file = tmp_path / "<img src=x onerror=alert(2)>.onnx"
    shutil.copyfile(CLS, hostile_file)
    result = db.check(hostile_file, name=HOSTILE, task="<b>bold</b>")
    data = result.to_dict()
    data["layers"] = [{**r, "name": f"{HOSTILE} {r['name']}"} for r in data["layers"]]
    data["nearest_models"] = [{**n, "model": "<iframe src=//evil>"} for n in data["nearest_models"]]
    data["population"] = {**data["population"], "where": {"task": ["</code><script>x()</script>"]}}
    html = check_html(data, provenance)
    assert_self_contained(html)
    assert "<script" not in html and "<img src=x" not in html and "<b>bold" not in html and "<iframe" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;.onnx" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert html.count('<tr class="layer') == len(data["layers"])
    # the figure draws the name as text (no mathtext, nothing run)
    assert HOSTILE in render(figures.check(data), "svg").decode().replace("&lt;", "<").replace("&gt;", ">")


def test_figure_title_with_dollars(checked):
    data = checked.to_dict()
    data["model"] = {**data["model"], "name": "$\\frac{a}{b}$ model"}
    assert render(figures.check(data), "png")[:4] == b"\x89PNG"  # a $ is text, not mathtext


@pytest.mark.parametrize("suffix, magic", [(".html", b"<!doctype html>"), (".png", b"\x89PNG"), (".svg", b"<?xml"),
                                           (".pdf", b"%PDF-")])
def test_write_check_output_by_suffix(checked, provenance, tmp_path, suffix, magic):
    path = tmp_path / f"out{suffix}"
    line = write_check_output(checked.to_dict(), provenance, path)
    assert path.read_bytes().startswith(magic)
    assert line.startswith(f"wrote {path} (") and f"{path.stat().st_size:,} bytes" in line
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomically: no temporary file left


def test_write_check_output_refuses_another_suffix(checked, provenance, tmp_path):
    with pytest.raises(SelectionError, match=r"\.html.*\.png"):
        write_check_output(checked.to_dict(), provenance, tmp_path / "out.txt")
    assert list(tmp_path.iterdir()) == []


def test_check_figure_is_not_a_store_figure():
    """The check figure needs a model file: drawn from a check result, not a PlotRequest."""
    assert "check" not in plots.ALL_FIGURES


def test_check_html_says_what_a_user_can_follow(checked, provenance):
    """The review of issue 25: the percentile as defined (ties push it to 100), the number of nearest
    models listed, layer names kept whole (nowrap, the full name as title), no SPEC reference a user
    cannot follow (docs/method.md's sections instead), advice for a flagged layer, "1 layer"."""
    data = check_dict(checked)
    html = check_html(data, provenance)
    assert "SPEC" not in html
    assert "docs/method.md" in html and "#checking-a-model" in html and "#model-metrics" in html
    read = html.split('id="how-to-read"')[1]
    assert "100 &times; the share of the population&#x27;s layers" in read or "100 &times; the share of the population's layers" in read
    assert "at most this one" in read and "Ties count" in read and "p100" in read
    assert "few layers there are this high" not in read
    for advice in ("where", "nearest models", "dead or pruned", "untrained or re-initialised", "different task or data"):
        assert advice in read, advice
    # every layer's name whole: one line, the full name as its cell's title
    names = re.findall(r'<td class="text name" title="([^"]*)">([^<]*)</td>', html)
    assert len(names) == len(data["layers"]) and all(t == n for t, n in names)
    assert re.search(r"td\.name \{[^}]*white-space: nowrap[^}]*text-overflow: ellipsis", html)
    # the nearest models: as many as listed, whatever k asked
    n = len(data["nearest_models"])
    assert f"The population&#x27;s {n} models nearest" in html or f"The population's {n} models nearest" in html
    two = {**data, "nearest_models": data["nearest_models"][:2], "parameters": {**data["parameters"], "k": 5}}
    html2 = check_html(two, provenance)
    assert "The population's 2 models nearest to this one (of the 5 asked" in html2
    assert html2.count("<tr><td>") - html2.split('id="nearest"')[0].count("<tr><td>") == 2
    # one layer, one model: no "1 layers"
    one = {**data, "layers": data["layers"][:1],
           "population": {**data["population"], "n_models": 1, "n_layers": 1, "n_sample_models": 1}}
    html1 = check_html(one, provenance)
    assert "1 layers" not in html1 and "1 models" not in html1
    assert "1 model, 1 layer." in html1 and "1 layer of 3x3" in html1
    assert "The population&#x27;s 1 model is the synthetic sample" in html1 or "The population's 1 model is" in html1
    # integers exact, floats at 4 significant digits (the model's 3x3 filters)
    metrics = html.split('id="model-metrics"')[1]
    assert f"<td>{data['model']['n_filters']:,}</td>" in metrics
