"""Query and path parameters that several routes take, declared (and documented) once."""
from __future__ import annotations

from fastapi import Path, Query

from cnnfilterdb.limits import MAX_ID
from cnnfilterdb.requests import AS_OF_TEXT, bounds_of

WHERE_TEXT = ('a selection as JSON, the same object as the `where` of the analysis bodies (field -> value, '
              '[values] or {"gte", "gt", "lte", "lt"}), e.g. {"task": ["Classification"]}')
AS_OF = Query(None, ge=1, le=MAX_ID, description=AS_OF_TEXT)
# The examples fill /docs' "Try it out": ids every store with a model has.
_FIRST = {"first": {"value": 0}}
MODEL_ID = Path(..., ge=0, le=MAX_ID, openapi_examples=_FIRST, description="the model's id (model_id in GET /v1/models)")
LAYER_ID = Path(..., ge=0, le=MAX_ID, openapi_examples=_FIRST,
                description="the layer's id (layer_id in GET /v1/models/{model_id}/layers)")
FILTER_ID = Path(..., ge=0, le=2**63 - 1, openapi_examples=_FIRST,
                 description="the filter's id (a layer holds the filters filter_id_first..filter_id_last)")


_SCHEMA_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def query(request_type, name: str):
    """A query parameter of a GET analysis, declared from the engine's request type
    (cnnfilterdb/requests.py): its default, bounds and description written once, there. The
    bounds are documented here and checked when the request is built (the request type's words,
    as for a POST body and a Python call), not by FastAPI first."""
    field = request_type.model_fields[name]
    bounds = {_SCHEMA_BOUNDS[k]: v for k, v in bounds_of(field).items()}
    return Query(field.default, description=field.description, json_schema_extra=bounds or None)
