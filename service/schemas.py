"""Pydantic models of every request and response of the HTTP API."""
from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, create_model

from cnnfilterdb.analysis import BASES
from cnnfilterdb.limits import DEFAULT_KDE_BINS, MAX_BINS, MAX_DENSITY2D_BINS, MAX_KDE_BINS, MAX_RANGE_ABS, MIN_KDE_BINS
from cnnfilterdb.selection import GROUP_FIELDS
from cnnfilterdb.stats.divergence import METRICS, WEIGHTS

from .strict import StrictModel

# What each field of a selection (and of /v1/models' filters) means: the descriptions of `where`'s
# properties and of the query parameters of GET /v1/models.
FIELD_DESCRIPTIONS = {
    "task": "the task the model was trained for, e.g. Classification (every label containing Segmentation "
            "is stored as Segmentation, the source's label in task_raw)",
    "task_raw": "the task as the source labelled it",
    "visual_category": "the kind of images the model was trained on, e.g. natural, faces, fractals",
    "training_dataset": "the dataset the model was trained on, e.g. ImageNet1k",
    "pretraining_dataset": "the dataset the model was pretrained on, if any",
    "name": "the model's architecture, e.g. ResNet-18 (many models share one)",
    "model": "the model's unique name",
    "model_id": "the model's id",
    "producer": "the software that saved the model file, with its version, e.g. pytorch 1.10",
    "paper": "the paper that published the model",
    "accessible": "whether the model's weights are publicly available, as the source states it",
    "conv_depth": "the layer's convolution level in its model: 0 is the first",
    "conv_depth_norm": "the layer's relative depth: conv_depth divided by the model's last level, 0 (first) to 1 (last)",
    "layer_id": "the layer's id",
    "depth_bin": "conv_depth_norm in ten bins labelled [0.0, 0.1], (0.1, 0.2], ..., (0.9, 1.0]",
    "sample": "true: the models of the synthetic sample (`cnnfilterdb demo`), not real data",
    "version_added": "the store version that ingested the model",
    "source": "the file the model came from",
    "sha256": "the sha256 of that file (model files only)",
}
# The analysis options, described once for the request bodies and the GET endpoints' parameters.
# Their allowed values are the schema's enums.
GROUP_BY_TEXT = "the field whose values split the selection into groups (GET /v1/fields lists each field's values)"
WHERE_BODY_TEXT = ("the filters to analyse: a selection (see Where); absent or null: every filter in the store")
METRIC_TEXT = ("the divergence between two groups' histograms, per component: kl_sym is the paper's symmetric "
               "Kullback-Leibler divergence (natural log)")
WEIGHTS_TEXT = ("how the 9 components' divergences are summed: explained_variance weights each by its share of "
                "the variance (the paper's)")
BASIS_TEXT = ("the PCA basis the filters are projected on: global is fitted on every filter in the store (the "
              "paper's); selection on the selected filters only")
BINS_TEXT = "histogram bins per component, equal in width over the basis range (the smallest to the largest coefficient)"


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# What an error status means, as /docs lists it under each operation (a router may say more).
ERROR_STATUSES = {
    400: "Bad request: a parameter or field the endpoint does not take, or a value outside its allowed set "
         "(the message names it and lists the valid ones)",
    403: "Refused: the statement would write, or reach a file, the network or an extension",
    404: "Not found: no such id, figure or store version; for a selection, a value no model has (the message "
         "suggests the nearest) or no filters at all",
    422: "Invalid value: the wrong type, or out of its range",
    429: "Busy: as many requests of this kind are running as the service allows; retry after Retry-After seconds",
    503: "Store unavailable: none ingested yet, or a store file missing or damaged (named)",
}


def error_responses(*statuses: int, said: dict[int, str] | None = None) -> dict[int, dict]:
    """The ``responses`` of a router: each status with ErrorResponse and what it means there
    (``said``: status -> description, where the router says more than ERROR_STATUSES)."""
    return {s: {"model": ErrorResponse, "description": (said or {}).get(s, ERROR_STATUSES[s])} for s in statuses}


class Health(BaseModel):
    status: Literal["ok"]
    basis_version: int | None


class BasisSummary(BaseModel):
    version: int
    n_filters: int
    explained_variance_ratio: list[float]
    range: tuple[float, float]


class SqlSandbox(BaseModel):
    chroot: bool = Field(description="the SQL workers see the store as their whole filesystem")
    landlock_abi: int = Field(description="Landlock ABI in force (0: none): no file written, no TCP")
    address_space_bytes: int = Field(description="each worker's address-space cap")


def _limits_model() -> type[BaseModel]:
    """The limits of /v1/stats: every setting in service/settings.LIMITS, as the service runs
    with it, and the SQL workers' sandbox."""
    from .settings import LIMITS, Settings

    fields = {name: (int if name == "sql_worker_memory_cap" else Settings.model_fields[name].annotation,
                     Field(description=Settings.model_fields[name].description)) for name in LIMITS}
    fields["sql_sandbox"] = (SqlSandbox | None, Field(None, description="as reported by a running SQL worker "
                                                                        "(null before the first has started)"))
    return create_model("Limits", **fields)


Limits = _limits_model()


class StoreVersion(BaseModel):
    version: int = Field(description="1, 2, ...: one per commit")
    committed_at: str = Field(description="UTC, ISO 8601")
    action: Literal["ingest", "label", "remove"]
    summary: str = Field(description="what it added, relabelled or removed, in words")
    models_added: int
    models_changed: int = Field(description="relabelled")
    models_removed: int
    n_models: int = Field(description="models present at this version")
    n_filters: int
    basis_version: int | None = Field(description="the global basis of this version (null: fewer than 2 filters)")
    compacted: bool = Field(description="forgotten by `cnnfilterdb compact`: as_of this version is a 404")


class Versions(BaseModel):
    store_id: str = Field(description="the store's id (a UUID given when it was created): cite a result as store "
                                      "<store_id>, version <store_version>")
    current: int = Field(description="the current store version (0: nothing committed)")
    versions: list[StoreVersion]


class Stats(BaseModel):
    store_id: str = Field(description="the store's id (a UUID given when it was created)")
    store_version: int = Field(description="the current store version (GET /v1/versions lists them)")
    models: int
    sample_models: int = Field(description="models of the synthetic sample (`cnnfilterdb demo`): not real data")
    layers: int
    filters: int
    shards: int
    shard_bytes: int
    ingests: int
    last_ingest_at: str | None
    basis: BasisSummary | None
    limits: Limits


class FieldValue(BaseModel):
    value: Any
    models: int
    layers: int
    filters: int


class FieldInfo(BaseModel):
    name: str
    level: Literal["model", "layer"]
    type: str
    n_distinct: int
    values: list[FieldValue]
    truncated: bool = Field(description="true when only the first field_values_max values are listed")


class Fields(BaseModel):
    fields: list[FieldInfo]


class Model(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_id: int
    model: str
    name: str | None
    task: str | None
    task_raw: str | None
    visual_category: str | None
    training_dataset: str | None
    pretraining_dataset: str | None
    producer: str | None
    op_set: int | None
    depth: int | None
    paper: str | None
    accessible: str | None
    dataset_url: str | None
    total_filters: int | None
    filter_share_3x3: float | None
    n_filters: int
    n_layers: int
    source: str
    sha256: str | None
    sample: bool = Field(description="a model of the synthetic sample (`cnnfilterdb demo`), not real data")
    version_added: int = Field(description="the store version that ingested it")
    kernel_counts: dict[str, int]
    op_counts: dict[str, int]
    extra: dict[str, Any] | None


class ModelPage(BaseModel):
    total: int = Field(description="models matching the filters")
    limit: int
    items: list[Model]
    next: str | None = Field(description="URL of the next page (keyset paging on model_id), null at the end")


class Layer(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    layer_id: int
    model_id: int
    model: str
    conv_depth: int
    conv_depth_norm: float
    depth_bin: str
    filter_id_first: int
    filter_id_last: int
    n_filters: int
    in_channels: int | None
    out_channels: int | None
    groups: int | None
    sparsity: float | None
    variance_entropy: float | None
    variance_entropy_norm: float | None
    variance_entropy_clean: float | None
    orthogonality: float | None


class LayerList(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_id: int
    items: list[Layer]


class Filter(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    filter_id: int
    model_id: int
    layer_id: int
    w: list[list[float]] = Field(description="3x3, row-major")


class FilterPage(BaseModel):
    layer_id: int
    n_filters: int
    offset: int
    limit: int
    items: list[Filter]
    next: str | None


def _not_bool(v):
    # JSON Schema's integer admits 4.0 (so pydantic's lax mode stays on) but not true/false.
    if isinstance(v, bool):
        raise ValueError("a number, not a boolean")
    return v


Integer = Annotated[int, BeforeValidator(_not_bool)]  # a request's integer: true is not 1


class SqlRequest(StrictModel):
    # (The schema lists an example's keys alphabetically: params before sql.)
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sql": "SELECT task, count(*) AS models FROM models WHERE n_filters > ? GROUP BY task ORDER BY models DESC",
         "params": [1000]}]})
    sql: str = Field(min_length=1, max_length=100_000, description="one reading statement (SELECT, or EXPLAIN of "
                                                                   "one) in DuckDB's SQL, on the store's views")
    params: list[Any] = Field(default_factory=list, description="values for the statement's ? (or $1, $2, ...) "
                                                                "placeholders, in order")
    max_rows: Annotated[int, Field(ge=0), BeforeValidator(_not_bool)] | None = Field(
        None, description="the most rows to return (default sql_default_rows, at most sql_max_rows: GET /v1/stats "
                          "limits; a larger value is capped)")


class SqlResponse(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool = Field(description="true when rows were left out (see truncated_reason)")
    truncated_reason: str | None = Field(description="max_rows or max_bytes, with the cap; null when complete")
    max_rows: int = Field(description="the row cap applied")
    max_bytes: int = Field(description="the cap applied to the JSON bytes of rows")
    elapsed_ms: float


# ---- analysis ----------------------------------------------------------------------------------
GroupField = Literal[tuple(GROUP_FIELDS)]  # type: ignore[valid-type]
Metric = Literal[METRICS]  # type: ignore[valid-type]
Weights = Literal[WEIGHTS]  # type: ignore[valid-type]
BasisKind = Literal[BASES]  # type: ignore[valid-type]
T = TypeVar("T")


Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1), BeforeValidator(_not_bool)]
Real = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_not_bool)]
Component = Annotated[int, Field(ge=0, le=8), BeforeValidator(_not_bool)]
RangeEnd = Annotated[float, Field(ge=-MAX_RANGE_ABS, le=MAX_RANGE_ABS), BeforeValidator(_not_bool)]


class Bounds(BaseModel, Generic[T]):
    """A range of values: {gte, gt, lte, lt}, every bound given must hold (text compares
    alphabetically)."""
    model_config = ConfigDict(extra="forbid")
    # Not nullable: a bound given as null would be dropped, selecting everything.
    gte: T = Field(None, description="greater than or equal to")
    gt: T = Field(None, description="greater than")
    lte: T = Field(None, description="less than or equal to")
    lt: T = Field(None, description="less than")


def _bounds(kind: Any, title: str, schema_name: str) -> type[Bounds]:
    """Bounds of one type, named for the OpenAPI document: ``schema_name`` is its key under
    components/schemas, ``title`` (Bounds[...]) what /docs shows and the tag pydantic gives the
    union member in an error's location (errors.py recognizes it). Left to pydantic, both would
    spell out the whole annotation of Int32 or Real."""
    base = Bounds[kind]
    return type(base)(title, (base,), {"__qualname__": schema_name, "__module__": __name__})


TextBounds = _bounds(str, "Bounds[str]", "TextBounds")
IntBounds = _bounds(Int32, "Bounds[int]", "IntBounds")
RealBounds = _bounds(Real, "Bounds[float]", "RealBounds")
TextCondition = str | list[str | None] | TextBounds | None
IntCondition = Int32 | list[Int32 | None] | IntBounds | None
RealCondition = Real | list[Real | None] | RealBounds | None
BoolCondition = StrictBool | list[StrictBool | None] | None


def _condition(field: str) -> Any:
    return Field(None, description=FIELD_DESCRIPTIONS[field])


class Where(BaseModel):
    """A selection of filters by their model's and layer's fields: each field given is a value, a
    list of values (any of them) or bounds {gte, gt, lte, lt}, and every field given must hold.
    Text fields take strings, numeric fields numbers; null selects missing values. A value no model
    has is a 404 suggesting the nearest ones (GET /v1/fields lists them)."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), json_schema_extra={
        "examples": [{"task": "Classification", "conv_depth": {"gte": 1}}]})
    task: TextCondition = _condition("task")
    task_raw: TextCondition = _condition("task_raw")
    visual_category: TextCondition = _condition("visual_category")
    training_dataset: TextCondition = _condition("training_dataset")
    pretraining_dataset: TextCondition = _condition("pretraining_dataset")
    name: TextCondition = _condition("name")
    model: TextCondition = _condition("model")
    model_id: IntCondition = _condition("model_id")
    producer: TextCondition = _condition("producer")
    conv_depth: IntCondition = _condition("conv_depth")
    conv_depth_norm: RealCondition = _condition("conv_depth_norm")
    layer_id: IntCondition = _condition("layer_id")
    depth_bin: TextCondition = _condition("depth_bin")
    sample: BoolCondition = _condition("sample")
    version_added: IntCondition = _condition("version_added")
    source: TextCondition = _condition("source")
    sha256: TextCondition = _condition("sha256")

    def conditions(self) -> dict:
        """The fields given (an explicit null means IS NULL), bounds as plain dicts."""
        out = {}
        for k in self.model_fields_set:
            v = getattr(self, k)
            out[k] = v.model_dump(exclude_none=True) if isinstance(v, BaseModel) else v
        return out


class AsOf(StrictModel):
    """A request that reads the store as of one of its versions."""
    as_of: Annotated[int, Field(ge=1, le=2**31 - 1), BeforeValidator(_not_bool)] | None = Field(
        None, description="the store version to read (GET /v1/versions); default the current one. "
                                          "The same request as_of the same version gives the same result, bit for bit")


class DivergenceRequest(AsOf):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"group_by": "task", "where": {"conv_depth": {"gte": 1}}, "metric": "kl_sym"}]})
    group_by: GroupField = Field(description=GROUP_BY_TEXT)
    where: Where | None = Field(None, description=WHERE_BODY_TEXT)
    metric: Metric = Field("kl_sym", description=METRIC_TEXT)
    bins: Integer = Field(70, ge=1, le=MAX_BINS, description=BINS_TEXT)
    weights: Weights = Field("explained_variance", description=WEIGHTS_TEXT)
    basis: BasisKind = Field("global", description=BASIS_TEXT)


class Drift(BaseModel):
    mean: float
    median: float
    q1: float
    q3: float
    min: float
    max: float


class BasisRef(BaseModel):
    kind: BasisKind
    version: int | None
    n_filters: int | None = None


class Versioned(BaseModel):
    store_version: int = Field(description="the store version this result was computed on (cite it; as_of repeats it)")


class DivergenceResponse(Versioned):
    group_by: str
    labels: list[Any]
    n_filters: list[int]
    n_models: list[int]
    n_layers: list[int]
    matrix: list[list[float]]
    metric: str
    weights: str
    component_weights: list[float]
    explained_variance_ratio: list[float]
    range: tuple[float, float]
    bins: int
    basis: BasisRef
    drift: Drift | None
    empty_groups: list[Any] = Field(description="values asked for in where[group_by] that hold no filters")
    method: Literal["layer_histograms", "scan"]
    elapsed_ms: float


class PcaRequest(AsOf):
    model_config = ConfigDict(json_schema_extra={"examples": [{"where": {"task": "Classification"}}]})
    where: Where | None = Field(None, description=WHERE_BODY_TEXT)


class PcaResponse(Versioned):
    n_filters: int
    mean: list[list[float]] = Field(description="3x3")
    components: list[list[list[float]]] = Field(description="9 eigen-images, 3x3 each, by decreasing variance")
    explained_variance: list[float]
    explained_variance_ratio: list[float]
    covariance: list[list[float]] = Field(description="9 x 9 covariance of the peak-scaled filters "
                                                      "(scikit-learn's get_covariance())")


class HistogramsRequest(AsOf):
    model_config = ConfigDict(json_schema_extra={"examples": [{"group_by": "task", "bins": 70}]})
    group_by: GroupField | None = Field(None, description=GROUP_BY_TEXT + "; absent or null: one group of all")
    where: Where | None = Field(None, description=WHERE_BODY_TEXT)
    bins: Integer = Field(70, ge=1, le=MAX_BINS, description=BINS_TEXT)
    basis: BasisKind = Field("global", description=BASIS_TEXT)


class GroupHistogram(BaseModel):
    label: Any
    n_filters: int
    counts: list[list[int]] = Field(description="9 components x bins")


class GroupedOverRange(Versioned):
    """What a per-group result over the basis range states of itself."""
    group_by: str | None
    range: tuple[float, float]
    bins: int
    basis: BasisRef
    method: Literal["layer_histograms", "scan"]


class HistogramsResponse(GroupedOverRange):
    edges: list[float]
    groups: list[GroupHistogram]


class Density2dRequest(AsOf):
    model_config = ConfigDict(json_schema_extra={"examples": [{"components": [0, 1], "bins": 100,
                                                               "range": [-3.3, 3.3]}]})
    where: Where | None = Field(None, description=WHERE_BODY_TEXT)
    components: list[Component] = Field([0, 1], min_length=2, max_length=2,
                                        description="the two components, 0 (the most variance) to 8: the first is "
                                                    "the rows of counts, the second the columns")
    bins: Integer = Field(70, ge=1, le=MAX_DENSITY2D_BINS, description="bins per axis, equal in width over range")
    basis: BasisKind = Field("global", description=BASIS_TEXT)
    range: tuple[RangeEnd, RangeEnd] | None = Field(None, description="the ends of both axes, in either order (default: the "
                                                             "basis range; the paper's figure: -3.3, 3.3)")


class Density2dResponse(Versioned):
    components: list[int]
    range: tuple[float, float]
    bins: int
    edges: list[float]
    n_filters: int
    counts: list[list[int]] = Field(description="bins x bins; rows: the first component")
    basis: BasisRef


class KdeRequest(AsOf):
    model_config = ConfigDict(json_schema_extra={"examples": [{"group_by": "task", "bins": 64}]})
    group_by: GroupField | None = Field(None, description=GROUP_BY_TEXT + "; absent or null: one group of all")
    where: Where | None = Field(None, description=WHERE_BODY_TEXT)
    bins: Integer = Field(DEFAULT_KDE_BINS, ge=MIN_KDE_BINS, le=MAX_KDE_BINS,
                          description="bins of the exact histogram the KDE is computed from; its centres are the grid")
    basis: BasisKind = Field("global", description=BASIS_TEXT)


class GroupKde(BaseModel):
    label: Any
    n_filters: int
    n_models: int
    bandwidth: list[float] = Field(description="per component: Silverman's rule (KDEpy's)")
    std: list[float] = Field(description="per component: the coefficients' standard deviation (ddof=1), exact")
    quartiles: list[list[float]] = Field(description="per component: 25th and 75th percentiles (within a bin)")
    density: list[list[float]] = Field(description="9 components x bins: the density at each grid point")


class KdeResponse(GroupedOverRange):
    grid: list[float] = Field(description="the bin centres, where the densities are given")
    groups: list[GroupKde]


class DegenerateLayer(Layer):
    sparse: bool | None
    low_entropy: bool | None
    random_like: bool | None


class DegenerateResponse(Versioned):
    thresholds: dict[str, float | None]
    total: int
    limit: int
    offset: int
    layers: list[DegenerateLayer]


class SimilarModel(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_id: int
    model: str | None
    task: str | None
    visual_category: str | None
    distance: float


class SimilarResponse(Versioned):
    model_config = ConfigDict(protected_namespaces=())
    basis: BasisRef
    model_id: int
    metric: str
    weights: str
    method: str
    similar: list[SimilarModel]
