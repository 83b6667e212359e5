"""DuckDB values to JSON values. NaN and +-Inf become null (JSON has no such numbers); dates and
times ISO 8601 (with their offset when timezone-aware); decimals floats; bytes hex; MAPs objects;
nested lists and structs recursively, at most MAX_DEPTH levels deep."""
from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any

# Deeper values cannot be answered anyway: pydantic's JSON serializer stops near 255 levels (a
# response model adds a few). The cap also bounds the recursion below.
MAX_DEPTH = 200


class NestingError(ValueError):
    """A value nested more than MAX_DEPTH levels deep: a client's error (its query or parameters),
    for the caller to answer with a 400."""


def jsonable(v: Any) -> Any:
    """``v`` as a JSON value; raises NestingError if its lists, structs and maps nest more than
    MAX_DEPTH levels deep (the levels of ``v`` itself count: a row as a list is one)."""
    return _jsonable(v, MAX_DEPTH)


def _jsonable(v: Any, levels: int) -> Any:
    """``levels``: how many more levels of lists, structs and maps ``v`` may hold."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, decimal.Decimal):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (dict, list, tuple)) and levels == 0:
        raise NestingError(f"a value nested more than {MAX_DEPTH} levels deep (lists, structs, maps) "
                           "has no JSON form in this API")
    if isinstance(v, dict):
        return {str(k): _jsonable(x, levels - 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, levels - 1) for x in v]
    if hasattr(v, "tolist"):  # numpy scalars and arrays
        return _jsonable(v.tolist(), levels)
    return str(v)


def parse_json_column(v: Any) -> Any:
    """A JSON column as returned by DuckDB (a string) to its value."""
    if v is None:
        return None
    return json.loads(v) if isinstance(v, str) else v
