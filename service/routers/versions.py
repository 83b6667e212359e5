"""GET /v1/versions: the store versions, each commit's number, time, changes and basis."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from cnnfilterdb.store import list_versions, store_id

from ..catalog import LiveCatalog
from ..deps import get_catalog, respond
from ..jsonable import jsonable
from ..schemas import ErrorResponse, StoreVersion, Versions

router = APIRouter(tags=["meta"], responses={503: {"model": ErrorResponse}})


@router.get("/v1/versions", response_model=Versions)
def versions(catalog: LiveCatalog = Depends(get_catalog)):
    """Every store version, oldest first; any not compacted can be read with `as_of`."""
    with catalog.cursor() as cur:
        rows = list_versions(cur)
        sid = store_id(cur)
    current = rows[-1]["version"] if rows else 0
    return respond(Versions(store_id=sid, current=current, versions=[StoreVersion(**jsonable(r)) for r in rows]))
