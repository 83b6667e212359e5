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
    for i, d in enumerate(deciles):
        band = by_gid(fig, f"band-{i}")
        a, b = figures.decile_span(d["depth_decile"])
        assert (band.get_x(), band.get_width()) == pytest.approx((a, b - a))
        assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((d["kl_q1"], d["kl_q3"]))
        assert list(by_gid(fig, f"median-{i}").get_ydata()) == pytest.approx([d["kl_median"]] * 2)
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
    assert by_gid(fig, "threshold-sparsity").get_xdata()[0] == t["sparsity_gt"]
    assert by_gid(fig, "threshold-entropy-low").get_ydata()[0] == t["entropy_norm_lt"]
    assert by_gid(fig, "threshold-entropy-high").get_ydata()[0] == t["entropy_norm_gt"]
    # the title names the model and the store version; the legend counts the layers
    title = fig._suptitle.get_text()
    assert data["model"]["name"] in title and f"version {data['store_version']}" in title
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert f"unusual: at or above the 95th percentile ({len(flagged)} of {len(layers)})" in legend


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
