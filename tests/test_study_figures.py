"""The follow-up studies' figures (issue 24.5, docs/figures.md#the-studies-figures): cohort_divergence,
cohort_metric and correlation draw the engine's numbers (read back from the matplotlib Figure: bar
heights, box means and medians, scatter points, titles), in every format, the same bytes from
GET /v1/plots, ``cnnfilterdb plot``, the report and a result's ``.plot()``; hostile parameters are one
clear 4xx (one line and exit 1 on the command line), never a traceback; the figures wait for the
service's analysis slots like every analysis."""
from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import cnnfilterdb
from cnnfilterdb import figures, plots, report
from cnnfilterdb.analysis import Analysis
from cnnfilterdb.ingest.sample import write_sample_h5
from cnnfilterdb.limits import MAX_LABELS, MAX_SERIES
from cnnfilterdb.plots import PlotRequest, draw, render
from cnnfilterdb.requests import DivergenceRequest
from cnnfilterdb.selection import SelectionError, natural_order

from .helpers import cli_main, open_catalog, run_cli

SERIES = "training_dataset"
PNG = b"\x89PNG\r\n\x1a\n"
SVG_NS = "{http://www.w3.org/2000/svg}"
# The three figures with the robustness study's parameters (docs/figures.md).
STUDY = {"cohort_divergence": {"group_by": "robust", "within": "depth_decile", "series": SERIES},
         "cohort_metric": {"metric": "variance_entropy", "group_by": "robust", "series": SERIES},
         "correlation": {"x": "variance_entropy", "y": "robust_accuracy", "group_by": SERIES}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A store of 30 sample models labelled as the robustness study's meta.csv: robust True/False
    alternating within each training dataset (so each has both cohorts where it has two models),
    accuracies (the robust accuracy of robust models only), a backbone of three values, a tag of one
    value per model."""
    work = tmp_path_factory.mktemp("study_figures")
    h5 = write_sample_h5(work / "s.h5", n_models=30, n_filters=90_000, seed=5)
    db = work / "db"
    assert cli_main(["ingest", str(h5), "--db", str(db)]) == 0
    with open_catalog(db) as con:
        models = con.execute("SELECT model, training_dataset FROM models ORDER BY model_id").fetchall()
    rng = np.random.default_rng(7)
    seen: dict = {}
    with open(work / "meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Name", "Robust", "Clean Accuracy", "Robust Accuracy", "Backbone", "Tag"])
        for i, (model, dataset) in enumerate(models):
            k = seen[dataset] = seen.get(dataset, -1) + 1
            robust = k % 2 == 1
            w.writerow([model, str(robust), f"{rng.uniform(60, 95):.2f}", f"{rng.uniform(20, 60):.2f}" if robust else "",
                        ["ResNet-50", "WRN-28-10", "PreAct"][i % 3], f"tag-{i:02d}"])
    code, _, err = run_cli("label", "--manifest", str(work / "meta.csv"), "--key", "Name", "--db", str(db))
    assert code == 0, err
    return db


@pytest.fixture(scope="module")
def con(study):
    c = open_catalog(study)
    yield c
    c.close()


@pytest.fixture(scope="module")
def analysis(con, study):
    return Analysis(con, study)


@pytest.fixture(scope="module")
def db(study):
    return cnnfilterdb.open(study)


@pytest.fixture(scope="module")
def client(study):
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    return TestClient(create_app(Settings(db=study)), raise_server_exceptions=False)


def _fig(analysis, figure, **params):
    return draw(analysis, PlotRequest.of(figure, **params))


def _by_gid(ax, prefix: str) -> dict:
    return {a.get_gid(): a for a in [*ax.lines, *ax.patches, *ax.collections] if (a.get_gid() or "").startswith(prefix)}


def _series_values(db, where=None) -> list:
    models = db.models()
    if where:
        models = models[models[SERIES].isin(where[SERIES])]
    return natural_order(list(dict.fromkeys(models[SERIES])))


# ---- the numbers drawn are the engine's ------------------------------------------------------------
@pytest.mark.parametrize("where", [None, {SERIES: ["CIFAR-10", "DTD", "COCO"]}])
def test_cohort_divergence_bars_are_the_facets(analysis, db, where):
    fig = _fig(analysis, "cohort_divergence", group_by="robust", series=SERIES, where=where)
    ax = fig.axes[0]
    values = _series_values(db, where)
    results = [analysis.divergence(DivergenceRequest(group_by="robust", within="depth_decile",
                                                     where={**(where or {}), SERIES: v})) for v in values]
    within = natural_order(list(dict.fromkeys(f["value"] for r in results for f in r["facets"])))
    assert [t.get_text() for t in ax.get_xticklabels()] == within
    assert ax.get_xlabel() == "Depth Decile of Convolution Layer" and ax.get_ylabel() == "weighted KL divergence"
    bars = _by_gid(ax, "bar-")
    assert len(bars) == len(values) * len(within)
    drawn = 0
    for s, r in enumerate(results):
        facets = {f["value"]: f for f in r["facets"]}
        for i, v in enumerate(within):
            bar, facet = bars[f"bar-{s}-{i}"], facets.get(v)
            if facet is not None and len(facet["labels"]) == 2:
                assert bar.get_visible() and bar.get_height() == facet["matrix"][0][1] == facet["matrix"][1][0]
                assert bar.get_facecolor() == pytest.approx(bars[f"bar-{s}-0"].get_facecolor())  # a colour per series
                drawn += 1
            else:  # a cohort without layers there: no bar
                assert not bar.get_visible()
    assert drawn >= len(values)
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "Training Dataset"
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:len(values)] == [f"{v} ({sum(r['n_models'])})" + ("" if len(r["labels"]) == 2 else
                                                                    f", {r['labels'][0]} only")
                                    for v, r in zip(values, results)]
    n = {False: 0, True: 0}
    for r in results:
        for lab, m in zip(r["labels"], r["n_models"]):
            n[lab] += m
    assert ax.get_title().startswith(f"Divergence between the cohorts of Robust: False ({n[False]}) vs True ({n[True]})")


def test_cohort_divergence_without_series_and_its_plot(analysis, db):
    """One series: the divergence with within of the whole selection; DivergenceResult.plot() of the
    same request is the same figure, byte for byte."""
    where = {"task": ["Classification", "Segmentation", "GAN", "Object Detection"]}
    fig = _fig(analysis, "cohort_divergence", group_by="robust", where=where)
    result = db.divergence("robust", where, within="depth_decile")
    bars = _by_gid(fig.axes[0], "bar-0-")
    for i, (value, facet) in enumerate(zip(result.facets, result.to_dict()["facets"])):
        assert value == facet["value"] and [t.get_text() for t in fig.axes[0].get_xticklabels()][i] == value
        assert bars[f"bar-0-{i}"].get_height() == result.facets[value].iloc[0, 1]
    assert fig.axes[0].get_legend() is None or "Training" not in fig.axes[0].get_legend().get_title().get_text()
    for fmt in plots.FORMATS:
        assert render(result.plot(), fmt) == render(_fig(analysis, "cohort_divergence", group_by="robust", where=where),
                                                    fmt), fmt
    assert len(db.divergence("robust", within="depth_decile").plot().axes) == 1


def test_cohort_metric_boxes_are_the_model_metrics(analysis, db):
    fig = _fig(analysis, "cohort_metric", group_by="robust", series=SERIES, metric="variance_entropy_norm")
    mm = db.model_metrics(by="depth_decile").reset_index()
    meta = db.models().set_index("model_id")
    mm["robust"] = mm["model_id"].map(meta["robust"])
    mm[SERIES] = mm["model_id"].map(meta[SERIES])
    panels = natural_order(list(dict.fromkeys(mm[SERIES])))
    deciles = natural_order(list(dict.fromkeys(mm["depth_decile"])))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(panels)
    checked = 0
    for p, (ax, value) in enumerate(zip(axes, panels)):
        here = mm[mm[SERIES] == value]
        assert ax.get_title() == f"{value} ({here['model_id'].nunique()} models)"
        assert [t.get_text() for t in ax.get_xticklabels()] == deciles
        means, medians = _by_gid(ax, "means-"), _by_gid(ax, "medians-")
        expected = set()
        for g, cohort in enumerate([False, True]):
            for j, decile in enumerate(deciles):
                v = here[(here["robust"] == cohort) & (here["depth_decile"] == decile)]["variance_entropy_norm"].dropna()
                if len(v) == 0:
                    continue
                key = f"{p}-{g}-{j}"
                expected.add(key)
                assert means[f"means-{key}"].get_ydata()[0] == pytest.approx(v.mean(), rel=1e-12, abs=1e-15)
                assert medians[f"medians-{key}"].get_ydata()[0] == pytest.approx(v.median(), rel=1e-12, abs=1e-15)
                checked += 1
        assert {k.removeprefix("means-") for k in means} == expected
    assert checked > 2 * len(panels)
    legend = fig.legends[0]
    assert legend.get_title().get_text() == "Robust"
    n = meta.groupby("robust").size()
    assert [t.get_text() for t in legend.get_texts()] == [f"False ({n[False]})", f"True ({n[True]})", "mean"]
    assert axes[0].get_ylabel() == "normalized variance entropy"
    assert fig.get_supxlabel() == "Depth Decile of Convolution Layer"  # once, under all the panels


def test_correlation_panels_are_the_engines(analysis, db):
    params = {"x": "variance_entropy", "y": "robust_accuracy", "group_by": SERIES, "method": "kendall"}
    fig = _fig(analysis, "correlation", **params)
    result = db.correlation("variance_entropy", "robust_accuracy", group_by=SERIES, method="kendall")
    engine = result.to_result()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(engine["groups"]) == len(result)
    pts = result.points
    for i, (ax, g) in enumerate(zip(axes, engine["groups"])):
        assert ax.get_title().replace("\n", " ") == figures.correlation_title(g, "kendall", g["group"]).replace(":\n", ": ")
        if g["statistic"] is not None:
            assert f"kendall {g['statistic']:.2f} [{g['ci_low']:.2f}, {g['ci_high']:.2f}], n={g['n']}" in ax.get_title()
        mine = pts[pts["group"] == g["group"]]
        (scatter,) = _by_gid(ax, f"points-{i}").values()
        assert np.array_equal(scatter.get_offsets(), np.column_stack([mine["x"], mine["y"]]))
        assert len(mine) == g["n"]
    assert axes[0].get_ylabel() == "robust_accuracy" and axes[-1].get_xlabel() == "variance_entropy"
    for fmt in plots.FORMATS:  # CorrelationResult.plot(): the same figure (each drawn anew: a layout drawn once
        assert render(result.plot(), fmt) == render(_fig(analysis, "correlation", **params), fmt), fmt  # moves)
    # a derived frame is a plain DataFrame, with pandas' plot
    assert hasattr(result.head().plot, "line")


def test_correlation_title_format():
    g = {"group": "CIFAR-10", "n": 24, "statistic": 0.4213, "p_value": 0.04, "ci_low": 0.1, "ci_high": 0.7}
    assert figures.correlation_title(g, "spearman", "CIFAR-10") == "CIFAR-10: spearman 0.42 [0.10, 0.70], n=24"
    assert figures.correlation_title({**g, "statistic": None, "n": 1}, "spearman", "x") == "x: spearman undefined, n=1"


# ---- every front end, every format, the same bytes -------------------------------------------------
@pytest.mark.parametrize("fmt", plots.FORMATS)
@pytest.mark.parametrize("figure", plots.STUDY_FIGURES)
def test_each_figure_each_format_http_cli_same_bytes(client, study, tmp_path, figure, fmt, capsys):
    params = STUDY[figure] | {"dpi": 40}
    r = client.get(f"/v1/plots/{figure}.{fmt}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == plots.MEDIA_TYPES[fmt]
    out = tmp_path / f"f.{fmt}"
    args = [a for k, v in params.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    assert cli_main(["plot", figure, *args, "--db", str(study), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.read_bytes() == r.content
    if fmt == "png":
        assert r.content.startswith(PNG)
        img = imread(io.BytesIO(r.content), format="png")
        assert img.shape[0] > 100 and img[..., :3].std() > 0.01
    elif fmt == "svg":
        texts = ["".join(e.itertext()) for e in ET.fromstring(r.content).iter(f"{SVG_NS}text")]
        assert any("CIFAR-10" in t for t in texts)  # a series value, as text
    else:
        assert r.content.startswith(b"%PDF") and b"/FontFile2" in r.content
    again = client.get(f"/v1/plots/{figure}.{fmt}", params=params, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


def test_the_query_parameters_are_declared(client):
    spec = client.get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"]["/v1/plots/{figure}.{fmt}"]["get"]["parameters"]}
    for name in ("within", "series", "x", "y", "method", "layers"):
        assert name in params, name
    enums = [o["enum"] for o in params["metric"]["schema"]["anyOf"] if "enum" in o]
    assert enums[0] == ["kl_sym", "js", "hellinger", "wasserstein"] and "variance_entropy" in enums[1]
    figure = [p for p in spec["paths"]["/v1/plots/{figure}.{fmt}"]["get"]["parameters"] if p["name"] == "figure"][0]
    assert set(plots.STUDY_FIGURES) <= set(figure["schema"]["enum"])
    text = " ".join(params["series"]["description"].split())
    assert "cohort_divergence" in text and "cohort_metric" in text
    assert "cohort_divergence: required; exactly two groups" in " ".join(params["group_by"]["description"].split())


def test_report_draws_the_studies_figures_for_a_cohort(study, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli_main(["report", "--db", str(study), "-o", str(out), "--dpi", "30", "--cohort", "robust",
                     "--series", SERIES]) == 0
    capsys.readouterr()
    page = (out / "index.html").read_text()
    for figure, params in report.study_parameters("robust", SERIES).items():
        assert (out / f"{figure}.png").exists(), figure
        assert f'id="{figure}"' in page and f'src="{figure}.png"' in page
        plot = tmp_path / f"{figure}.png"
        args = [a for k, v in params.items() if v is not None for a in (f"--{k.replace('_', '-')}", str(v))]
        assert f"cnnfilterdb plot {figure} {' '.join(args)} --db" in page
        assert cli_main(["plot", figure, *args, "--db", str(study), "--dpi", "30", "-o", str(plot)]) == 0
        assert plot.read_bytes() == (out / f"{figure}.png").read_bytes(), figure
    # without --cohort: the notebook's figures only; a cohort of five groups: its divergence skipped, with the reason
    assert cli_main(["report", "--db", str(study), "-o", str(tmp_path / "plain"), "--dpi", "20"]) == 0
    assert not any((tmp_path / "plain" / f"{f}.png").exists() for f in plots.STUDY_FIGURES)
    assert cli_main(["report", "--db", str(study), "-o", str(tmp_path / "task"), "--dpi", "20", "--cohort", "task"]) == 0
    said = capsys.readouterr().out
    assert "skipped cohort_divergence: cohort_divergence compares two cohorts: group_by task gives" in said
    assert (tmp_path / "task" / "cohort_metric.png").exists()
    # a cohort the store cannot compare: one line before any work
    code, _, err = run_cli("report", "--db", str(study), "-o", str(tmp_path / "bad"), "--cohort", "clean_accuracy")
    assert code == 1 and err.startswith("cnnfilterdb: error: cohort 'clean_accuracy': a property of type double")
    assert not (tmp_path / "bad").exists()


# ---- hostile parameters: one clear 4xx, never a traceback -----------------------------------------
HOSTILE = [
    ("cohort_divergence", {"group_by": "robust", "series": "datasett"}, 400, "unknown series 'datasett'"),
    ("cohort_divergence", {"group_by": "robust", "series": "clean_accuracy"}, 422,
     "series 'clean_accuracy': a property of type double"),
    ("cohort_divergence", {"group_by": "clean_accuracy"}, 422, "group_by 'clean_accuracy': a property of type double"),
    ("cohort_divergence", {"group_by": "backbone"}, 400,
     "cohort_divergence compares two cohorts: group_by backbone gives 3 group(s) in this selection (PreAct (10), "
     "ResNet-50 (10), WRN-28-10 (10))"),
    ("cohort_divergence", {"group_by": "robust", "series": "model"}, 400,
     f"series model gives 30 values; at most {MAX_SERIES['cohort_divergence']} in cohort_divergence"),
    ("cohort_divergence", {"group_by": "robust", "series": "tag"}, 400, "series tag gives 30 values"),
    ("cohort_divergence", {"group_by": "robust", "within": "layer_id"}, 400,
     f"values; at most {MAX_LABELS['cohort_divergence']} here"),
    ("cohort_divergence", {"group_by": "robust", "series": "robust"}, 400, "series 'robust' is the group_by field"),
    ("cohort_divergence", {"group_by": "robust", "within": "robust"}, 422, "within 'robust' is the group_by"),
    ("cohort_divergence", {}, 400, "group_by is required"),
    ("cohort_divergence", {"group_by": "robust", "series": 'robust"; DROP TABLE _models; --'}, 400, "unknown series"),
    ("cohort_divergence", {"group_by": "robust", "x": "sparsity"}, 400, "cohort_divergence takes no x"),
    ("cohort_metric", {"group_by": "robust", "series": "clean_accuracy"}, 422,
     "series 'clean_accuracy': a property of type double"),
    ("cohort_metric", {"group_by": "clean_accuracy"}, 422, "group_by 'clean_accuracy': a property of type double"),
    ("cohort_metric", {"group_by": "robust", "series": "depth_bin"}, 422, "series 'depth_bin' is a layer field"),
    ("cohort_metric", {"group_by": "robust", "series": "tag"}, 400,
     f"series tag gives 30 values; at most {MAX_SERIES['cohort_metric']} in cohort_metric"),
    ("cohort_metric", {"group_by": "tag"}, 400,
     f"group_by tag gives 30 groups; at most {MAX_LABELS['cohort_metric']} boxes side by side"),
    ("cohort_metric", {"group_by": "robust", "metric": "kl_sym"}, 400, "unknown metric 'kl_sym'; valid: 'n_layers'"),
    ("cohort_metric", {"group_by": "robust", "series": "robust"}, 400, "series 'robust' is the group_by"),
    ("cohort_metric", {"group_by": "robust", "within": "depth_decile"}, 400, "cohort_metric takes no within"),
    ("correlation", {"x": "backbone", "y": "robust_accuracy"}, 422, "variable 'backbone' is a text property"),
    ("correlation", {"x": "variance_entropy", "y": "clean_acuracy"}, 400, "unknown variable 'clean_acuracy'"),
    ("correlation", {"x": "variance_entropy", "y": "robust_accuracy", "group_by": "clean_accuracy"}, 422,
     "group_by 'clean_accuracy': a property of type double"),
    ("correlation", {"x": "variance_entropy", "y": "robust_accuracy", "group_by": "tag"}, 400,
     f"group_by tag gives 30 groups; at most {MAX_LABELS['correlation']} panels in correlation"),
    ("correlation", {"x": "variance_entropy", "y": "robust_accuracy", "group_by": "model",
                     "where": json.dumps({"model_id": [0, 1, 2]})}, 400, "a panel per model holds one point"),
    ("quality", {"color_by": "task; --"}, 400, "unknown color_by 'task; --'"),
    ("correlation", {"x": "variance_entropy"}, 400, "y is required"),
    ("correlation", {"x": "variance_entropy", "y": "robust", "series": "task"}, 400, "correlation takes no series"),
    ("divergence", {"within": "depth_decile"}, 400, "divergence takes no within"),
]


@pytest.mark.parametrize("figure,params,status,words", HOSTILE)
def test_hostile_parameters_are_a_clear_4xx(client, figure, params, status, words):
    r = client.get(f"/v1/plots/{figure}.png", params=params)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert words in message and "Traceback" not in r.text


@pytest.mark.parametrize("figure,params,status,words", HOSTILE[:6] + HOSTILE[12:16] + HOSTILE[20:24])
def test_hostile_parameters_on_the_command_line(study, tmp_path, figure, params, status, words):
    out = tmp_path / "f.png"
    args = [a for k, v in params.items() for a in (f"--{k.replace('_', '-')}", v)]
    code, stdout, err = run_cli("plot", figure, *args, "--db", str(study), "-o", str(out))
    assert code == 1 and stdout == "" and err.startswith("cnnfilterdb: error: ") and words in err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()


def test_plot_of_a_result_that_cannot_be_drawn(db):
    with pytest.raises(SelectionError, match="group_by backbone gives 3 group"):
        db.divergence("backbone", within="depth_decile").plot()
    with pytest.raises(SelectionError, match=f"at most {MAX_LABELS['correlation']} panels"):
        db.correlation("variance_entropy", "sparsity", group_by="tag").plot()


# ---- bounded work: the analysis slots --------------------------------------------------------------
def test_the_figures_wait_for_an_analysis_slot(study):
    """With every slot taken and no queue, a study figure is a 429 (Retry-After), as any analysis."""
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    app = create_app(Settings(db=study, analysis_concurrency=1, analysis_queue=0))
    c = TestClient(app, raise_server_exceptions=False)
    assert c.get("/health").status_code == 200
    slots = app.state.catalog.analysis_slots
    assert slots.acquire(blocking=False)
    try:
        for figure, params in STUDY.items():
            r = c.get(f"/v1/plots/{figure}.png", params=params | {"dpi": 20})
            assert r.status_code == 429 and r.json()["error"]["code"] == "analysis_busy", figure
            assert r.headers["retry-after"] == "1"
    finally:
        slots.release()
    assert c.get("/v1/plots/cohort_metric.png", params=STUDY["cohort_metric"] | {"dpi": 20}).status_code == 200


def test_depth_decile_is_titled_and_ordered():
    assert figures.field_title("depth_decile") == "Depth Decile of Convolution Layer"
    assert "depth_decile" in figures.ORDERED_FIELDS
    result = {"group_by": "depth_decile", "labels": ["0", "(0.0, 0.1]", "(0.9, 1.0]"], "n_models": [1, 1, 1],
              "matrix": [[0, 3, 1], [3, 0, 2], [1, 2, 0]], "metric": "kl_sym"}
    assert figures.heatmap_order(result).tolist() == [0, 1, 2]
    assert json.dumps(figures.cohort_axis_label("js", "uniform")) == '"Jensen-Shannon divergence (mean over the 9 components)"'


@pytest.mark.parametrize("figure", plots.STUDY_FIGURES)
def test_a_smaller_figure_has_smaller_text(analysis, figure):
    """Laid out again for its size: at a journal's column width the text shrinks (to 5 pt at least,
    tick labels to 4) rather than running into the next panel's."""
    params = {k: v for k, v in STUDY[figure].items()}
    own = _fig(analysis, figure, **params)
    small = _fig(analysis, figure, **params, width=7, height=3)
    sizes = [t.get_fontsize() for ax in small.axes if ax.get_visible()
             for t in (ax.title, *ax.get_xticklabels()) if t.get_text()]
    own_sizes = [t.get_fontsize() for ax in own.axes if ax.get_visible() for t in (ax.title,) if t.get_text()]
    assert min(sizes) >= 4 and max(sizes) < max(own_sizes) == 10
