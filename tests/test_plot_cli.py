"""``cnnfilterdb plot`` and ``cnnfilterdb report``: the files decode, they are the HTTP endpoint's
bytes for the same request, errors are one line and leave no file, and the report's page is
offline, accessible and shows the analysis' drift statistics."""
from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.figure import Figure

from cnnfilterdb import plots, report
from cnnfilterdb.analysis import Analysis
from cnnfilterdb.figures import group_labels
from cnnfilterdb.selection import SelectionError

from .helpers import cli_main, open_catalog, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tasks(v1_store) -> list[str]:
    with open_catalog(v1_store) as con:
        return [t for (t,) in con.execute("SELECT DISTINCT task FROM layers_with_models ORDER BY task").fetchall()]


def _plot(v1_store, out: Path, *args: str, capsys) -> bytes:
    assert cli_main(["plot", *args, "--db", str(v1_store), "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    data = out.read_bytes()
    assert "\n" not in line and str(out) in line and f"{len(data):,} bytes" in line
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left
    return data


def test_plot_png_decodes(v1_store, tmp_path, capsys):
    data = _plot(v1_store, tmp_path / "d.png", "divergence", "--dpi", "50", capsys=capsys)
    assert data.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.shape == (500, 500, 3)  # the heatmap's 10 x 10 inches at 50 dpi, RGB (opaque)


def test_plot_svg_keeps_text(v1_store, tasks, tmp_path, capsys):
    data = _plot(v1_store, tmp_path / "d.svg", "divergence", "--group-by", "task", capsys=capsys)
    root = ET.fromstring(data)
    texts = ["".join(e.itertext()) for e in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts, "svg.fonttype none: text as <text> elements"
    assert any(t.startswith(f"{task} (") for t in texts for task in tasks)


def test_plot_pdf_embeds_truetype(v1_store, tmp_path, capsys):
    data = _plot(v1_store, tmp_path / "b.pdf", "drift_box", capsys=capsys)
    assert data.startswith(b"%PDF") and b"/FontFile2" in data


@pytest.mark.parametrize("fmt", plots.FORMATS)
def test_plot_same_bytes_as_http(v1_store, v1_client, tasks, tmp_path, capsys, fmt):
    where = json.dumps({"task": tasks[:3]})
    data = _plot(v1_store, tmp_path / f"d.{fmt}", "divergence", "--group-by", "visual_category", "--where", where,
                 "--dpi", "60", capsys=capsys)
    r = v1_client.get(f"/v1/plots/divergence.{fmt}", params={"group_by": "visual_category", "where": where, "dpi": 60})
    assert r.status_code == 200 and r.content == data


def test_plot_pairs_same_bytes_as_http(v1_store, v1_client, tmp_path, capsys):
    data = _plot(v1_store, tmp_path / "c.png", "density2d", "--components", "1,2", "--range=-2,2.5", "--bins", "64",
                 "--width", "3", "--height", "3", capsys=capsys)
    r = v1_client.get("/v1/plots/density2d.png",
                      params={"components": "1,2", "range": "-2,2.5", "bins": 64, "width": 3, "height": 3})
    assert r.status_code == 200 and r.content == data
    assert data != v1_client.get("/v1/plots/density2d.png", params={"width": 3, "height": 3}).content


ERRORS = [  # (arguments, output file, message)
    (["plot", "no_such_figure"], "x.png", "no figure 'no_such_figure'; the figures: kl_combined"),
    (["plot", "divergence"], "x.jpg", "the file must end in .png, .svg, .pdf"),
    (["plot", "eigenimages", "--group-by", "task"], "x.png", "eigenimages takes no group_by"),
    (["plot", "divergence", "--where", "{task: 1"], "x.png", "--where is not JSON"),
]
MORE_ERRORS = [
    (["plot", "divergence"], "x", "the file must end in .png, .svg, .pdf"),
    (["plot", "layer_filters", "--layer-id", "1", "--where", "{}"], "x.svg", "layer_filters takes no where"),
    (["plot", "divergence", "--where", '{"no_field": 1}'], "x.png", "unknown field(s) in where"),
    (["plot", "density2d", "--components", "1"], "x.png", "components: two numbers separated by a comma"),
    (["plot", "layer_filters", "--layer-id", "999999"], "x.pdf", "no layer 999999"),
    (["plot", "divergence", "--dpi", "5000"], "x.png", "dpi must be an integer from 10 to 600"),
    (["plot", "divergence"], "no/such/dir/x.png", "no such directory"),
]


def _one_line_error(stderr: str, message: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnfilterdb: error: ") and message in lines[0], stderr


@pytest.mark.parametrize("args, out_name, message", ERRORS)
def test_plot_errors_exit_1_one_line_no_file(v1_store, tmp_path, args, out_name, message):
    """As a user runs it: exit code 1, one line on stderr, nothing written."""
    code, stdout, stderr = run_cli(*args, "--db", str(v1_store), "-o", str(tmp_path / out_name))
    assert code == 1 and stdout == ""
    _one_line_error(stderr, message)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


@pytest.mark.parametrize("args, out_name, message", MORE_ERRORS)
def test_plot_more_errors_in_process(v1_store, tmp_path, capsys, args, out_name, message):
    assert cli_main([*args, "--db", str(v1_store), "-o", str(tmp_path / out_name)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    _one_line_error(captured.err, message)
    assert list(tmp_path.iterdir()) == []


def test_plot_failure_keeps_the_old_file(v1_store, tmp_path, capsys):
    out = tmp_path / "d.png"
    out.write_bytes(b"old")
    assert cli_main(["plot", "divergence", "--group-by", "task", "--where", '{"task": ["no such task"]}',
                     "--db", str(v1_store), "-o", str(out)]) == 1
    assert "is not a task of any model" in capsys.readouterr().err
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["d.png"]


def test_plot_parameter_error_is_the_http_error(v1_store, v1_client, tmp_path, capsys):
    assert cli_main(["plot", "ridge", "--metric", "js", "--db", str(v1_store), "-o", str(tmp_path / "r.png")]) == 1
    err = capsys.readouterr().err.strip()
    r = v1_client.get("/v1/plots/ridge.png", params={"metric": "js"})
    assert r.status_code == 400 and err == f"cnnfilterdb: error: {r.json()['error']['message']}"


class _Page(HTMLParser):
    """The links, images, scripts and table rows of a page."""

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.imgs: list[dict] = []
        self.tags: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href", "action", "poster", "srcset", "data")]
        if tag == "img":
            self.imgs.append(a)
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def report_dir(v1_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "new" / "dir"  # created by the command
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli_main(["report", "--db", str(v1_store), "-o", str(out), "--dpi", "40"]) == 0
    return out, stdout.getvalue()


def test_report_writes_every_figure(report_dir):
    out, stdout = report_dir
    names = [f"{f}.png" for f in report.FIGURES] + ["index.html"]
    assert set(report.FIGURES) == set(plots.NOTEBOOK_FIGURES) | {"quality"}
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    lines = stdout.strip().splitlines()
    assert len(lines) == len(names)
    for line, name in zip(lines, names):
        assert line.startswith(f"wrote {out / name} (") and line.endswith(" bytes)")
    for f in report.FIGURES:
        data = (out / f"{f}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and matplotlib.image.imread(io.BytesIO(data)).ndim == 3


def test_report_same_bytes_as_plot(report_dir, v1_store, tmp_path, capsys):
    out, _ = report_dir
    data = _plot(v1_store, tmp_path / "e.png", "eigenimages", "--dpi", "40", capsys=capsys)
    assert (out / "eigenimages.png").read_bytes() == data


def test_report_page_is_offline_and_accessible(report_dir):
    out, _ = report_dir
    html = (out / "index.html").read_text()
    page = _Page()
    page.feed(html)
    assert "http://" not in html and "https://" not in html and "url(" not in html
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert page.refs
    for ref in page.refs:
        assert "//" not in ref and ":" not in ref, ref
        if not ref.startswith("#"):
            assert (out / ref).is_file(), ref
    anchors = {ref[1:] for ref in page.refs if ref.startswith("#")}
    assert all(f'id="{a}"' in html for a in anchors)
    assert sorted(img["src"] for img in page.imgs) == sorted(f"{f}.png" for f in report.FIGURES)
    for img in page.imgs:
        assert img.get("alt", "").strip() and len(img["alt"]) > 40, img
    assert '<html lang="en">' in html and '<meta charset="utf-8">' in html


def test_report_counts_and_drift_table(report_dir, v1_store):
    from cnnfilterdb.store import FilterStore

    out, _ = report_dir
    page = _Page()
    page.feed((out / "index.html").read_text())
    info = FilterStore(v1_store).info()
    text = (out / "index.html").read_text()
    for key in ("models", "layers", "filters"):
        assert f"<dt>{key}</dt><dd>{info[key]:,}</dd>" in text
    assert f"<dt>basis version</dt><dd>{info['basis']['version']}</dd>" in text
    rows = {r[0]: r[1:] for r in page.rows if r}
    assert rows["grouping"][:7] == ["groups", "mean", "median", "q1", "q3", "min", "max"]
    with open_catalog(v1_store) as con:
        a = Analysis(con, v1_store)
        for field, title in [("task", "Task"), ("visual_category", "Visual Category"),
                             ("depth_bin", "Relative Depth of Convolution Layer")]:
            d = a.divergence(field)
            want = [str(len(d["labels"]))] + [f"{d['drift'][k]:.5f}" for k in report.DRIFT_STATS]
            assert rows[title][:7] == want
            assert all(abs(float(v) - d["drift"][k]) <= 5e-6 for v, k in zip(rows[title][1:7], report.DRIFT_STATS))
            assert rows[title][7] == ", ".join(group_labels(d["labels"], d["n_models"]))


def test_report_lists_a_figure_it_cannot_draw(v1_store, tmp_path, monkeypatch):
    def draw(analysis, req):
        if req.figure == "ridge":
            raise SelectionError("group_by task gives 99 groups; at most 40 here: narrow the selection with where")
        return Figure(figsize=(1, 1))

    monkeypatch.setattr(report.plots, "draw", draw)
    lines: list[str] = []
    from cnnfilterdb.store import FilterStore

    store = FilterStore(v1_store)
    with open_catalog(v1_store) as con:
        written = report.write_report(Analysis(con, v1_store), store.info(), tmp_path / "r", "svg", 20, log=lines.append)
    names = [p.name for p in written]
    assert names == [f"{f}.svg" for f in report.FIGURES if f != "ridge"] + ["index.html"]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(names)
    assert len(lines) == len(report.FIGURES) + 1 and lines[report.FIGURES.index("ridge")].startswith("skipped ridge: ")
    html = (tmp_path / "r" / "index.html").read_text()
    assert "Not drawn for this store: group_by task gives 99 groups; at most 40 here" in html
    assert 'src="ridge.svg"' not in html and 'id="ridge"' in html


def test_report_page_escapes_text():
    info = {"db": "/data/<b>&co", "models": 1, "layers": 2, "filters": 3, "shards": 1,
            "basis": {"version": 1, "n_filters": 3, "explained_variance_ratio": [1 / 9] * 9}}
    bad = {"group_by": "task", "labels": ['<img src=x onerror="alert(1)">', "a&b"], "n_models": [1, 1],
           "drift": {k: 0.5 for k in report.DRIFT_STATS}, "empty_groups": []}
    drifts = {"task": bad, "visual_category": "a <reason>", "depth_bin": bad}
    html = report.report_html(info, "png", {"kl_combined": (100, 50)}, {f: "x<y" for f in report.FIGURES[1:]}, drifts)
    assert "<b>&co" not in html and "&lt;b&gt;&amp;co" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "a <reason>" not in html and "x<y" not in html
    page = _Page()
    page.feed(html)
    assert [img["src"] for img in page.imgs] == ["kl_combined.png"]
