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

FIELD_TITLES = {"task": "Task", "visual_category": "Visual Category",
                "depth_bin": "Relative Depth of Convolution Layer", "conv_depth": "Convolution Depth",
                "training_dataset": "Training Dataset", "pretraining_dataset": "Pre-training Dataset",
                "name": "Architecture", "model": "Model", "model_id": "Model id", "producer": "Producer",
                "layer_id": "Layer id"}
ORDERED_FIELDS = ("depth_bin", "conv_depth", "layer_id", "model_id")
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
