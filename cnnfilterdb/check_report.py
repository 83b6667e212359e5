"""A model checked against the population (docs/method.md#checking-a-model) as one self-contained HTML page, and the check's
files: ``cnnfilterdb check FILE -o report.html|fig.png|fig.svg|fig.pdf`` (``write_check_output``),
POST /v1/check's ``format=html`` (``check_html``).

The page is one file, readable offline and safe to open: inline CSS, the figure inline (a base64
PNG), no script, no URL to fetch; every text that comes from the model file or the store (a model
or layer name, a task, a where) is escaped. It shows what the model is (its file, kind, sha256 and
what the caller said it is), the store (id, version, basis version) and the population it was
compared with, the check figure (``figures.check``), a row per layer (its metrics with their
percentiles, kl_to_population with its percentile, its flags), the model's metrics with their
percentiles and its divergence, the nearest models, and how to read it all.
"""
from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from . import __version__, plots
from .plots import Provenance
from .selection import SelectionError

CHECK_FORMATS = {".html": "html", ".htm": "html", ".png": "png", ".svg": "svg", ".pdf": "pdf"}
FIGURE_DPI = 110
LAYER_METRICS = (("sparsity", "sparsity"), ("variance_entropy", "variance entropy"),
                 ("variance_entropy_norm", "entropy (normalized)"), ("variance_entropy_clean", "entropy (non-sparse)"),
                 ("orthogonality", "orthogonality"))
MODEL_METRICS = (("n_layers", "layers of 3x3 filters"), ("n_filters", "3x3 filters"), *LAYER_METRICS,
                 ("divergence", "divergence from the population"))
PCT_TITLE = ("percentile: 100 x the share of the population's layers of this depth decile whose value is at most "
             "this one (ties count: many equal values push it to 100)")
FLAG_TEXT = {"sparse": "sparsity above the threshold", "low_entropy": "normalized variance entropy below the threshold",
             "random_like": "normalized variance entropy above the threshold: close to random",
             "unusual": "kl_to_population at or above its decile's 95th percentile"}


def _text(v) -> str:
    return "—" if v is None else escape(str(v))


def number_text(v) -> str:
    """A number as the report and the dashboard write it: an integer exact, with thousands
    separators ("11,904"); a float at 4 significant digits, without an exponent from 1e-4 up
    ("0.0001234", "0.7811", "2.344"), with one below ("8.401e-05"), whole from 1e4 up ("12,346");
    0 as "0". The dashboard's ``fmtCheck`` (service/static/app.js) is the same rule."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    x = float(v)
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    return format(x, ".4g")  # fixed from 1e-4 to 1e4, an exponent below


def _num(v, fmt: str | None = None) -> str:
    if v is None:
        return "—"
    try:
        return escape(number_text(v) if fmt is None else format(float(v), fmt))
    except (TypeError, ValueError):
        return escape(str(v))


def plural(n: int, word: str, many: str | None = None) -> str:
    """ "1 layer", "2 layers", "1,234 models"."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def _pct(v) -> str:
    return "" if v is None else f' <span class="pct" title="{PCT_TITLE}">p{float(v):.0f}</span>'


def figure_alt(out: dict) -> str:
    """What the check figure shows, for a reader who cannot see it."""
    layers = out["layers"]
    unusual = sum("unusual" in r["flags"] for r in layers)
    return (f"Left: the kl_to_population of each of the model's {plural(len(layers), 'layer')} (y, log scale) against "
            f"its relative depth (x), over the population's median and interquartile range per depth decile; "
            f"{plural(unusual, 'layer')} at or above their decile's 95th percentile drawn as red triangles. Right: the "
            "model's layers by sparsity (x) and normalized variance entropy (y) over the density of the population's "
            "layers, with the degenerate thresholds as lines (sparse and low_entropy dashed, random_like dotted).")


def check_figure(out: dict, fmt: str, provenance: Provenance | None, dpi: int = FIGURE_DPI) -> bytes:
    """The check figure (``figures.check``, the population's ``where`` as its subtitle) as ``fmt``
    (png, svg, pdf) bytes, the provenance in the file's metadata: the one way the CLI, the report
    and POST /v1/check draw it."""
    from .figures import check
    from .plots import describe_where

    fig = check(out, None, describe_where(out["population"].get("where")))
    try:
        return plots.render(fig, fmt, dpi, provenance)
    finally:
        fig.clear()


_CSS = """
:root { color-scheme: light; --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --panel: #f6f8fa; --flag: #b42318;
        --flag-bg: #fef3f2; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Roboto, sans-serif; }
header, main, footer { max-width: 1400px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 0 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub, .caption { color: var(--muted); margin: 0 0 12px; }
section { margin: 28px 0; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
.cols { display: grid; gap: 24px; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); }
figure { margin: 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .88em; background: var(--panel);
       padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: .85rem; }
th, td { border: 1px solid var(--line); padding: 3px 6px; text-align: right; vertical-align: top; white-space: nowrap; }
th { white-space: normal; }
th { background: var(--panel); }
th.text, td.text { text-align: left; }
td.text { white-space: normal; overflow-wrap: break-word; min-width: 6rem; max-width: 18rem; }
td.name { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; max-width: 16rem; }
td.flags { white-space: normal; min-width: 7rem; }
#model-metrics { width: auto; min-width: 32rem; }
.pct { color: var(--muted); font-size: .85em; }
#layers td .pct { display: block; line-height: 1.2; }
tr.flagged td { background: var(--flag-bg); }
.flag { display: inline-block; color: #fff; background: var(--flag); border-radius: 999px; padding: 0 8px;
        font-size: .8rem; font-weight: 600; margin: 1px 2px; white-space: nowrap; }
.note { border-left: 4px solid var(--flag); background: var(--flag-bg); padding: 8px 12px; }
ul.read li { margin: 4px 0; }
footer { color: var(--muted); font-size: .85rem; padding-bottom: 32px; }
"""


def _kv(pairs: list[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _model_html(m: dict) -> str:
    said = [(k.replace("_", " "), _text(m.get(k))) for k in ("task", "visual_category", "training_dataset")
            if m.get(k) is not None]
    pairs = [("name", _text(m.get("name"))), ("file", _text(m.get("file"))), ("kind", _text(m.get("kind"))),
             ("size", f"{m['bytes']:,} bytes" if m.get("bytes") is not None else "—"),
             ("sha256", f"<code>{_text(m.get('sha256'))}</code>"), ("producer", _text(m.get("producer"))),
             ("opset", _text(m.get("op_set")))]
    said_html = (_kv(said) if said else '<p class="caption">Nothing (the caller may give its task, visual '
                 "category and training dataset: shown here, never stored).</p>")
    return _kv(pairs) + '<h3>What the caller said it is</h3>' + said_html


def _population_html(out: dict, provenance: Provenance) -> str:
    pop, par = out["population"], out["parameters"]
    t = par["thresholds"]
    where = pop.get("where")
    lo, hi = par["range"]
    pairs = [("store", f"<code>{escape(str(provenance.store_id))}</code>"),
             ("store version", _text(provenance.store_version)),
             ("basis version", _text(out.get("basis_version"))),
             ("where", f"<code>{escape(json.dumps(where, ensure_ascii=False))}</code>" if where else "every model"),
             ("models", _num(pop["n_models"])), ("layers", _num(pop["n_layers"])), ("filters", _num(pop["n_filters"])),
             ("divergence", f"{escape(str(par['metric']))}, {escape(str(par['weights']))} weights, "
                            f"{_num(par['bins'])} bins over [{_num(lo)}, {_num(hi)}]"),
             ("thresholds", f"sparse above {_num(t['sparsity_gt'])}; low_entropy below {_num(t['entropy_norm_lt'])}"
                            + (f"; random_like above {_num(t['entropy_norm_gt'])}" if t.get("entropy_norm_gt") is not None
                               else "")),
             ("unusual at", f"the {_num(par['unusual_percentile'], 'g')}th percentile of the decile's layers"
              + (f" (a decile of at least {_num(par['min_unusual_layers'])} population layers)"
                 if par.get("min_unusual_layers") else ""))]
    if pop.get("n_outside"):
        pairs.append(("outside the range", f"{plural(pop['n_outside'], 'coefficient')} of the population's filters"))
    return _kv(pairs)


def _layers_html(out: dict) -> str:
    clipped = any(r.get("clipped") for r in out["layers"])  # a column only where some layer has some
    head = ("<tr><th>layer</th><th class=text>name</th><th>depth (relative)</th><th class=text>depth decile "
            "(population layers)</th><th>filters</th>" + "".join(f"<th>{escape(t)}</th>" for _, t in LAYER_METRICS)
            + "<th>kl_to_<wbr>population</th><th>unusual at</th>" + ("<th>clipped</th>" if clipped else "")
            + "<th class=text>flags</th></tr>")
    rows = []
    for r in out["layers"]:
        p = r.get("percentiles") or {}
        flags = "".join(f'<span class="flag" title="{escape(FLAG_TEXT.get(f, f))}">{escape(f)}</span>'
                        for f in r["flags"])
        rows.append(
            f'<tr class="layer{" flagged" if r["flags"] else ""}">'
            f'<td>{_num(r.get("layer"))}</td><td class="text name" title="{_text(r.get("name"))}">{_text(r.get("name"))}</td>'
            f'<td>{_num(r["conv_depth"])} <span class="pct">({_num(r["conv_depth_norm"], ".3f")})</span></td>'
            f'<td class=text>{_text(r["depth_decile"])} <span class="pct">({_num(r.get("population_layers"))})</span></td>'
            f'<td>{_num(r["n_filters"])}</td>'
            + "".join(f"<td>{_num(r.get(k))}{_pct(p.get(k))}</td>" for k, _ in LAYER_METRICS)
            + f'<td>{_num(r.get("kl_to_population"))}{_pct(p.get("kl_to_population"))}</td>'
              f'<td>{_num(r.get("kl_unusual_at"))}</td>'
            + (f'<td>{_num(r.get("clipped"))}</td>' if clipped else "")
            + f'<td class="text flags">{flags}</td></tr>')
    return f'<div class="wide"><table id="layers"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _model_metrics_html(m: dict) -> str:
    p = m.get("percentiles") or {}
    rows = "".join(f'<tr><th class=text scope=row>{escape(t)}</th><td>{_num(m.get(k))}</td>'
                   f'<td>{"—" if p.get(k) is None else f"{float(p[k]):.0f}"}</td></tr>' for k, t in MODEL_METRICS)
    return ('<table id="model-metrics"><thead><tr><th class=text>metric</th><th>this model</th>'
            f'<th>percentile among the population\'s models</th></tr></thead><tbody>{rows}</tbody></table>')


NEAREST = (("model", "model"), ("name", "architecture"), ("task", "task"), ("visual_category", "visual category"),
           ("training_dataset", "training dataset"), ("pretraining_dataset", "pretraining dataset"),
           ("producer", "producer"))


def _nearest_html(out: dict) -> str:
    near = out.get("nearest_models") or []
    if not near:
        return '<p class="caption">The population holds no model.</p>'
    head = ("<tr><th>#</th><th>model id</th>" + "".join(f"<th class=text>{escape(t)}</th>" for _, t in NEAREST)
            + "<th>divergence</th></tr>")
    rows = "".join(f"<tr><td>{i}</td><td>{_num(n.get('model_id'))}</td>"
                   + "".join(f"<td class=text>{_text(n.get(k))}</td>" for k, _ in NEAREST)
                   + f"<td>{_num(n.get('divergence'))}</td></tr>" for i, n in enumerate(near, 1))
    return f'<div class="wide"><table id="nearest"><thead>{head}</thead><tbody>{rows}</tbody></table></div>'


def _nearest_caption(out: dict) -> str:
    n, k = len(out.get("nearest_models") or []), out["parameters"].get("k")
    if not n:
        return "No model of the population to compare with."
    what = "The population's model nearest" if n == 1 else f"The population's {n:,} models nearest"
    more = (f" (of the {_num(k)} asked: the population holds {plural(out['population']['n_models'], 'model')})"
            if k is not None and n < k else "")
    return f"{what} to this one{more}, by the divergence between their pooled filter distributions."


def _how_to_read(out: dict) -> str:
    par = out["parameters"]
    t = par["thresholds"]
    random_like = t.get("entropy_norm_gt") is not None
    return f"""<ul class="read">
<li><strong>Depth decile.</strong> A layer is compared with the population's layers at the same relative depth:
decile "0" holds the first convolutions (conv_depth 0), "(0.1, 0.2]" the layers whose conv_depth_norm is above 0.1
and at most 0.2.</li>
<li><strong>Percentiles</strong> (<span class="pct">pN</span>): 100 &times; the share of the population's layers
of the same depth decile (for the model's metrics: of the population's models) whose value is at most this one.
Ties count in full: where many layers have the same value (e.g. a sparsity of 0, common in trained models), a layer
with that value is at p100, not "higher than almost every layer". So p50 is typical; a low pN says few layers there
are as low; a high pN only says that few are higher.</li>
<li><strong>kl_to_population</strong>: the {escape(str(par['metric']))} divergence ({escape(str(par['weights']))}
weights) between the layer's filter distribution in the store's basis and the pooled distribution of the
population's layers of its decile; 0 is the same distribution. Its percentile is among those layers' own
divergences from their decile.</li>
<li><strong>Flags</strong>: <span class="flag">sparse</span> sparsity above {_num(t['sparsity_gt'])};
<span class="flag">low_entropy</span> normalized variance entropy below {_num(t['entropy_norm_lt'])} (redundant
filters){'' if not random_like else
 f'; <span class="flag">random_like</span> above {_num(t["entropy_norm_gt"])} (filters close to noise)'};
<span class="flag">unusual</span> kl_to_population at or above the {_num(par['unusual_percentile'], 'g')}th
percentile of its decile (the dashed line of the figure). A flag is a question to look at, not a verdict: a model
of a task the population lacks differs by design.</li>
<li><strong>A flagged layer, what to do</strong>:
<ul>
<li>Narrow the population to the model's own kind first: a <code>where</code> such as
<code>{{"task": "Classification"}}</code> (<code>cnnfilterdb check FILE --task ...</code>, or the dashboard's
population), and check again: a flag that goes away was the other tasks' difference.</li>
<li>Compare with the nearest models below: their pages in the dashboard (Models) show their layers' metrics and
filters at the same depths.</li>
<li><span class="flag">sparse</span> or <span class="flag">low_entropy</span> often mean dead or pruned filters, or
a collapsed layer whose filters are nearly all alike.</li>
{'<li><span class="flag">random_like</span> often means untrained or re-initialised weights: a layer that kept '
 'its initialisation, or a checkpoint saved before training.</li>' if random_like else ''}
<li><span class="flag">unusual</span> means the layer's filter distribution differs from the population's at that
depth: expected for a different task or data (e.g. medical images against natural ones), worth a look when the
population is the model's own kind.</li>
</ul></li>
<li><strong>Nearest models</strong>: the population's models whose pooled filter distribution is nearest to this
model's, by the same divergence.</li>
<li><strong>Definitions</strong>: docs/method.md, sections "Checking a model against the population"
(#checking-a-model) and "Model metrics" (#model-metrics).</li>
</ul>"""


def _synthetic_notice(pop: dict) -> str:
    n = pop.get("n_sample_models") or 0
    if not n:
        return ""
    total = pop["n_models"]
    who = (f"The population's {plural(total, 'model')} {'is' if total == 1 else 'are'}" if n >= total
           else f"{n:,} of the population's {total:,} models {'is' if n == 1 else 'are'}")
    return (f'<p class="note" id="synthetic"><strong>Synthetic data.</strong> {who} the synthetic sample of '
            "<code>cnnfilterdb demo</code>, not real trained models: these percentiles say nothing about real "
            "models.</p>")


def check_html(out: dict, provenance: Provenance | None = None) -> str:
    """The check ``out`` (``check.check``'s result) as one self-contained HTML page (module docstring);
    ``provenance``: the store and version compared with (default: the result's own)."""
    provenance = provenance or Provenance(str(out["store_id"]), int(out["store_version"]))
    m, pop = out["model"], out["population"]
    name = _text(m.get("name"))
    png = check_figure(out, "png", provenance)
    img = base64.b64encode(png).decode("ascii")
    flagged = sum(1 for r in out["layers"] if r["flags"])
    clipped = out.get("clipped") or 0
    falls = "falls" if clipped == 1 else "fall"
    clipped_html = (f'<p class="note" id="clipped">{plural(clipped, "coefficient")} of this model\'s filters {falls} outside the '
                    "store's basis range; each is counted in the nearest edge bin of its histogram.</p>" if clipped else
                    '<p class="caption" id="clipped">No coefficient of this model falls outside the store\'s basis '
                    "range (0 clipped).</p>")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Check of {name} · CNN Filter DB</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>Check of {name}</h1>
<p class="sub">Against {escape(provenance.citation)} (basis version {_text(out.get("basis_version"))}):
{plural(pop["n_models"], "model")}, {plural(pop["n_layers"], "layer")}. {plural(len(out["layers"]), "layer")} of 3x3
filters checked, {flagged:,} flagged. Nothing was written to the store.</p>
{_synthetic_notice(pop)}
</header>
<main>
<div class="cols">
<section id="model"><h2>The model</h2>{_model_html(m)}</section>
<section id="population"><h2>The population</h2>{_population_html(out, provenance)}</section>
</div>
<section id="figure"><h2>Figure</h2>
<figure><img src="data:image/png;base64,{img}" alt="{escape(figure_alt(out))}">
<figcaption class="caption">Left: each layer's divergence from the population's layers of its depth decile
(the grey boxes the population's interquartile range, the line its median, the dashed line its
{_num(out["parameters"]["unusual_percentile"], "g")}th percentile). Right: the layers' quality over the density
of the population's layers, the sparse and low_entropy thresholds dashed, random_like dotted. Flagged layers are
numbered as in the table (nearby ones share a label, "3, 7"); a divergence of 0 is drawn at the log axis's floor,
as the legend says.</figcaption>
</figure></section>
<section id="layer-table"><h2>Layers</h2>
<p class="caption">One row per 3x3 convolution, in the model's order; a metric's percentile (pN) is among the
population's layers of the same depth decile. Flagged rows are tinted.</p>
{_layers_html(out)}
{clipped_html}</section>
<section id="model-table"><h2>The model's metrics</h2>
<p class="caption">Weighted over the model's layers as the store's model metrics (docs/method.md, section
"Model metrics", #model-metrics).</p>
{_model_metrics_html(m)}</section>
<section id="nearest-models"><h2>Nearest models</h2>
<p class="caption">{_nearest_caption(out)}</p>
{_nearest_html(out)}</section>
<section id="how-to-read"><h2>How to read this</h2>{_how_to_read(out)}</section>
</main>
<footer>cnnfilterdb {escape(__version__)} · {escape(provenance.citation)} · model sha256
{_text(m.get("sha256"))}</footer>
</body>
</html>
"""


def write_check_output(out: dict, provenance: Provenance | None, path: str | Path) -> str:
    """Write the check ``out`` to ``path`` by its suffix, all or nothing (``report.write_atomic``):
    ``.html``/``.htm`` the page of ``check_html``, ``.png``/``.svg``/``.pdf`` the check figure
    (``figures.check`` through ``plots.render``, the provenance in the file's metadata). Returns a
    line saying what was written. SelectionError for another suffix (before anything is drawn);
    OSError from the write."""
    from .report import write_atomic

    path = Path(path)
    fmt = CHECK_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SelectionError(f"{path}: the output's suffix says what to write: {', '.join(CHECK_FORMATS)}")
    if fmt == "html":
        data, what = check_html(out, provenance).encode(), "the report, the figure inline"
    else:
        data, what = check_figure(out, fmt, provenance), "the check figure"
    write_atomic(path, data)
    return f"wrote {path} ({len(data):,} bytes: {what})"


__all__ = ["check_html", "check_figure", "write_check_output", "figure_alt", "CHECK_FORMATS"]
