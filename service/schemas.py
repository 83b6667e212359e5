"""Pydantic models of the HTTP API's responses, and of the requests that are not an analysis (the
analyses' requests are the engine's own: cnnfilterdb/requests.py)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, create_model

from cnnfilterdb.catalog import ACTIONS
from cnnfilterdb.limits import ENGINE_LIMITS, MAX_SQL_CHARS
from cnnfilterdb.requests import BasisKind
from cnnfilterdb.selection import FIELD_DESCRIPTIONS
from cnnfilterdb.stats.divergence import DEFAULT_BINS

from .settings import LIMITS, Settings
from .strict import StrictModel

# What the responses' shared fields mean, described once (docs/method.md has the statistics).
STORE_VERSION_TEXT = "the store version this result was computed on (cite it; as_of repeats it)"
ELAPSED_MS_TEXT = "the time the computation took on the server, in milliseconds"
GROUP_BY_OUT_TEXT = "the field the selection was grouped by, as asked"
GROUP_BY_OPTIONAL_OUT_TEXT = "the field the selection was grouped by, as asked; null: one group of the whole selection"
LABELS_TEXT = ("the d groups' values of group_by in natural order (numbers by value, depth bins by their lower edge, "
               "text alphabetically, null last; a null value is a group of its own): index i of every per-group list "
               "and row and column i of matrix")
GROUP_LABEL_TEXT = "the group's value of group_by (null: the group of missing values; 'all' when group_by is null)"
GROUP_N_FILTERS_TEXT = "the 3x3 filters of the group"
GROUP_N_MODELS_TEXT = "the models with at least one layer in the group"
PER_GROUP_TEXT = "per group, in the order of labels: "
METRIC_OUT_TEXT = "the divergence used between two histograms, as asked (kl_sym: the paper's symmetric KL, natural log)"
WEIGHTS_OUT_TEXT = "how the 9 components' divergences were weighted, as asked (explained_variance: the paper's)"
RANGE_TEXT = ("[lo, hi]: the ends of the histograms' bins, in coefficient units: the basis range, the smallest and the "
              "largest of the 9 coefficients of the basis's filters")
BINS_OUT_TEXT = "histogram bins per component, equal in width over range"
EDGES_TEXT = "the bins + 1 bin edges, np.linspace(range[0], range[1], bins + 1), shared by every group and component"
BASIS_REF_TEXT = "the PCA basis the filters were projected on (global: the store version's; selection: the selection's own)"
METHOD_TEXT = ("how the histograms were computed: layer_histograms summed the per-layer histograms the commits stored "
               f"(global basis, default {DEFAULT_BINS} bins: no filter read); unit_histograms summed those stored per "
               "model and depth bin (global basis, the ridge plots' 2048 bins) or per model (the density figure's 512 x "
               "512 of c0, c1 over [-3.3, 3.3]): no filter read; scan read the selected filters. All three give the "
               "same counts")
METHOD = Literal["layer_histograms", "unit_histograms", "scan"]
OUTSIDE_TEXT = ("coefficients outside range, left out of the counts (as numpy's histogram leaves them out), summed over "
                "the 9 components: with the global basis, those of layers added since the basis was fitted "
                "(docs/method.md#refit); 0 with a selection's own basis")
EXPLAINED_VARIANCE_RATIO_TEXT = ("the basis's share of the variance per component: 9 values by decreasing variance, "
                                 "summing to 1")
PAGE_LIMIT_TEXT = "the page size used (a larger limit asked for is capped)"
PAGE_OFFSET_TEXT = "how many items were skipped before this page"
NEXT_PAGE_TEXT = "URL of the next page, null on the last"
MODEL_ID_TEXT = "the model's id (unique in the store, never reused)"
MODEL_NAME_TEXT = "the model's unique name"
LAYER_ID_TEXT = "the layer's id (unique in the store, never reused)"
FILTER_COUNT_TEXT = "3x3 filters"
UNKNOWN = "; null: not stated by the source"
# The layer quality metrics (docs/method.md#layer-quality), computed at ingest on the raw filters.
SPARSITY_TEXT = ("the share of the layer's filters, 0 to 1, whose every |w| < 0.01 x the largest |w| of the layer; "
                 "null where not computed")
VARIANCE_ENTROPY_TEXT = ("the base-10 entropy of the layer's filters' variance over 9 principal directions (the "
                         "normalized eigenvalues of their covariance), 0 (all in one direction) to log10(9) = 0.954 "
                         "(equal in all); null with fewer than 2 filters")
VARIANCE_ENTROPY_NORM_TEXT = ("variance_entropy divided by the expected entropy of a random layer with as many filters: "
                              "near 0 redundant, near 1 and above random-like; null where that expectation is not "
                              "positive (2 filters) or with fewer than 2 filters")
VARIANCE_ENTROPY_CLEAN_TEXT = "variance_entropy of the layer's non-sparse filters only; null if fewer than 2 of them"
ORTHOGONALITY_TEXT = ("1 - the mean |cosine| between pairs of distinct output channels (each flattened), 0 to 1, 1 "
                      "orthogonal; null with fewer than 2 output channels or an unknown shape (dataset.h5 layers)")


class ErrorDetail(BaseModel):
    code: str = Field(description="what went wrong, as a stable machine-readable code, e.g. not_found, analysis_busy")
    message: str = Field(description="what went wrong, in words: names the parameter or value, and the valid ones")


class ErrorResponse(BaseModel):
    error: ErrorDetail = Field(description="the error")


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
    status: Literal["ok"] = Field(description="always ok: the store is readable (otherwise the answer is a 503)")
    basis_version: int | None = Field(description="the version of the current global PCA basis (null: none yet, "
                                                  "fewer than 2 filters)")


class BasisSummary(BaseModel):
    version: int = Field(description="the basis's version (a new one is fitted when a commit changes the filters)")
    n_filters: int = Field(description="the 3x3 filters it was fitted on: every filter of the store version")
    explained_variance_ratio: list[float] = Field(description=EXPLAINED_VARIANCE_RATIO_TEXT)
    range: tuple[float, float] = Field(description="[min, max] over all 9 coefficients of all its filters: the "
                                                   "default range of the histograms")


class SqlSandbox(BaseModel):
    """The layers of the SQL workers' confinement in force (service/usersql/): each holds alone."""
    statement_check: bool = Field(description="DuckDB's parser admits one reading statement (SELECT, EXPLAIN "
                                              "[ANALYZE] of one)")
    python_object_scans: bool = Field(description="DuckDB's scans of Python objects (pandas_scan, arrow_scan, "
                                                  "replacement scans) are available (false: off)")
    chroot: bool = Field(description="the SQL workers see the store as their whole filesystem")
    read_only_mount: bool = Field(description="the store is mounted read-only in the workers' own mount namespace: "
                                              "every write fails (EROFS), Landlock or not")
    no_capabilities: bool = Field(description="the workers hold no capability (none can remount, mount or chroot)")
    no_new_privs: bool = Field(description="the workers cannot gain privileges by executing anything")
    landlock_abi: int = Field(description="Landlock ABI in force (0: none): no file written, no TCP")
    address_space_bytes: int = Field(description="each worker's address-space cap")


def _limits_model() -> type[BaseModel]:
    """The limits of /v1/stats: every setting in service/settings.LIMITS, as the service runs
    with it, every bound of the engine (cnnfilterdb/limits.ENGINE_LIMITS: fixed, the same for
    every service) and the SQL workers' sandbox."""
    def shown(annotation):  # a size given as "3GiB" is shown in bytes
        return int if annotation is ByteSize else int | None if annotation == ByteSize | None else annotation

    fields = {name: (shown(Settings.model_fields[name].annotation),
                     Field(description=Settings.model_fields[name].description)) for name in LIMITS}
    fields |= {name: (type(value), Field(value, description=f"{text} (the engine's, fixed)"))
               for name, (value, text) in ENGINE_LIMITS.items()}
    fields["sql_sandbox"] = (SqlSandbox | None, Field(None, description="as reported by a running SQL worker "
                                                                        "(null before the first has started)"))
    return create_model("Limits", **fields)


Limits = _limits_model()


class StoreVersion(BaseModel):
    version: int = Field(description="1, 2, ...: one per commit")
    committed_at: str = Field(description="UTC, ISO 8601")
    action: Literal[ACTIONS] = Field(description="the commit's kind: an ingest of model files, a relabelling, a "  # type: ignore[valid-type]
                                                 "removal of models, or a refresh (the basis and per-layer "
                                                 "histograms refitted, `cnnfilterdb spark refresh`)")
    summary: str = Field(description="what it added, relabelled or removed, in words")
    models_added: int = Field(description="models it ingested")
    models_changed: int = Field(description="relabelled")
    models_removed: int = Field(description="models it removed")
    n_models: int = Field(description="models present at this version")
    n_filters: int = Field(description="3x3 filters present at this version")
    basis_version: int | None = Field(description="the global basis of this version (null: fewer than 2 filters)")
    compacted: bool = Field(description="forgotten by `cnnfilterdb compact`: as_of this version is a 404")
    digest: str | None = Field(None, description="sha256 (hex) of what the version holds, recorded by its commit "
                                                 "(docs/versions.md#citing-a-version; `cnnfilterdb verify` recomputes "
                                                 "it); null: committed before catalog layout 8")


class Versions(BaseModel):
    store_id: str = Field(description="the store's id (a UUID given when it was created): cite a result as store "
                                      "<store_id>, version <store_version>")
    current: int = Field(description="the current store version (0: nothing committed)")
    versions: list[StoreVersion] = Field(description="every version of the store, oldest first")


class Stats(BaseModel):
    store_id: str = Field(description="the store's id (a UUID given when it was created)")
    store_version: int = Field(description="the current store version (GET /v1/versions lists them)")
    models: int = Field(description="models in the current store version")
    sample_models: int = Field(description="models of the synthetic sample (`cnnfilterdb demo`): not real data")
    layers: int = Field(description="3x3 convolution layers of those models")
    filters: int = Field(description="3x3 filters of those layers")
    shards: int = Field(description="Parquet files holding the filters of every kept store version")
    shard_bytes: int = Field(description="their total size, in bytes")
    ingests: int = Field(description="source files ingested: one per file of each committed ingest")
    last_ingest_at: str | None = Field(description="when the last ingest was committed, UTC, ISO 8601 (null: never)")
    basis: BasisSummary | None = Field(description="the current global PCA basis in brief (null: none yet, fewer "
                                                   "than 2 filters)")
    limits: Limits = Field(description="every limit the service enforces (page sizes, caps, timeouts, concurrency), "
                                       "as it runs with them")


class FieldValue(BaseModel):
    value: Any = Field(description="one value of the field, as a selection or group_by takes it (null: missing)")
    models: int = Field(description="models with this value")
    layers: int = Field(description="layers with this value")
    filters: int = Field(description="3x3 filters of those layers")


class FieldInfo(BaseModel):
    name: str = Field(description="the field's name, as where and group_by take it")
    level: Literal["model", "layer"] = Field(description="model: a label or a property of the model; layer: a "
                                                         "property of each layer")
    type: str = Field(description="its SQL (DuckDB) type, e.g. VARCHAR, INTEGER (NULL: no layers in the store); a "
                                  "model property's is BOOLEAN, BIGINT (integer), DOUBLE or VARCHAR (text)")
    property: bool = Field(description="true: a model property a user added (`cnnfilterdb label --manifest/--set`; "
                                       "listed after the built-in fields, in the order they were added); false: a "
                                       "built-in field")
    groupable: bool = Field(description="whether group_by (and a figure's color_by) takes it: every built-in field "
                                        "and the boolean and text properties; an integer or double property is "
                                        "selected by range in where instead ({\"gte\": .., \"lte\": ..})")
    n_distinct: int = Field(description="how many distinct values it has, null not counted (of the models with "
                                        "layers, as the counts of values)")
    values: list[FieldValue] = Field(description="its values in order (depth bins by depth, others by value, null "
                                                 "last), with their counts: the first field_values_max. An integer or "
                                                 "double property lists none (its range: min and max)")
    min: int | float | None = Field(description="an integer or double property's smallest value among the models with "
                                                "layers (null: none has a value); null for the other fields")
    max: int | float | None = Field(description="its largest value, as min")
    truncated: bool = Field(description="true when only the first field_values_max values are listed (false for an "
                                        "integer or double property, which lists none)")


class Fields(BaseModel):
    fields: list[FieldInfo] = Field(description="every field a selection can filter or group on: model fields first, "
                                                "then layer fields, then the model properties of the current store "
                                                "version")


# A model property's value: boolean, integer, double or text (null: the model has none).
PropertyValue = bool | int | float | str | None


class Model(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_id: int = Field(description=MODEL_ID_TEXT)
    model: str = Field(description=MODEL_NAME_TEXT)
    name: str | None = Field(description=FIELD_DESCRIPTIONS["name"] + UNKNOWN)
    task: str | None = Field(description=FIELD_DESCRIPTIONS["task"] + UNKNOWN)
    task_raw: str | None = Field(description=FIELD_DESCRIPTIONS["task_raw"] + UNKNOWN)
    visual_category: str | None = Field(description=FIELD_DESCRIPTIONS["visual_category"] + UNKNOWN)
    training_dataset: str | None = Field(description=FIELD_DESCRIPTIONS["training_dataset"] + UNKNOWN)
    pretraining_dataset: str | None = Field(description=FIELD_DESCRIPTIONS["pretraining_dataset"] + "; null: none "
                                                                                                  "or not stated")
    producer: str | None = Field(description=FIELD_DESCRIPTIONS["producer"] + "; null: the file does not state it")
    op_set: int | None = Field(description="the ONNX opset the model declares (its first); null: not stated, e.g. "
                                          "not an ONNX model")
    depth: int | None = Field(description="the number of conv levels (distinct graph depths holding a convolution)"
                                          + UNKNOWN)
    paper: str | None = Field(description=FIELD_DESCRIPTIONS["paper"] + UNKNOWN)
    accessible: str | None = Field(description=FIELD_DESCRIPTIONS["accessible"] + UNKNOWN)
    dataset_url: str | None = Field(description="where the training dataset is published" + UNKNOWN)
    total_filters: int | None = Field(description="the model's filters of every kernel size except 1x1, as in the "
                                                  "source" + UNKNOWN)
    filter_share_3x3: float | None = Field(description="the 3x3 filters' share of total_filters, 0 to 1" + UNKNOWN)
    n_filters: int = Field(description="the model's 3x3 filters stored")
    n_layers: int = Field(description="the model's 3x3 convolution layers stored")
    source: str = Field(description=FIELD_DESCRIPTIONS["source"])
    sha256: str | None = Field(description="the sha256 (hex) of the model file it was ingested from; null for "
                                           "dataset.h5 models")
    sample: bool = Field(description="a model of the synthetic sample (`cnnfilterdb demo`), not real data")
    version_added: int = Field(description="the store version that ingested it")
    kernel_counts: dict[str, int] = Field(description="kernel shape -> the model's filters of that shape (the "
                                                      "source's '(X, Y) filters' counts)")
    op_counts: dict[str, int] = Field(description="ONNX operator name -> how many the model has")
    extra: dict[str, Any] | None = Field(description="any other column of the source's metadata, by name (null: none)")
    properties: dict[str, PropertyValue] = Field(description="the model properties of the current store version "
                                                             "(GET /v1/fields lists them with their types), name -> "
                                                             "value: true/false, a number or text; null where the "
                                                             "model has none. where and group_by take them as fields")


class ModelPage(BaseModel):
    total: int = Field(description="models matching the filters")
    limit: int = Field(description=PAGE_LIMIT_TEXT)
    items: list[Model] = Field(description="this page's models, in model_id order")
    next: str | None = Field(description="URL of the next page (keyset paging on model_id), null at the end")


class Layer(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    layer_id: int = Field(description=LAYER_ID_TEXT)
    model_id: int = Field(description="its model's id")
    model: str = Field(description="its model's unique name")
    conv_depth: int = Field(description=FIELD_DESCRIPTIONS["conv_depth"])
    conv_depth_norm: float = Field(description=FIELD_DESCRIPTIONS["conv_depth_norm"])
    depth_bin: str = Field(description=FIELD_DESCRIPTIONS["depth_bin"])
    filter_id_first: int = Field(description="the id of the layer's first filter")
    filter_id_last: int = Field(description="the id of its last filter: its filters are filter_id_first..filter_id_last, "
                                            "both included")
    n_filters: int = Field(description="the layer's 3x3 filters (filter_id_last - filter_id_first + 1)")
    in_channels: int | None = Field(description="input channels of the convolution; null where unknown (dataset.h5)")
    out_channels: int | None = Field(description="output channels of the convolution; null where unknown (dataset.h5)")
    groups: int | None = Field(description="the convolution's groups (1: ordinary; in_channels: depthwise); null where "
                                           "unknown (dataset.h5)")
    sparsity: float | None = Field(description=SPARSITY_TEXT)
    variance_entropy: float | None = Field(description=VARIANCE_ENTROPY_TEXT)
    variance_entropy_norm: float | None = Field(description=VARIANCE_ENTROPY_NORM_TEXT)
    variance_entropy_clean: float | None = Field(description=VARIANCE_ENTROPY_CLEAN_TEXT)
    orthogonality: float | None = Field(description=ORTHOGONALITY_TEXT)


class LayerList(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_id: int = Field(description=MODEL_ID_TEXT)
    items: list[Layer] = Field(description="the model's 3x3 convolution layers, first to last")


class Filter(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    filter_id: int = Field(description="the filter's id (unique in the store, never reused)")
    model_id: int = Field(description="its model's id")
    layer_id: int = Field(description="its layer's id")
    w: list[list[float]] = Field(description="3x3, row-major")


class FilterPage(BaseModel):
    layer_id: int = Field(description=LAYER_ID_TEXT)
    n_filters: int = Field(description="the layer's 3x3 filters, on every page")
    offset: int = Field(description=PAGE_OFFSET_TEXT)
    limit: int = Field(description=PAGE_LIMIT_TEXT + " (at most filters_json_max)")
    items: list[Filter] = Field(description="this page's filters, in filter_id order")
    next: str | None = Field(description=NEXT_PAGE_TEXT)


def _not_bool(v):
    # JSON Schema's integer admits 4.0 (so pydantic's lax mode stays on) but not true/false.
    if isinstance(v, bool):
        raise ValueError("a number, not a boolean")
    return v



class SqlRequest(StrictModel):
    # (The schema lists an example's keys alphabetically: params before sql.)
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sql": "SELECT task, count(*) AS models FROM models WHERE n_filters > ? GROUP BY task ORDER BY models DESC",
         "params": [1000]}]})
    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS, description="one reading statement (SELECT, or EXPLAIN of "
                                                                   "one) in DuckDB's SQL, on the store's views")
    params: list[Any] = Field(default_factory=list, description="values for the statement's ? (or $1, $2, ...) "
                                                                "placeholders, in order")
    max_rows: Annotated[int, Field(ge=0), BeforeValidator(_not_bool)] | None = Field(
        None, description="the most rows to return (default sql_default_rows, at most sql_max_rows: GET /v1/stats "
                          "limits; a larger value is capped)")


class SqlResponse(BaseModel):
    columns: list[str] = Field(description="the result's column names, in order")
    types: list[str] = Field(description="their DuckDB types, in the same order")
    rows: list[list[Any]] = Field(description="the result's rows, each a list of values in the order of columns")
    truncated: bool = Field(description="true when rows were left out (see truncated_reason)")
    truncated_reason: str | None = Field(description="max_rows or max_bytes, with the cap; null when complete")
    max_rows: int = Field(description="the row cap applied")
    max_bytes: int = Field(description="the cap applied to the JSON bytes of rows")
    elapsed_ms: float = Field(description="the time the query took in its worker, in milliseconds")


# ---- analysis ----------------------------------------------------------------------------------
DRIFT_OF = " of the divergences between the d (d - 1) / 2 pairs of groups (matrix's upper triangle, diagonal excluded)"


class Drift(BaseModel):
    mean: float = Field(description="the mean" + DRIFT_OF)
    median: float = Field(description="the median" + DRIFT_OF)
    q1: float = Field(description="the first quartile (25th percentile, linear interpolation)" + DRIFT_OF)
    q3: float = Field(description="the third quartile (75th percentile, linear interpolation)" + DRIFT_OF)
    min: float = Field(description="the smallest" + DRIFT_OF)
    max: float = Field(description="the largest" + DRIFT_OF)


class BasisRef(BaseModel):
    kind: BasisKind = Field(description="global: the store version's basis (the paper's); selection: the PCA of the "
                                        "selected filters")
    version: int | None = Field(description="the global basis's version; null for a selection's basis")
    n_filters: int | None = Field(None, description="the 3x3 filters the basis was fitted on (given by POST "
                                                    "/v1/divergence; null elsewhere)")


class Versioned(BaseModel):
    store_version: int = Field(description=STORE_VERSION_TEXT)


class Facet(BaseModel):
    value: Any = Field(description="the value of within")
    labels: list[Any] = Field(description=LABELS_TEXT)
    n_filters: list[int] = Field(description=PER_GROUP_TEXT + GROUP_N_FILTERS_TEXT)
    n_models: list[int] = Field(description=PER_GROUP_TEXT + GROUP_N_MODELS_TEXT)
    n_layers: list[int] = Field(description=PER_GROUP_TEXT + "the layers in the group")
    matrix: list[list[float]] = Field(description="between the groups of this value, in the order of labels")
    drift: Drift | None = Field(description="summary statistics of matrix's upper triangle; null below 2 groups")
    n_outside: list[int] = Field(description=PER_GROUP_TEXT + OUTSIDE_TEXT)


class DivergenceResponse(Versioned):
    group_by: str = Field(description=GROUP_BY_OUT_TEXT)
    labels: list[Any] = Field(description=LABELS_TEXT)
    n_filters: list[int] = Field(description=PER_GROUP_TEXT + GROUP_N_FILTERS_TEXT)
    n_models: list[int] = Field(description=PER_GROUP_TEXT + GROUP_N_MODELS_TEXT)
    n_layers: list[int] = Field(description=PER_GROUP_TEXT + "the layers in the group")
    matrix: list[list[float]] = Field(description="d x d, row i column j = divergence between groups i and j (in the "
                                                  "order of labels): symmetric, zero on the diagonal, 0 = identical "
                                                  "distributions")
    metric: str = Field(description=METRIC_OUT_TEXT)
    weights: str = Field(description=WEIGHTS_OUT_TEXT)
    component_weights: list[float] = Field(description="the 9 weights w_i of the components' divergences in each "
                                                       "entry of matrix, sum_i w_i * metric_i (explained_variance: the "
                                                       "basis's explained_variance_ratio; uniform: 1/9 each)")
    explained_variance_ratio: list[float] = Field(description=EXPLAINED_VARIANCE_RATIO_TEXT)
    range: tuple[float, float] = Field(description=RANGE_TEXT)
    bins: int = Field(description=BINS_OUT_TEXT)
    basis: BasisRef = Field(description=BASIS_REF_TEXT)
    drift: Drift | None = Field(description="summary statistics of matrix's upper triangle; null with fewer than 2 groups")
    empty_groups: list[Any] = Field(description="values asked for in where[group_by] that hold no filters")
    n_outside: list[int] = Field(description=PER_GROUP_TEXT + OUTSIDE_TEXT)
    method: METHOD = Field(description=METHOD_TEXT)
    within: str | None = Field(None, description="the field the cohorts were split by (the request's within); "
                                                 "absent without one")
    facets: list[Facet] | None = Field(None, description="with within: one divergence matrix per value of within "
                                                         "(natural order), between the groups of group_by its layers "
                                                         "hold; the top-level matrix is the whole selection's")
    elapsed_ms: float = Field(description=ELAPSED_MS_TEXT)


class ModelMetricsResponse(Versioned):
    layers: Literal["all", "first"] = Field(description="the layers of each model the metrics are computed over")
    by: Literal["depth_decile"] | None = Field(description="depth_decile: a row per model and depth decile")
    metrics: list[str] = Field(description="the metric columns: n_layers, n_filters, then the weighted means")
    columns: list[str] = Field(description="the columns of each row: model_id, model, [depth_decile], then metrics")
    rows: list[list[Any]] = Field(description="one per model (and depth decile), in model_id (and decile) order; "
                                              "null: a metric no layer of the model knows")


class CorrelationGroup(BaseModel):
    group: Any = Field(description="the value of group_by (\"all\" without one)")
    n: int = Field(description="the models with both values, which the statistic is computed over")
    statistic: float | None = Field(description="spearman's rho, pearson's r or kendall's tau-b (null: undefined, "
                                                "or fewer than 3 models)")
    p_value: float | None = Field(description="two-sided, as scipy.stats computes it")
    ci_low: float | None = Field(description="2.5th percentile of the statistic over the bootstrap resamples")
    ci_high: float | None = Field(description="97.5th percentile of the statistic over the bootstrap resamples")
    n_resamples: int = Field(description="the resamples whose statistic is defined, which the interval is of (few: "
                                         "the interval says little; 0 below 3 models)")


class CorrelationPoints(BaseModel):
    model: list[str] = Field(description="the models used, in model_id order (and decile order within a model)")
    group: list[Any] = Field(description="each model's group")
    x: list[float] = Field(description="each model's value of x")
    y: list[float] = Field(description="each model's value of y (a boolean property: 1 for true, 0 for false)")


class CorrelationResponse(Versioned):
    x: str = Field(description="the request's x: a model metric or a numeric or boolean property")
    y: str = Field(description="the request's y")
    method: Literal["spearman", "pearson", "kendall"] = Field(description="the statistic: spearman's rho, pearson's r "
                                                                          "or kendall's tau-b")
    layers: Literal["all", "first"] = Field(description="the layers of each model its metrics are computed over")
    group_by: str | None = Field(description="the field whose values split the models into groups (null: one group)")
    resamples: int = Field(description="bootstrap resamples of the models (numpy.random.default_rng(seed) per group)")
    seed: int = Field(description="the seed of each group's bootstrap generator")
    groups: list[CorrelationGroup] = Field(description="one per group, natural order")
    points: CorrelationPoints = Field(description="every model used: its group and its x, y values")


class PcaResponse(Versioned):
    n_filters: int = Field(description="the selection's 3x3 filters, which the PCA was fitted on")
    mean: list[list[float]] = Field(description="3x3")
    components: list[list[list[float]]] = Field(description="9 eigen-images, 3x3 each, by decreasing variance")
    explained_variance: list[float] = Field(description="the variance along each of the 9 components, decreasing "
                                                       "(the covariance's eigenvalues)")
    explained_variance_ratio: list[float] = Field(description=EXPLAINED_VARIANCE_RATIO_TEXT)
    covariance: list[list[float]] = Field(description="9 x 9 covariance of the peak-scaled filters "
                                                      "(scikit-learn's get_covariance())")
    method: Literal["layer_moments"] = Field(description="how it was computed: pooled from the per-layer moments "
                                                         "the store keeps (no filter read)")


class GroupHistogram(BaseModel):
    label: Any = Field(description=GROUP_LABEL_TEXT)
    n_filters: int = Field(description=GROUP_N_FILTERS_TEXT)
    n_outside: int = Field(description=OUTSIDE_TEXT)
    counts: list[list[int]] = Field(description="9 components x bins")


class GroupedOverRange(Versioned):
    """What a per-group result over the basis range states of itself."""
    group_by: str | None = Field(description=GROUP_BY_OPTIONAL_OUT_TEXT)
    range: tuple[float, float] = Field(description=RANGE_TEXT)
    bins: int = Field(description=BINS_OUT_TEXT)
    basis: BasisRef = Field(description=BASIS_REF_TEXT)
    method: METHOD = Field(description=METHOD_TEXT)


class HistogramsResponse(GroupedOverRange):
    edges: list[float] = Field(description=EDGES_TEXT)
    groups: list[GroupHistogram] = Field(description="one per group, in natural order of their labels")


class Density2dResponse(Versioned):
    components: list[int] = Field(description="the two components [i, j], as asked: counts' rows are i, its columns j")
    range: tuple[float, float] = Field(description="[lo, hi] of both axes, in coefficient units: the range asked for, "
                                                   "else the basis range (an empty range widened by 0.5 each side)")
    bins: int = Field(description="bins per axis, equal in width over range")
    edges: list[float] = Field(description="the bins + 1 bin edges of both axes")
    n_filters: int = Field(description="the selection's 3x3 filters")
    n_outside: int = Field(description="the selection's filters left out of counts: either of their two coefficients "
                                        "outside range (the range asked for, else the basis range)")
    counts: list[list[int]] = Field(description="bins x bins; rows: the first component")
    basis: BasisRef = Field(description=BASIS_REF_TEXT)
    method: METHOD = Field(description=METHOD_TEXT)


class GroupKde(BaseModel):
    label: Any = Field(description=GROUP_LABEL_TEXT)
    n_filters: int = Field(description=GROUP_N_FILTERS_TEXT)
    n_models: int = Field(description=GROUP_N_MODELS_TEXT)
    n_outside: int = Field(description=OUTSIDE_TEXT)
    bandwidth: list[float] = Field(description="per component: Silverman's rule (KDEpy's)")
    std: list[float] = Field(description="per component: the coefficients' standard deviation (ddof=1), exact")
    quartiles: list[list[float | None]] = Field(description="per component: 25th and 75th percentiles (within a bin); "
                                                          "null where none of the group's values is in range")
    density: list[list[float]] = Field(description="9 components x bins: the density at each grid point")


class KdeResponse(GroupedOverRange):
    grid: list[float] = Field(description="the bin centres, where the densities are given")
    groups: list[GroupKde] = Field(description="one per group, in natural order of their labels")


class DegenerateLayer(Layer):
    sparse: bool | None = Field(description="sparsity > sparsity_gt; null where sparsity is null")
    low_entropy: bool | None = Field(description="variance_entropy_norm < entropy_norm_lt (redundant); null where "
                                                 "variance_entropy_norm is null")
    random_like: bool | None = Field(description="variance_entropy_norm > entropy_norm_gt (random-like); false when that "
                                                 "threshold is off or variance_entropy_norm is null")


class DegenerateResponse(Versioned):
    thresholds: dict[str, float | None] = Field(description="the thresholds applied: sparsity_gt, entropy_norm_lt, "
                                                            "entropy_norm_gt (null: the random-like test off)")
    total: int = Field(description="the layers over any threshold, on every page")
    limit: int = Field(description=PAGE_LIMIT_TEXT)
    offset: int = Field(description=PAGE_OFFSET_TEXT)
    layers: list[DegenerateLayer] = Field(description="this page of them, in layer_id order, with the thresholds each "
                                                      "one crossed")


class SimilarModel(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_id: int = Field(description=MODEL_ID_TEXT)
    model: str | None = Field(description=MODEL_NAME_TEXT)
    task: str | None = Field(description=FIELD_DESCRIPTIONS["task"] + UNKNOWN)
    visual_category: str | None = Field(description=FIELD_DESCRIPTIONS["visual_category"] + UNKNOWN)
    distance: float = Field(description="the divergence between the asked model's histograms and this one's (metric, "
                                        f"weights; global basis, {DEFAULT_BINS} bins): smaller is nearer, 0 identical")


class SimilarResponse(Versioned):
    model_config = ConfigDict(protected_namespaces=())
    basis: BasisRef = Field(description="the global basis the models' filters were projected on")
    model_id: int = Field(description="the model asked about")
    metric: str = Field(description=METRIC_OUT_TEXT)
    weights: str = Field(description=WEIGHTS_OUT_TEXT)
    method: str = Field(description=METHOD_TEXT)
    similar: list[SimilarModel] = Field(description="the k nearest models, nearest first (ties in natural order), the "
                                                    "model itself excluded")


# ---- POST /v1/check (cnnfilterdb/check.py; SPEC 15) ------------------------------------------------
CHECK_PERCENTILE_TEXT = ("100 x the share of the population's {of} whose value is at or below this one's (null: the "
                         "value unknown, or none of theirs known)")
NULLABLE_METRIC = "; null where not computed (as an ingest stores it)"


class CheckDecile(BaseModel):
    depth_decile: str = Field(description="the depth decile (docs/method.md#groupings): '0' (a model's first convolutions), "
                                         "then '(0.0, 0.1]' to '(0.9, 1.0]' of conv_depth_norm")
    n_layers: int = Field(description="the population's layers of this decile")
    kl_q1: float | None = Field(description="the first quartile of those layers' own kl_to_population (each layer's "
                                            "divergence from its decile's pooled histograms)")
    kl_median: float | None = Field(description="their median")
    kl_q3: float | None = Field(description="their third quartile")
    kl_unusual_at: float | None = Field(description="their 95th percentile: a checked layer at or above it is flagged "
                                                    "unusual (null below min_unusual_layers layers)")


class CheckQualityDensity(BaseModel):
    sparsity_edges: list[float] = Field(description="the 41 edges of the sparsity bins, over [0, 1]")
    entropy_norm_edges: list[float] = Field(description="the 41 edges of the variance_entropy_norm bins, over "
                                                        "[0, max(1.2, the largest)]")
    counts: list[list[int]] = Field(description="40 x 40: the population's layers per (sparsity bin, "
                                                "variance_entropy_norm bin); layers without either value left out")


class CheckPopulation(BaseModel):
    where: dict[str, Any] | None = Field(description="the selection the population was restricted to (null: every model)")
    n_models: int = Field(description="the population's models")
    n_sample_models: int = Field(description="how many of them are the synthetic sample's (`cnnfilterdb demo`): a "
                                             "population of them is no real one")
    n_layers: int = Field(description="their layers of 3x3 filters")
    n_filters: int = Field(description="their 3x3 filters")
    n_outside: int = Field(description=OUTSIDE_TEXT)
    deciles: list[CheckDecile] = Field(description="per depth decile of the population, in depth order")
    quality_density: CheckQualityDensity = Field(description="the population's layers as a 2-D histogram of sparsity "
                                                             "and variance_entropy_norm (the check figure's background)")


class CheckParameters(BaseModel):
    metric: str = Field(description="the divergence between histograms (kl_sym: the paper's symmetric KL)")
    weights: str = Field(description="how the 9 components' divergences are summed (explained_variance)")
    bins: int = Field(description=f"histogram bins per component (the store's default, {DEFAULT_BINS})")
    range: tuple[float, float] = Field(description=RANGE_TEXT + "; a checked coefficient outside it is counted in the "
                                                                "nearest edge bin")
    unusual_percentile: float = Field(description="a layer is flagged unusual when its kl_to_population is at or above "
                                                  "this percentile of its decile's")
    min_unusual_layers: int = Field(description="... among at least this many population layers of the decile (in a "
                                                "decile of fewer, no layer is flagged unusual: kl_unusual_at null)")
    k: int = Field(description="the nearest models listed, as asked")
    thresholds: dict[str, float | None] = Field(description="the flags' thresholds, as asked: sparsity_gt, "
                                                            "entropy_norm_lt, entropy_norm_gt (null: random_like off)")


class CheckedModelOut(BaseModel):
    name: str = Field(description="the model's name in the report: the request's name, else the file's name "
                                  "without its suffix")
    file: str = Field(description="the uploaded file's name (the upload's filename, without any folder)")
    kind: str = Field(description="the format read, by content: onnx, torch, safetensors or npz")
    sha256: str = Field(description="the SHA-256 of the file's bytes, hex")
    bytes: int = Field(description="the file's size")
    producer: str | None = Field(description="what wrote the file, as it says (ONNX producer); null: not stated")
    op_set: int | None = Field(description="the ONNX opset; null for other formats")
    task: str | None = Field(description="as given in the request (shown, never stored)")
    visual_category: str | None = Field(description="as given in the request")
    training_dataset: str | None = Field(description="as given in the request")
    n_layers: int = Field(description="its layers of 3x3 filters")
    n_filters: int = Field(description="its 3x3 filters")
    sparsity: float | None = Field(description="the model metric (docs/method.md#model-metrics) over its layers" + NULLABLE_METRIC)
    variance_entropy: float | None = Field(description="the model metric (docs/method.md#model-metrics)" + NULLABLE_METRIC)
    variance_entropy_norm: float | None = Field(description="the model metric (docs/method.md#model-metrics)" + NULLABLE_METRIC)
    variance_entropy_clean: float | None = Field(description="the model metric (docs/method.md#model-metrics)" + NULLABLE_METRIC)
    orthogonality: float | None = Field(description="the model metric (docs/method.md#model-metrics)" + NULLABLE_METRIC)
    divergence: float | None = Field(description="the divergence between the pooled histograms of all its layers and "
                                                 "the whole population's")
    percentiles: dict[str, float | None] = Field(description="per model metric and divergence: "
                                                             + CHECK_PERCENTILE_TEXT.format(of="models"))


class CheckLayer(BaseModel):
    layer: int = Field(description="0, 1, ...: the layer's place among the model's 3x3 convolutions")
    name: str = Field(description="the convolution's name in the file")
    conv_depth: int = Field(description=FIELD_DESCRIPTIONS["conv_depth"])
    conv_depth_norm: float = Field(description=FIELD_DESCRIPTIONS["conv_depth_norm"])
    depth_decile: str | None = Field(description="its depth decile (docs/method.md#groupings)")
    n_filters: int = Field(description=FILTER_COUNT_TEXT)
    in_channels: int = Field(description="input channels")
    out_channels: int = Field(description="output channels")
    groups: int = Field(description="convolution groups")
    sparsity: float | None = Field(description=SPARSITY_TEXT)
    variance_entropy: float | None = Field(description=VARIANCE_ENTROPY_TEXT)
    variance_entropy_norm: float | None = Field(description=VARIANCE_ENTROPY_NORM_TEXT)
    variance_entropy_clean: float | None = Field(description=VARIANCE_ENTROPY_CLEAN_TEXT)
    orthogonality: float | None = Field(description=ORTHOGONALITY_TEXT)
    kl_to_population: float | None = Field(description="the divergence between the layer's 9 histograms and the "
                                                       "pooled histograms of the population's layers of its depth "
                                                       "decile (null: the population has none there)")
    kl_unusual_at: float | None = Field(description="its decile's 95th percentile of kl_to_population (the unusual flag's "
                                                    "threshold)")
    population_layers: int = Field(description="the population's layers of its depth decile")
    clipped: int = Field(description="its coefficients outside the basis range, counted in the edge bins")
    percentiles: dict[str, float | None] = Field(description="per layer metric and kl_to_population: "
                                                             + CHECK_PERCENTILE_TEXT.format(of="layers of its decile"))
    flags: list[str] = Field(description="sparse, low_entropy, random_like (the degenerate thresholds), unusual "
                                         "(kl_to_population at or above kl_unusual_at)")


class CheckNearestModel(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_id: int = Field(description=MODEL_ID_TEXT)
    model: str | None = Field(description=MODEL_NAME_TEXT)
    name: str | None = Field(description=FIELD_DESCRIPTIONS["name"] + UNKNOWN)
    task: str | None = Field(description=FIELD_DESCRIPTIONS["task"] + UNKNOWN)
    visual_category: str | None = Field(description=FIELD_DESCRIPTIONS["visual_category"] + UNKNOWN)
    training_dataset: str | None = Field(description=FIELD_DESCRIPTIONS["training_dataset"] + UNKNOWN)
    pretraining_dataset: str | None = Field(description=FIELD_DESCRIPTIONS["pretraining_dataset"] + UNKNOWN)
    producer: str | None = Field(description=FIELD_DESCRIPTIONS["producer"] + UNKNOWN)
    divergence: float = Field(description="the divergence between the checked model's pooled histograms and this "
                                          "one's: smaller is nearer")


class CheckResponse(BaseModel):
    """The answer of POST /v1/check as JSON: ``cnnfilterdb.check.check``'s dict."""
    store_id: str = Field(description="the store compared with (a UUID given when it was created)")
    store_version: int = Field(description=STORE_VERSION_TEXT)
    basis_version: int = Field(description="the global basis the filters were projected on")
    population: CheckPopulation = Field(description="what the model was compared with")
    parameters: CheckParameters = Field(description="how")
    model: CheckedModelOut = Field(description="the checked model: what the file is, its model metrics, their "
                                               "percentiles and its divergence from the population")
    layers: list[CheckLayer] = Field(description="its 3x3 convolutions, in the file's order")
    nearest_models: list[CheckNearestModel] = Field(description="the k population models nearest to it, nearest first")
    clipped: int = Field(description="the checked model's coefficients outside the basis range, counted in the edge bins")
    elapsed_ms: float = Field(description=ELAPSED_MS_TEXT)
