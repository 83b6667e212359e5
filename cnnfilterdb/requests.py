"""The contract of every analysis, written once: one frozen request type per analysis, owned by
the engine, with its parameters, defaults, bounds (from ``limits.py``) and their descriptions.

Every front end builds the same request: the engine (``analysis.Analysis``) and the Python API
(``api.FilterDB``), the Client (``client.Client``) and Spark (``spark.SparkStore``) through
``takes`` (their signatures and docstrings are generated from the request type), the CLI through
``cli_arguments``, the service by declaring the request type as its body model (POST) or its
fields as query parameters (``service/routers/analysis.py``), so that a default or a bound exists
once. A request is checked when it is built, and then trusted: a bad value raises
``SelectionError`` naming the parameter and its valid values (``explain`` words pydantic's errors
the same way for HTTP and Python).

Adding an analysis: its request type here, its engine function (``Analysis.<name>``, decorated
with ``takes``), its figure (``plots.py``); every front end picks it up.
"""
from __future__ import annotations

import functools
import inspect
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union, get_args, get_origin

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from .limits import (
    DEFAULT_KDE_BINS,
    MAX_BINS,
    MAX_DEGENERATE_LIMIT,
    MAX_DENSITY2D_BINS,
    MAX_ID,
    MAX_KDE_BINS,
    MAX_OFFSET,
    MAX_RANGE_ABS,
    MAX_SIMILAR_K,
    MIN_KDE_BINS,
)
from .properties import NAME as PROPERTY_NAME
from .properties import RESERVED
from .selection import (
    FIELD_DESCRIPTIONS,
    FILTER_FIELDS,
    GROUP_FIELDS,
    INT32,
    InvalidValue,
    SelectionError,
    UnknownName,
    _as_property,
    check_group_by,
    echo,
    field_kind,
    integral,
    nearest,
    where_sql,
)
from .stats.divergence import DEFAULT_BINS, METRICS, WEIGHTS

BASES = ("global", "selection")
# SPEC 14's model metrics: over a model's layers, weighted means of the layer metrics (studies.py).
MODEL_METRICS = ("n_layers", "n_filters", "sparsity", "variance_entropy", "variance_entropy_norm",
                 "variance_entropy_clean", "orthogonality")
CORRELATION_METHODS = ("spearman", "pearson", "kendall")
LAYER_SCOPES = ("all", "first")
# The thresholds of a degenerate layer (docs/method.md#degenerate): sparsity above, normalized
# variance entropy below (redundant) or above (random-like).
DEGENERATE_THRESHOLDS = {"sparsity_gt": 0.5, "entropy_norm_lt": 0.5, "entropy_norm_gt": 1.0}

# What the options mean, said once: the request bodies, the query parameters, the CLI's help and
# the Python docstrings all show these.
GROUP_BY_TEXT = "the field whose values split the selection into groups (GET /v1/fields lists each field's values)"
WHERE_TEXT = "the filters to analyse: a selection (see Where); absent or null: every filter in the store"
METRIC_TEXT = ("the divergence between two groups' histograms, per component: kl_sym is the paper's symmetric "
               "Kullback-Leibler divergence (natural log)")
WEIGHTS_TEXT = ("how the 9 components' divergences are summed: explained_variance weights each by its share of "
                "the variance (the paper's)")
BASIS_TEXT = ("the PCA basis the filters are projected on: global is fitted on every filter in the store (the "
              "paper's); selection on the selected filters only")
BINS_TEXT = "histogram bins per component, equal in width over the basis range (the smallest to the largest coefficient)"
WITHIN_TEXT = ("a field whose values split the selection into cohorts: one divergence matrix between the groups of "
               "group_by for each value (e.g. depth_decile: robust vs normal, depth by depth), with the same basis, "
               "range, bins, metric and weights; absent or null: one matrix")
LAYERS_TEXT = "all: a model's metrics over all its selected layers; first: over its first convolution layer only"
VARIABLE_TEXT = ("a model metric (n_layers, n_filters, sparsity, variance_entropy, variance_entropy_norm, "
                 "variance_entropy_clean, orthogonality) or a numeric or boolean model property")
AS_OF_TEXT = ("the store version to read (GET /v1/versions); default the current one. The same request as_of the "
              "same version gives the same result, bit for bit")


# ---- values --------------------------------------------------------------------------------------
MAX_NESTING = 8  # a request's values nest at most 3 deep (where -> field -> bounds or list -> value)


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` with numpy scalars as Python numbers and tuples and arrays as lists, recursively:
    a ``where`` built from a DataFrame's values (``np.int32``) selects what the same Python values
    select, locally and as JSON. InvalidValue past MAX_NESTING levels (a request's values have no
    deeper ones; Python's recursion limit would be a crash, not an answer)."""
    if isinstance(value, (dict, list, tuple, np.ndarray)) and depth >= MAX_NESTING:
        raise InvalidValue(f"nested too deeply (more than {MAX_NESTING} levels)")
    if isinstance(value, dict):
        return {k: plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()  # a 0-d array is its scalar
        return plain(value, depth) if not isinstance(value, list) else [plain(v, depth + 1) for v in value]
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _invalid(text: str, value: Any) -> PydanticCustomError:
    # The message reads after the parameter's name ("bins must be ..."): see explain().
    return PydanticCustomError("request_value", "{text}, got {got}", {"text": text, "got": value})


def _integer(lo: int, hi: int, value: Any) -> int:
    """An integer from lo to hi, as JSON Schema counts them (an int, a numpy integer, or a float
    with no fraction: 70.0 is 70); not a bool, 70.5 or a string."""
    expected = f"must be an integer from {lo:,} to {hi:,}"
    if isinstance(value, (bool, np.bool_)):
        raise _invalid(expected, f"{value!r} (a bool)")
    v = integral(value)
    if v is None:
        raise _invalid(expected, echo(value))
    if not lo <= v <= hi:
        raise _invalid(expected, f"{v:,}" if v.bit_length() < 100 else f"an integer of {v.bit_length():,} bits")
    return v


def _real(lo: float | None, hi: float | None, value: Any) -> float:
    """A finite int, float or numpy number (within lo..hi if given); not a bool or a string."""
    within = f" from {lo:g} to {hi:g}" if lo is not None and hi is not None else ""
    expected = f"must be a finite number{within}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _invalid(expected, echo(value))
    try:
        v = float(value)
    except OverflowError:
        raise _invalid(expected, echo(value)) from None
    if not np.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _invalid(expected, repr(v))
    return v


def _pair(what: str, value: Any) -> list:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or len(value) != 2:
        raise _invalid(f"must be a pair of {what}", echo(value))
    return list(value)


def Integer(lo: int, hi: int) -> Any:  # a type, named as one
    """An integer parameter from lo to hi (the bounds shown in the OpenAPI schema, checked by
    _integer with the project's message)."""
    return Annotated[int, Field(ge=lo, le=hi), BeforeValidator(functools.partial(_integer, lo, hi))]


def Real(lo: float | None = None, hi: float | None = None) -> Any:  # a type, named as one
    bounds = {k: v for k, v in (("ge", lo), ("le", hi)) if v is not None}
    return Annotated[float, Field(allow_inf_nan=False, **bounds), BeforeValidator(functools.partial(_real, lo, hi))]


def _strict(kind: str, value: Any) -> Any:
    """A where value of a field: numpy scalars as Python values, and a bool is not a number (JSON
    Schema's integer admits neither)."""
    value = plain(value)
    if kind != "bool" and isinstance(value, bool):
        raise ValueError("a number or a string, not a boolean")
    if kind == "int" and not isinstance(value, (bool, int)) and (v := integral(value)) is not None:
        return v  # as the engine's grammar: JSON Schema's 5.0 is 5, a value with __index__ (a tensor) its int
    return value


def _group_field(value: Any, info: ValidationInfo) -> Any:
    """A group_by (or a figure's color_by) by the engine's grammar (``selection.check_group_by``
    without the store): one of GROUP_FIELDS or a well-formed model property name, which the engine
    checks against the store's properties when the query runs (a boolean or text property)."""
    try:
        check_group_by(value, parameter=info.field_name or "group_by")
    except SelectionError as e:
        raise PydanticCustomError("where_unknown", "{text}", {"text": str(e)}) from None
    return value


def _variable(value: Any) -> Any:
    """A correlation's variable: a model metric (MODEL_METRICS) or a well-formed property name (the
    engine checks it is a numeric or boolean property of the store version when the query runs)."""
    if isinstance(value, str) and (value in MODEL_METRICS or (PROPERTY_NAME.match(value) and value not in RESERVED)):
        return value
    near = (_as_property(value, None) or nearest(value, list(MODEL_METRICS))) if isinstance(value, str) else []
    hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
    raise PydanticCustomError("where_unknown", "{text}", {"text": f"unknown variable {echo(value)}{hint}; a model "
                                                                  f"metric ({', '.join(MODEL_METRICS)}) or a numeric "
                                                                  "or boolean model property"})


Version = Integer(1, MAX_ID)
# A built-in field (GROUP_FIELDS) or a boolean or text model property (GET /v1/fields lists both).
GroupField = Annotated[str, BeforeValidator(_group_field), WithJsonSchema({
    "type": "string", "pattern": PROPERTY_NAME.pattern.replace("\\Z", "$"), "examples": GROUP_FIELDS,
    "description": "a built-in field (" + ", ".join(GROUP_FIELDS) + ") or a boolean or text model property"})]
Metric = Literal[METRICS]  # type: ignore[valid-type]
Weights = Literal[WEIGHTS]  # type: ignore[valid-type]
BasisKind = Literal[BASES]  # type: ignore[valid-type]
LayerScope = Literal[LAYER_SCOPES]  # type: ignore[valid-type]
CorrelationMethod = Literal[CORRELATION_METHODS]  # type: ignore[valid-type]
Variable = Annotated[str, BeforeValidator(_variable), WithJsonSchema({
    "type": "string", "examples": list(MODEL_METRICS), "description": VARIABLE_TEXT})]
Component = Integer(0, 8)
RangeEnd = Real(-MAX_RANGE_ABS, MAX_RANGE_ABS)
Components = Annotated[list[Component], Field(min_length=2, max_length=2),
                       BeforeValidator(functools.partial(_pair, "component indices from 0 to 8"))]
ValueRange = Annotated[list[RangeEnd], Field(min_length=2, max_length=2),
                       BeforeValidator(functools.partial(_pair, f"finite numbers within +-{MAX_RANGE_ABS:g}"))]


# ---- where: the grammar of a selection, from selection.py's fields ---------------------------
T = TypeVar("T")


class Bounds(BaseModel, Generic[T]):
    """A range of values: {gte, gt, lte, lt}, every bound given must hold (text compares
    alphabetically)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Not nullable: a bound given as null would be dropped, selecting everything.
    gte: T = Field(None, description="greater than or equal to")
    gt: T = Field(None, description="greater than")
    lte: T = Field(None, description="less than or equal to")
    lt: T = Field(None, description="less than")


def _bounds(kind: Any, title: str, schema_name: str) -> type[Bounds]:
    """Bounds of one type, named for the OpenAPI document: ``schema_name`` is its key under
    components/schemas, ``title`` (Bounds[...]) what /docs shows and the tag pydantic gives the
    union member in an error's location (explain() recognizes it)."""
    base = Bounds[kind]
    return type(base)(title, (base,), {"__qualname__": schema_name, "__module__": __name__})


# Strict, as the engine's grammar: no number from a string, no integer from 1.0.
_Text = Annotated[str, Field(strict=True), BeforeValidator(functools.partial(_strict, "text"))]
_Int32 = Annotated[int, Field(strict=True, ge=INT32[0], le=INT32[1]), BeforeValidator(functools.partial(_strict, "int"))]
_Real = Annotated[float, Field(strict=True, allow_inf_nan=False), BeforeValidator(functools.partial(_strict, "real"))]
TextBounds = _bounds(_Text, "Bounds[str]", "TextBounds")
IntBounds = _bounds(_Int32, "Bounds[int]", "IntBounds")
RealBounds = _bounds(_Real, "Bounds[float]", "RealBounds")
# The forms a condition on a field of each kind takes (selection.field_kind): a value, a list of
# values (null among them selects missing values) or bounds; booleans have no bounds.
CONDITIONS = {
    "text": _Text | list[_Text | None] | TextBounds | None,
    "int": _Int32 | list[_Int32 | None] | IntBounds | None,
    "real": _Real | list[_Real | None] | RealBounds | None,
    "bool": StrictBool | list[StrictBool | None] | None,
    "label": _Text | list[_Text | None] | None,  # depth_bin, depth_decile: values, no bounds
}
# A model property's (selection.kind_of: "any" until the engine knows the store's types): a boolean,
# a number or a string, a list of them, or bounds.
_Value = StrictBool | StrictInt | _Real | StrictStr  # an int stays one: said back as given
AnyBounds = _bounds(StrictInt | _Real | StrictStr, "Bounds[float | str]", "PropertyBounds")  # ints stay ints: 64-bit exact
PropertyCondition = _Value | list[_Value | None] | AnyBounds | None


class _WhereBase(BaseModel):
    """A selection of filters by their model's and layer's fields: each field given is a value, a
    list of values (any of them) or bounds {gte, gt, lte, lt}, and every field given must hold.
    Text fields take strings, numeric fields numbers; null selects missing values. A value no model
    has is a 404 suggesting the nearest ones (GET /v1/fields lists them)."""
    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=(), json_schema_extra={
        "examples": [{"task": "Classification", "conv_depth": {"gte": 1}},
                     {"robust": True, "clean_accuracy": {"gte": 80}}],
        "propertyNames": {"pattern": "^[a-z][a-z0-9_]{0,62}$"}})  # a property's name (properties.NAME)
    # Any other key is a model property (GET /v1/fields lists the store's, with their types): the
    # engine's grammar took it as a well-formed name (_where), the store's types check it when the
    # query runs (selection.where_sql with the version's properties).
    __pydantic_extra__: dict[str, PropertyCondition] = Field(init=False)

    def conditions(self) -> dict:
        """The fields given (an explicit null means IS NULL), bounds as plain dicts: the form
        ``selection.where_sql`` takes; built-in fields first, then the properties as given."""
        out = {}
        given = [k for k in type(self).model_fields if k in self.model_fields_set]  # a stable order
        for k, v in [(k, getattr(self, k)) for k in given] + list((self.model_extra or {}).items()):
            out[k] = v.model_dump(exclude_none=True) if isinstance(v, BaseModel) else v
        return out


# One field per selection.FILTER_FIELDS, typed by selection.field_kind: the grammar cannot
# disagree with the SQL it becomes (tests/test_requests.py checks both accept the same).
Where = create_model("Where", __base__=_WhereBase, __doc__=_WhereBase.__doc__, __module__=__name__,
                     **{name: (CONDITIONS[field_kind(name)], Field(None, description=FIELD_DESCRIPTIONS[name]))
                        for name in FILTER_FIELDS})


def _where(value: Any) -> Any:
    """A where checked by the engine's one grammar (selection.where_sql, which the SQL is built
    with), then as the Where model (the documented schema; tests/test_requests.py shows they
    accept the same)."""
    if value is None or isinstance(value, _WhereBase):
        return value
    try:
        return _grammar(value)
    except InvalidValue as e:  # a wrong type: 422
        raise PydanticCustomError("where_value", "{text}", {"text": str(e)}) from None
    except SelectionError as e:  # an unknown name, text the store cannot hold: 400
        raise PydanticCustomError("where_unknown", "{text}", {"text": str(e)}) from None


def _grammar(value: Any) -> Any:
    """``value`` as Python values (``plain``), checked by the engine's grammar (``where_sql``)."""
    try:
        value = plain(value)
    except InvalidValue as e:
        raise InvalidValue(f"where: {e}") from None
    where_sql(value)
    return value


class NotJson(SelectionError):
    """A ``where`` given as text (a GET's query parameter, ``--where``) that is not JSON."""


def parse_where(text: str | None, name: str = "where") -> dict | None:
    """A ``where`` given as JSON text (empty or null: everything), checked as check_where: NotJson
    if it is not JSON (a key named twice included: JSON would keep the last), too deep, or holds a
    number Python will not read."""
    if text is None or not text.strip():
        return None

    def unique(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) < len(keys):
            raise NotJson(f"{name} names {echo(next(k for k in keys if keys.count(k) > 1))} twice in one object")
        return dict(pairs)

    try:
        value = json.loads(text, object_pairs_hook=unique)
    except NotJson:
        raise
    except json.JSONDecodeError as e:
        raise NotJson(f"{name} is not JSON ({e.msg} at character {e.pos}); e.g. {{\"task\": \"GAN\"}}") from None
    except RecursionError:  # as a where nested past MAX_NESTING that JSON could read
        raise InvalidValue(f"{name}: nested too deeply (more than {MAX_NESTING} levels)") from None
    except ValueError as e:  # a number of more digits than Python converts
        raise NotJson(f"{name} is not JSON that can be read ({str(e).split(';')[0]})") from None
    return check_where(value)


def check_where(value: Any) -> dict | None:
    """A ``where`` of a listing or an export (which have no request type): the engine's grammar,
    the same messages as an analysis's (UnknownName, InvalidValue); numpy values as Python's."""
    if value is None:
        return None
    value = _grammar(value)
    try:
        return Where.model_validate(value).conditions()  # as an analysis's: 2.0 of an integer field is 2
    except ValidationError as e:  # the schema refusing what the grammar took: said, never pydantic's own
        raise InvalidValue("; ".join(text for _, text in explain(e.errors(), prefixed=False))) from None


Selection = Annotated[Where | None, BeforeValidator(_where)]


# ---- the requests --------------------------------------------------------------------------------
class AnalysisRequest(BaseModel):
    """What every analysis takes: the store version to read."""
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())
    # The parameters a Python caller may give by position, in this order (the rest by keyword).
    positional: ClassVar[tuple[str, ...]] = ()

    as_of: Version | None = Field(None, description=AS_OF_TEXT)

    @property
    def selection(self) -> dict | None:
        """``where`` as ``selection.where_sql`` takes it (None: everything)."""
        where = getattr(self, "where", None)
        return None if where is None else where.conditions()

    def body(self) -> dict:
        """The request as a JSON body takes it (the Client's POSTs)."""
        out = self.model_dump(mode="json", exclude={"where"})
        out["where"] = self.selection
        return {k: out[k] for k in type(self).model_fields}

    def query(self) -> dict:
        """The request as a GET endpoint's query parameters take it: ``where`` as JSON text,
        parameters at None left out (the Client's GETs)."""
        out = {k: v for k, v in self.body().items() if v is not None}
        if "where" in out:
            out["where"] = json.dumps(out["where"])
        return out


class DivergenceRequest(AnalysisRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"group_by": "task", "where": {"conv_depth": {"gte": 1}}, "metric": "kl_sym"}]})
    positional: ClassVar = ("group_by", "where")
    group_by: GroupField = Field(description=GROUP_BY_TEXT)
    where: Selection = Field(None, description=WHERE_TEXT)
    metric: Metric = Field("kl_sym", description=METRIC_TEXT)
    bins: Integer(1, MAX_BINS) = Field(DEFAULT_BINS, description=BINS_TEXT)
    weights: Weights = Field("explained_variance", description=WEIGHTS_TEXT)
    basis: BasisKind = Field("global", description=BASIS_TEXT)
    within: GroupField | None = Field(None, description=WITHIN_TEXT)


class PcaRequest(AnalysisRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"where": {"task": "Classification"}}]})
    positional: ClassVar = ("where",)
    where: Selection = Field(None, description=WHERE_TEXT)


class HistogramsRequest(AnalysisRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"group_by": "task", "bins": 70}]})
    positional: ClassVar = ("group_by", "where")
    group_by: GroupField | None = Field(None, description=GROUP_BY_TEXT + "; absent or null: one group of all")
    where: Selection = Field(None, description=WHERE_TEXT)
    bins: Integer(1, MAX_BINS) = Field(DEFAULT_BINS, description=BINS_TEXT)
    basis: BasisKind = Field("global", description=BASIS_TEXT)


class KdeRequest(AnalysisRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"group_by": "task", "bins": 64}]})
    positional: ClassVar = ("group_by", "where")
    group_by: GroupField | None = Field(None, description=GROUP_BY_TEXT + "; absent or null: one group of all")
    where: Selection = Field(None, description=WHERE_TEXT)
    bins: Integer(MIN_KDE_BINS, MAX_KDE_BINS) = Field(
        DEFAULT_KDE_BINS, description="bins of the exact histogram the KDE is computed from; its centres are the grid")
    basis: BasisKind = Field("global", description=BASIS_TEXT)


class Density2dRequest(AnalysisRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"components": [0, 1], "bins": 100,
                                                               "range": [-3.3, 3.3]}]})
    positional: ClassVar = ("where",)
    where: Selection = Field(None, description=WHERE_TEXT)
    components: Components = Field([0, 1], description="the two components, 0 (the most variance) to 8: the first "
                                                       "is the rows of counts, the second the columns")
    bins: Integer(1, MAX_DENSITY2D_BINS) = Field(DEFAULT_BINS, description="bins per axis, equal in width over range")
    basis: BasisKind = Field("global", description=BASIS_TEXT)
    range: ValueRange | None = Field(None, description="the ends of both axes, in either order (default: the basis "
                                                       "range; the paper's figure: -3.3, 3.3)")


class DegenerateRequest(AnalysisRequest):
    positional: ClassVar = ("where",)
    where: Selection = Field(None, description="the layers to check: a selection (see Where); none: every layer")
    sparsity_gt: Real(0.0, 1.0) = Field(DEGENERATE_THRESHOLDS["sparsity_gt"],
                                        description="sparse: a layer whose sparsity (the share of its filters that "
                                                    "are all near zero, 0..1) is above this")
    entropy_norm_lt: Real() = Field(DEGENERATE_THRESHOLDS["entropy_norm_lt"],
                                    description="redundant (low diversity): variance_entropy_norm below this")
    entropy_norm_gt: Real() | None = Field(DEGENERATE_THRESHOLDS["entropy_norm_gt"],
                                           description="random-like: variance_entropy_norm above this (null: not "
                                                       "checked)")
    limit: Integer(1, MAX_DEGENERATE_LIMIT) = Field(100, description="layers per page")
    offset: Integer(0, MAX_OFFSET) = Field(0, description="how many flagged layers to skip")

    @property
    def thresholds(self) -> dict:
        return {"sparsity_gt": self.sparsity_gt, "entropy_norm_lt": self.entropy_norm_lt,
                "entropy_norm_gt": self.entropy_norm_gt}


class ModelMetricsRequest(AnalysisRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"layers": "first"}, {"by": "depth_decile"}]})
    positional: ClassVar = ("where",)
    where: Selection = Field(None, description="the layers the metrics are computed over: a selection (see Where); "
                                               "none: every layer")
    layers: LayerScope = Field("all", description=LAYERS_TEXT)
    by: Literal["depth_decile"] | None = Field(None, description="depth_decile: one row per model and depth decile "
                                                                 "(SPEC 14); none: one row per model")


class CorrelationRequest(AnalysisRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"x": "variance_entropy", "y": "robust_accuracy", "group_by": "training_dataset", "method": "spearman"}]})
    positional: ClassVar = ("x", "y", "group_by", "where")
    x: Variable = Field(description=VARIABLE_TEXT)
    y: Variable = Field(description=VARIABLE_TEXT)
    group_by: GroupField | None = Field(None, description="the model field whose values split the models into groups, "
                                                          "one correlation each; absent or null: one group of all")
    where: Selection = Field(None, description="the layers the model metrics are computed over, and so the models: "
                                               "a selection (see Where); none: every layer")
    method: CorrelationMethod = Field("spearman", description="spearman (scipy.stats.spearmanr), pearson (pearsonr) "
                                                              "or kendall (kendalltau, tau-b)")
    layers: LayerScope = Field("all", description=LAYERS_TEXT)


class SimilarRequest(AnalysisRequest):
    positional: ClassVar = ("model_id", "where")
    model_id: Integer(0, MAX_ID) = Field(description="the model's id (model_id in GET /v1/models)")
    where: Selection = Field(None, description="the candidate models: a selection (see Where); none: every model")
    k: Integer(1, MAX_SIMILAR_K) = Field(5, description="how many models to return")
    metric: Metric = Field("kl_sym", description=METRIC_TEXT)
    weights: Weights = Field("explained_variance", description=WEIGHTS_TEXT)


CHECK_PATH_TEXT = ("the model file: ONNX, PyTorch .pt/.pth, safetensors or .npz, read by content exactly as "
                   "`cnnfilterdb ingest` reads it")
# What a checked model is called in its report: shown, never stored.
CheckText = Annotated[StrictStr, Field(min_length=1, max_length=200)]


class CheckRequest(AnalysisRequest):
    """A model file checked against the population (SPEC 15; ``check.py``): not in ANALYSES, since
    every front end also takes the file (a path, or the upload of POST /v1/check), but the one
    contract of its parameters."""
    model_config = ConfigDict(json_schema_extra={"examples": [{"where": {"task": "Classification"}, "k": 5}]})
    positional: ClassVar = ("where",)
    where: Selection = Field(None, description="the population the model is compared with: a selection (see "
                                               "Where), e.g. the models of its task; none: every model in the store")
    k: Integer(1, MAX_SIMILAR_K) = Field(5, description="how many of the population's models nearest to the checked "
                                                        "one to list")
    sparsity_gt: Real(0.0, 1.0) = Field(DEGENERATE_THRESHOLDS["sparsity_gt"],
                                        description="a layer is flagged sparse when its sparsity is above this")
    entropy_norm_lt: Real() = Field(DEGENERATE_THRESHOLDS["entropy_norm_lt"],
                                    description="flagged low_entropy (redundant) when variance_entropy_norm is below this")
    entropy_norm_gt: Real() | None = Field(DEGENERATE_THRESHOLDS["entropy_norm_gt"],
                                           description="flagged random_like when variance_entropy_norm is above this "
                                                       "(null: not checked)")
    name: CheckText | None = Field(None, description="the checked model's name in the report (default: the file's)")
    task: CheckText | None = Field(None, description="the checked model's task, shown in the report (the population "
                                                     "is where's: where={\"task\": ...} compares with that task's models)")
    visual_category: CheckText | None = Field(None, description="the checked model's visual category, shown (not a "
                                                                "selection: see where)")
    training_dataset: CheckText | None = Field(None, description="the checked model's training dataset, shown (not a "
                                                                 "selection: see where)")

    @property
    def thresholds(self) -> dict:
        return {"sparsity_gt": self.sparsity_gt, "entropy_norm_lt": self.entropy_norm_lt,
                "entropy_norm_gt": self.entropy_norm_gt}

    @property
    def described(self) -> dict:
        """What the caller said the model is (shown in the report, never stored)."""
        return {"task": self.task, "visual_category": self.visual_category, "training_dataset": self.training_dataset}


# The file formats of an export; cnnfilterdb/export.FORMATS gives each its media type and suffix.
EXPORT_FORMATS = ("parquet", "arrow", "npy", "csv")
ExportFormat = Literal[EXPORT_FORMATS]  # type: ignore[valid-type]


class ExportRequest(AnalysisRequest):
    """The filters of a selection as one file (GET /v1/filters, ``cnnfilterdb export``,
    ``iter_filters``): not an analysis, but the same contract."""
    positional: ClassVar = ("where",)
    where: Selection = Field(None, description="the filters to export: a selection (see Where); absent or null: "
                                               "every filter")
    format: ExportFormat = Field("parquet", description="the file format: arrow is an Arrow IPC stream; npy a NumPy "
                                                        "structured array (filter_id, model_id, layer_id, w (3, 3))")


# ---- the analyses, as every front end finds them ------------------------------------------------
@dataclass(frozen=True)
class AnalysisSpec:
    """An analysis as the front ends serve it: its request type, its endpoint, what it returns.
    The engine's function is ``analysis.Analysis.<name>`` (taking the request through ``takes``);
    the Python API and the Client have a method of that name (api.py, client.py), the service a
    route (service/routers/analysis.py): each front end writes its own where it documents the
    analysis further, and generates the rest from this table, so that a new analysis is served
    everywhere once its request type, its engine function and its entry here exist
    (tests/test_requests.py adds one and calls it through every front end). A name or an endpoint
    that would hide what is there (FilterDB.sql, GET /v1/layers/{layer_id}) stops the import or
    the service's start. A GET analysis's parameter that may be None must default to None: a query
    string cannot say null (degenerate's entropy_norm_gt has its front ends written out for it)."""
    request: type[AnalysisRequest]
    method: Literal["GET", "POST"]
    path: str              # the service's endpoint, {model_id}-style parameters filled from the request
    result: str            # the name of its result class in results.py (DataFrames, arrays, plot())
    response: str | None   # the name of its response model in service/schemas.py (None: a plain JSON object)
    summary: str           # one line, for /docs


ANALYSES: dict[str, AnalysisSpec] = {
    "divergence": AnalysisSpec(DivergenceRequest, "POST", "/v1/divergence", "DivergenceResult", "DivergenceResponse",
                               "The divergence matrix between the groups of a selection, with drift statistics"),
    "pca": AnalysisSpec(PcaRequest, "POST", "/v1/pca", "PcaResult", "PcaResponse",
                        "The principal components of a selection's filters"),
    "histograms": AnalysisSpec(HistogramsRequest, "POST", "/v1/histograms", "HistogramsResult", "HistogramsResponse",
                               "Histograms of the filters' PCA coefficients, per group and component"),
    "density2d": AnalysisSpec(Density2dRequest, "POST", "/v1/density2d", "Density2dResult", "Density2dResponse",
                              "A 2-D histogram of two PCA components' coefficients"),
    "kde": AnalysisSpec(KdeRequest, "POST", "/v1/kde", "KdeResult", "KdeResponse",
                        "Kernel density estimates of the filters' PCA coefficients, per group and component"),
    "degenerate": AnalysisSpec(DegenerateRequest, "GET", "/v1/quality/degenerate", "DegenerateResult", "DegenerateResponse",
                               "Layers flagged as sparse, redundant or random-like"),
    "similar": AnalysisSpec(SimilarRequest, "GET", "/v1/models/{model_id}/similar", "SimilarResult", "SimilarResponse",
                            "The models whose filters are distributed most like one model's"),
    "model_metrics": AnalysisSpec(ModelMetricsRequest, "GET", "/v1/model-metrics", "ModelMetricsResult", "ModelMetricsResponse",
                                  "Per model (and depth decile): its layers' quality metrics as weighted means"),
    "correlation": AnalysisSpec(CorrelationRequest, "POST", "/v1/correlation", "CorrelationResult", "CorrelationResponse",
                                "The correlation of two model metrics or properties over the models of each group"),
}


def analyses() -> list[tuple[str, AnalysisSpec]]:
    """ANALYSES' entries, for a front end to serve; RuntimeError for a name that is not a Python name
    or starts with '_' (it would be a dunder or private method)."""
    for name in ANALYSES:
        if not name.isidentifier() or name.startswith("_"):
            raise RuntimeError(f"an analysis's name is a Python name that does not start with '_', not {name!r}")
    return list(ANALYSES.items())


def check_not_hidden(front_end) -> None:
    """RuntimeError if an analysis of ANALYSES is named as an attribute of this front end's instance
    (db.root, client.url): its method could never be called."""
    if hidden := sorted(set(ANALYSES) & set(vars(front_end))):
        raise RuntimeError(f"the analyses {hidden} of requests.ANALYSES are hidden by attributes of "
                           f"{type(front_end).__name__}: give them other names")


# ---- building one, and saying what is wrong ----------------------------------------------------
R = TypeVar("R", bound=AnalysisRequest)


def build(request_type: type[R], /, **values: Any) -> R:
    """The request of ``values``, checked; a bad one raises UnknownName (a name outside a fixed
    set) or InvalidValue, both SelectionErrors, naming each bad parameter (as ``explain``)."""
    try:
        return request_type.model_validate(values)
    except ValidationError as e:
        problems = explain(e.errors(), list(request_type.model_fields), prefixed=False)
        kind = UnknownName if any(unknown for unknown, _ in problems) else InvalidValue
        raise kind("; ".join(text for _, text in problems)) from None


def _type_tag(item: Any) -> bool:
    """A location item that names a member of a union type (``str``, ``list[...]``,
    ``function-before[...]``) rather than a field or an index: not for a caller's eyes."""
    return isinstance(item, str) and ("[" in item or item in ("str", "int", "float", "bool"))


# pydantic's own errors of a type, worded as the request types word theirs (a GET's query and
# path parameters are parsed by FastAPI before the request is built).
_TYPE_WORDS = {"int_parsing": "an integer", "int_parsing_size": "an integer of at most 4,300 digits",
               "int_type": "an integer", "int_from_float": "an integer",
               "float_parsing": "a finite number", "float_type": "a finite number", "finite_number": "a finite number",
               "string_type": "a string", "string_unicode": "valid Unicode text (no lone surrogate)",
               "bool_parsing": "true or false", "bool_type": "true or false", "list_type": "a list",
               "dict_type": "an object", "model_attributes_type": "an object", "model_type": "an object"}
_BOUND_WORDS = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
                "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt"),
                "too_long": ("at most this long:", "max_length"), "too_short": ("at least this long:", "min_length")}


def explain(errors: list[dict], fields: list[str] | None = None, prefixed: bool = True) -> list[tuple[bool, str]]:
    """pydantic's errors of a request as (unknown, message) pairs, one per mistake: ``unknown`` is
    True for a value outside a documented set or a name the request does not take (the service's
    400), False for a malformed value (422). ``fields``: the request's fields (an unknown one's
    message lists them); ``prefixed``: the locations start with FastAPI's body/query/path."""
    out = []
    for err in errors:
        raw = list(err.get("loc", ()))
        if prefixed and raw and raw[0] in ("body", "query", "path"):  # FastAPI's, never a key also named so
            raw = raw[1:]
        kind, got, ctx = err.get("type"), err.get("input"), err.get("ctx") or {}
        if kind == "extra_forbidden":  # the last item is the client's own key, whatever it looks like
            key = raw[-1] if raw else "?"
            parent = [str(x) for x in raw[:-1] if not _type_tag(x)]
            if not parent:
                near = nearest(key, fields or []) if isinstance(key, str) else []
                hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
                known = ", ".join(fields) if fields else "see the documentation"
                out.append((True, f"unknown field {echo(key)} in the request; known: {known}{hint}"))
            else:
                out.append((True, f"unknown field {echo(key)} in {'.'.join(parent)}"))
            continue
        loc = [str(x) for x in raw if not _type_tag(x)]
        name = "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in loc).lstrip(".") or "the body"
        if kind == "request_value":
            out.append((False, f"{name} {err['msg']}"))
        elif kind in ("where_unknown", "where_value"):  # the engine's grammar words them itself
            out.append((kind == "where_unknown", err["msg"]))
        elif kind == "literal_error":
            valid = list(ctx.get("expected", "").replace("'", "").split(" or "))
            valid = [v for part in valid for v in part.split(", ")]
            near = nearest(got, valid) if isinstance(got, str) else []
            hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
            out.append((True, f"unknown {name} {echo(got)}{hint}; valid: {', '.join(map(repr, valid))}"))
        elif kind == "json_invalid":
            out.append((False, f"the body is not JSON ({ctx.get('error', 'invalid')} at character {raw[-1] if raw else 0})"))
        elif kind == "missing":
            out.append((False, f"{name} is required" if loc else "the body is missing: send a JSON object"))
        elif kind in _TYPE_WORDS:
            out.append((False, f"{name} must be {_TYPE_WORDS[kind]}, got {echo(got)}"))
        elif kind in _BOUND_WORDS:
            words, key = _BOUND_WORDS[kind]
            out.append((False, f"{name} must be {words} {ctx.get(key)}, got {echo(got)}"))
        else:
            out.append((False, f"{name}: {err.get('msg', 'invalid')}"))
    return out


# ---- the front ends' signatures ------------------------------------------------------------------
def parameters(request_type: type[AnalysisRequest]) -> list[inspect.Parameter]:
    """A Python signature's parameters for the request type: its ``positional`` ones first, in
    that order, then the others by keyword, ``as_of`` last; defaults the request type's."""
    fields = request_type.model_fields
    names = [n for n in request_type.positional] + [n for n in fields if n not in request_type.positional
                                                    and n != "as_of"] + ["as_of"]
    out = []
    for n in names:
        f = fields[n]
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if n in request_type.positional else inspect.Parameter.KEYWORD_ONLY
        default = inspect.Parameter.empty if f.is_required() else f.default
        out.append(inspect.Parameter(n, kind, default=default))
    return out


def parameters_doc(request_type: type[AnalysisRequest]) -> str:
    """A numpydoc "Parameters" section from the request type's descriptions."""
    lines = ["Parameters", "----------"]
    for p in parameters(request_type):
        f = request_type.model_fields[p.name]
        default = "" if p.default is inspect.Parameter.empty else f", default {p.default!r}"
        lines += [f"{p.name}{default}", f"    {f.description}"]
    return "\n".join(lines)


def documented(request_type: type[AnalysisRequest], **leading: str) -> Callable:
    """Decorate a front end's method that takes more than its request (``check``: a file first,
    then the request's fields): its docstring gets the request type's Parameters, after
    ``leading`` (name -> description), as ``takes`` gives an analysis's, so that they are written
    once."""
    def decorate(method: Callable) -> Callable:
        head, sep, rest = inspect.cleandoc(method.__doc__ or "").partition("\n\n")
        title, rule, fields = parameters_doc(request_type).split("\n", 2)
        params = "\n".join([title, rule, *(f"{k}\n    {v}" for k, v in leading.items()), fields])
        method.__doc__ = f"{head}\n\n{params}\n\n{rest}" if sep else f"{head}\n\n{params}"
        return method

    return decorate


def takes(request_type: type[AnalysisRequest]) -> Callable:
    """Decorate ``method(self, request)`` so that it is called as the analysis's Python function:
    ``method(self, <positional>, *, <keywords>, as_of=None)`` with the request type's defaults,
    or with a built request (then followed by the method's own options, if it has any). The call
    builds the request (SelectionError for a bad value; TypeError for an unknown keyword, as any
    Python function; as_of must be an int) and passes it on. Its signature and its docstring's Parameters come from the request type."""
    params = parameters(request_type)
    signature = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params])

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            if args and isinstance(args[0], AnalysisRequest):  # built already; the engine's own options may follow
                if not isinstance(args[0], request_type):
                    raise TypeError(f"{method.__name__} takes a {request_type.__name__}, not a {type(args[0]).__name__}")
                # checked again: a request's lists can be changed after it was built
                return method(self, build(request_type, **dict(args[0])), *args[1:], **kwargs)
            bound = signature.bind(self, *args, **kwargs)
            values = {k: v for k, v in bound.arguments.items() if k != "self"}
            if "as_of" in values:
                values["as_of"] = version_arg(values["as_of"])
            return method(self, build(request_type, **values))

        call.__signature__ = signature
        doc = inspect.cleandoc(method.__doc__ or "")
        head, sep, rest = doc.partition("\n\n")
        call.__doc__ = f"{head}\n\n{parameters_doc(request_type)}\n\n{rest}" if sep else f"{head}\n\n{parameters_doc(request_type)}"
        call.request_type = request_type
        return call

    return decorate


def cli_arguments(parser, request_type: type[AnalysisRequest], names: tuple[str, ...]) -> None:
    """The command line's options ``--name`` of a request type's parameters ``names`` (``where``
    and ``as_of`` have options of their own): the help is the description, the valid values and
    the default, all the request type's. The parsed values go to ``from_arguments``; a value
    outside its set is the request type's error (with its did-you-mean), not argparse's."""
    for name in names:
        field = request_type.model_fields[name]
        annotation = plain_type(field.annotation)
        if get_origin(annotation) in (Union, UnionType):  # X | None: an option not given is None
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        choices = get_args(annotation) if get_origin(annotation) is Literal else None
        kind = str if choices else _number if annotation in (int, float) else str
        if kind is _number and _nullable(field):  # e.g. --entropy-norm-gt null: the check turned off
            kind = _number_or_null
        text = field.description
        if choices:
            text += f"; one of {', '.join(choices)}"
        if not field.is_required() and field.default is not None:
            text += f" (default {field.default})"
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                            required=field.is_required(), help=text.replace("%", "%%"))


class _Null:
    """A command-line option given as ``null`` (or ``none``): the parameter's None, where its
    default is not (an option not given is the default)."""

    def __repr__(self) -> str:
        return "null"


CLI_NULL = _Null()


def _nullable(field) -> bool:
    return get_origin(field.annotation) in (Union, UnionType) and type(None) in get_args(field.annotation) \
        and field.default is not None


def _number_or_null(text: str):
    return CLI_NULL if text.strip().lower() in ("null", "none") else _number(text)


def _number(text: str) -> int | float:
    """A number on the command line as JSON would give it (70 an int, 70.0 and 70.5 floats): the
    request type then says whether it is one it takes, in its own words (--bins 70.0 is 70)."""
    import argparse

    try:
        return int(text) if text.strip().lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {echo(text)}") from None


def from_arguments(request_type: type[R], args, **values: Any) -> R:
    """The request of parsed command-line options (those not given: the request type's defaults)
    and ``values``."""
    given = {n: getattr(args, n) for n in request_type.model_fields if getattr(args, n, None) is not None}
    given = {n: None if v is CLI_NULL else v for n, v in given.items()}
    return build(request_type, **(given | values))


def constraints(field) -> list:
    """A field's constraints, also those of an optional one (``X | None``: X's own Annotated
    metadata), a ``Field(ge=..., le=...)`` inside Annotated taken apart."""
    found = list(field.metadata)
    if get_origin(field.annotation) in (Union, UnionType):
        found += [m for arg in get_args(field.annotation) if get_origin(arg) is Annotated for m in get_args(arg)[1:]]
    return [item for m in found for item in getattr(m, "metadata", None) or [m]]


def bounds_of(field) -> dict[str, Any]:
    """The bounds (ge, le, gt, lt) of a request type's field."""
    return {k: getattr(m, k) for m in constraints(field) for k in ("ge", "le", "gt", "lt") if getattr(m, k, None) is not None}


def plain_type(annotation: Any) -> Any:
    """The annotation without its validators and constraints (``Annotated`` stripped, through
    unions and lists): what a query string is parsed as before the request type checks it."""
    if get_origin(annotation) is Annotated:
        return plain_type(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return functools.reduce(operator.or_, [plain_type(a) for a in get_args(annotation)])
    if get_origin(annotation) is list:
        return list[plain_type(get_args(annotation)[0])]
    return annotation


def version_arg(as_of: Any) -> int | None:
    """``as_of`` as an int (None: the current version); TypeError for what is not an integer."""
    if as_of is None:
        return None
    if isinstance(as_of, (bool, np.bool_)):
        raise TypeError("as_of must be a store version (an integer), not a bool")
    if isinstance(as_of, (float, np.floating)) and (v := integral(as_of)) is not None:
        return v  # 3.0 is 3, as JSON Schema's integer
    try:
        return operator.index(as_of)
    except TypeError:
        raise TypeError(f"as_of must be a store version (an integer), got {echo(as_of)}") from None
