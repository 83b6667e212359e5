"""/v1/models, /v1/models/{model_id}, /v1/models/{model_id}/layers."""
from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request

from cnnfilterdb.limits import MAX_ID
from cnnfilterdb.properties import properties_at
from cnnfilterdb.requests import parse_where
from cnnfilterdb.results import MODEL_COLUMNS, check_listing
from cnnfilterdb.selection import FILTER_FIELDS, echo

from .. import queries
from ..catalog import LiveCatalog
from ..deps import get_catalog, get_settings, respond
from ..errors import ApiError, not_found
from ..jsonable import jsonable, parse_json_column
from ..params import MODEL_ID, WHERE_TEXT
from ..schemas import FIELD_DESCRIPTIONS, Layer, LayerList, Model, ModelPage, error_responses
from ..settings import Settings

router = APIRouter(tags=["models"], responses=error_responses(400, 404, 422, 503,
                                                             said={404: "Not found: no model of that id"}))


def _values(field: str):
    """A query parameter of /v1/models that filters on a models column (queries.FILTER_COLUMNS)."""
    return Query([], description=f"{FIELD_DESCRIPTIONS[field]}. Keeps the models with this value; repeat the "
                                 "parameter for several (any of them)")


_BUILT_IN = frozenset(MODEL_COLUMNS)


def model_out(row: dict) -> Model:
    """A row of queries.model_page (results.MODEL_COLUMNS, then the properties) as a Model: the
    properties under ``properties``."""
    out = {k: v for k, v in row.items() if k in _BUILT_IN}
    out["extra"] = parse_json_column(out["extra"])
    out["kernel_counts"] = parse_json_column(out["kernel_counts"]) or {}
    out["op_counts"] = parse_json_column(out["op_counts"]) or {}
    out["properties"] = {k: v for k, v in row.items() if k not in _BUILT_IN}
    return Model(**jsonable(out))


def layer_out(row: dict) -> Layer:
    return Layer(**jsonable(row))


@router.get("/v1/models", response_model=ModelPage, summary="A page of models, filtered by their labels and a where",
            responses=error_responses(404, said={404: "empty_selection: a label value, or a text value of where, no "
                                                      "model has (the message suggests the nearest values the models "
                                                      "have)"}))
def list_models(
    request: Request,
    limit: int | None = Query(None, ge=1, description="models per page (default and maximum: page_default and "
                                                      "page_max in GET /v1/stats limits; a larger limit is capped)"),
    after: int | None = Query(None, ge=-1, le=MAX_ID, description="the page of models with model_id > after: give "
                                                                      "the `next` link of the previous page"),
    catalog: LiveCatalog = Depends(get_catalog),
    settings: Settings = Depends(get_settings),
    task: list[str] = _values("task"), task_raw: list[str] = _values("task_raw"),
    visual_category: list[str] = _values("visual_category"), training_dataset: list[str] = _values("training_dataset"),
    pretraining_dataset: list[str] = _values("pretraining_dataset"), name: list[str] = _values("name"),
    model: list[str] = _values("model"), producer: list[str] = _values("producer"),
    paper: list[str] = _values("paper"), accessible: list[str] = _values("accessible"),
    where: str | None = Query(None, description=f"the models selected by {WHERE_TEXT}, a model property included "
                                                "(GET /v1/fields lists them), e.g. {\"robust\": true, "
                                                "\"clean_accuracy\": {\"gte\": 80}}; a condition on a layer field "
                                                "keeps the models with such a layer. Combines with the label "
                                                "parameters (both must hold)"),
):
    """The models of the store with their metadata, in model_id order, a page at a time. Each label
    parameter keeps the models with one of its values (`?task=Classification&task=GAN`); several
    parameters must all hold. `total` counts every matching model; `next` is the URL of the next page
    (null on the last), stable while models are added. A value no model has is a 404 `empty_selection`
    suggesting the nearest values (`?task=gan`: did you mean 'GAN'?); values the models have that
    together select none are an empty page. `where` selects as the analyses' `where` does, with the
    same errors (an unknown field a 400 suggesting the nearest, a value of the wrong type a 422, a
    text value no model has a 404). Each model carries its `properties`."""
    limit = min(limit or settings.page_default, settings.page_max)  # the response shows the limit used
    selection = parse_where(where)
    given = {"task": task, "task_raw": task_raw, "visual_category": visual_category,
             "training_dataset": training_dataset, "pretraining_dataset": pretraining_dataset, "name": name,
             "model": model, "producer": producer, "paper": paper, "accessible": accessible}
    with catalog.cursor() as cur:
        if (unknown := queries.unknown_value(cur, given)) is not None:
            raise _unknown_value(*unknown, queries.store_version(cur))
        properties = check_listing(cur, selection, None)  # where's fields and text values, against the store
        total = queries.count_models(cur, selection, properties, given)
        rows = queries.model_page(cur, selection, properties, given, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = None
    if more:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
        query.append(("after", str(rows[-1]["model_id"])))
        nxt = f"{request.url.path}?{urlencode(query)}"
    return respond(ModelPage(total=total, limit=limit, items=[model_out(r) for r in rows], next=nxt))


def _unknown_value(column: str, value: str, near: list[str], version: int) -> ApiError:
    """The 404 of a label value no model has, worded as the analyses' (selection.check_values)."""
    if near:
        hint = f"; did you mean {' or '.join(map(repr, near))}?"
    else:
        hint = (f"; list the values of {column} with SELECT DISTINCT {column} FROM models (POST /v1/sql)"
                + (" or GET /v1/fields" if column in FILTER_FIELDS else ""))
    return ApiError(404, "empty_selection", f"{column}: no model in the store (store version {version}) has {column} "
                                            f"{echo(value)}{hint}")


@router.get("/v1/models/{model_id}", response_model=Model, summary="One model and its metadata")
def get_model(model_id: int = MODEL_ID, catalog: LiveCatalog = Depends(get_catalog)):
    """A model's labels (task, visual category, datasets, architecture, ...), where it came from, the
    counts of its 3x3 filters and layers, and its properties."""
    with catalog.cursor() as cur:
        row = queries.model(cur, model_id, properties_at(cur))
    if row is None:
        raise not_found("model", model_id)
    return respond(model_out(row))


@router.get("/v1/models/{model_id}/layers", response_model=LayerList,
            summary="A model's 3x3 convolution layers with their quality metrics")
def model_layers(model_id: int = MODEL_ID, catalog: LiveCatalog = Depends(get_catalog)):
    """Every 3x3 convolution layer of the model, first to last, each with its depth, its range of
    filter ids and its quality metrics (sparsity, variance entropy, orthogonality)."""
    with catalog.cursor() as cur:
        if not queries.model_exists(cur, model_id):
            raise not_found("model", model_id)
        rows = queries.model_layers(cur, model_id)
    return respond(LayerList(model_id=model_id, items=[layer_out(r) for r in rows]))
