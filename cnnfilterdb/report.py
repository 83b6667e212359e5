"""``cnnfilterdb report``: the notebook's figures for a store (docs/method.md#figures), and an ``index.html``
that shows them with the store's counts and the drift statistics, opened from disk, offline.

The page names what it shows, to be cited (docs/versions.md#citing-a-version): the store's id, the
store version drawn, that version's commit time (UTC) and digest; a version holding models of the
synthetic sample (``cnnfilterdb demo``) carries a notice saying so at the top. Each figure file
carries the store id and version in its own metadata (plots.figure_metadata).

The figures go through ``plots.draw`` and ``plots.render`` with their default parameters, so each
file is the same bytes as ``cnnfilterdb plot FIGURE`` and ``GET /v1/plots/{figure}.{fmt}``. The page
is one self-contained file: inline CSS, no script, no external URL; every text is escaped. A
figure this store cannot give (e.g. a grouping with more groups than a figure can label) is shown
in the page with its reason instead of failing the report. Every file is written atomically (a
temporary file in the same directory, then renamed): an interrupted report never leaves half a file.

The follow-up studies' figures (plots.STUDY_FIGURES) compare the cohorts of a model field, which a
store may not have (a property such as robust, labelled by ``cnnfilterdb label``), so the report
draws them only for the field it is given (``cohort``, ``cnnfilterdb report --cohort FIELD``), with
``series`` (``--series FIELD``) drawn apart: cohort_divergence and cohort_metric with group_by the
cohort, and the correlation of variance_entropy with the cohort per series (a boolean cohort: the
rank correlation of the metric with being in the True cohort; a text one is not a variable, and the
page says so).
"""
from __future__ import annotations

import shlex
from collections.abc import Callable
from html import escape
from pathlib import Path

from . import __version__, plots
from .analysis import Analysis
from .atomic import atomic_file
from .figures import field_title, group_labels
from .selection import SelectionError, check_group_by
from .stats.divergence import DEFAULT_BINS

# The report's figures in page order: the headline first, then the notebook's in its order, then
# the layers' quality. The files are the same set as plots.NOTEBOOK_FIGURES plus quality.
FIGURES = ("kl_combined",) + tuple(f for f in plots.NOTEBOOK_FIGURES if f != "kl_combined") + ("quality",)
REPORT_FORMATS = ("png", "svg")  # what an <img> shows
# The groupings of the drift statistics table (those of the headline figure).
DRIFT_GROUPINGS = ("task", "visual_category", "depth_bin")
DRIFT_STATS = ("mean", "median", "q1", "q3", "min", "max")

# The studies' figures, after the notebook's, when a cohort field is given (STUDY_FIGURES' order).
STUDY_FIGURES = plots.STUDY_FIGURES
STUDY_METRIC = "variance_entropy"  # the model metric of cohort_metric and of the correlation: the study's first

TITLES = {
    "kl_combined": "Distribution shifts of trained 3x3 convolution filters",
    "explained_variance": "Explained variance",
    "covariance": "Covariance of the filters",
    "eigenimages": "Eigen-images: the principal components",
    "ridge": "Coefficient densities by task",
    "divergence": "Divergence between tasks",
    "drift_box": "Drift within a grouping",
    "density2d": "Density of the first two coefficients",
    "quality": "Layer quality",
    "cohort_divergence": "Cohorts by depth: divergence",
    "cohort_metric": "Cohorts by depth: variance entropy",
    "correlation": "Variance entropy and the cohort",
}
CAPTIONS = {
    "kl_combined": "Symmetric KL divergence between the filter distributions of every pair of groups, by task, "
                   "visual category and relative depth of the layer; each label gives the group's model count.",
    "explained_variance": "Cumulative explained variance ratio of the principal components of all "
                          "peak-scaled filters (the store's global PCA basis).",
    "covariance": "The 9 x 9 sample covariance of the peak-scaled filters (scikit-learn's get_covariance(), "
                  "as the notebook draws it).",
    "eigenimages": "The nine principal components as 3x3 images (seismic colour map, -1 to 1), each with "
                   "its explained variance ratio.",
    "ridge": "Per task (rows) and coefficient c0 to c8 (columns), the Gaussian kernel density of the filters' "
             "coefficients in the global basis (Silverman's bandwidth).",
    "divergence": "Symmetric KL divergence between tasks, rows and columns sorted by mean divergence; "
                  "dark cells are similar distributions, bright cells differ.",
    "drift_box": "Box plots of the pairwise divergences within the Task and Visual Category groupings "
                 "(means marked); the statistics are in the table above.",
    "density2d": "Density of the coefficients c0 (x) and c1 (y) over -3.3 to 3.3, divided by its maximum, "
                 "on a log scale from 1e-5 to 1; c1 increases upwards, empty cells are dark.",
    "quality": "Every layer's sparsity against its normalized variance entropy, coloured by task; "
               "the dashed lines are the thresholds of a degenerate layer.",
    "cohort_divergence": "Per depth decile, the weighted KL divergence between the filters of the two cohorts "
                         "(the robustness study's divergence_by_depth); a colour per series.",
    "cohort_metric": "Per depth decile, box plots of the models' variance entropy, cohort beside cohort (means as "
                     "diamonds; the robustness study's entropy_normal_vs_robust); a panel per series.",
    "correlation": "The Spearman correlation of each model's variance entropy with the cohort field, with its 95% "
                   "bootstrap interval (2000 resamples, seed 0); a panel per series.",
}


def study_parameters(cohort: str, series: str | None) -> dict[str, dict]:
    """The parameters the report draws each study figure with (``cnnfilterdb plot``'s, given)."""
    return {"cohort_divergence": {"group_by": cohort, "series": series},
            "cohort_metric": {"group_by": cohort, "series": series, "metric": STUDY_METRIC},
            "correlation": {"x": STUDY_METRIC, "y": cohort, "group_by": series}}


def _options_text(params: dict) -> str:
    """``{"group_by": "robust"}`` as ``cnnfilterdb plot``'s options: " --group-by robust"."""
    return "".join(f" --{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in params.items() if v is not None)


def format_stat(v: float) -> str:
    """A drift statistic as the page shows it (and ``cnnfilterdb drift`` prints it)."""
    return f"{v:.5f}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing (see cnnfilterdb/atomic.py)."""
    with atomic_file(path) as f:
        f.write(data)


def _groups_text(result: dict) -> str:
    return ", ".join(group_labels(result["labels"], result["n_models"]))


def alt_text(figure: str, drifts: dict[str, dict | str], store_info: dict) -> str:
    """What a figure shows, for a reader who cannot see it: its kind, its axes and its groups."""
    def groups(field: str) -> str:
        r = drifts.get(field)
        if not isinstance(r, dict):
            return f"by {field_title(field).lower()}"
        return f"the {len(r['labels'])} groups by {field_title(field).lower()} ({_groups_text(r)})"

    evr = (store_info.get("basis") or {}).get("explained_variance_ratio") or []
    if figure == "kl_combined":
        return ("Three heatmaps of the symmetric KL divergence between " + "; between ".join(
            groups(g) for g in DRIFT_GROUPINGS) + ". Dark cells: similar filter distributions; bright cells: different.")
    if figure == "divergence":
        return (f"Heatmap of the symmetric KL divergence between {groups('task')}, rows and columns sorted by "
                "mean divergence. Dark cells: similar filter distributions; bright cells: different.")
    if figure == "drift_box":
        parts = []
        for g in ("task", "visual_category"):
            r = drifts.get(g)
            d = r.get("drift") if isinstance(r, dict) else None
            if d:
                parts.append(f"{field_title(g)}: median {format_stat(d['median'])}, "
                             f"from {format_stat(d['min'])} to {format_stat(d['max'])}")
        return ("Horizontal box plots of the pairwise divergences within the Task and Visual Category groupings"
                + (" (" + "; ".join(parts) + ")" if parts else "") + ".")
    if figure == "ridge":
        return (f"Ridge plot: for each of {groups('task')}, one filled density curve per principal-component "
                "coefficient c0 to c8 of its filters.")
    if figure == "explained_variance":
        if len(evr) >= 3:
            return (f"Line chart of the cumulative explained variance ratio against the number of principal components "
                    f"(1 to 9): the first explains {evr[0]:.0%}, the first three {sum(evr[:3]):.0%}.")
        return "Line chart of the cumulative explained variance ratio against the number of principal components."
    if figure == "covariance":
        return "9 by 9 heatmap of the covariance of the peak-scaled filters' nine values, with a colour bar."
    if figure == "eigenimages":
        ratios = ", ".join(f"v{i} {x:.2f}" for i, x in enumerate(evr))
        return ("Nine 3 by 3 images of the principal components v0 to v8 in a blue (-1), white (0), red (+1) "
                "colour map" + (f"; explained variance ratios {ratios}." if ratios else "."))
    if figure == "density2d":
        return ("Log-scale density image of the filters' coefficients c0 (x, increasing right) and c1 (y, increasing "
                "up) over -3.3 to 3.3: bright where filters are dense, dark where there are none.")
    if figure == "quality":
        return ("Scatter plot of every layer's sparsity (x) against its normalized variance entropy (y), coloured by "
                "task, with dashed lines at the degenerate-layer thresholds.")
    if figure == "cohort_divergence":
        return ("Bar chart: for each depth decile of the layers (x), the weighted KL divergence (y) between the filter "
                "distributions of the two cohorts, one coloured bar per series.")
    if figure == "cohort_metric":
        return ("Box plots: for each depth decile (x), the distribution of the models' variance entropy (y) in each "
                "cohort side by side, means as diamonds, one panel per series.")
    if figure == "correlation":
        return ("Scatter plots of each model's variance entropy (x) against the cohort field (y), one panel per "
                "series, titled with the Spearman correlation, its bootstrap interval and the number of models.")
    return TITLES.get(figure, figure)


_CSS = """
:root { color-scheme: light; --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg: #ffffff; --panel: #f6f8fa;
        --accent: #9a3412; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 16px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Roboto, sans-serif; }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; }
h1 { font-size: 1.8rem; margin: 0 0 4px; }
h2 { font-size: 1.35rem; margin: 0 0 4px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 16px; }
nav ul { list-style: none; padding: 0; margin: 8px 0 0; display: flex; flex-wrap: wrap; gap: 6px 18px; }
nav a, a { color: #0550ae; }
a:focus-visible { outline: 3px solid #0969da; outline-offset: 2px; }
section { margin: 32px 0; }
.counts { display: flex; flex-wrap: wrap; gap: 12px; margin: 0; }
.counts div { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 16px;
              min-width: 9rem; }
.counts dt { color: var(--muted); font-size: .85rem; }
.counts dd { margin: 0; font-size: 1.4rem; font-variant-numeric: tabular-nums; font-weight: 600; }
figure { margin: 8px 0 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
figcaption, .caption { color: var(--muted); margin: 4px 0 8px; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .88em; background: var(--panel);
       padding: 1px 4px; border-radius: 4px; }
.provenance { display: flex; flex-wrap: wrap; gap: 4px 24px; margin: 0 0 16px; color: var(--muted); }
.provenance div { display: flex; gap: 6px; }
.provenance dd { margin: 0; color: var(--fg); overflow-wrap: anywhere; }
.synthetic { border: 2px solid var(--accent); color: var(--accent); background: #fff7ed; padding: 10px 16px;
             border-radius: 6px; margin: 0 0 16px; font-weight: 600; }
.missing { border: 1px dashed var(--accent); color: var(--accent); background: #fff7ed; padding: 12px 16px;
           border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 6px 10px; text-align: right; vertical-align: top; }
th { background: var(--panel); }
th[scope=row], td.groups, th.text { text-align: left; }
td.groups { font-size: .85rem; color: var(--muted); max-width: 36rem; }
footer { color: var(--muted); font-size: .85rem; padding-bottom: 32px; }
"""


def _counts_html(info: dict) -> str:
    basis = info.get("basis")
    items = [("models", f"{info['models']:,}"), ("layers", f"{info['layers']:,}"), ("filters", f"{info['filters']:,}"),
             ("basis version", str(basis["version"]) if basis else "none")]
    cells = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in items)
    note = ""
    if basis:
        evr = ", ".join(f"{x:.4f}" for x in basis["explained_variance_ratio"])
        note = (f'<p class="caption">The global PCA basis (version {basis["version"]}) was fitted on '
                f'{basis["n_filters"]:,} filters; explained variance ratio [{escape(evr)}]; '
                f'{info.get("shards", 0):,} shard(s).</p>')
    else:
        note = '<p class="caption">The store has no basis yet (fewer than 2 filters).</p>'
    return f'<dl class="counts">{cells}</dl>\n{note}'


SYNTHETIC_NOTICE = "Synthetic sample data, not the CNN-Filter-DB dataset"


def provenance_of(a: Analysis) -> dict:
    """What the report shows, to be cited: ``store_id``, ``store_version`` (the version ``a`` reads),
    its ``committed_at`` (UTC) and ``digest`` (None before catalog layout 8), and how many of its
    models there are (``models``) and are the synthetic sample's (``sample_models``)."""
    from .catalog import list_versions, store_id

    row = next((v for v in list_versions(a.cur) if v["version"] == a.version), {})
    models, sample = a.cur.execute("SELECT count(*), count(*) FILTER (WHERE sample) FROM models_at(?)",
                                   [a.version]).fetchone()
    return {"store_id": store_id(a.cur), "store_version": a.version, "committed_at": row.get("committed_at"),
            "digest": row.get("digest"), "models": int(models), "sample_models": int(sample)}


def _provenance_html(prov: dict | None) -> str:
    """The store, version, commit time and digest the page shows; the synthetic-data notice first
    for a version holding sample models."""
    if not prov:
        return ""
    when = prov.get("committed_at")
    items = [("store id", f"<code>{escape(str(prov['store_id']))}</code>"),
             ("store version", escape(str(prov["store_version"]))),
             ("committed", escape(f"{when:%Y-%m-%d %H:%M:%S} UTC" if when is not None else "not recorded"))]
    if prov.get("digest"):
        items.append(("digest", f"<code>{escape(prov['digest'])}</code>"))
    cells = "".join(f"<div><dt>{escape(k)}</dt><dd>{v}</dd></div>" for k, v in items)
    out = ""
    if prov.get("sample_models"):
        n, k = prov.get("models", 0), prov["sample_models"]
        which = "all" if k == n else f"{k:,} of the {n:,}"
        out = (f'<p class="synthetic" role="note">{escape(SYNTHETIC_NOTICE)}: {which} models of this version are the '
               "generated sample of <code>cnnfilterdb demo</code>; what they show says nothing about trained "
               "networks.</p>\n")
    cite = f"store {prov['store_id']}, version {prov['store_version']}"
    return (out + f'<dl class="provenance" aria-label="Provenance">{cells}</dl>\n'
            f'<p class="caption">Cite these results as &ldquo;{escape(cite)}&rdquo;; '
            f"<code>cnnfilterdb log</code> and <code>verify</code> on a copy of the store check them.</p>")


def _drift_html(drifts: dict[str, dict | str]) -> str:
    head = '<th scope="col" class="text">grouping</th>' + \
        "".join(f'<th scope="col">{escape(s)}</th>' for s in ("groups",) + DRIFT_STATS) + \
        '<th scope="col" class="text">groups (models each)</th>'
    rows = []
    for g in DRIFT_GROUPINGS:
        r = drifts[g]
        name = f'<th scope="row">{escape(field_title(g))}</th>'
        if isinstance(r, str):  # the reason it could not be computed
            rows.append(f'<tr>{name}<td colspan="{len(DRIFT_STATS) + 2}" class="groups">{escape(r)}</td></tr>')
            continue
        d = r["drift"]
        stats = ("".join(f"<td>{escape(format_stat(d[s]))}</td>" for s in DRIFT_STATS) if d else
                 f'<td colspan="{len(DRIFT_STATS)}" class="groups">one group: no pairs to compare</td>')
        labels = _groups_text(r)
        if r.get("empty_groups"):
            labels += "; left out (no filters): " + ", ".join(str(x) for x in r["empty_groups"])
        rows.append(f'<tr>{name}<td>{len(r["labels"])}</td>{stats}<td class="groups">{escape(labels)}</td></tr>')
    return (f'<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody>\n</table>")


def _figure_html(name: str, fmt: str, drawn: dict, skipped: dict, drifts: dict, info: dict,
                 dpi: int | None = None, params: dict | None = None) -> str:
    title, caption = TITLES[name], CAPTIONS[name]
    command = (f"cnnfilterdb plot {name}{_options_text(params or {})} --db {shlex.quote(str(info.get('db') or '.'))}"
               + (f" --dpi {dpi}" if dpi is not None else "") + f" -o {name}.{fmt}")
    out = [f'<section id="{escape(name)}" aria-labelledby="{escape(name)}-h">',
           f'<h2 id="{escape(name)}-h">{escape(title)}</h2>']
    if name in drawn:
        file = f"{name}.{fmt}"
        w, h = drawn[name]
        out.append(f'<figure>\n<a href="{escape(file)}"><img src="{escape(file)}" width="{w}" height="{h}" '
                   f'alt="{escape(alt_text(name, drifts, info))}"></a>\n'
                   f'<figcaption>{escape(caption)} <code>{escape(command)}</code>'
                   f'</figcaption>\n</figure>')
    else:
        out.append(f'<p class="caption">{escape(caption)}</p>')
        out.append(f'<p class="missing" role="note">Not drawn for this store: {escape(skipped[name])}</p>')
    out.append("</section>")
    return "\n".join(out)


def report_html(store_info: dict, fmt: str, drawn: dict[str, tuple[int, int]], skipped: dict[str, str],
                drifts: dict[str, dict | str], dpi: int | None = None, provenance: dict | None = None,
                study: dict[str, dict] | None = None) -> str:
    """The report's page: the provenance (``provenance_of``: store id, version, commit time, digest,
    the synthetic-data notice), counts, then each figure (``drawn``: name -> display width, height in
    CSS pixels; ``skipped``: name -> reason), the drift statistics after the headline figure; then
    the studies' figures of ``study`` (name -> its parameters, ``study_parameters``), if any."""
    study = study or {}
    store = Path(store_info.get("db") or "")
    synthetic = f" ({SYNTHETIC_NOTICE[0].lower()}{SYNTHETIC_NOTICE[1:]})" if provenance and provenance.get("sample_models") else ""
    nav = "".join(f'<li><a href="#{escape(n)}">{escape(TITLES[n])}</a></li>' for n in FIGURES[:1]) + \
        '<li><a href="#drift">Drift statistics</a></li>' + \
        "".join(f'<li><a href="#{escape(n)}">{escape(TITLES[n])}</a></li>' for n in FIGURES[1:] + tuple(study))
    sections = [_figure_html(FIGURES[0], fmt, drawn, skipped, drifts, store_info, dpi),
                '<section id="drift" aria-labelledby="drift-h">\n<h2 id="drift-h">Drift statistics</h2>\n'
                '<p class="caption">Over the upper triangle of each grouping\'s symmetric KL divergence matrix '
                f'({DEFAULT_BINS} bins, explained-variance weights, global basis), as <code>cnnfilterdb drift --group-by '
                'task</code> prints them.</p>\n' + _drift_html(drifts) + "\n</section>"]
    sections += [_figure_html(n, fmt, drawn, skipped, drifts, store_info, dpi) for n in FIGURES[1:]]
    sections += [_figure_html(n, fmt, drawn, skipped, drifts, store_info, dpi, params) for n, params in study.items()]
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CNN Filter DB report: {escape(store.name or str(store))}{escape(synthetic)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>CNN Filter DB report</h1>
<p class="sub">Store <code>{escape(str(store))}</code></p>
{_provenance_html(provenance)}
{_counts_html(store_info)}
<nav aria-label="Figures"><ul>{nav}</ul></nav>
</header>
<main>
{chr(10).join(sections)}
</main>
<footer>
<p>Written by <code>cnnfilterdb report</code> (cnnfilterdb {escape(__version__)}); every figure with its default
parameters (a study's with those its caption shows), the same bytes as <code>cnnfilterdb plot FIGURE</code> and the service's
<code>GET /v1/plots/FIGURE.{escape(fmt)}</code> on this store; each file names the store id and version in its
metadata.</p>
</footer>
</body>
</html>
"""


def write_report(analysis: Analysis, store_info: dict, out_dir: Path, fmt: str = "png", dpi: int | None = None,
                 *, log: Callable[[str], None] | None = None, cohort: str | None = None,
                 series: str | None = None) -> list[Path]:
    """Write the report's figures and its ``index.html`` into ``out_dir`` (created if missing).

    Parameters
    ----------
    analysis : an ``Analysis`` on the store's catalog (one catalog generation).
    store_info : ``FilterStore.info()`` of the same store: the counts the page shows.
    out_dir : the directory; each figure is written as ``{figure}.{fmt}``, the page as ``index.html``.
    fmt : ``png`` or ``svg``.
    dpi : dots per inch of the figures (None: the figures' default, plots.FigureOptions').
    log : called with one line per file written and per figure skipped (e.g. ``print``).
    cohort : a model field (built-in, or a boolean or text property) whose cohorts the studies'
        figures compare (module docstring); None: no study figure.
    series : a model field drawn apart in the studies' figures (e.g. training_dataset); only with
        ``cohort``.

    Returns
    -------
    The paths written, figures in page order then ``index.html``. A figure the store cannot give
    (a SelectionError, e.g. an empty selection or more groups than the figure can label) is not
    written; the page shows its reason instead.
    """
    if fmt not in REPORT_FORMATS:
        raise SelectionError(f"unknown report format {fmt!r}; known: {', '.join(REPORT_FORMATS)}")
    plots.options(dpi=dpi)  # checked before any figure (PlotParameterError, the figures' message)
    study: dict[str, dict] = {}
    if series is not None and cohort is None:
        raise SelectionError("series is drawn apart in the studies' figures: give the cohort field too")
    if cohort is not None:  # a typo or a numeric property: one error before any work, not three skipped figures
        from .properties import properties_at

        properties = properties_at(analysis.cur, analysis.version)
        check_group_by(cohort, properties, parameter="cohort")
        check_group_by(series, properties, parameter="series")
        if series == cohort:
            raise SelectionError(f"series {series!r} is the cohort field: give another")
        study = study_parameters(cohort, series)
    log = log or (lambda line: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drifts: dict[str, dict | str] = {}
    for g in DRIFT_GROUPINGS:
        try:
            drifts[g] = analysis.divergence(g)
        except SelectionError as e:
            drifts[g] = str(e)
    written: list[Path] = []
    drawn: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    provenance = provenance_of(analysis)
    figure_provenance = plots.Provenance(provenance["store_id"], provenance["store_version"])
    for name in FIGURES + tuple(study):
        try:
            req = plots.PlotRequest.of(name, dpi=dpi, **study.get(name, {}))
            fig = plots.draw(analysis, req)
            data = plots.render(fig, fmt, req.dpi, figure_provenance)
        except SelectionError as e:
            skipped[name] = str(e)
            log(f"skipped {name}: {e}")
            continue
        w, h = fig.get_size_inches()
        drawn[name] = (round(w * 96), round(h * 96))  # shown at its size in inches, whatever the dpi
        path = out_dir / f"{name}.{fmt}"
        write_atomic(path, data)
        written.append(path)
        log(f"wrote {path} ({len(data):,} bytes)")
    page = report_html(store_info, fmt, drawn, skipped, drifts, dpi, provenance, study).encode()
    index = out_dir / "index.html"
    write_atomic(index, page)
    written.append(index)
    log(f"wrote {index} ({len(page):,} bytes)")
    return written
