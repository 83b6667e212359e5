"""A figure request, end to end: which analysis each figure draws, whose request type
(requests.py) checks the figure's parameters of it with their bounds, the figure's own defaults
where they differ (the notebook's, docs/method.md#figures), and the figure as PNG, SVG or PDF bytes. The service's
``GET /v1/plots/{figure}.{format}`` and ``cnnfilterdb plot``/``report`` both go through ``draw``
and ``render``, so the same request gives the same bytes everywhere.

Bytes are reproducible: the files carry no date or software version, SVG element ids come from a
fixed salt, so the same figure of the same catalog generation is the same bytes. What they do carry
is where the figure came from (``Provenance``, given to ``render``): the store's id and the store
version drawn, in each format's own metadata (``figure_metadata``). Text stays text:
SVG keeps it as ``<text>`` (``svg.fonttype = "none"``), PDF embeds TrueType fonts
(``pdf.fonttype = 42``), as journals ask.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from .limits import (
    DEFAULT_KDE_BINS,
    DENSITY_BINS,
    DENSITY_RANGE,
    MAX_DPI,
    MAX_FILTERS_DRAWN,
    MAX_GROUPINGS,
    MAX_ID,
    MAX_INCHES,
    MAX_LABELS,
    MAX_PIXELS,
    MAX_SERIES,
    MIN_DPI,
    MIN_INCHES,
)
from .requests import (
    GROUP_BY_TEXT,
    MODEL_METRICS,
    AnalysisRequest,
    CorrelationRequest,
    DegenerateRequest,
    Density2dRequest,
    DivergenceRequest,
    GroupField,
    Integer,
    KdeRequest,
    ModelMetricsRequest,
    PcaRequest,
    Real,
    bounds_of,
    build,
    check_where,
    constraints,
    plain,
)
from .selection import GROUP_FIELDS, InvalidValue, SelectionError

if TYPE_CHECKING:  # matplotlib (a second to import) loads with the first figure drawn, not with a request's checks
    from matplotlib.figure import Figure

    from .analysis import Analysis

# The paper's figures (and two more): every parameter has a default, which draws the notebook's figure.
FIGURES = ("kl_combined", "divergence", "ridge", "eigenimages", "explained_variance", "covariance", "drift_box",
           "density2d", "layer_filters", "quality")
# The follow-up studies' figures (SPEC 14, docs/figures.md#the-studies-figures): they compare the
# cohorts of a model field the store may not have (a property such as robust), or variables the
# caller names, so group_by (and a correlation's x and y) must be given.
STUDY_FIGURES = ("cohort_divergence", "cohort_metric", "correlation")
ALL_FIGURES = FIGURES + STUDY_FIGURES
FORMATS = ("png", "svg", "pdf")
# The figures `cnnfilterdb report` writes: the notebook's set, in its order, then the headline.
NOTEBOOK_FIGURES = ("explained_variance", "covariance", "eigenimages", "ridge", "divergence", "drift_box",
                    "density2d", "kl_combined")

ModelMetric = Literal[MODEL_METRICS]  # type: ignore[valid-type]


class CohortMetricRequest(ModelMetricsRequest):
    """The cohort_metric figure's analysis: ``model_metrics`` by depth decile over a selection's
    layers (``where``, ``layers``), each model in its cohort (its value of ``group_by``) and, with
    the figure's ``series``, its panel; ``metric`` the model metric drawn. Not an endpoint's: the
    figure's data is ``Analysis.figure_model_metrics``."""
    positional: ClassVar = ()
    group_by: GroupField = Field(description=GROUP_BY_TEXT)
    metric: ModelMetric = Field("variance_entropy", description="the model metric drawn (SPEC 14: a weighted mean "
                                                                "over the model's layers of each depth decile)")
    by: Literal["depth_decile"] = Field("depth_decile", description="always by depth decile")


# The analysis each figure draws: its request type (requests.py; cohort_metric's above) owns the
# figure's parameters of that analysis, their bounds, their descriptions and (but for
# FIGURE_DEFAULTS) their defaults.
ANALYSIS_OF: dict[str, type[AnalysisRequest]] = {
    "kl_combined": DivergenceRequest, "divergence": DivergenceRequest, "drift_box": DivergenceRequest,
    "ridge": KdeRequest, "density2d": Density2dRequest,
    "eigenimages": PcaRequest, "explained_variance": PcaRequest, "covariance": PcaRequest,
    "quality": DegenerateRequest,
    "cohort_divergence": DivergenceRequest, "cohort_metric": CohortMetricRequest, "correlation": CorrelationRequest,
}
# A request type's parameters that no figure takes: the store version is the figure request's own
# (the service's as_of, the CLI's --as-of), and a page of flagged layers means nothing to a drawing.
NOT_DRAWN = ("as_of", "limit", "offset")
# ... and those one figure does not take: the paper's heatmaps draw one matrix (``within`` is
# cohort_divergence's), cohort_metric is always by depth decile.
NOT_TAKEN = {"kl_combined": ("within",), "divergence": ("within",), "drift_box": ("within",), "cohort_metric": ("by",)}
# The parameters that are the figure's own, not its analysis's; every figure takes SIZE.
OWN = {"layer_filters": ("layer_id",), "quality": ("color_by",), "cohort_divergence": ("series",),
       "cohort_metric": ("series",)}
SIZE = ("dpi", "width", "height")
# The request parameters each figure takes (besides SIZE); any other is an error.
PARAMETERS: dict[str, tuple[str, ...]] = {
    f: tuple(n for n in (ANALYSIS_OF[f].model_fields if f in ANALYSIS_OF else ())
             if n not in NOT_DRAWN and n not in NOT_TAKEN.get(f, ())) + OWN.get(f, ())
    for f in ALL_FIGURES}
# Every parameter of some figure, in order: the service's query parameters, `cnnfilterdb plot`'s options.
OPTIONS = tuple(dict.fromkeys(n for f in ALL_FIGURES for n in PARAMETERS[f])) + SIZE
# The figures that draw several groupings (group_by comma-separated); the others take one.
SEVERAL = ("kl_combined", "drift_box")
# The notebook's figures (docs/method.md#figures), where they differ from the analysis's defaults.
DEFAULT_GROUP_BY = {"kl_combined": ("task", "visual_category", "depth_bin"), "drift_box": ("task", "visual_category"),
                    "divergence": ("task",), "ridge": ("task",)}
# The notebook's: what the stored histograms hold (segments.py), so these figures read no filter.
FIGURE_DEFAULTS: dict[str, dict[str, Any]] = {"density2d": {"bins": DENSITY_BINS, "range": DENSITY_RANGE},
                                              "ridge": {"bins": DEFAULT_KDE_BINS},
                                              "cohort_divergence": {"within": "depth_decile"}}
# What a parameter is to a figure, where its request type's description says something else.
TEXTS = {("cohort_divergence", "within"): "the field whose values are the bars, in natural order: per value, the "
                                          "divergence between the two cohorts of group_by among its layers"}
# What group_by is to the studies' figures (plots.describe): the cohorts compared, or the panels.
GROUP_BY_NOTES = {"cohort_divergence": "required; exactly two groups in the selection, e.g. a boolean property",
                  "cohort_metric": f"required; at most {MAX_LABELS['cohort_metric']} groups",
                  "correlation": f"a panel each, at most {MAX_LABELS['correlation']}; absent: one panel of all models"}


class PlotParameterError(SelectionError):
    """A parameter a figure does not take, or one out of its range (the service: a 400
    invalid_request, as for the analysis endpoints' malformed requests)."""


class FigureOptions(BaseModel):
    """A figure's own parameters: those of no analysis (OWN) and its size (SIZE)."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    layer_id: Integer(0, MAX_ID) | None = Field(None, description="the layer drawn (layer_id in GET /v1/layers); "
                                                                  "default the store's first")
    color_by: GroupField = Field("task", description="the field whose values colour the layers")
    series: GroupField | None = Field(None, description="a model field whose values are drawn apart, e.g. "
                                                        "training_dataset: a colour of bars each (cohort_divergence, "
                                                        "at most 10) or a panel each (cohort_metric, at most 12); "
                                                        "absent: one")
    dpi: Integer(MIN_DPI, MAX_DPI) = Field(100, description="dots per inch")
    width: Real(MIN_INCHES, MAX_INCHES) | None = Field(None, description="the width in inches, the figure's own if not given")
    height: Real(MIN_INCHES, MAX_INCHES) | None = Field(None, description="the height in inches, the figure's own if not given")


def options(**values) -> FigureOptions:
    """A figure's own parameters checked (None: the default); PlotParameterError naming a bad one."""
    try:
        return build(FigureOptions, **{k: v for k, v in values.items() if v is not None})
    except InvalidValue as e:
        raise PlotParameterError(str(e)) from None


@dataclass(frozen=True)
class PlotRequest:
    """A checked figure request: the figure, its own parameters, and the request(s) of the
    analysis it draws (``requests``: one per grouping of kl_combined and drift_box, none for
    layer_filters), built with the figure's defaults and checked by their request type."""
    figure: str
    options: FigureOptions
    group_by: tuple[str, ...] | None = None  # the groupings drawn (the figure's default filled in)
    where: dict | None = None  # the selection as given (checked): the subtitle and the ETag show it
    requests: tuple[AnalysisRequest, ...] = ()

    @classmethod
    def of(cls, figure: str, **params) -> PlotRequest:
        """From a figure name and the parameters a caller gave (None: not given; ``group_by``,
        ``components`` and ``range`` also as comma-separated text, as a URL or a flag has them). Raises
        LookupError for an unknown figure; PlotParameterError for a parameter the figure does not
        take or a value out of its range, UnknownName for a name outside its set (with the
        nearest: "did you mean 'task'?"), the where grammar's errors for a bad ``where``."""
        if figure not in ALL_FIGURES:
            raise LookupError(f"no figure {figure!r}; the figures: {', '.join(ALL_FIGURES)}")
        given = {k: v for k, v in params.items() if v is not None}
        allowed = PARAMETERS[figure] + SIZE
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise PlotParameterError(f"{figure} takes no {', '.join(unknown)}; its parameters: {', '.join(allowed)}")
        where = check_where(given.pop("where", None))
        group_by = _groupings(figure, given.pop("group_by", None))
        own = options(**{k: given.pop(k) for k in list(given) if k in FigureOptions.model_fields})
        if own.width and own.height:  # known before any work (else checked once the figure is built)
            _check_pixels(own.width, own.height, own.dpi)
        for name, kind in (("components", int), ("range", float)):
            if isinstance(given.get(name), str):
                given[name] = _pair(given[name], name, kind)
        requests: tuple[AnalysisRequest, ...] = ()
        if figure in ANALYSIS_OF:
            values = {**FIGURE_DEFAULTS.get(figure, {}), **given, "where": where}
            requests = tuple(_built(ANALYSIS_OF[figure], **values, **({} if g is None else {"group_by": g}))
                             for g in group_by or (None,))
        return cls(figure, own, group_by, where, requests)

    @property
    def dpi(self) -> int:
        return self.options.dpi

    @property
    def width(self) -> float | None:
        return self.options.width

    @property
    def height(self) -> float | None:
        return self.options.height

    @property
    def layer_id(self) -> int | None:
        return self.options.layer_id

    def resolved(self) -> dict:
        """Every parameter the figure takes, defaults filled in: what the figure depends on (the
        service's ETag), besides the catalog generation."""
        out: dict[str, Any] = {"figure": self.figure}
        for name in PARAMETERS[self.figure] + SIZE:
            if name == "group_by":
                v = self.group_by
            elif name == "where":
                v = self.where
            elif name in FigureOptions.model_fields:
                v = getattr(self.options, name)
            else:
                v = getattr(self.requests[0], name)
            out[name] = list(v) if isinstance(v, tuple) else v
        return out


def _built(request_type: type[AnalysisRequest], **values) -> AnalysisRequest:
    """The analysis request of a figure: a value out of its range is the figure's 400
    (PlotParameterError), worded by the request type; a name outside its set stays UnknownName."""
    try:
        return build(request_type, **values)
    except InvalidValue as e:
        raise PlotParameterError(str(e)) from None


def _groupings(figure: str, group_by) -> tuple[str, ...] | None:
    """``group_by`` of a figure (a field, several comma-separated, or a sequence), each checked
    (with the nearest fields for a typo), one named twice drawn once; None: the figure's default."""
    if group_by is None:
        return DEFAULT_GROUP_BY.get(figure)
    if isinstance(group_by, str):
        group_by = [g.strip() for g in group_by.split(",")]
    group_by = plain(group_by) if isinstance(group_by, (list, tuple)) or hasattr(group_by, "__array__") else [group_by]
    if figure in SEVERAL:  # the analysis's own check of each: the nearest fields of a typo, as its endpoint says
        for g in group_by:  # (one grouping is checked so when its request is built)
            _built(ANALYSIS_OF[figure], group_by=g)
    group_by = tuple(dict.fromkeys(group_by))
    if figure not in SEVERAL and len(group_by) != 1:
        raise PlotParameterError(f"{figure} takes one group_by, got {len(group_by)}")
    if figure in SEVERAL and not 1 <= len(group_by) <= MAX_GROUPINGS:
        raise PlotParameterError(f"{figure} takes 1 to {MAX_GROUPINGS} groupings in group_by, got {len(group_by)}")
    return group_by


def _pair(text: str, name: str, kind) -> tuple:
    """``components`` or ``range`` as a query string or a flag gives them: "0,1", "-3.3,3.3"."""
    try:
        a, b = (kind(x) for x in text.split(","))
    except ValueError:
        raise PlotParameterError(f"{name}: two numbers separated by a comma, got {text[:100]!r}") from None
    return a, b


# ---- what each parameter means to each figure: the service's query parameters, plot --help ----
def field_of(figure: str, name: str):
    """The pydantic field that checks parameter ``name`` of ``figure``: its analysis request
    type's, or FigureOptions' for the figure's own."""
    if name in FigureOptions.model_fields:
        return FigureOptions.model_fields[name]
    return ANALYSIS_OF[figure].model_fields[name]


def default_of(figure: str, name: str) -> Any:
    """What ``figure`` draws when ``name`` is not given."""
    if name == "group_by":
        return DEFAULT_GROUP_BY.get(figure)
    if name in FIGURE_DEFAULTS.get(figure, {}):
        return FIGURE_DEFAULTS[figure][name]
    field = field_of(figure, name)
    return None if field.is_required() else field.default


def kind_of(name: str) -> type:
    """How a URL or a flag writes parameter ``name``: int, float, or str (a name, a pair "0,1",
    groupings "task,visual_category")."""
    annotation = field_of(takers(name)[0], name).annotation
    args = [a for a in get_args(annotation) if a is not type(None)] \
        if get_origin(annotation) in (Union, UnionType) else [annotation]
    base = get_args(args[0])[0] if len(args) == 1 and get_origin(args[0]) is Annotated else args[0]
    return base if len(args) == 1 and base in (int, float) else str


def takers(name: str) -> tuple[str, ...]:
    """The figures that take parameter ``name``."""
    return tuple(f for f in ALL_FIGURES if name in PARAMETERS[f] + SIZE)


def bounds(name: str) -> dict[str, Any]:
    """The widest bounds parameter ``name`` has among the figures that take it (each figure then
    checks its own, e.g. ridge's bins from 16): what the service's query parameter declares."""
    found = [bounds_of(field_of(f, name)) for f in takers(name)]
    return {k: pick(b[k] for b in found) for k, pick in (("ge", min), ("le", max)) if found and all(k in b for b in found)}


def finite(name: str) -> bool:
    """Whether parameter ``name`` is a number that must be finite (for every figure taking it)."""
    return bool(takers(name)) and all(any(getattr(m, "allow_inf_nan", None) is False for m in constraints(field_of(f, name)))
                                      for f in takers(name))


def _shown(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(map(_shown, v))
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe(name: str) -> str:
    """What parameter ``name`` means to the figures that take it, with its valid values, range and
    default for each: the text of the service's query parameter and of ``cnnfilterdb plot --help``,
    from the request types, FigureOptions and the figures' defaults."""
    sections: dict[str, dict[str, list[str]]] = {}  # description -> notes -> the figures
    for f in takers(name):
        field = field_of(f, name)
        text = TEXTS.get((f, name)) or (GROUP_BY_TEXT if name == "group_by" else field.description)
        choices = [c for c in get_args(field.annotation) if isinstance(c, str)] \
            if get_origin(field.annotation) is Literal else []
        if choices and set(choices) != set(GROUP_FIELDS):  # the fields: GET /v1/fields lists them
            text += f"; one of {', '.join(choices)}"
        b, d = bounds_of(field), default_of(f, name)
        notes = ([f"1 to {MAX_GROUPINGS} of them, comma-separated"] if name == "group_by" and f in SEVERAL else []) + \
            ([GROUP_BY_NOTES[f]] if name == "group_by" and f in GROUP_BY_NOTES else []) + \
            (["required"] if name != "group_by" and field.is_required() else []) + \
            ([f"from {_shown(b['ge'])} to {_shown(b['le'])}"] if "ge" in b and "le" in b else []) + \
            ([f"default {_shown(d)}"] if d is not None else [])
        sections.setdefault(text, {}).setdefault(", ".join(notes), []).append(f)
    out = []
    for text, notes in sections.items():
        figures = [f for fs in notes.values() for f in fs]
        if len(notes) == 1:
            body = text + (f" ({next(iter(notes))})" if next(iter(notes)) else "")
        else:
            body = f"{text} ({'; '.join(', '.join(fs) + ': ' + note for note, fs in notes.items())})"
        out.append(body if len(sections) == 1 and len(figures) == len(ALL_FIGURES) else f"{', '.join(figures)}: {body}")
    return ". ".join(out)


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
    """The figure of a request, computed with ``a`` (one catalog generation): its analysis
    requests (``req.requests``) passed to the engine as they are, with the figure's caps."""
    from . import figures

    f = req.figure
    size = (req.width, req.height)
    note = describe_where(req.where)
    if f in ("kl_combined", "divergence", "drift_box"):
        from .analysis import MAX_PAIR_CELLS

        limit = MAX_LABELS.get(f)
        # one request's pairwise work stays within one divergence's, however many groupings
        budget = MAX_PAIR_CELLS // len(req.requests)
        results = [a.divergence(r, max_groups=limit, max_pair_cells=budget) for r in req.requests]
        if f == "drift_box" and (single := [r["group_by"] for r in results if len(r["labels"]) < 2]):
            raise SelectionError(f"drift_box compares pairs of groups; {', '.join(single)} gives fewer than 2 groups "
                                 "in this selection")
        fig = (figures.kl_combined(results, size, note) if f == "kl_combined" else
               figures.divergence(results[0], size, note) if f == "divergence" else
               figures.drift_box(results, size, note))
    elif f == "ridge":
        fig = figures.ridge(a.kde(req.requests[0], max_groups=MAX_LABELS[f]), size, note)
    elif f == "eigenimages":
        fig = figures.eigenimages(a.pca(req.requests[0]), size, note)
    elif f == "covariance":
        fig = figures.covariance(a.pca(req.requests[0]), size, note)
    elif f == "explained_variance":
        pcas = [("all filters", a.pca(None))]
        if req.where:
            pcas.append(("selection", a.pca(req.requests[0])))
        fig = figures.explained_variance(pcas, size, note)
    elif f == "density2d":
        fig = figures.density2d(a.density2d(req.requests[0]), size, note)
    elif f == "layer_filters":
        layer_id = req.layer_id if req.layer_id is not None else a.first_layer_id()  # a figure with no parameters
        layer, W = a.layer_filters(layer_id, MAX_FILTERS_DRAWN)
        fig = figures.layer_filters(W, layer, size)
    elif f == "cohort_divergence":
        if req.requests[0].within == req.requests[0].group_by:  # the cohorts would each be a facet of their own
            raise InvalidValue(f"within {req.requests[0].within!r} is the group_by: give another field")
        series = cohort_divergences(a, req.requests[0], req.options.series)
        fig = figures.cohort_divergence(series, req.options.series, size, note)
    elif f == "cohort_metric":
        r, series = req.requests[0], req.options.series
        if series is not None and series == r.group_by:
            raise SelectionError(f"series {series!r} is the group_by: give another field")
        data = a.figure_model_metrics(_built(ModelMetricsRequest, where=r.selection, layers=r.layers, by=r.by),
                                      {"group_by": r.group_by} | ({} if series is None else {"series": series}))
        check_cohort_metric(data, r.group_by, series)
        fig = figures.cohort_metric(data, r.metric, r.group_by, series, size, note)
    elif f == "correlation":
        r = req.requests[0]
        if r.group_by in ("model", "model_id"):
            raise SelectionError(f"group_by {r.group_by}: a panel per model holds one point, no correlation; group the "
                                 "models by another field")
        if r.group_by is not None:  # the panels counted first: a group's bootstrap is 2000 statistics
            check_panels(len(a.select(r.selection, r.group_by).labels), r.group_by)
        result = a.correlation(r, max_groups=MAX_LABELS[f])
        fig = figures.correlation(result, size, note)
    else:  # quality: the degenerate layers' thresholds drawn over every layer
        color_by = req.options.color_by
        result = a.layer_quality(req.requests[0], color_by)
        if len(result["labels"]) > MAX_LABELS[f]:
            raise SelectionError(f"color_by {color_by} gives {len(result['labels'])} values; at most "
                                 f"{MAX_LABELS[f]} here: narrow the selection with where, or colour by another field")
        fig = figures.quality(result, size, note)
    _check_pixels(*fig.get_size_inches(), req.dpi)
    return fig


# ---- the studies' figures: their data, within their limits -----------------------------------------
def _counted(labels: list, n_models) -> str:
    return ", ".join(f"{'(none)' if v is None else v} ({int(n)})" for v, n in zip(labels, n_models))


def check_cohorts(labels: list, n_models, group_by: str) -> None:
    """SelectionError unless ``group_by`` gives exactly two groups (the cohorts a cohort_divergence
    compares), naming the groups it gives, with their model counts."""
    if len(labels) != 2:
        shown = _counted(labels[:MAX_LABELS["cohort_divergence"]], n_models)
        raise SelectionError(f"cohort_divergence compares two cohorts: group_by {group_by} gives {len(labels)} "
                             f"group(s) in this selection ({shown}); choose a field of two values (e.g. a boolean "
                             f"property), or select two of them with where")


def check_series(n: int, series: str, figure: str) -> None:
    if n > MAX_SERIES[figure]:
        raise SelectionError(f"series {series} gives {n} values; at most {MAX_SERIES[figure]} in {figure}: narrow "
                             "the selection with where, or draw another field")


def check_panels(n: int, group_by: str | None) -> None:
    """SelectionError if a correlation's groups are more panels than the figure draws."""
    if n > MAX_LABELS["correlation"]:
        raise SelectionError(f"group_by {group_by} gives {n} groups; at most {MAX_LABELS['correlation']} panels in "
                             "correlation: narrow the selection with where, or group by another field")


def check_cohort_metric(data: dict, group_by: str, series: str | None) -> None:
    """SelectionError if the models of ``data`` (``Analysis.figure_model_metrics``) fall in more
    cohorts (boxes side by side) or series values (panels) than cohort_metric draws."""
    i = data["columns"].index(group_by)
    cohorts = {repr(r[i]) for r in data["rows"]}
    if len(cohorts) > MAX_LABELS["cohort_metric"]:
        raise SelectionError(f"group_by {group_by} gives {len(cohorts)} groups; at most {MAX_LABELS['cohort_metric']} "
                             "boxes side by side in cohort_metric: narrow the selection with where, or compare "
                             "another field")
    if series is not None:
        j = data["columns"].index(series)
        check_series(len({repr(r[j]) for r in data["rows"]}), series, "cohort_metric")


def cohort_divergences(a: Analysis, req: DivergenceRequest, series: str | None) -> list[tuple]:
    """cohort_divergence's data: (value of ``series``, the divergence with ``within`` of ``req``
    among the layers of that value) per value, natural order; one (None, result) without series.
    Checked first, from the selection's groups alone: exactly two cohorts of group_by
    (``check_cohorts``), at most MAX_SERIES values of series; each divergence at most
    MAX_LABELS["cohort_divergence"] values of within, all of them within one divergence's pairwise
    work (MAX_PAIR_CELLS). ``where`` of a value: the request's with {series: value} (the value is one
    the selection holds, so this narrows it to that value's layers)."""
    from .analysis import MAX_PAIR_CELLS
    from .properties import properties_at
    from .selection import check_group_by

    if req.within is None:
        raise PlotParameterError("cohort_divergence draws a divergence per value of within; give a field")
    if series is not None:
        check_group_by(series, properties_at(a.cur, a.version), parameter="series")
        if series in (req.group_by, req.within):
            raise SelectionError(f"series {series!r} is the {'group_by' if series == req.group_by else 'within'} "
                                 "field: give another")
    where = req.selection
    cohorts = a.select(where, req.group_by)
    check_cohorts(cohorts.labels, cohorts.n_models, req.group_by)
    values = [None] if series is None else a.select(where, series).labels
    if series is not None:
        check_series(len(values), series, "cohort_divergence")
    budget = MAX_PAIR_CELLS // len(values)
    out = []
    for v in values:
        r = req if series is None else _built(DivergenceRequest, **(req.body() | {"where": {**(where or {}), series: v}}))
        out.append((v, a.divergence(r, max_groups=MAX_LABELS["cohort_divergence"], max_pair_cells=budget)))
    return out


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


@dataclass(frozen=True)
class Provenance:
    """Where a figure's data came from: the store (its id, a UUID given when it was created) and the
    store version drawn, so that a figure file can be cited and checked as "store <id>, version N"
    (docs/versions.md#citing-a-version). ``render`` writes it into the file's metadata."""
    store_id: str
    store_version: int

    @classmethod
    def of(cls, a: Analysis) -> Provenance:
        """The store and version ``a`` reads."""
        from .catalog import store_id

        return cls(store_id(a.cur), int(a.version))

    @property
    def citation(self) -> str:
        return f"CNN Filter DB store {self.store_id}, version {self.store_version}"

    @property
    def keywords(self) -> list[str]:
        return [f"store_id={self.store_id}", f"store_version={self.store_version}"]


def figure_metadata(fmt: str, provenance: Provenance | None) -> dict:
    """The metadata ``render`` writes into a ``fmt`` file: fixed (no date, no software version),
    plus the provenance when given. PNG: text chunks ``Source`` (the citation), ``store_id`` and
    ``store_version``; SVG: Dublin Core ``Source`` (the citation) and ``Keywords``
    (``store_id=<id>``, ``store_version=<N>``); PDF: the info dictionary's ``Subject`` (the
    citation) and ``Keywords`` (the same two, comma-separated). A notebook saving a result's
    ``plot()`` itself can pass this as ``savefig``'s ``metadata`` (SVG, PDF)."""
    if fmt not in FORMATS:
        raise SelectionError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    fixed = dict(_METADATA.get(fmt, {}))
    if provenance is None:
        return fixed
    if fmt == "png":
        return {"Source": provenance.citation, "store_id": provenance.store_id,
                "store_version": str(provenance.store_version)}
    if fmt == "svg":
        return fixed | {"Source": provenance.citation, "Keywords": provenance.keywords}
    return fixed | {"Subject": provenance.citation, "Keywords": ", ".join(provenance.keywords)}


def render(fig: Figure, fmt: str, dpi: int = 100, provenance: Provenance | None = None) -> bytes:
    """The figure as ``fmt`` (png, svg or pdf) bytes, the same bytes for the same figure and
    ``provenance`` (the store and version it was drawn from, written into the file's metadata:
    ``figure_metadata``; None: none)."""
    import matplotlib

    if fmt not in FORMATS:
        raise SelectionError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    buf = io.BytesIO()
    if fmt == "png":
        # Agg's RGBA buffer written as RGB (the figures are opaque) at zlib level 3: a third of the
        # time of savefig's RGBA at level 6, for PNGs 10% larger; no metadata but the resolution
        # and the provenance's text chunks (tEXt, in a fixed order).
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        fig.set_dpi(dpi)
        canvas = FigureCanvasAgg(fig)
        with _RENDER_LOCK, matplotlib.rc_context(_RENDER_RC):
            canvas.draw()
        info = PngInfo()
        for key, value in figure_metadata(fmt, provenance).items():
            info.add_text(key, value)
        Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(buf, format="png", compress_level=3,
                                                                        dpi=(dpi, dpi), pnginfo=info)
    else:
        with _RENDER_LOCK, matplotlib.rc_context(_RENDER_RC):
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=figure_metadata(fmt, provenance))
    return buf.getvalue()


def warm_up() -> None:
    """Load matplotlib, the fonts and the colour maps now (about 0.5 s), not in the first figure
    request: a tiny heatmap drawn and saved in each format."""
    from . import figures

    tiny = {"group_by": "task", "labels": ["a", "b"], "n_models": [1, 1], "matrix": [[0.0, 1.0], [1.0, 0.0]],
            "metric": "kl_sym"}
    for fmt in FORMATS:
        render(figures.divergence(tiny, (2, 2)), fmt, 20)
