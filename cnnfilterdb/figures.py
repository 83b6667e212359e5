"""The paper's figures (docs/method.md#figures), as pure functions: an analysis result in, a matplotlib Figure out.

Each function takes the dict an ``Analysis`` method returns (the same numbers as the JSON
endpoint of the same request) and draws it with the notebook's parameters; none touches pyplot,
a display or matplotlib's global state (figures are built with the object API on the Agg canvas,
so threads may draw at once). Turning a figure into bytes, with fixed metadata so that the same
figure always gives the same bytes, is ``plots.render``.

Labels carry the group's model count, "Classification (555)". Heatmaps of unordered fields (task,
visual category, ...) sort their rows and columns ascending by the column mean, as the notebook's
``np.argsort(np.mean(D, axis=0))`` (stable, so ties keep the natural order); ordered fields (depth
bins, depths, ids) keep their natural order.
"""
from __future__ import annotations

import colorcet
import numpy as np
from matplotlib import colormaps
from matplotlib.collections import PolyCollection
from matplotlib.colors import LogNorm, to_rgba
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec

from .limits import MAX_CURVE_POINTS, MAX_FILTERS_DRAWN
from .selection import natural_order

FIELD_TITLES = {"task": "Task", "visual_category": "Visual Category",
                "depth_bin": "Relative Depth of Convolution Layer", "conv_depth": "Convolution Depth",
                "training_dataset": "Training Dataset", "pretraining_dataset": "Pre-training Dataset",
                "name": "Architecture", "model": "Model", "model_id": "Model id", "producer": "Producer",
                "layer_id": "Layer id", "depth_decile": "Depth Decile of Convolution Layer"}
ORDERED_FIELDS = ("depth_bin", "depth_decile", "conv_depth", "layer_id", "model_id")
METRIC_TITLES = {"kl_sym": "symmetric KL divergence", "js": "Jensen-Shannon divergence",
                 "hellinger": "Hellinger distance", "wasserstein": "Wasserstein distance"}
KL_COMBINED_TITLE = "Distribution shifts of trained 3x3 convolution filters"
# Heatmaps: fire's maximum is white, so a white cell beside the page or beside another pale cell
# vanished; a dark frame and thin dark lines between the cells outline every cell (the lines only
# where a cell is at least CELL_LINES_MIN_PT wide: finer grids would be mostly lines).
EDGE_COLOR = "#262626"
FRAME_PT = 0.8
CELL_LINE_PT = 0.6
CELL_LINES_MIN_PT = 6.0


Size = tuple[float | None, float | None]


def _figsize(figsize: Size | None, default: tuple[float, float]) -> tuple[float, float]:
    """A figure's size in inches: the caller's width and height where given, else the default."""
    w, h = figsize or (None, None)
    return (w or default[0], h or default[1])


def _fire():
    return colorcet.cm["fire"]


def _fire_dark_bad():
    """The fire map with empty (masked, log of 0) cells in its darkest colour, as the notebook's."""
    fire = _fire()
    return fire.with_extremes(bad=fire(0.0), under=fire(0.0))


def field_title(field: str | None) -> str:
    return FIELD_TITLES.get(field, str(field).replace("_", " ").title()) if field else "All filters"


MAX_LABEL_CHARS = 60


def literal(text: str) -> str:
    """A store's text as matplotlib should draw it: as is. A ``$`` would start mathtext (a label
    "$\\foo$" failed every figure it was in); long text is cut at MAX_LABEL_CHARS."""
    text = text if len(text) <= MAX_LABEL_CHARS else text[:MAX_LABEL_CHARS - 1] + "…"
    return text.replace("$", r"\$")


def group_labels(labels: list, n_models: list) -> list[str]:
    """ "Classification (555)": each label with its group's model count."""
    return [f"{'(none)' if v is None else literal(str(v))} ({n})" for v, n in zip(labels, n_models)]


def heatmap_order(result: dict) -> np.ndarray:
    """The display order of a divergence result's groups (module docstring)."""
    D = np.asarray(result["matrix"], dtype=np.float64)
    if result["group_by"] in ORDERED_FIELDS:
        return np.arange(len(D))
    return np.argsort(np.mean(D, axis=0), kind="stable")


def _label_inches(labels: list[str], fontsize: float) -> float:
    """A bound on the width of the longest label: DejaVu Sans averages under 0.62 em a character.
    Laid out by this arithmetic rather than by a layout engine, which measures every text twice
    and took half the time of a heatmap."""
    return 0.62 * fontsize / 72 * max((len(t) for t in labels), default=0)


def _heatmap_layout(labels: list[str], w: float, h: float, titled: bool,
                    fontsize: float | None = None) -> tuple[float, ...]:
    """The largest font size (10 pt down to 4; or the one given) at which a square heatmap with its
    labels, title and colour bar fills at least half of a w x h inch box and its rows are not
    closer than the text: (fontsize, label margin, colour bar width, title height, side), in
    inches but the first."""
    n = max(len(labels), 1)
    for size in ([fontsize] if fontsize else np.arange(10.0, 3.9, -0.5)):
        em = size / 72
        margin = _label_inches(labels, size) + 1.2 * em
        bar = 0.15 + 0.15 + 6 * 0.62 * em + 1.5 * em  # pad, bar, tick labels "0.0125", its label
        top = 3.0 * em if titled else 0.1
        side = min(w - margin - bar, h - margin - top)
        if side >= 0.5 * min(w, h) and side / n >= 1.05 * em:
            break
    return float(size), margin, bar, top, max(side, 0.2)


def _outline_cells(ax, n: int, cell_pt: float) -> None:
    """A dark frame around a heatmap of n x n cells, and thin dark lines between its cells when
    each is ``cell_pt`` points wide or more (module constants EDGE_COLOR, ...)."""
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color(EDGE_COLOR)
        spine.set_linewidth(FRAME_PT)
    if n > 1 and cell_pt >= CELL_LINES_MIN_PT:
        edges = np.arange(1, n) - 0.5
        ax.set_xticks(edges, minor=True)
        ax.set_yticks(edges, minor=True)
        ax.tick_params(which="minor", length=0)
        ax.grid(which="minor", color=EDGE_COLOR, linewidth=CELL_LINE_PT)


def _draw_heatmap(fig: Figure, box: tuple[float, float, float, float], result: dict, title: str | None,
                  fontsize: float | None = None) -> None:
    """The heatmap of a divergence result in ``box`` (x, y, width, height inches from the bottom
    left): a square matrix (colour scale from 0: a divergence is not negative) with its labels left
    and below, its colour bar right; fonts shrink to fit a small box."""
    x, y, w, h = box
    W, H = fig.get_size_inches()
    order = heatmap_order(result)
    D = np.asarray(result["matrix"], dtype=np.float64)[np.ix_(order, order)]
    labels = [group_labels(result["labels"], result["n_models"])[i] for i in order]
    n = len(labels)
    fontsize, margin, bar, top, side = _heatmap_layout(labels, w, h, bool(title), fontsize)
    left, bottom = x + margin + (w - margin - bar - side) / 2, y + margin + (h - margin - top - side) / 2
    ax = fig.add_axes((left / W, bottom / H, side / W, side / H))
    cax = fig.add_axes(((left + side + 0.15) / W, bottom / H, 0.15 / W, side / H))
    vmax = float(np.nanmax(D)) if n and np.nanmax(D) > 0 else 1.0
    im = ax.imshow(D, cmap=_fire(), vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
    _outline_cells(ax, n, side * 72 / max(n, 1))
    ax.set_xticks(np.arange(n), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(n), labels, fontsize=fontsize)
    if title:
        ax.set_title(title, fontsize=fontsize + 1)
    cb = fig.colorbar(im, cax=cax)
    cb.ax.tick_params(labelsize=fontsize)
    cb.set_label(METRIC_TITLES.get(result["metric"], result["metric"]), fontsize=fontsize)


def divergence(result: dict, figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """One divergence matrix (``Analysis.divergence``) as the notebook's heatmap: fire colour map,
    x labels rotated 90 degrees, a colour bar; ``subtitle`` (e.g. the selection) under the title."""
    W, H = _figsize(figsize, (10, 10))
    fig = Figure(figsize=(W, H))
    title = f"{field_title(result['group_by'])}: {METRIC_TITLES.get(result['metric'], result['metric'])}"
    _draw_heatmap(fig, (0.1, 0.1, W - 0.2, H - 0.2), result, title + (f"\n{subtitle}" if subtitle else ""))
    return fig


def kl_combined(results: list[dict], figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """The seed README's headline figure: the heatmaps of several groupings in one row (by
    default Task, Visual Category, Relative Depth of Convolution Layer) under one title."""
    k = len(results)
    W, H = _figsize(figsize, (8 * k, 8.6))
    fig = Figure(figsize=(W, H))
    size = float(np.clip(2.2 * W / k, 8, 16))  # the title: 16 pt on the default 24-inch figure
    top = (1.9 if subtitle else 1.0) * size / 72 + 0.2
    boxes = [(0.1 + i * (W - 0.2) / k, 0.05, (W - 0.2) / k, H - top - 0.05) for i in range(k)]
    # one font size for every panel: the largest at which each fits
    fontsize = min(_heatmap_layout(group_labels(r["labels"], r["n_models"]), b[2], b[3], True)[0]
                   for r, b in zip(results, boxes))
    for r, b in zip(results, boxes):
        _draw_heatmap(fig, b, r, field_title(r["group_by"]), fontsize)
    fig.suptitle(KL_COMBINED_TITLE + (f"\n{subtitle}" if subtitle else ""), fontsize=size, y=1 - 0.1 / H, va="top")
    return fig


def upper_triangle(result: dict) -> np.ndarray:
    """The values a drift statistic is over: the upper triangle of the matrix, diagonal excluded."""
    D = np.asarray(result["matrix"], dtype=np.float64)
    return D[np.triu_indices(len(D), k=1)]


def drift_box(results: list[dict], figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """Horizontal box plots (with means) of the upper-triangle divergences of several groupings."""
    fig = Figure(figsize=_figsize(figsize, (8, 1.5 + 1.1 * len(results))), layout="constrained")
    ax = fig.add_subplot()
    if subtitle:
        ax.set_title(subtitle)
    # top to bottom in the order given
    parts = ax.boxplot([upper_triangle(r) for r in results][::-1], orientation="horizontal", showmeans=True,
                       tick_labels=[field_title(r["group_by"]) for r in results][::-1])
    for role in ("medians", "means", "boxes"):  # named, bottom to top (an SVG keeps them as ids)
        for k, artist in enumerate(parts[role]):
            artist.set_gid(f"{role}-{k}")
    ax.set_xlabel("Drift D")
    ax.grid(True)
    return fig


def ridge(result: dict, figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """Ridge plot of ``Analysis.kde``: a row per group, a column per coefficient c0..c8, each curve
    the group's KDE filled in ``C{row % 10}`` (alpha .7, outline #f0f0f0); x shared over the
    range, y not shared; the rows overlap. Labels and ticks shrink with a narrow figure.

    The notebook's ``GridSpec(n, 9, hspace=-0.5)`` of n x 9 axes, each autoscaled from 0, drawn as
    9 axes (one per column) holding the n rows: row r (from the top) stands on the baseline
    n - 1 - r and is scaled to 2 units at 1.05 x its peak (an autoscaled axes' 5% margin), so the
    rows overlap by half as the notebook's panels do, lower rows in front. The same picture, a
    tenth of the axes to lay out and draw (a 10-group ridge drew in 2 s with 90 axes)."""
    from matplotlib.ticker import MaxNLocator

    groups = result["groups"]
    n = len(groups)
    outside = sum(g.get("n_outside", 0) for g in groups)
    if outside:  # the curves end at the range: say what they leave out
        warning = (f"{outside:,} coefficients outside the basis range are left out (layers added since the basis "
                   "was fitted; cnnfilterdb refit)")
        subtitle = f"{subtitle}\n{warning}" if subtitle else warning
    step = -(-len(result["grid"]) // MAX_CURVE_POINTS)  # a finer grid is drawn at every step-th point
    x = np.asarray(result["grid"])[::step]
    W, H = _figsize(figsize, (18, 1 + 0.5 * n))
    fontsize = float(np.clip(W / 18 * 10, 5, 10))
    labels = group_labels([g["label"] for g in groups], [g["n_models"] for g in groups])
    left = (_label_inches(labels, fontsize) + 0.2) / W
    lines = subtitle.count("\n") + 1 if subtitle else 0
    top = ((2.4 + 1.4 * lines) * fontsize / 72 + 0.05) / H
    fig = Figure(figsize=(W, H))
    # margins as shares of the height, kept apart however short the figure (a 400 is not the
    # place for a 0.5-inch ridge plot: it draws, squeezed)
    top, bottom = min(top, 0.45), min(0.35 / H, 0.3)
    gs = GridSpec(1, 9, figure=fig, wspace=0.05, left=min(left, 0.5), right=0.99, top=1 - top, bottom=bottom)
    # Each column's rows as one collection of paths in drawing order, row by row: its fill (the
    # area under the curve, alpha .7, edged in its colour as fill_between's), then its outline
    # (the curve there and back, unfilled): the picture of n fills and n lines, one artist to draw.
    fills = [to_rgba(f"C{row % 10}", 0.7) for row in range(n)]
    faces = [c for f in fills for c in (f, (0, 0, 0, 0))]
    edges = [c for f in fills for c in (f, to_rgba("#f0f0f0"))]
    for col in range(9):
        ax = fig.add_subplot(gs[0, col])
        paths = []
        for row, g in enumerate(groups):
            y = np.asarray(g["density"][col])[::step]
            base, peak = n - 1 - row, 1.05 * float(np.max(y, initial=0.0))
            scaled = base + (2.0 * y / peak if peak > 0 else 0.0 * y)
            curve = np.column_stack([x, scaled])
            paths += [np.vstack([curve, [[x[-1], base], [x[0], base]]]), np.vstack([curve, curve[::-1]])]
            if col == 0:
                ax.text(-0.08, base + 0.2, labels[row], transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                        fontsize=fontsize)
        ax.add_collection(PolyCollection(paths, facecolors=faces, edgecolors=edges, linewidths=1.0, zorder=2))
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(0, n + 1)
        ax.patch.set_alpha(0)
        ax.set_yticks([])
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.spines["bottom"].set_zorder(3)  # the axis line in front of the rows, as the notebook's
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3 if W < 12 else 5))
        ax.tick_params(labelsize=fontsize)
        ax.set_title(f"c{col}", fontsize=fontsize + 1)
    if subtitle:
        fig.suptitle(subtitle, fontsize=fontsize + 1, y=1 - 0.05 / H, va="top")
    return fig


def eigenimages(pca: dict, figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """The 9 principal components as 3x3 images (``seismic``, -1..1), titled v_i, each with its
    explained variance ratio (``:.2f``) under it, one colour bar."""
    fig = Figure(figsize=_figsize(figsize, (18, 3.2)), layout="constrained")
    fig.suptitle("Principal components of the peak-scaled filters (explained variance ratio under each)"
                 + (f"\n{subtitle}" if subtitle else ""), fontsize="medium")
    axes = fig.subplots(1, 9)
    evr = pca["explained_variance_ratio"]
    for i, ax in enumerate(axes):
        im = ax.imshow(np.asarray(pca["components"][i]).reshape(3, 3), cmap="seismic", vmin=-1, vmax=1)
        ax.set_title(f"$v_{i}$")
        ax.set_xlabel(f"{evr[i]:.2f}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.02, aspect=12)
    return fig


def explained_variance(pcas: list[tuple[str, dict]], figsize: Size | None = None,
                       subtitle: str | None = None) -> Figure:
    """Cumulative explained variance ratio of one or more PCAs (label, ``Analysis.pca`` result)."""
    fig = Figure(figsize=_figsize(figsize, (6, 4)), layout="constrained")
    ax = fig.add_subplot()
    for label, pca in pcas:
        ax.plot(np.arange(1, 10), np.cumsum(pca["explained_variance_ratio"]), marker="o", label=label)
    ax.set_xlabel("most-significant n components")
    ax.set_ylabel("cumulative explained variance ratio")
    ax.set_xticks(np.arange(1, 10))
    ax.grid(True)
    if len(pcas) > 1:
        ax.legend(title=subtitle)
    return fig


COVARIANCE_TITLE = "Covariance of the peak-scaled filters' 9 weights"
WEIGHT_LABELS = [f"w{i}" for i in range(9)]
WEIGHTS_AXIS = "filter weight (3x3, row-major)"


def covariance(pca: dict, figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """The 9 x 9 covariance of the peak-scaled filters (scikit-learn's ``get_covariance()``): its
    rows and columns are the filter's 9 weights, row-major, and its axes say so (w0..w8); the
    notebook labels both "Principal Component" (docs/method.md#fig-covariance)."""
    fig = Figure(figsize=_figsize(figsize, (6, 5)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(COVARIANCE_TITLE + (f"\n{subtitle}" if subtitle else ""), fontsize="medium")
    im = ax.imshow(np.asarray(pca["covariance"]))
    ax.set_xticks(np.arange(9), WEIGHT_LABELS)
    ax.set_yticks(np.arange(9), WEIGHT_LABELS)
    ax.set_xlabel(WEIGHTS_AXIS)
    ax.set_ylabel(WEIGHTS_AXIS)
    fig.colorbar(im, ax=ax)
    return fig


def density2d(result: dict, figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """The 2-D histogram of two coefficients (``Analysis.density2d``) divided by its maximum, on a
    log scale from 1e-5 to 1, fire with empty cells dark, no ticks. Unlike the notebook's
    ``imshow``, which puts its second coefficient increasing downwards, c_j increases upwards."""
    counts = np.asarray(result["counts"], dtype=np.float64)
    peak = counts.max()
    image = (counts / peak if peak > 0 else counts).T  # rows: c_j, columns: c_i
    lo, hi = result["range"]
    i, j = result["components"]
    fig = Figure(figsize=_figsize(figsize, (6, 6)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_less_equal(image, 0), cmap=_fire_dark_bad(), norm=LogNorm(vmin=1e-5, vmax=1),
              origin="lower", extent=(lo, hi, lo, hi), interpolation="nearest")
    ax.set_facecolor(_fire()(0.0))
    _outline_cells(ax, 0, 0.0)  # the frame alone: empty cells are dark, the peak inside the cloud
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"$c_{i}$ → ({lo:g} to {hi:g})")
    ax.set_ylabel(f"$c_{j}$ → ({lo:g} to {hi:g})")
    if subtitle:
        ax.set_title(subtitle, fontsize="medium")
    return fig


def filter_mosaic(filters: np.ndarray, cols: int = 16) -> np.ndarray:
    """Filters (n, 3, 3), each scaled to its own absolute peak (an all-zero one stays zero), tiled
    row-major into one image (rows * 4 - 1, cols * 4 - 1) with NaN gaps one pixel wide."""
    f = np.asarray(filters, dtype=np.float64)
    peak = np.abs(f).reshape(len(f), 9).max(axis=1, initial=0.0)
    scaled = f / np.where(peak > 0, peak, 1.0)[:, None, None]
    rows = max(1, -(-len(f) // cols))
    tiles = np.full((rows * cols, 4, 4), np.nan)
    tiles[:len(f), :3, :3] = scaled
    return tiles.reshape(rows, cols, 4, 4).transpose(0, 2, 1, 3).reshape(rows * 4, cols * 4)[:-1, :-1]


def layer_filters(filters: np.ndarray, layer: dict, figsize: Size | None = None) -> Figure:
    """A layer's filters (n, 3, 3) as a grid of 3x3 images (``seismic``, -1..1), each scaled to its
    own absolute peak, 16 to a row (``filter_mosaic``); the first MAX_FILTERS_DRAWN of them."""
    f = np.asarray(filters)[:MAX_FILTERS_DRAWN]
    mosaic = filter_mosaic(f)
    cmap = colormaps["seismic"].with_extremes(bad="#c8c8c8")  # gaps grey: a zero weight is white
    fig = Figure(figsize=_figsize(figsize, (10, 0.7 + 9.0 * mosaic.shape[0] / mosaic.shape[1])), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    shown = f"the first {len(f)} of {layer['n_filters']:,}" if len(f) < layer["n_filters"] else f"{len(f):,}"
    zero = int((np.abs(np.asarray(f, dtype=np.float64)).reshape(len(f), 9).max(axis=1, initial=0.0) == 0).sum())
    ax.set_title(f"layer {layer['layer_id']} of {literal(layer['model'])} (depth {layer['conv_depth']})\n{shown} filters, "
                 f"each scaled to its peak" + (f"; {zero:,} of them all zero" if zero else ""))
    return fig


def quality(result: dict, figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """Every layer's sparsity against its normalized variance entropy (``Analysis.layer_quality``),
    coloured by a field, with the degenerate thresholds as dashed lines."""
    layers, labels = result["layers"], result["labels"]
    t = result["thresholds"]
    fig = Figure(figsize=_figsize(figsize, (9.5, 6)), layout="constrained")
    ax = fig.add_subplot()
    x = np.asarray(layers["sparsity"], dtype=np.float64)  # None -> nan: not drawn
    y = np.asarray(layers["variance_entropy_norm"], dtype=np.float64)
    index = {v: i for i, v in enumerate(labels)}
    which = np.array([index[v] for v in layers["label"]])
    for k, text in enumerate(group_labels(labels, result["n_models"])):
        mask = which == k
        ax.scatter(x[mask], y[mask], s=12, alpha=0.7, color=f"C{k % 10}", label=text)
    ax.axvline(t["sparsity_gt"], color="0.3", ls="--", lw=1)
    ax.axhline(t["entropy_norm_lt"], color="0.3", ls="--", lw=1)
    if t.get("entropy_norm_gt") is not None:
        ax.axhline(t["entropy_norm_gt"], color="0.3", ls=":", lw=1)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("normalized variance entropy")
    ax.grid(True, alpha=0.3)
    # outside the axes: degenerate layers sit in the corners a legend would take
    ax.legend(title=field_title(result["color_by"]), fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    if subtitle:
        ax.set_title(subtitle, fontsize="medium")
    return fig


# ---- the follow-up studies' figures (SPEC 14) ------------------------------------------------------
# The y axis of a cohort divergence: the study's "weighted KL divergence" (kl_sym, explained-variance weights).
COHORT_METRIC_NAMES = {"kl_sym": "KL divergence", "js": "Jensen-Shannon divergence",
                       "hellinger": "Hellinger distance", "wasserstein": "Wasserstein distance"}
MODEL_METRIC_TITLES = {"n_layers": "layers", "n_filters": "filters", "sparsity": "sparsity",
                       "variance_entropy": "variance entropy", "variance_entropy_norm": "normalized variance entropy",
                       "variance_entropy_clean": "variance entropy of the non-sparse filters",
                       "orthogonality": "orthogonality"}
NO_BAR = "no bar: a cohort has no layers there"


def value_text(v) -> str:
    """A field's value as a figure writes it: "(none)" for null, a store's text as is (``literal``)."""
    return "(none)" if v is None else literal(str(v))


def _fontsize(W: float, H: float, default: tuple[float, float]) -> float:
    """The text size of a figure drawn at W x H inches whose own size is ``default``: 10 pt at its own
    size, smaller (down to 5) in proportion when it is drawn smaller."""
    return float(np.clip(10 * min(W / default[0], H / default[1]), 5, 10))


def _fitted(text: str, inches: float, fontsize: float, at: str, broken: str) -> str:
    """``text`` with its first ``at`` written ``broken`` (with a line break) when it is wider than
    ``inches`` at ``fontsize``."""
    return text.replace(at, broken, 1) if _label_inches([text], fontsize) > inches else text


def cohort_axis_label(metric: str, weights: str) -> str:
    """The y label of a cohort divergence: "weighted KL divergence" (the study's) for explained-variance
    weights, the plain mean over the 9 components for uniform ones."""
    name = COHORT_METRIC_NAMES.get(metric, metric)
    return f"weighted {name}" if weights == "explained_variance" else f"{name} (mean over the 9 components)"


def cohort_heights(result: dict, values: list) -> np.ndarray:
    """Per value of ``within`` (``values``, in that order): D between the two groups of the result's
    facet of that value, NaN where the facet is missing or holds one group only."""
    facets = {repr(f["value"]): f for f in result.get("facets") or []}
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        f = facets.get(repr(v))
        if f is not None and len(f["labels"]) == 2:
            out[i] = float(f["matrix"][0][1])
    return out


def cohort_divergence(series: list[tuple], series_by: str | None = None, figsize: Size | None = None,
                      subtitle: str | None = None) -> Figure:
    """The robustness study's ``divergence_by_depth``: bars of the divergence between the two groups
    of ``group_by`` per value of ``within`` (natural order: depth deciles by depth), one colour per
    series. ``series``: (value of ``series_by``, ``Analysis.divergence`` result with ``within``) in
    order; one series (``series_by`` None) draws one colour and no legend of series. A value where a
    series' facet holds one group (a cohort without layers there) has no bar, an x at 0 instead
    (its patch kept, hidden: bar ``bar-{series}-{value}`` is always there)."""
    first = series[0][1]
    group_by, within = first["group_by"], first["within"]
    values = natural_order(list(dict.fromkeys(f["value"] for _, r in series for f in r.get("facets") or [])))
    cohorts: dict = {}  # the cohorts (natural order), with their models over the series
    for _, r in series:
        for v, m in zip(r["labels"], r["n_models"]):
            cohorts[repr(v)] = (v, cohorts.get(repr(v), (v, 0))[1] + m)
    cohorts = {k: cohorts[k] for k in map(repr, natural_order([v for v, _ in cohorts.values()]))}
    k, n = len(series), len(values)
    own = (float(np.clip(3.2 + n * (0.25 + 0.16 * k), 7, 24)), 4.8)
    W, H = _figsize(figsize, own)
    fs = _fontsize(W, H, own)
    fig = Figure(figsize=(W, H), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n, dtype=np.float64)
    width = 0.8 / k
    missing = False
    for s, (value, result) in enumerate(series):
        heights = cohort_heights(result, values)
        pos = x + (s - (k - 1) / 2) * width
        label = f"{value_text(value)} ({sum(result['n_models'])})" if series_by is not None else None
        if series_by is not None and len(result["labels"]) < 2:  # no bar at all: say why in the legend
            label += f", {' '.join(value_text(c) for c in result['labels'])} only"
        bars = ax.bar(pos, np.nan_to_num(heights, nan=0.0), width * 0.92, color=f"C{s % 10}", label=label,
                      edgecolor="white", linewidth=0.5)
        for i, (patch, h) in enumerate(zip(bars.patches, heights)):
            patch.set_gid(f"bar-{s}-{i}")  # series s, value i of within (an SVG keeps it as the id)
            if np.isnan(h):
                patch.set_visible(False)  # kept, so that bar i stays the i-th value of within
        gaps = np.isnan(heights)
        if gaps.any():
            missing = True
            ax.plot(pos[gaps], np.zeros(int(gaps.sum())), ls="none", marker="x", color=f"C{s % 10}", ms=fs / 2,
                    mew=1.2, clip_on=False, zorder=3)
    ax.set_xticks(x, [value_text(v) for v in values])
    ax.tick_params(labelsize=fs * 0.9)
    longest = max((len(value_text(v)) for v in values), default=0)
    if longest * n * fs / 10 > 6 * W:  # the labels would run into each other: slanted
        for t in ax.get_xticklabels():
            t.set(rotation=35, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(field_title(within), fontsize=fs)
    ax.set_ylabel(cohort_axis_label(first["metric"], first["weights"]), fontsize=fs)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    title = (f"Divergence between the cohorts of {field_title(group_by)}: "
             f"{' vs '.join(f'{value_text(v)} ({m})' for v, m in cohorts.values())}")
    ax.set_title(_fitted(title, 0.75 * W, fs, ": ", ":\n") + (f"\n{subtitle}" if subtitle else ""), fontsize=fs)
    handles, labels = ax.get_legend_handles_labels()
    if missing:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], ls="none", marker="x", color="0.3", mew=1.2))
        labels.append(NO_BAR)
    if series_by is not None or missing:
        # beside the axes: the bars of the deepest deciles are where a legend inside would go
        ax.legend(handles, labels, title=field_title(series_by) if series_by is not None else None,
                  fontsize=fs * 0.85, title_fontsize=fs, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def _grid(n: int, most: int) -> tuple[int, int]:
    cols = min(n, most)
    return -(-n // cols), cols


def cohort_metric(data: dict, metric: str, group_by: str, series_by: str | None = None,
                  figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """The robustness study's ``entropy_normal_vs_robust``: one panel per value of ``series_by``
    (one panel without it), in each per depth decile one box plot per group of ``group_by``, side by
    side in the group's colour, its mean a white diamond. ``data``: ``Analysis.figure_model_metrics``
    by depth decile, with the columns ``group_by`` and ``series_by``; ``metric`` one of its metrics.
    Boxes are matplotlib's (whiskers at 1.5 IQR, outliers as points); a model with no value of the
    metric in a decile (e.g. orthogonality unknown) is left out of it. Each box, median and mean is
    named ``{boxes,medians,means}-{panel}-{group}-{decile}`` (its gid, an SVG's id)."""
    import pandas as pd
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    t = pd.DataFrame.from_records(data["rows"], columns=data["columns"])
    for c in dict.fromkeys(c for c in (group_by, series_by, "depth_decile") if c):  # a missing value: None, not NaN
        t[c] = pd.Series([None if isinstance(v, float) and np.isnan(v) else v for v in t[c]], index=t.index,
                         dtype=object)
    t = t.loc[:, ~t.columns.duplicated()]
    y = pd.to_numeric(t[metric], errors="coerce").to_numpy(np.float64)
    deciles = natural_order(list(dict.fromkeys(t["depth_decile"])))
    cohorts = natural_order(list(dict.fromkeys(t[group_by])))
    panels = natural_order(list(dict.fromkeys(t[series_by]))) if series_by else [None]
    G, J = len(cohorts), len(deciles)
    rows, ncols = _grid(len(panels), 3)
    own = (float(np.clip(1.2 + ncols * (0.8 + J * (0.14 + 0.15 * G)), 7, 24)), 1.3 + rows * 3.3)
    W, H = _figsize(figsize, own)
    fs = _fontsize(W, H, own)
    step = max((W - 1.6) / ncols / (J + 0.2), 0.02)  # inches from one decile to the next
    tick_fs = float(np.clip(step * 72 / 1.8, 4, 0.85 * fs))  # slanted labels a line apart
    marker = float(np.clip(0.4 * step * 72 / G, 2, 4))
    fig = Figure(figsize=(W, H), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, ncols, sharey=True, squeeze=False)).ravel()
    width = 0.8 / G

    def key(v):  # equal values, whatever their type (a bool, a numpy bool, None)
        return repr(v if not isinstance(v, np.generic) else v.item())

    group_key = np.array([key(v) for v in t[group_by]])
    decile_key = np.array([key(v) for v in t["depth_decile"]])
    panel_key = np.array([key(v) for v in t[series_by]]) if series_by else np.full(len(t), key(None))
    model = t["model_id"].to_numpy()
    mean_style = {"marker": "D", "markersize": marker, "markerfacecolor": "white", "markeredgecolor": "black"}
    for p, (ax, value) in enumerate(zip(axes, panels)):
        in_panel = panel_key == key(value)
        for g, cohort in enumerate(cohorts):
            mine = in_panel & (group_key == key(cohort))
            data_at, positions, where = [], [], []
            for j, decile in enumerate(deciles):
                v = y[mine & (decile_key == key(decile)) & np.isfinite(y)]
                if len(v):
                    data_at.append(v)
                    positions.append(j + (g - (G - 1) / 2) * width)
                    where.append(j)
            if not data_at:
                continue
            colour = f"C{g % 10}"
            parts = ax.boxplot(data_at, positions=positions, widths=width * 0.85, patch_artist=True, showmeans=True,
                               manage_ticks=False,
                               boxprops={"facecolor": to_rgba(colour, 0.55), "edgecolor": colour},
                               medianprops={"color": colour, "linewidth": 1.5},
                               whiskerprops={"color": colour}, capprops={"color": colour},
                               flierprops={"marker": ".", "markersize": marker * 0.75, "markerfacecolor": colour,
                                           "markeredgecolor": colour},
                               meanprops=mean_style)
            for role in ("boxes", "medians", "means"):  # named by panel, group and decile (SVG ids)
                for j, artist in zip(where, parts[role]):
                    artist.set_gid(f"{role}-{p}-{g}-{j}")
        n_models = len(set(model[in_panel]))
        ax.set_title(f"{value_text(value)} ({n_models} models)" if series_by else f"all models ({n_models})",
                     fontsize=fs)
        ax.set_xticks(np.arange(J), [value_text(d) for d in deciles], rotation=45, ha="right",
                      rotation_mode="anchor", fontsize=tick_fs)
        ax.tick_params(axis="y", labelsize=0.85 * fs)
        ax.set_xlim(-0.6, J - 0.4)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        if p % ncols == 0:
            ax.set_ylabel(MODEL_METRIC_TITLES.get(metric, metric), fontsize=fs)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel(field_title("depth_decile"), fontsize=fs)  # once, under every panel (each panel's would collide)
    models = {key(c): len(set(model[group_key == key(c)])) for c in cohorts}
    handles = [Patch(facecolor=to_rgba(f"C{g % 10}", 0.55), edgecolor=f"C{g % 10}",
                     label=f"{value_text(c)} ({models[key(c)]})") for g, c in enumerate(cohorts)]
    handles.append(Line2D([], [], ls="none", **mean_style, label="mean"))
    fig.legend(handles=handles, title=field_title(group_by), loc="outside right upper", fontsize=0.85 * fs,
               title_fontsize=fs, frameon=False)
    title = f"{MODEL_METRIC_TITLES.get(metric, metric).capitalize()} of the models per depth decile, by {field_title(group_by)}"
    fig.suptitle(_fitted(title, W - 1.5, fs, ", by", ",\nby") + (f"\n{subtitle}" if subtitle else ""), fontsize=fs)
    return fig


def correlation_title(group: dict, method: str, label: str) -> str:
    """ "CIFAR-10: spearman 0.42 [0.10, 0.70], n=24": a group's statistic, its bootstrap interval and n."""
    if group["statistic"] is None or not np.isfinite(group["statistic"]):
        return f"{label}: {method} undefined, n={group['n']}"
    interval = (f" [{group['ci_low']:.2f}, {group['ci_high']:.2f}]"
                if group.get("ci_low") is not None and group.get("ci_high") is not None else "")
    return f"{label}: {method} {group['statistic']:.2f}{interval}, n={group['n']}"


def correlation(result: dict, figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """A scatter panel per group of ``Analysis.correlation`` (natural order): its models' x against
    y (the points of panel i named ``points-{i}``), titled with the statistic, its 95% bootstrap
    interval and n (``correlation_title``; the group on a line of its own where the title is wider
    than its panel); axes labelled with the variables' names, each panel scaled to its own points."""
    groups, pts = result["groups"], result["points"]
    rows, cols = _grid(len(groups), 3)
    own = (float(np.clip(0.6 + 4.3 * cols, 6, 24)), 0.9 + 3.2 * rows)
    W, H = _figsize(figsize, own)
    fs = _fontsize(W, H, own)
    fig = Figure(figsize=(W, H), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    x, y = np.asarray(pts["x"], dtype=np.float64), np.asarray(pts["y"], dtype=np.float64)
    keys = [repr(g) for g in pts["group"]]
    grouped = result.get("group_by") is not None
    for i, (ax, g) in enumerate(zip(axes, groups)):
        mine = np.array([k == repr(g["group"]) for k in keys], dtype=bool)
        ax.scatter(x[mine], y[mine], s=18 * fs / 10, alpha=0.75, color=f"C{i % 10}", edgecolors="none",
                   gid=f"points-{i}")
        label = value_text(g["group"]) if grouped else "all models"
        ax.set_title(_fitted(correlation_title(g, result["method"], label), (W - 0.6) / cols, fs, ": ", ":\n"), fontsize=fs)
        if not mine.any():
            ax.text(0.5, 0.5, "no model has both values", transform=ax.transAxes, ha="center", va="center",
                    color="0.4", fontsize=fs)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=0.85 * fs)
        if i % cols == 0:
            ax.set_ylabel(result["y"], fontsize=fs)
        if i + cols >= len(groups):
            ax.set_xlabel(result["x"], fontsize=fs)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    title = (f"{result['x']} and {result['y']}" + (f" per {field_title(result['group_by'])}" if grouped else "")
             + f" ({result['method']}, 95% interval of {result.get('resamples', 2000)} bootstrap resamples)")
    fig.suptitle(_fitted(title, W - 0.3, fs, " (", "\n(") + (f"\n{subtitle}" if subtitle else ""), fontsize=fs)
    return fig


# ---- a model checked against the population (SPEC 15) --------------------------------------------
CHECK_LAYER = "C0"        # a checked layer
CHECK_UNUSUAL = "#d62728"  # a checked layer whose kl_to_population is at or above its decile's 95th percentile
CHECK_BAND = "#7f8c9b"     # the population's interquartile band, median and 95th percentile
CHECK_MEDIAN = "#4b5563"
BAND_FACE, BAND_EDGE = "#dcdfe4", "#9aa3ad"  # CHECK_BAND at alpha 0.28 and 0.6 on white, opaque
DECILE_ZERO_HALF = 0.012   # decile "0" (the first convolution) is drawn as a box this wide either side of x = 0
MAX_CHECK_LABELS = 30      # flagged layers labelled with their number in the model, at most
# Left panel: the y axis is always logarithmic; a divergence at or below 0 (a decile whose layers
# share one distribution, a layer equal to its decile's pool) is drawn at a floor below the least
# positive value, said in the legend.
KL_FLOOR_DEFAULT = 1e-3    # the floor when no value is positive
# Right panel: the x axis padded so that markers at sparsity 0 or 1 are whole; zoomed to the data
# (up to at least CHECK_ZOOM_MIN) when every point and occupied cell lies below CHECK_ZOOM_BELOW.
CHECK_X_PAD = 0.02
CHECK_ZOOM_BELOW = 0.25
CHECK_ZOOM_MIN = 0.1
LABEL_MERGE = 0.035        # flagged points closer than this (axes fraction) share one label "3, 7"


def _greys():
    """Greys from light to mid grey: the population's density stays behind the model's points."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["Greys"](np.linspace(0.12, 0.62, 256)))


def decile_span(decile: str) -> tuple[float, float]:
    """The x span of a depth decile on the check figure: "(a, b]" from a to b; "0" (conv_depth 0) a
    short box around x = 0 (DECILE_ZERO_HALF either side)."""
    text = str(decile).strip()
    if text == "0":
        return -DECILE_ZERO_HALF, DECILE_ZERO_HALF
    a, b = text.strip("([])").split(",")
    return float(a), float(b)


def kl_floor(values) -> float:
    """The log axis's floor of the check figure's left panel: a decade below the least positive
    value (so a clipped value sits visibly under every real one), KL_FLOOR_DEFAULT without one."""
    pos = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    if not pos:
        return KL_FLOOR_DEFAULT
    return float(10 ** (np.floor(np.log10(min(pos))) - 1))


def plural(n: int, word: str, many: str | None = None) -> str:
    """ "1 layer", "2 layers", "1,234 models"."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def integer_ticks(vmax: float) -> list[int]:
    """Plain integer ticks for a log colour bar from 1 to ``vmax``: 1, 2, 5, 10, 20, 50, ...
    (vmax itself, rounded down, when fewer than three fit)."""
    ticks = [m * 10 ** e for e in range(0, 10) for m in (1, 2, 5) if m * 10 ** e <= vmax]
    top = int(np.floor(vmax))
    if len(ticks) < 3 and top not in ticks:
        ticks.append(top)
    return ticks


def quality_xlim(sparsity, density: dict | None) -> tuple[float, float]:
    """The x range of the check figure's right panel: [0, 1] padded by CHECK_X_PAD (a marker at
    sparsity 0 is whole); when every layer's sparsity and every occupied cell of the population's
    density lies below CHECK_ZOOM_BELOW, zoomed to 1.1 x their largest (at least CHECK_ZOOM_MIN)."""
    xs = [float(v) for v in sparsity if v is not None and np.isfinite(v)]
    if density:
        counts = np.asarray(density["counts"], dtype=np.float64)
        edges = np.asarray(density["sparsity_edges"], dtype=np.float64)
        occupied = np.flatnonzero(counts.sum(axis=1) > 0) if counts.size else []
        if len(occupied):
            xs.append(float(edges[occupied[-1] + 1]))
    top = max(xs) if xs else 1.0
    if top < CHECK_ZOOM_BELOW:
        hi = max(CHECK_ZOOM_MIN, 1.1 * top)
        return -CHECK_X_PAD * hi, hi * (1 + CHECK_X_PAD)
    return -CHECK_X_PAD, 1 + CHECK_X_PAD


def label_groups(ax, xs, ys, labels: list[str]) -> list[tuple[float, float, str]]:
    """Flagged points' labels without overlaps: points within LABEL_MERGE (in axes fraction, the
    axes' limits and scales as set) of a group's first point join it, the group labelled once with
    its numbers joined by commas ("3, 7"). Returns (x, y, text) per group, at its first point."""
    trans = ax.transData + ax.transAxes.inverted()
    groups: list[list] = []
    for x, y, text in zip(xs, ys, labels):
        fx, fy = trans.transform((x, y))
        for g in groups:
            if np.hypot(g[0] - fx, g[1] - fy) < LABEL_MERGE:
                g[4].append(text)
                break
        else:
            groups.append([fx, fy, x, y, [text]])
    return [(g[2], g[3], ", ".join(g[4])) for g in groups]


def _check_title(result: dict) -> str:
    m = result["model"]
    return (f"{literal(str(m['name']))} against CNN Filter DB store {result['store_id']}, "
            f"version {result['store_version']}")


def check(result: dict, figsize: Size | None = None, subtitle: str | None = None) -> Figure:
    """A model checked against the population (``check.check``'s result, POST /v1/check).

    Left: each checked layer's ``kl_to_population`` (y, always a log scale: a value at or below 0,
    e.g. a decile whose median is 0, is drawn at ``kl_floor``, a decade under the least positive
    value, and the legend says so)
    against its ``conv_depth_norm`` (x); per depth decile of the population, its layers' own
    divergences from their decile: the interquartile band (``band-{i}``: a rectangle from kl_q1 to
    kl_q3 over the decile's span, ``decile_span``), the median (``median-{i}``) and the 95th
    percentile at and above which a layer is unusual (``unusual-{i}``, dashed), i the decile's
    index in ``population.deciles``. The model's layers are points (``layers``: not unusual,
    ``layers-unusual``: flagged unusual, red triangles); a layer whose decile the population does
    not have (no kl) is an x on the axis (``layers-no-population``).

    Right: the population's layers as a 2-D density of sparsity (x) and normalized variance entropy
    (y), grey on a log scale with plain integer colour-bar ticks (``population-density``), the
    degenerate thresholds (sparse and low_entropy dashed, random_like dotted, as ``quality`` draws
    them; a threshold beyond a zoomed axis said in its corner, ``threshold-off-axis``), and the
    model's layers on top (``quality-layers``, ``quality-layers-unusual``); the x axis is padded
    (a marker at sparsity 0 is whole) and zoomed to the data when it all lies near 0
    (``quality_xlim``). Flagged layers are labelled with their number in the model (``layer`` of
    the result), at most MAX_CHECK_LABELS; flagged points close together share one label "3, 7"
    (``label_groups``), so that numbers never print over each other."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    own = (13.0, 5.6)
    W, H = _figsize(figsize, own)
    fs = _fontsize(W, H, own)
    fig = Figure(figsize=(W, H), layout="constrained")
    ax, aq = fig.subplots(1, 2, width_ratios=[1.3, 1.0])
    pop, layers = result["population"], result["layers"]
    deciles = pop.get("deciles") or []

    # -- left: kl_to_population by depth, always on a log axis: a value at or below 0 at the floor
    x = np.array([np.nan if r["conv_depth_norm"] is None else r["conv_depth_norm"] for r in layers], dtype=np.float64)
    kl = np.array([np.nan if r["kl_to_population"] is None else r["kl_to_population"] for r in layers], dtype=np.float64)
    stats = [d.get(k) for d in deciles for k in ("kl_q1", "kl_median", "kl_q3", "kl_unusual_at")]
    floor = kl_floor([*stats, *kl])
    clipped = sum(v is not None and np.isfinite(v) and v <= 0 for v in [*stats, *kl])

    def shown(v):
        return None if v is None else max(float(v), floor)

    for i, d in enumerate(deciles):
        a, b = decile_span(d["depth_decile"])
        q1, med, q3, hi = shown(d["kl_q1"]), shown(d["kl_median"]), shown(d["kl_q3"]), shown(d.get("kl_unusual_at"))
        zero = a < 0  # decile "0": a narrow box over the start of the next decile's
        band = Rectangle((a, q1), b - a, q3 - q1, facecolor=BAND_FACE, edgecolor=BAND_EDGE,
                         linewidth=0.9 if zero else 0.6, zorder=1.5 if zero else 1, gid=f"band-{i}")
        ax.add_patch(band)
        ax.add_line(Line2D([a, b], [med, med], color=CHECK_MEDIAN, linewidth=1.8, zorder=2, gid=f"median-{i}"))
        if hi is not None:
            ax.add_line(Line2D([a, b], [hi, hi], color=CHECK_MEDIAN, linewidth=1.0, ls="--", zorder=2, gid=f"unusual-{i}"))
    unusual = np.array(["unusual" in r["flags"] for r in layers], dtype=bool)
    known = np.isfinite(kl)
    kl_shown = np.where(known, np.maximum(kl, floor), np.nan)
    size = 30 * fs / 10
    if known.sum() > 1:  # the model's layers in depth order, thinly joined
        order = np.argsort(x[known], kind="stable")
        ax.plot(x[known][order], kl_shown[known][order], color=CHECK_LAYER, linewidth=0.6, alpha=0.35, zorder=3)
    ax.scatter(x[known & ~unusual], kl_shown[known & ~unusual], s=size, color=CHECK_LAYER, edgecolors="white",
               linewidths=0.5, zorder=4, gid="layers")
    ax.scatter(x[known & unusual], kl_shown[known & unusual], s=size * 1.6, marker="^", color=CHECK_UNUSUAL,
               edgecolors="black", linewidths=0.5, zorder=5, gid="layers-unusual")
    if (~known).any():
        ax.scatter(x[~known], np.full(int((~known).sum()), 0.02), marker="x", s=size, color="0.35",
                   transform=ax.get_xaxis_transform(), clip_on=False, zorder=4, gid="layers-no-population")
    ax.set_yscale("log")
    ax.autoscale_view()
    lo, top = ax.get_ylim()
    if clipped:  # the floor inside the axis, with room under it
        ax.set_ylim(min(lo, floor / 2), top)
    ax.set_xlim(-0.04, 1.02)
    ax.set_xlabel("relative depth of the layer (conv_depth_norm)", fontsize=fs)
    ax.set_ylabel("kl_to_population (symmetric KL, weighted)", fontsize=fs)
    ax.set_title("Each layer's divergence from the population's layers of its depth decile", fontsize=fs)
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=0.85 * fs)

    # -- right: the quality scatter over the population's density
    q = pop.get("quality_density")
    if q:
        counts = np.asarray(q["counts"], dtype=np.float64)
        most = counts.max() if counts.size else 0.0
        vmax = max(most, 2)
        mesh = aq.pcolormesh(np.asarray(q["sparsity_edges"]), np.asarray(q["entropy_norm_edges"]),
                             np.ma.masked_less_equal(counts.T, 0), cmap=_greys(),
                             norm=LogNorm(vmin=1, vmax=vmax), shading="flat", zorder=1, gid="population-density")
        cb = fig.colorbar(mesh, ax=aq, pad=0.01, fraction=0.05)
        cb.set_label("population layers per cell", fontsize=0.85 * fs)
        ticks = integer_ticks(vmax)
        cb.set_ticks(ticks, labels=[f"{t:,}" for t in ticks])
        cb.ax.minorticks_off()
        cb.ax.tick_params(labelsize=0.8 * fs)
        aq.set_ylim(q["entropy_norm_edges"][0], q["entropy_norm_edges"][-1])
    sx = np.array([np.nan if r["sparsity"] is None else r["sparsity"] for r in layers], dtype=np.float64)
    sy = np.array([np.nan if r["variance_entropy_norm"] is None else r["variance_entropy_norm"] for r in layers],
                  dtype=np.float64)
    x0, x1 = quality_xlim(sx, q)
    aq.set_xlim(x0, x1)
    t = result["parameters"]["thresholds"]
    off_axis = []
    if x0 <= t["sparsity_gt"] <= x1:
        aq.axvline(t["sparsity_gt"], color="0.3", ls="--", lw=1, zorder=2, gid="threshold-sparsity")
    else:
        off_axis.append(f"sparse above {t['sparsity_gt']:g}")
    aq.axhline(t["entropy_norm_lt"], color="0.3", ls="--", lw=1, zorder=2, gid="threshold-entropy-low")
    if t.get("entropy_norm_gt") is not None:
        aq.axhline(t["entropy_norm_gt"], color="0.3", ls=":", lw=1.2, zorder=2, gid="threshold-entropy-high")
    aq.scatter(sx[~unusual], sy[~unusual], s=size, color=CHECK_LAYER, edgecolors="white", linewidths=0.5, zorder=4,
               gid="quality-layers", clip_on=False)
    aq.scatter(sx[unusual], sy[unusual], s=size * 1.6, marker="^", color=CHECK_UNUSUAL, edgecolors="black",
               linewidths=0.5, zorder=5, gid="quality-layers-unusual", clip_on=False)
    if off_axis:  # a threshold beyond the zoomed axis, said on the panel
        aq.text(0.99, 0.02, "beyond this axis: " + "; ".join(off_axis), transform=aq.transAxes, ha="right",
                va="bottom", fontsize=0.7 * fs, color="0.25", zorder=6, gid="threshold-off-axis",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5})
    aq.set_xlabel("sparsity" + (" (zoomed to the data)" if x1 < 1 else ""), fontsize=fs)
    aq.set_ylabel("normalized variance entropy", fontsize=fs)
    aq.set_title("Layer quality: this model's layers over the population's", fontsize=fs)
    aq.tick_params(labelsize=0.85 * fs)

    # -- flagged layers labelled with their number in the model (the report's table rows); points
    # close together share one label ("3, 7"), so that two numbers never print over each other
    flagged = [i for i, r in enumerate(layers) if r["flags"]][:MAX_CHECK_LABELS]
    label_style = dict(xytext=(5, 4), textcoords="offset points", fontsize=0.7 * fs, zorder=6,
                       bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.8})
    for panel, px, py, gid in ((ax, x, kl_shown, "labels-depth"), (aq, sx, sy, "labels-quality")):
        at = [i for i in flagged if np.isfinite(px[i]) and np.isfinite(py[i])]
        groups = label_groups(panel, px[at], py[at], [str(layers[i].get("layer", i)) for i in at])
        for gx, gy, text in groups:
            panel.annotate(text, (gx, gy), gid=gid, **label_style)

    pct = f"{result['parameters'].get('unusual_percentile', 95):g}th percentile"
    n = len(layers)
    handles = [Patch(facecolor=BAND_FACE, edgecolor=BAND_EDGE, label="population: interquartile range per depth decile"),
               Line2D([], [], color=CHECK_MEDIAN, lw=1.8, label="population: median"),
               Line2D([], [], color=CHECK_MEDIAN, lw=1.0, ls="--", label=f"population: {pct}"),
               Line2D([], [], ls="none", marker="o", color=CHECK_LAYER, markeredgecolor="white",
                      label=f"this model's layers ({int((~unusual).sum())} of {n})"),
               Line2D([], [], ls="none", marker="^", color=CHECK_UNUSUAL, markeredgecolor="black",
                      label=f"unusual: at or above the {pct} ({int(unusual.sum())} of {n})")]
    if (~known).any():
        handles.append(Line2D([], [], ls="none", marker="x", color="0.35",
                              label=f"no population layer in its decile ({int((~known).sum())})"))
    if clipped:
        handles.append(Line2D([], [], ls="none", marker="_", color="0.35",
                              label=f"a divergence of 0 drawn at {floor:g} (log axis)"))
    handles.append(Line2D([], [], color="0.3", ls="--", lw=1, label="thresholds: sparse, low_entropy"))
    if t.get("entropy_norm_gt") is not None:
        handles.append(Line2D([], [], color="0.3", ls=":", lw=1.2, label="threshold: random_like"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=0.8 * fs,
               frameon=False)
    where = f", {subtitle}" if subtitle else ""
    line = (f"population: {plural(pop['n_models'], 'model')}, {plural(pop['n_layers'], 'layer')}{where}; "
            f"basis version {result['basis_version']}")
    fig.suptitle(_fitted(_check_title(result), W - 0.4, fs + 1, " against", "\nagainst") + "\n" + line, fontsize=fs + 1)
    return fig
