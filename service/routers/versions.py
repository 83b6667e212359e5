"""GET /v1/versions: the store versions, each commit's number, time, changes and basis."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from cnnfilterdb.catalog import list_versions, store_id

from ..catalog import LiveCatalog
from ..deps import get_catalog, respond
from ..jsonable import jsonable
from ..schemas import StoreVersion, Versions, error_responses

router = APIRouter(tags=["meta"], responses=error_responses(503))


@router.get("/v1/versions", response_model=Versions, summary="Every version of the store, oldest first")
def versions(catalog: LiveCatalog = Depends(get_catalog)):
    """Each commit to the store (an ingest, a relabelling, a removal) is a version: its number,
    time, what it changed and the counts after it. Any version not compacted can be read again by
    passing it as `as_of` to the analysis, export and figure endpoints; cite a result by `store_id`
    and version."""
    with catalog.cursor() as cur:
        rows = list_versions(cur)
        sid = store_id(cur)
    current = rows[-1]["version"] if rows else 0
    return respond(Versions(store_id=sid, current=current, versions=[StoreVersion(**jsonable(r)) for r in rows]))
