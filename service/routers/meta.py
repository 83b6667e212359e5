"""/health, /v1/stats, /v1/fields."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from cnnfilterdb.properties import properties_at
from cnnfilterdb.selection import GROUP_FIELDS, LAYER_GROUP_FIELDS

from .. import queries
from ..catalog import LiveCatalog
from ..deps import get_catalog, get_settings, get_sql_pool, respond
from ..jsonable import jsonable
from ..schemas import FieldInfo, Fields, Health, Limits, Stats, error_responses
from ..settings import LIMITS, Settings
from ..usersql.pool import SqlPool

router = APIRouter(responses=error_responses(503))

# The fields a selection can group on, by level (columns of layers_with_models).
MODEL_FIELDS = [f for f in GROUP_FIELDS if f not in LAYER_GROUP_FIELDS]


@router.get("/health", response_model=Health, tags=["meta"], summary="Whether the service can read its store")
def health(catalog: LiveCatalog = Depends(get_catalog)):
    """`ok` with the version of the global basis when the store is readable; a 503 otherwise (no
    store yet, or a damaged one)."""
    with catalog.cursor() as cur:
        version = queries.basis_version(cur)
    return respond(Health(status="ok", basis_version=version))


@router.get("/v1/stats", response_model=Stats, tags=["meta"],
            summary="The store's counts and version, its basis, and the service's limits")
def stats(catalog: LiveCatalog = Depends(get_catalog), settings: Settings = Depends(get_settings),
          sql_pool: SqlPool = Depends(get_sql_pool)):
    """How many models, layers, filters and shards the store holds, its current version and last
    ingest, the global PCA basis in brief, and every limit the service enforces (page sizes, caps,
    timeouts, concurrency) and every bound its engine puts on a request, as it runs with them."""
    with catalog.cursor() as cur:
        counts = queries.store_counts(cur)
        basis = queries.basis_summary(cur)
    return respond(Stats(**{**counts, "filters": int(counts["filters"]), "shard_bytes": int(counts["shard_bytes"]),
                            "last_ingest_at": jsonable(counts["last_ingest_at"])}, basis=basis,
                         limits=Limits(**settings.model_dump(include=set(LIMITS)), sql_sandbox=sql_pool.sandbox)))


@router.get("/v1/fields", response_model=Fields, tags=["meta"],
            summary="The fields a selection can filter or group on, with their values")
def fields(catalog: LiveCatalog = Depends(get_catalog), settings: Settings = Depends(get_settings)):
    """Every field a selection (`where`) can filter on and a `group_by` can group on: the built-in
    model fields, then the layer fields, each with its type, its distinct values in order and how
    many models, layers and filters hold each value (the first field_values_max values); then the
    model properties of the current store version (`property: true`, level model): boolean and
    text ones with their values as the built-in fields (`groupable: true`), integer and double
    ones with their `min` and `max` and no values (`groupable: false`: where selects them by range,
    `{"gte": .., "lte": ..}`)."""
    out = []
    limit = settings.field_values_max

    def values_of(rows):
        return [{"value": jsonable(v), "models": m, "layers": l, "filters": int(f or 0)} for v, m, l, f in rows[:limit]]

    with catalog.cursor() as cur:
        for level, names in (("model", MODEL_FIELDS), ("layer", LAYER_GROUP_FIELDS)):
            for name in names:  # from the lists above, never from the request
                rows, n_distinct, typ = queries.field_values(cur, name, limit)
                out.append(FieldInfo(name=name, level=level, type=typ or "NULL", property=False, groupable=True,
                                     n_distinct=n_distinct, values=values_of(rows), min=None, max=None,
                                     truncated=len(rows) > limit))
        # The store's own column names (properties_at), quoted in the SQL (properties.ident).
        for f in queries.property_fields(cur, properties_at(cur), limit):
            out.append(FieldInfo(name=f["name"], level="model", type=f["type"], property=True,
                                 groupable=f["groupable"], n_distinct=f["n_distinct"], values=values_of(f["rows"]),
                                 min=jsonable(f["min"]), max=jsonable(f["max"]), truncated=len(f["rows"]) > limit))
    return respond(Fields(fields=out))
