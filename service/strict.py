"""Strict requests: a query parameter or a body field the endpoint does not declare is a 400
naming it and the known ones, never silently ignored (a typo such as ``groupby`` would otherwise
give an ungrouped answer). Query parameters: an app-wide dependency reads the matched route's
declared parameters (FastAPI's own dependant), so there is one check for every endpoint. Body
fields: request models forbid extra keys (``StrictModel``); errors.py words the message from the
route's body model (``errors.body_fields``), and does not import this module."""
from __future__ import annotations

import json
from types import UnionType
from typing import Union, get_args, get_origin

from fastapi import Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from cnnfilterdb.selection import echo, nearest

from .errors import ApiError


class StrictJsonRequest(Request):
    """A request whose JSON body may not name a key twice in one object: json.loads would keep
    the last ({"group_by": "task", "group_by": "model"} grouped by model, silently)."""

    async def json(self):
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=_unique_keys)
        return self._json


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:  # an HTTPException: FastAPI passes it through its body parsing
            raise HTTPException(400, f"the request body names {echo(key)} twice in one object")
        seen.add(key)
    return dict(pairs)


class StrictJsonRoute(APIRoute):
    """The route class of the routers that take a JSON body (FastAPI's custom-route pattern)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict_handler(request: Request):
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_handler


class StrictModel(BaseModel):
    """A request body: unknown keys are an error."""
    model_config = ConfigDict(extra="forbid")


def declared_query_parameters(route) -> list[str]:
    """The query parameters a route declares, its dependencies' included, in declaration order."""
    def walk(dependant) -> list[str]:
        names = [p.alias for p in dependant.query_params]
        for sub in dependant.dependencies:
            names += walk(sub)
        return names

    dependant = getattr(route, "dependant", None)
    return list(dict.fromkeys(walk(dependant))) if dependant is not None else []


def list_query_parameters(route) -> set[str]:
    """The query parameters of a route that take several values (``task=a&task=b``)."""
    def walk(dependant) -> set[str]:
        names = {p.alias for p in dependant.query_params if _is_sequence(p.field_info.annotation)}
        for sub in dependant.dependencies:
            names |= walk(sub)
        return names

    dependant = getattr(route, "dependant", None)
    return walk(dependant) if dependant is not None else set()


def _is_sequence(annotation) -> bool:
    if get_origin(annotation) in (list, tuple, set, frozenset):
        return True
    return any(_is_sequence(a) for a in get_args(annotation) if a is not type(None)) \
        if get_origin(annotation) in (Union, UnionType) else False


def reject_unknown_query_parameters(request: Request) -> None:
    route = request.scope.get("route")
    if route is None or not getattr(route, "include_in_schema", True):  # the dashboard's pages
        return
    known = declared_query_parameters(route)
    unknown = sorted(set(request.query_params) - set(known))
    if unknown:
        near = nearest(unknown[0], known)
        hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
        raise ApiError(400, "unknown_parameter", f"unknown query parameter(s) {', '.join(echo(u) for u in unknown[:10])}{hint}; "
                                                 + (f"known: {', '.join(known)}" if known else "this endpoint takes none"))
    # A parameter of one value given twice (as_of=3&as_of=2) would silently take the last.
    repeated = [name for name in dict.fromkeys(request.query_params)
                if len(request.query_params.getlist(name)) > 1 and name not in list_query_parameters(route)]
    if repeated:
        raise ApiError(400, "repeated_parameter", f"query parameter(s) given more than once: "
                                                  f"{', '.join(echo(r) for r in repeated[:10])}; each takes one value")
