"""DuckDB values to JSON values. NaN and +-Inf become null (JSON has no such numbers); dates and
times ISO 8601; decimals floats; bytes hex; MAPs objects; nested lists and structs recursively."""
from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any


def jsonable(v: Any) -> Any:
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
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist"):  # numpy scalars and arrays
        return jsonable(v.tolist())
    return str(v)


def parse_json_column(v: Any) -> Any:
    """A JSON column as returned by DuckDB (a string) to its value."""
    if v is None:
        return None
    return json.loads(v) if isinstance(v, str) else v
