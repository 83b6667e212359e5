"""Pydantic models of every request and response of the HTTP API."""
from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, create_model

from cnnfilterdb.limits import (DEFAULT_KDE_BINS, MAX_BINS, MAX_DENSITY2D_BINS, MAX_KDE_BINS, MAX_RANGE_ABS,
                                MIN_KDE_BINS)

from cnnfilterdb.analysis import BASES
from cnnfilterdb.selection import GROUP_FIELDS
from cnnfilterdb.stats.divergence import METRICS, WEIGHTS

from .strict import StrictModel


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


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


class SqlRequest(StrictModel):
    sql: str = Field(min_length=1, max_length=100_000, description="one read-only statement (SELECT)")
    params: list[Any] = Field(default_factory=list, description="values for ? or $n placeholders")
    max_rows: int | None = Field(None, ge=0, description="row cap; default, and ceiling it is capped at, in /v1/stats limits")


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


def _not_bool(v):
    # JSON Schema's integer admits 4.0 (so pydantic's lax mode stays on) but not true/false.
    if isinstance(v, bool):
        raise ValueError("a number, not a boolean")
    return v


Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1), BeforeValidator(_not_bool)]
Real = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_not_bool)]
Component = Annotated[int, Field(ge=0, le=8), BeforeValidator(_not_bool)]
RangeEnd = Annotated[float, Field(ge=-MAX_RANGE_ABS, le=MAX_RANGE_ABS), BeforeValidator(_not_bool)]


class Bounds(BaseModel, Generic[T]):
    """{gte, gt, lte, lt}: every bound given must hold."""
    model_config = ConfigDict(extra="forbid")
    # Not nullable: a bound given as null would be dropped, selecting everything.
    gte: T = None
    gt: T = None
    lte: T = None
    lt: T = None


TextCondition = str | list[str | None] | Bounds[str] | None
IntCondition = Int32 | list[Int32 | None] | Bounds[Int32] | None
RealCondition = Real | list[Real | None] | Bounds[Real] | None
BoolCondition = StrictBool | list[StrictBool | None] | None


class Where(BaseModel):
    """A selection: field -> value | [values] | {gte, gt, lte, lt}; all conditions must hold.
    Text fields take strings, numeric fields numbers; null selects missing values."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    task: TextCondition = None
    task_raw: TextCondition = None
    visual_category: TextCondition = None
    training_dataset: TextCondition = None
    pretraining_dataset: TextCondition = None
    name: TextCondition = None
    model: TextCondition = None
    model_id: IntCondition = None
    producer: TextCondition = None
    conv_depth: IntCondition = None
    conv_depth_norm: RealCondition = None
    layer_id: IntCondition = None
    depth_bin: TextCondition = None
    sample: BoolCondition = Field(None, description="true: the models of the synthetic sample (`cnnfilterdb demo`)")
    version_added: IntCondition = Field(None, description="the store version that ingested the model")
    source: TextCondition = Field(None, description="the file the model came from")
    sha256: TextCondition = Field(None, description="the sha256 of that file (model files only)")

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
    group_by: GroupField
    where: Where | None = None
    metric: Metric = "kl_sym"
    bins: int = Field(70, ge=1, le=MAX_BINS)
    weights: Weights = "explained_variance"
    basis: BasisKind = "global"


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
    where: Where | None = None


class PcaResponse(Versioned):
    n_filters: int
    mean: list[list[float]] = Field(description="3x3")
    components: list[list[list[float]]] = Field(description="9 eigen-images, 3x3 each, by decreasing variance")
    explained_variance: list[float]
    explained_variance_ratio: list[float]
    covariance: list[list[float]] = Field(description="9 x 9 covariance of the peak-scaled filters "
                                                      "(scikit-learn's get_covariance())")


class HistogramsRequest(AsOf):
    group_by: GroupField | None = None
    where: Where | None = None
    bins: int = Field(70, ge=1, le=MAX_BINS)
    basis: BasisKind = "global"


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
    where: Where | None = None
    components: list[Component] = Field([0, 1], min_length=2, max_length=2, description="two component indices, 0..8")
    bins: int = Field(70, ge=1, le=MAX_DENSITY2D_BINS)
    basis: BasisKind = "global"
    range: tuple[RangeEnd, RangeEnd] | None = Field(None, description="the ends of both axes, in either order (default: the "
                                                             "basis range; the notebook's figure: -3.3, 3.3)")


class Density2dResponse(Versioned):
    components: list[int]
    range: tuple[float, float]
    bins: int
    edges: list[float]
    n_filters: int
    counts: list[list[int]] = Field(description="bins x bins; rows: the first component")
    basis: BasisRef


class KdeRequest(AsOf):
    group_by: GroupField | None = None
    where: Where | None = None
    bins: int = Field(DEFAULT_KDE_BINS, ge=MIN_KDE_BINS, le=MAX_KDE_BINS, description="bins of the exact histogram the KDE is computed from; "
                                                        "its centres are the grid")
    basis: BasisKind = "global"


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
