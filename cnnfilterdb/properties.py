"""Model properties: typed metadata a user adds to models (docs/method.md#properties, SPEC 13).

A property is a column of the catalog's ``_models`` beyond the built-in ones (``BUILTIN_MODEL_COLUMNS``),
added by the first label that gives it (``ALTER TABLE``, in the writer's staging catalog) and
versioned as every other metadata column: ``models_at(v)``, ``layers_with_models_at(v)`` and the
Parquet tables show it, NULL for the versions before it had a value. Its SQL type is its type:

    boolean  BOOLEAN    true/false (any case)
    integer  BIGINT     an optional sign and digits
    double   DOUBLE     a finite number (Python's float syntax)
    text     VARCHAR    anything else

What this module decides, once for every front end:
- ``property_name``: a manifest column's name as a property (lower case, each run of characters
  other than a-z, 0-9 one ``_``, no leading or trailing ``_``); an empty name, one starting with a
  digit, or one equal to a built-in field (``RESERVED``) is an error naming the column;
- ``infer_type`` and ``parse_value``: a column's type from its non-empty cells, and a cell's value;
- ``properties_at``: the properties a store version's models have, name -> type, read from the
  catalog's own column types (so a Spark driver's copy of the catalog answers the same);
- ``fold``: the form two categorical values are compared in on write (case, spaces, ``-``, ``_``).
"""
from __future__ import annotations

import math
import re

from .errors import UserError

TYPES = {"boolean": "BOOLEAN", "integer": "BIGINT", "double": "DOUBLE", "text": "VARCHAR"}
TYPE_OF_SQL = {v: k for k, v in TYPES.items()}
# The built-in columns of _models (sql/schema.sql) and of the views; every other _models column is a property.
BUILTIN_MODEL_COLUMNS = (
    "model_id", "model", "name", "task", "task_raw", "visual_category", "training_dataset", "pretraining_dataset",
    "producer", "op_set", "depth", "paper", "accessible", "dataset_url", "total_filters", "filter_share_3x3",
    "n_filters", "n_layers", "source", "sha256", "kernel_counts", "op_counts", "extra", "version_added",
    "version_from", "version_to")
_LAYER_COLUMNS = (
    "layer_id", "conv_depth", "conv_depth_norm", "depth_bin", "filter_id_first", "filter_id_last", "in_channels",
    "out_channels", "groups", "sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean",
    "orthogonality")
# Names a property cannot take: every column of the public tables and every field a query knows
# (depth_decile: SPEC 14's grouping), and the columns of the filters view.
RESERVED = frozenset(BUILTIN_MODEL_COLUMNS + _LAYER_COLUMNS + (
    "sample", "depth_decile", "filter_id", "w", "properties", "version", "label", "value", "group", "all",
    *(f"w{i}" for i in range(9))))
MAX_NAME_CHARS = 63
INT64 = (-(2**63), 2**63 - 1)
NAME = re.compile(r"[a-z][a-z0-9_]{0,62}\Z")
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")  # ASCII digits only: no 1_000, no ١٢
_BOOLEAN = {"true": True, "false": False}


class PropertyError(UserError, ValueError):
    """A property name, type or value that cannot be stored; the message names it and where."""


def property_name(column: str, where: str = "") -> str:
    """The property a manifest column ``column`` becomes (SPEC 13); PropertyError naming it if none."""
    at = f"{where}: " if where else ""
    name = re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")
    shown = repr(column[:80]) + ("..." if len(column) > 80 else "")
    if not name:
        raise PropertyError(f"{at}column {shown} has no letter or digit to name a property by")
    if name[0].isdigit():
        raise PropertyError(f"{at}column {shown} would be the property {name!r}, which starts with a digit; "
                            "rename the column")
    if len(name) > MAX_NAME_CHARS:
        raise PropertyError(f"{at}column {shown} makes a property name of {len(name)} characters, at most "
                            f"{MAX_NAME_CHARS}")
    if name in RESERVED:
        raise PropertyError(f"{at}column {shown} would be the property {name!r}, the name of a built-in field; "
                            "rename the column")
    return name


def check_name(name: str, where: str = "") -> str:
    """``name`` if it is a valid property name as given (``--set NAME=...``, ``--type NAME=...``)."""
    at = f"{where}: " if where else ""
    if not isinstance(name, str) or not NAME.match(name):
        raise PropertyError(f"{at}{name!r} is not a property name: lower-case letters, digits and _, starting "
                            f"with a letter, at most {MAX_NAME_CHARS} characters")
    if name in RESERVED:
        raise PropertyError(f"{at}{name!r} is a built-in field, not a property; a label sets the built-in fields "
                            "task, visual_category, training_dataset, pretraining_dataset, name, paper, accessible, "
                            "dataset_url and producer (their flags, or --set)")
    return name


def check_type(type_name: str, where: str = "") -> str:
    if type_name not in TYPES:
        raise PropertyError(f"{where + ': ' if where else ''}unknown type {type_name!r}; the types: {', '.join(TYPES)}")
    return type_name


def _is_double(text: str) -> bool:
    """A finite decimal number written in ASCII digits (not Python's wider float syntax), that a
    double holds (1e-400 would be 0: refused, as 1e400 is)."""
    if not _DECIMAL.match(text) or not math.isfinite(v := float(text)):
        return False
    return v != 0 or not re.search(r"[1-9]", re.split(r"[eE]", text)[0])


def _is_int64(text: str) -> bool:
    return bool(_INTEGER.match(text)) and len(text) <= 20 and INT64[0] <= int(text) <= INT64[1]


def infer_type(cells: list[str]) -> str | None:
    """The type of a column of non-empty, stripped cells: boolean if all are true/false (any
    case), integer if all are integers, double if all are finite numbers, else text; None if
    there are none."""
    if not cells:
        return None
    if all(c.lower() in _BOOLEAN for c in cells):
        return "boolean"
    if all(_is_int64(c) for c in cells):  # beyond 64 bits: a double
        return "integer"
    if all(_is_double(c) for c in cells):
        return "double"
    return "text"


def parse_value(text: str, type_name: str, where: str):
    """The value of the stripped cell ``text`` as a property of ``type_name``; PropertyError saying
    where if it is not one."""
    if type_name == "text":
        return text
    if type_name == "boolean":
        if text.lower() in _BOOLEAN:
            return _BOOLEAN[text.lower()]
    elif type_name == "integer":
        if _INTEGER.match(text) and len(text) <= 20 and INT64[0] <= int(text) <= INT64[1]:
            return int(text)
    elif _is_double(text):
        return float(text)
    raise PropertyError(f"{where}: {text[:80]!r} is not {'an' if type_name == 'integer' else 'a'} {type_name}")


def check_typed(value, type_name: str, where: str):
    """A Python value given as a property's (``db.label(..., set={...})``): the value, or PropertyError."""
    ok = {"boolean": isinstance(value, bool),
          "integer": isinstance(value, int) and not isinstance(value, bool) and INT64[0] <= value <= INT64[1],
          "double": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
          "text": isinstance(value, str)}[type_name]
    if not ok:
        raise PropertyError(f"{where}: {value!r} is not {'an' if type_name == 'integer' else 'a'} {type_name}")
    return float(value) if type_name == "double" else value


def type_of_value(value) -> str:
    """The type a Python value would make a new property (bool, int, float, str)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    return "text"


def properties_at(cur, version: int | None = None) -> dict[str, str]:
    """The properties of the models of store version ``version`` (default: the current views'),
    name -> type ("boolean", "integer", "double", "text"), in the order they were added: the
    columns of ``layers_with_models_at(v)`` that are no built-in field (a Spark driver's copy of
    the catalog holds that relation only)."""
    relation = "layers_with_models" if version is None else f"layers_with_models_at({int(version)})"
    cols = cur.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return {name: TYPE_OF_SQL.get(str(typ), "text") for name, typ, *_ in cols if name not in RESERVED}


def nearest_property(name: str, existing: dict[str, str]) -> str | None:
    """The existing property a new name ``name`` is likely a typo of (difflib's ratio at least
    0.85, or equal but for _), if any."""
    import difflib

    squashed = {k.replace("_", ""): k for k in existing}
    if name.replace("_", "") in squashed:
        return squashed[name.replace("_", "")]
    letters = re.sub(r"[0-9]", "", name)
    # names that differ in their digits only (top1_acc, top5_acc; robust_l2, robust_l1) are a series, not typos
    close = [k for k in difflib.get_close_matches(name, list(existing), 3, cutoff=0.85)
             if re.sub(r"[0-9]", "", k) != letters]
    return close[0] if close else None


def fold(value: str) -> str:
    """A categorical value as write checks compare it: NFKC-normalized (full-width letters as
    ASCII), case-folded (ß as ss), without spaces, _ and dashes of any kind (-, U+2011, U+2212, ...),
    without invisible format characters (zero-width spaces, soft hyphens, byte-order marks) and
    combining marks (Turkish İ as I): two values equal so are one category spelled twice."""
    import unicodedata

    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", value).casefold())
    return "".join(c for c in text if not (c.isspace() or c in _BLANKS or
                                           unicodedata.category(c) in ("Cf", "Mn", "Pd")))


# Characters that show nothing though Unicode calls them letters or symbols (Hangul fillers, the
# blank Braille pattern, a Mongolian vowel separator), and the dashes a category misses: folded away.
_BLANKS = frozenset("_-\u2212\u115f\u1160\u3164\uffa0\u2800\u180e")


def ident(name: str) -> str:
    """A field name (a built-in from a fixed list, or a property matching NAME) as an SQL identifier:
    quoted, since a property may be named like an SQL keyword (``order``)."""
    return f'"{name}"'
