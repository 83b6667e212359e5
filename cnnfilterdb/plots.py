"""A figure request, end to end: which analysis each figure draws with which defaults (the
notebook's, docs/method.md#figures), and the figure as PNG, SVG or PDF bytes. The service's
``GET /v1/plots/{figure}.{format}`` and ``cnnfilterdb plot``/``report`` both go through ``draw``
and ``render``, so the same request gives the same bytes everywhere.

Bytes are reproducible: the files carry no date or version metadata, SVG element ids come from a
fixed salt, so the same figure of the same catalog generation is the same bytes. Text stays text:
SVG keeps it as ``<text>`` (``svg.fonttype = "none"``), PDF embeds TrueType fonts
(``pdf.fonttype = 42``), as journals ask.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .limits import DEFAULT_KDE_BINS, MAX_BINS, MAX_DENSITY2D_BINS, MAX_KDE_BINS, MIN_KDE_BINS
from .selection import GROUP_FIELDS, SelectionError
from .stats.divergence import DEFAULT_BINS

if TYPE_CHECKING:  # matplotlib (a second to import) loads with the first figure drawn, not with a request's checks
    from matplotlib.figure import Figure

    from .analysis import Analysis

FIGURES = ("kl_combined", "divergence", "ridge", "eigenimages", "explained_variance", "covariance", "drift_box",
           "density2d", "layer_filters", "quality")
FORMATS = ("png", "svg", "pdf")
# The figures `cnnfilterdb report` writes: the notebook's set, in its order, then the headline.
NOTEBOOK_FIGURES = ("explained_variance", "covariance", "eigenimages", "ridge", "divergence", "drift_box",
                    "density2d", "kl_combined")

ANALYSIS = ("where", "metric", "bins", "weights", "basis")
SIZE = ("dpi", "width", "height")
# The request parameters each figure takes (besides dpi, width, height); any other is an error.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "kl_combined": ("group_by",) + ANALYSIS,
    "divergence": ("group_by",) + ANALYSIS,
    "drift_box": ("group_by",) + ANALYSIS,
    "ridge": ("group_by", "where", "bins", "basis"),
    "eigenimages": ("where",),
    "explained_variance": ("where",),
    "covariance": ("where",),
    "density2d": ("where", "components", "bins", "basis", "range"),
    "layer_filters": ("layer_id",),
    "quality": ("where", "color_by", "sparsity_gt", "entropy_norm_lt", "entropy_norm_gt"),
}
DEFAULT_GROUP_BY = {"kl_combined": ("task", "visual_category", "depth_bin"), "drift_box": ("task", "visual_category"),
                    "divergence": ("task",), "ridge": ("task",)}
DEFAULT_BINS_OF = {"ridge": DEFAULT_KDE_BINS, "density2d": 512}  # the notebook's; else the analysis default
DEFAULT_RANGE_OF = {"density2d": (-3.3, 3.3)}
# The bins a figure accepts: those of the JSON endpoint it draws (/v1/kde, /v1/density2d, /v1/divergence).
BINS_RANGE = {"ridge": (MIN_KDE_BINS, MAX_KDE_BINS), "density2d": (1, MAX_DENSITY2D_BINS)}
# The most groups a figure can label legibly (a larger selection is a 400 naming the limit),
# and the most groupings in one row of heatmaps or one box plot.
MAX_LABELS = {"kl_combined": 80, "divergence": 80, "ridge": 40, "quality": 20}
MAX_GROUPINGS = 6
MAX_PIXELS = 6_000_000  # 24 x 8.6 in at 170 dpi, 7 x 2.6 in at 500: Agg and its image resampling take ~50 B a pixel


class PlotParameterError(SelectionError):
    """A parameter a figure does not take, or one out of its range (the service: a 400
    invalid_request, as for the analysis endpoints' malformed requests)."""
MAX_DPI = 600
MAX_INCHES = 100.0


@dataclass(frozen=True)
class PlotRequest:
    """A validated figure request; None means the figure's default (``resolved`` fills them in)."""
    figure: str
    group_by: tuple[str, ...] | None = None
    where: dict | None = None
    metric: str = "kl_sym"
    bins: int | None = None
    weights: str = "explained_variance"
    basis: str = "global"
    components: tuple[int, int] = (0, 1)
    range: tuple[float, float] | None = None
    layer_id: int | None = None
    color_by: str = "task"
    sparsity_gt: float | None = None
    entropy_norm_lt: float | None = None
    entropy_norm_gt: float | None = None
    dpi: int = 100
    width: float | None = None
    height: float | None = None

    @classmethod
    def of(cls, figure: str, **params) -> PlotRequest:
        """From a figure name and the parameters a caller gave (None: not given; ``group_by``,
        ``components`` and ``range`` also as comma-separated text, as a URL or a flag has them). Raises
        LookupError for an unknown figure, SelectionError for a parameter the figure does not take
        or a value out of range."""
        if figure not in FIGURES:
            raise LookupError(f"no figure {figure!r}; the figures: {', '.join(FIGURES)}")
        given = {k: v for k, v in params.items() if v is not None}
        allowed = PARAMETERS[figure] + SIZE
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise PlotParameterError(f"{figure} takes no {', '.join(unknown)}; its parameters: {', '.join(allowed)}")
        if isinstance(given.get("group_by"), str):
            given["group_by"] = tuple(g.strip() for g in given["group_by"].split(","))
        if "group_by" in given:  # a grouping named twice is drawn once
            given["group_by"] = tuple(dict.fromkeys(given["group_by"]))
        for name, kind in (("components", int), ("range", float)):
            if isinstance(given.get(name), str):
                given[name] = _pair(given[name], name, kind)
        req = cls(figure=figure, **given)
        req._check()
        return req

    def _check(self) -> None:
        if self.group_by is not None:
            for g in self.group_by:
                if g not in GROUP_FIELDS:
                    raise SelectionError(f"unknown group_by {g!r}; known: {GROUP_FIELDS}")
            several = self.figure in ("kl_combined", "drift_box")
            if not several and len(self.group_by) != 1:
                raise PlotParameterError(f"{self.figure} takes one group_by, got {len(self.group_by)}")
            if several and not 1 <= len(self.group_by) <= MAX_GROUPINGS:
                raise PlotParameterError(f"{self.figure} takes 1 to {MAX_GROUPINGS} groupings in group_by, "
                                     f"got {len(self.group_by)}")
        if not 10 <= self.dpi <= MAX_DPI:
            raise PlotParameterError(f"dpi must be from 10 to {MAX_DPI}, got {self.dpi}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and not 0.5 <= v <= MAX_INCHES:
                raise PlotParameterError(f"{name} must be from 0.5 to {MAX_INCHES:g} inches, got {v}")
        if self.width and self.height:  # known before any work (else checked once the figure is built)
            _check_pixels(self.width, self.height, self.dpi)
        if self.bins is not None:
            lo, hi = BINS_RANGE.get(self.figure, (1, MAX_BINS))
            if not lo <= self.bins <= hi:
                raise PlotParameterError(f"bins must be from {lo} to {hi} for {self.figure}, got {self.bins}")

    def resolved(self) -> dict:
        """Every parameter the figure takes, defaults filled in: what the figure depends on (the
        service's ETag), besides the catalog generation."""
        out = {"figure": self.figure}
        for name in PARAMETERS[self.figure] + SIZE:
            v = getattr(self, name)
            if v is None and name == "group_by":
                v = DEFAULT_GROUP_BY.get(self.figure)
            elif v is None and name == "bins":
                v = DEFAULT_BINS_OF.get(self.figure, DEFAULT_BINS)
            elif v is None and name == "range":
                v = DEFAULT_RANGE_OF.get(self.figure)
            out[name] = list(v) if isinstance(v, tuple) else v
        return out


def _pair(text: str, name: str, kind) -> tuple:
    """``components`` or ``range`` as a query string or a flag gives them: "0,1", "-3.3,3.3"."""
    try:
        a, b = (kind(x) for x in text.split(","))
    except ValueError:
        raise PlotParameterError(f"{name}: two numbers separated by a comma, got {text[:100]!r}") from None
    return a, b


def describe_where(where: dict | None, limit: int = 140) -> str | None:
    """A selection as a figure's subtitle: "where task in [GAN, Segmentation], conv_depth >= 2"."""
    if not where:
        return None
    ops = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}
    parts = []
    for name, value in where.items():
        if isinstance(value, dict):
            parts.append(" and ".join(f"{name} {ops.get(k, k)} {v}" for k, v in value.items()) or f"{name} (any)")
        elif isinstance(value, list):
            parts.append(f"{name} in [{', '.join('null' if v is None else str(v) for v in value)}]")
        else:
            parts.append(f"{name} is null" if value is None else f"{name} = {value}")
    text = "where " + ", ".join(parts)
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return text.replace("$", r"\$")  # drawn as is, not as mathtext


def draw(a: Analysis, req: PlotRequest) -> Figure:
    """The figure of a request, computed with ``a`` (one catalog generation)."""
    from . import figures

    p = req.resolved()
    f = req.figure
    size = (req.width, req.height)
    note = describe_where(p.get("where"))
    if f in ("kl_combined", "divergence", "drift_box"):
        from .analysis import MAX_PAIR_CELLS

        limit = MAX_LABELS.get(f)
        # one request's pairwise work stays within one divergence's, however many groupings
        budget = MAX_PAIR_CELLS // len(p["group_by"])
        results = [a.divergence(g, p["where"], p["metric"], p["bins"], p["weights"], p["basis"], max_groups=limit,
                                max_pair_cells=budget) for g in p["group_by"]]
        if f == "drift_box" and (single := [r["group_by"] for r in results if len(r["labels"]) < 2]):
            raise SelectionError(f"drift_box compares pairs of groups; {', '.join(single)} gives fewer than 2 groups "
                                 "in this selection")
        fig = (figures.kl_combined(results, size, note) if f == "kl_combined" else
               figures.divergence(results[0], size, note) if f == "divergence" else
               figures.drift_box(results, size, note))
    elif f == "ridge":
        fig = figures.ridge(a.kde(p["where"], p["group_by"][0], p["bins"], p["basis"], max_groups=MAX_LABELS[f]),
                            size, note)
    elif f == "eigenimages":
        fig = figures.eigenimages(a.pca(p["where"]), size, note)
    elif f == "covariance":
        fig = figures.covariance(a.pca(p["where"]), size, note)
    elif f == "explained_variance":
        pcas = [("all filters", a.pca(None))]
        if p["where"]:
            pcas.append(("selection", a.pca(p["where"])))
        fig = figures.explained_variance(pcas, size, note)
    elif f == "density2d":
        fig = figures.density2d(a.density2d(p["where"], tuple(p["components"]), p["bins"], p["basis"],
                                            tuple(p["range"]) if p["range"] else None), size, note)
    elif f == "layer_filters":
        layer_id = p["layer_id"] if p["layer_id"] is not None else a.first_layer_id()  # a figure with no parameters
        layer, W = a.layer_filters(layer_id, figures.MAX_FILTERS_DRAWN)
        fig = figures.layer_filters(W, layer, size)
    else:  # quality
        thresholds = {k: p[k] for k in ("sparsity_gt", "entropy_norm_lt", "entropy_norm_gt") if p[k] is not None}
        result = a.layer_quality(p["where"], p["color_by"], thresholds)
        if len(result["labels"]) > MAX_LABELS[f]:
            raise SelectionError(f"color_by {p['color_by']} gives {len(result['labels'])} values; at most "
                                 f"{MAX_LABELS[f]} here: narrow the selection with where, or colour by another field")
        fig = figures.quality(result, size, note)
    _check_pixels(*fig.get_size_inches(), req.dpi)
    return fig


def _check_pixels(w: float, h: float, dpi: int) -> None:
    if w * h * dpi ** 2 > MAX_PIXELS:
        raise PlotParameterError(f"the figure would be {w * dpi:,.0f} x {h * dpi:,.0f} pixels, over the limit of "
                                 f"{MAX_PIXELS:,}: lower dpi, width or height")


# rcParams are process-wide: the few that drawing and saving read are set around each render,
# under a lock, so that concurrent renders never see each other's (drawing holds the GIL for most
# of its time anyway). Text unhinted: 20% less time to draw a heatmap, whose labels dominate it.
_RENDER_RC = {"svg.fonttype": "none", "svg.hashsalt": "cnnfilterdb", "pdf.fonttype": 42, "ps.fonttype": 42,
              "text.hinting": "no_hinting"}
_RENDER_LOCK = threading.Lock()
_METADATA = {"svg": {"Date": None, "Creator": None},
             "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}}
MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}


def render(fig: Figure, fmt: str, dpi: int = 100) -> bytes:
    """The figure as ``fmt`` (png, svg or pdf) bytes, the same bytes for the same figure."""
    import matplotlib

    if fmt not in FORMATS:
        raise SelectionError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    buf = io.BytesIO()
    if fmt == "png":
        # Agg's RGBA buffer written as RGB (the figures are opaque) at zlib level 3: a third of the
        # time of savefig's RGBA at level 6, for PNGs 10% larger; no metadata but the resolution.
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from PIL import Image

        fig.set_dpi(dpi)
        canvas = FigureCanvasAgg(fig)
        with _RENDER_LOCK, matplotlib.rc_context(_RENDER_RC):
            canvas.draw()
        Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(buf, format="png", compress_level=3,
                                                                        dpi=(dpi, dpi))
    else:
        with _RENDER_LOCK, matplotlib.rc_context(_RENDER_RC):
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=_METADATA[fmt])
    return buf.getvalue()


def warm_up() -> None:
    """Load matplotlib, the fonts and the colour maps now (about 0.5 s), not in the first figure
    request: a tiny heatmap drawn and saved in each format."""
    from . import figures

    tiny = {"group_by": "task", "labels": ["a", "b"], "n_models": [1, 1], "matrix": [[0.0, 1.0], [1.0, 0.0]],
            "metric": "kl_sym"}
    for fmt in FORMATS:
        render(figures.divergence(tiny, (2, 2)), fmt, 20)
