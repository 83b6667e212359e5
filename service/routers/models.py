"""/v1/models, /v1/models/{model_id}, /v1/models/{model_id}/layers."""
from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request

from ..catalog import LiveCatalog
from ..deps import get_catalog, get_settings, respond, rows_as_dicts
from ..errors import not_found
from ..jsonable import jsonable, parse_json_column
from ..schemas import ErrorResponse, Layer, LayerList, Model, ModelPage
from ..settings import Settings

router = APIRouter(tags=["models"], responses={404: {"model": ErrorResponse}, 400: {"model": ErrorResponse},
                                               422: {"model": ErrorResponse}})

# Query parameters of /v1/models that filter on a models column (repeat one for several values).
FILTER_COLUMNS = ["task", "task_raw", "visual_category", "training_dataset", "pretraining_dataset", "name",
                  "model", "producer", "paper", "accessible"]

MODEL_COLUMNS = """model_id, model, name, task, task_raw, visual_category, training_dataset, pretraining_dataset,
    producer, op_set, depth, paper, accessible, dataset_url, total_filters, filter_share_3x3, n_filters, n_layers,
    source, sha256, sample, version_added,
    -- MAPs as JSON text: parsed in Python 2x faster than DuckDB's conversion of MAP values
    kernel_counts::JSON::VARCHAR AS kernel_counts, op_counts::JSON::VARCHAR AS op_counts, extra::VARCHAR AS extra"""
LAYER_COLUMNS = """l.layer_id, l.model_id, m.model, l.conv_depth, l.conv_depth_norm, l.depth_bin, l.filter_id_first,
    l.filter_id_last, l.n_filters, l.in_channels, l.out_channels, l.groups, l.sparsity, l.variance_entropy,
    l.variance_entropy_norm, l.variance_entropy_clean, l.orthogonality"""


def model_out(row: dict) -> Model:
    row = dict(row)
    row["extra"] = parse_json_column(row["extra"])
    row["kernel_counts"] = parse_json_column(row["kernel_counts"]) or {}
    row["op_counts"] = parse_json_column(row["op_counts"]) or {}
    return Model(**jsonable(row))


def layer_out(row: dict) -> Layer:
    return Layer(**jsonable(row))


@router.get("/v1/models", response_model=ModelPage)
def list_models(
    request: Request,
    limit: int | None = Query(None, ge=1, description="page size; capped at the maximum in /v1/stats limits"),
    after: int | None = Query(None, ge=-1, le=2**31 - 1, description="return models with model_id > after (from `next`)"),
    catalog: LiveCatalog = Depends(get_catalog),
    settings: Settings = Depends(get_settings),
    task: list[str] = Query([]), task_raw: list[str] = Query([]),
    visual_category: list[str] = Query([]), training_dataset: list[str] = Query([]),
    pretraining_dataset: list[str] = Query([]), name: list[str] = Query([]),
    model: list[str] = Query([]), producer: list[str] = Query([]),
    paper: list[str] = Query([]), accessible: list[str] = Query([]),
):
    """Models, filtered by any categorical field (`?task=Classification&task=GAN`), in model_id order."""
    limit = min(limit or settings.page_default, settings.page_max)  # the response shows the limit used
    given = {"task": task, "task_raw": task_raw, "visual_category": visual_category,
             "training_dataset": training_dataset, "pretraining_dataset": pretraining_dataset, "name": name,
             "model": model, "producer": producer, "paper": paper, "accessible": accessible}
    where, params = [], []
    for column in FILTER_COLUMNS:  # column names from the fixed list; values bound as parameters
        values = given[column]
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    cond = " AND ".join(where) or "true"
    with catalog.cursor() as cur:
        total = cur.execute(f"SELECT count(*) FROM models WHERE {cond}", params).fetchone()[0]
        page_cond = cond + (" AND model_id > ?" if after is not None else "")
        page_params = params + ([after] if after is not None else [])
        cur.execute(f"SELECT {MODEL_COLUMNS} FROM models WHERE {page_cond} ORDER BY model_id LIMIT ?",
                    page_params + [limit + 1])
        rows = rows_as_dicts(cur)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = None
    if more:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
        query.append(("after", str(rows[-1]["model_id"])))
        nxt = f"{request.url.path}?{urlencode(query)}"
    return respond(ModelPage(total=total, limit=limit, items=[model_out(r) for r in rows], next=nxt))


@router.get("/v1/models/{model_id}", response_model=Model)
def get_model(model_id: int = Path(..., ge=0, le=2**31 - 1), catalog: LiveCatalog = Depends(get_catalog)):
    with catalog.cursor() as cur:
        cur.execute(f"SELECT {MODEL_COLUMNS} FROM models WHERE model_id = ?", [model_id])
        rows = rows_as_dicts(cur)
    if not rows:
        raise not_found("model", model_id)
    return respond(model_out(rows[0]))


@router.get("/v1/models/{model_id}/layers", response_model=LayerList)
def model_layers(model_id: int = Path(..., ge=0, le=2**31 - 1), catalog: LiveCatalog = Depends(get_catalog)):
    with catalog.cursor() as cur:
        if cur.execute("SELECT count(*) FROM models WHERE model_id = ?", [model_id]).fetchone()[0] == 0:
            raise not_found("model", model_id)
        cur.execute(f"""SELECT {LAYER_COLUMNS} FROM layers l JOIN models m USING (model_id)
                        WHERE l.model_id = ? ORDER BY l.filter_id_first""", [model_id])
        rows = rows_as_dicts(cur)
    return respond(LayerList(model_id=model_id, items=[layer_out(r) for r in rows]))
