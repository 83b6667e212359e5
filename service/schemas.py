"""Pydantic models of every request and response of the HTTP API."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class Limits(BaseModel):
    sql_timeout_s: float
    sql_default_rows: int
    sql_max_rows: int
    page_max: int
    filters_json_max: int


class Stats(BaseModel):
    models: int
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


class SqlRequest(BaseModel):
    sql: str = Field(min_length=1, max_length=100_000, description="one read-only statement (SELECT)")
    params: list[Any] = Field(default_factory=list, description="values for ? or $n placeholders")
    max_rows: int | None = Field(None, ge=0, description="row cap; default, and ceiling it is capped at, in /v1/stats limits")


class SqlResponse(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool = Field(description="true when the result had more than max_rows rows")
    max_rows: int
    elapsed_ms: float
