"""/health, /v1/stats, /v1/fields."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from cnnfilterdb.selection import GROUP_FIELDS, LAYER_GROUP_FIELDS
from cnnfilterdb.store import SAMPLE_MODELS

from ..catalog import LiveCatalog
from ..deps import get_catalog, get_settings, get_sql_pool, respond
from ..jsonable import jsonable
from ..schemas import ErrorResponse, FieldInfo, Fields, Health, Limits, Stats
from ..settings import LIMITS, Settings
from ..usersql.pool import SqlPool

router = APIRouter(responses={503: {"model": ErrorResponse}})

# The fields a selection can group on, by level (columns of layers_with_models).
MODEL_FIELDS = [f for f in GROUP_FIELDS if f not in LAYER_GROUP_FIELDS]


@router.get("/health", response_model=Health, tags=["meta"])
def health(catalog: LiveCatalog = Depends(get_catalog)):
    with catalog.cursor() as cur:
        row = cur.execute("SELECT max(version) FROM basis").fetchone()
    return respond(Health(status="ok", basis_version=row[0]))


@router.get("/v1/stats", response_model=Stats, tags=["meta"])
def stats(catalog: LiveCatalog = Depends(get_catalog), settings: Settings = Depends(get_settings),
          sql_pool: SqlPool = Depends(get_sql_pool)):
    with catalog.cursor() as cur:
        sid, version, models, sample_models, layers, filters, shards, shard_bytes, ingests, last = cur.execute(f"""
            SELECT (SELECT store_id FROM _store), (SELECT coalesce(max(version), 0) FROM _versions),
                   (SELECT count(*) FROM models), (SELECT count(*) FROM models WHERE {SAMPLE_MODELS}),
                   (SELECT count(*) FROM layers),
                   (SELECT coalesce(sum(n_filters), 0) FROM layers), (SELECT count(*) FROM _shards),
                   (SELECT coalesce(sum(bytes), 0) FROM _shards), (SELECT count(*) FROM _ingests),
                   (SELECT max(committed_at) FROM _ingests)""").fetchone()
        b = cur.execute("SELECT version, n_filters, explained_variance_ratio, range_min, range_max FROM basis").fetchone()
    basis = None if b is None else {"version": b[0], "n_filters": b[1], "explained_variance_ratio": b[2],
                                    "range": (b[3], b[4])}
    return respond(Stats(store_id=sid, store_version=version, models=models, sample_models=sample_models, layers=layers, filters=int(filters), shards=shards, shard_bytes=int(shard_bytes),
                 ingests=ingests, last_ingest_at=jsonable(last), basis=basis,
                 limits=Limits(**settings.model_dump(include=set(LIMITS)), sql_sandbox=sql_pool.sandbox)))


@router.get("/v1/fields", response_model=Fields, tags=["meta"])
def fields(catalog: LiveCatalog = Depends(get_catalog), settings: Settings = Depends(get_settings)):
    """Every field a selection can filter or group on, with its distinct values and their counts."""
    out = []
    with catalog.cursor() as cur:
        for level, names in (("model", MODEL_FIELDS), ("layer", LAYER_GROUP_FIELDS)):
            for name in names:
                # Field names come from the lists above, never from the request.
                order = "min(conv_depth_norm)" if name == "depth_bin" else "value"
                rows = cur.execute(f"""
                    SELECT {name} AS value, count(DISTINCT model_id), count(*), sum(n_filters)
                    FROM layers_with_models GROUP BY {name} ORDER BY {order} NULLS LAST
                    LIMIT {settings.field_values_max + 1}""").fetchall()
                n_distinct = cur.execute(f"SELECT count(DISTINCT {name}) FROM layers_with_models").fetchone()[0]
                typ = cur.execute(f"SELECT typeof({name}) FROM layers_with_models LIMIT 1").fetchone()
                values = [{"value": jsonable(v), "models": m, "layers": l, "filters": int(f or 0)}
                          for v, m, l, f in rows[: settings.field_values_max]]
                out.append(FieldInfo(name=name, level=level, type=typ[0] if typ else "NULL", n_distinct=n_distinct,
                                     values=values, truncated=len(rows) > settings.field_values_max))
    return respond(Fields(fields=out))
