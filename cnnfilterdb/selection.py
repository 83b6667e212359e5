"""A selection of layers (`where`) and their grouping (`group_by`), as parameterized SQL.

Every field a query can filter or group on is an attribute of a layer or of its model (docs/method.md#groupings),
so a selection is a set of layers. ``where`` maps a field to a value, a list of values, or an
object of bounds {"gte", "gt", "lte", "lt"}; values are always bound as parameters. Field names
are the built-in ones below or the model properties of the store version asked (properties.py):
a request's grammar is checked without the store (a name not built in must be a well-formed
property name, ``properties.NAME``), and again with the store's properties and their types when
the query runs (``where_sql(where, properties)``), so a name reaches SQL only if the store has it,
quoted (``properties.ident``: a property may be named like an SQL keyword).
"""
from __future__ import annotations

import difflib
import operator
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import UserError
from .limits import ECHO_CHARS
from .properties import NAME as PROPERTY_NAME
from .properties import RESERVED, ident, properties_at

GROUP_FIELDS = ["task", "visual_category", "training_dataset", "pretraining_dataset", "name", "model",
                "model_id", "producer", "conv_depth", "layer_id", "depth_bin", "depth_decile", "sample", "version_added"]
# sample: a model of the synthetic sample (`cnnfilterdb demo`); version_added: the store version
# that ingested the model; source: the file it came from; sha256: that file's.
FILTER_FIELDS = GROUP_FIELDS + ["task_raw", "conv_depth_norm", "source", "sha256"]
# What each field means: the descriptions of `where`'s properties (requests.Where), of the query
# parameters of GET /v1/models and of the models' columns.
FIELD_DESCRIPTIONS = {
    "task": "the task the model was trained for, e.g. Classification (every label containing Segmentation "
            "is stored as Segmentation, the source's label in task_raw)",
    "task_raw": "the task as the source labelled it",
    "visual_category": "the kind of images the model was trained on, e.g. natural, faces, fractals",
    "training_dataset": "the dataset the model was trained on, e.g. ImageNet1k",
    "pretraining_dataset": "the dataset the model was pretrained on, if any",
    "name": "the model's architecture, e.g. ResNet-18 (many models share one)",
    "model": "the model's unique name",
    "model_id": "the model's id",
    "producer": "the software that saved the model file, with its version, e.g. pytorch 1.10",
    "paper": "the paper that published the model",
    "accessible": "whether the model's weights are publicly available, as the source states it",
    "conv_depth": "the layer's convolution level in its model: 0 is the first",
    "conv_depth_norm": "the layer's relative depth: conv_depth divided by the model's last level, 0 (first) to 1 (last)",
    "layer_id": "the layer's id",
    "depth_bin": "conv_depth_norm in ten bins labelled [0.0, 0.1], (0.1, 0.2], ..., (0.9, 1.0]",
    "depth_decile": "the follow-up studies' depth: 0 for a model's first convolution layer, else conv_depth_norm in "
                    "ten bins labelled (0.0, 0.1], ..., (0.9, 1.0] (pandas.cut)",
    "sample": "true: the models of the synthetic sample (`cnnfilterdb demo`), not real data",
    "version_added": "the store version that ingested the model",
    "source": "the file the model came from",
    "sha256": "the sha256 of that file (model files only)",
}
LAYER_GROUP_FIELDS = ["conv_depth", "depth_bin", "depth_decile", "layer_id"]  # the others are the model's
BOOLEAN_FIELDS = {"sample"}  # compared with true/false; every other field with numbers or strings
# The categorical fields: a value of one that the store does not hold is a typo until shown
# otherwise (check_values); ids and numbers are not checked (an empty range is a fine question).
TEXT_FIELDS = ["task", "task_raw", "visual_category", "training_dataset", "pretraining_dataset", "name", "model",
               "producer", "depth_bin", "depth_decile", "source", "sha256"]
SUGGESTIONS = 3
BOUNDS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}
_ECHO = reprlib.Repr()  # bounded in length and depth whatever it is given
_ECHO.maxstring = _ECHO.maxother = ECHO_CHARS


class SelectionError(UserError, ValueError):
    """A bad request: a `where`, `group_by` or parameter out of its type or range; the message
    names the field and lists the valid ones (the service: a 422, or a 400 for an UnknownName)."""


class UnknownName(SelectionError):
    """A name outside a documented set: a field of `where`, a bound the grammar lacks, a value of
    a parameter with a fixed set (the service: a 400)."""


class InvalidValue(SelectionError):
    """A value of the wrong type or out of its range (the service: a 422)."""


class EmptySelectionError(SelectionError):
    """The selection holds no filters (or too few for what was asked)."""


def echo(value: Any) -> str:
    """A client's value as an error message shows it: its repr, cut after ECHO_CHARS characters
    (a request may hold megabytes), with the length of a long string."""
    text = _ECHO.repr(value).replace("\n", " ")  # one line, whatever the value's repr (a Series spans several)
    if len(text) > ECHO_CHARS:
        text = text[:ECHO_CHARS] + "..."
    if isinstance(value, str) and len(value) > ECHO_CHARS:
        text += f" ({len(value):,} characters)"
    return text


INT_FIELDS = {"model_id", "conv_depth", "layer_id", "version_added"}
REAL_FIELDS = {"conv_depth_norm"}
INT32 = (-(2**31), 2**31 - 1)  # the catalog's INTEGER (the service's Where: Int32)
# Text labels of an order of their own (depths): values or lists, no bounds (their text order is not it).
ORDERED_LABELS = {"depth_bin", "depth_decile"}
_KINDS = {"text": "a string", "label": "a string", "int": "an integer", "real": "a finite number", "bool": "true or false (a bool)",
          "any": "a string, a finite number or true/false"}
# A property's kind of values by its type (properties.TYPES): integers compare as numbers.
PROPERTY_KINDS = {"boolean": "bool", "integer": "real", "double": "real", "text": "text"}
GROUPABLE_TYPES = ("boolean", "text")  # a property group_by takes: numbers are selected by range instead


def _depth_decile_sql() -> str:
    """SPEC 14's depth_decile as SQL over a layer's conv_depth and conv_depth_norm: '0' for conv_depth
    0, else pandas.cut(conv_depth_norm, numpy.linspace(0, 1, 11)): compared with linspace's own
    doubles (its fourth edge is 0.30000000000000004), labelled as pandas labels them."""
    edges = np.linspace(0, 1, 11)
    cases = " ".join(f"WHEN conv_depth_norm <= {float(edges[i + 1])!r} THEN '({edges[i]:.1f}, {edges[i + 1]:.1f}]'"
                     for i in range(10))
    return (f"(CASE WHEN conv_depth IS NULL OR conv_depth_norm IS NULL THEN NULL WHEN conv_depth = 0 THEN '0' "
            f"WHEN conv_depth_norm <= 0.0 OR conv_depth_norm > 1.0 THEN NULL {cases} END)")


# Fields computed from a layer's columns rather than stored: their SQL, so that every store answers
# them whatever macros its catalog persisted (sql/macros.sql's depth_decile is the same, for the shell).
COMPUTED_FIELDS = {"depth_decile": _depth_decile_sql()}


def field_sql(name: str) -> str:
    """A field (built-in, or a property the store has: never a request's text) as SQL over
    layers_with_models_at(v): its quoted name (``properties.ident``), or a computed field's expression."""
    return COMPUTED_FIELDS.get(name) or ident(name)


def kind_of(name: str, properties: dict[str, str] | None) -> str | None:
    """The kind of values of the field ``name``: a built-in's (``field_kind``), a property's (by
    its type in ``properties``, name -> type), or, with ``properties`` None (a request's grammar,
    checked without the store), "any" for a well-formed property name; None: no such field."""
    if name in FILTER_FIELDS:
        return field_kind(name)
    if properties is None:
        return "any" if PROPERTY_NAME.match(name) and name not in RESERVED else None
    return PROPERTY_KINDS[properties[name]] if name in properties else None


def field_kind(name: str) -> str:
    """What the values of a FILTER_FIELDS field are, as the service's ``Where`` model types them:
    "text", "int" (32-bit, not a bool), "real" (finite, not a bool) or "bool"."""
    if name in BOOLEAN_FIELDS:
        return "bool"
    if name in ORDERED_LABELS:
        return "label"
    if name in INT_FIELDS:
        return "int"
    if name in REAL_FIELDS:
        return "real"
    return "text"


def integral(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer as JSON Schema counts them (an int, a numpy
    integer, or a float with no fraction such as 70.0), else None; a bool is not one."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (float, np.floating)):
        return int(value) if np.isfinite(value) and float(value).is_integer() else None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _bound(kind: str, value: Any) -> Any:
    """A checked value as it is bound: an integer field's 70.0 as 70."""
    return integral(value) if kind == "int" else value


def _typed(name: str, kind: str, value: Any) -> bool:
    """Whether ``value`` (not None) is a value of a field of ``kind``."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "any":
        return isinstance(value, (bool, str)) or _typed(name, "real", value)
    if isinstance(value, bool):
        return False
    if kind in ("text", "label"):
        return isinstance(value, str)
    if kind == "int":
        v = integral(value)
        return v is not None and INT32[0] <= v <= INT32[1]
    if isinstance(value, int):  # real
        try:
            return np.isfinite(float(value))
        except OverflowError:
            return False
    return isinstance(value, float) and np.isfinite(value)


def _check_value(where_name: str, kind: str, value: Any) -> None:
    if not _typed(where_name, kind, value):
        extra = " within 32 bits" if kind == "int" and isinstance(value, int) and not isinstance(value, bool) else ""
        raise InvalidValue(f"where.{where_name}: expected {_KINDS[kind]}{extra}, got {echo(value)}")


def where_sql(where: dict[str, Any] | None, properties: dict[str, str] | None = None) -> tuple[str, list]:
    """SQL condition over layers_with_models (at any version) and its parameters.

    Parameters
    ----------
    where : field -> value | [values] | {gte, gt, lte, lt}, or None (everything).
    properties : the model properties of the store version queried, name -> type
        (``properties.properties_at``); None: the grammar only (a name not built in is taken if
        it is a well-formed property name, its values as any kind's). A query the store runs
        passes them.

    Returns
    -------
    (condition, params): a SQL boolean expression with ``?`` placeholders, and their values in
    order. SelectionError for an unknown field or a malformed value.
    """
    if where is None:
        return "true", []
    if not isinstance(where, dict):
        raise InvalidValue("where must be an object of field -> value | [values] | {gte, gt, lte, lt}, e.g. "
                           f"{{\"task\": \"GAN\"}}; got {echo(where)}")
    known = FILTER_FIELDS + list(properties or ())
    bad_keys = [k for k in where if not isinstance(k, str)]
    if bad_keys:
        raise InvalidValue(f"where: field names must be strings, got {echo(bad_keys[0])}; "
                             f"known fields: {known}")
    unknown = sorted(k for k in where if kind_of(k, properties) is None)
    if unknown:
        near = _suggest(unknown[0], known, properties)
        hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
        names = ", ".join(echo(u) for u in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        props = " and the store's model properties (GET /v1/fields lists them)" if properties is None else (
            f" and the store's model properties {list(properties)}" if properties
            else " (the store's models have no properties)")
        raise UnknownName(f"unknown field(s) in where: [{names}]{hint}; known fields of where: {FILTER_FIELDS}{props}")
    parts, params = [], []
    for name, value in where.items():
        kind = kind_of(name, properties)
        column = field_sql(name)
        if isinstance(value, dict):  # bounds; an empty object bounds nothing
            if kind == "bool":
                raise InvalidValue(f"where.{name}: true, false, null or a list of them (no bounds), "
                                     f"got {echo(value)}")
            if kind == "label":  # labels: their text order is not their depth order
                raise InvalidValue(f"where.{name}: a value or a list of them (no bounds: bound conv_depth_norm "
                                   f"instead, e.g. {{\"conv_depth_norm\": {{\"gt\": 0.5}}}}), got {echo(value)}")
            bad = [k for k in value if k not in BOUNDS]
            if bad:
                raise UnknownName(f"unknown bound {echo(bad[0])} in where.{name}; valid: {', '.join(BOUNDS)}")
            for key, bound in value.items():
                if not _typed(name, kind, bound):
                    raise InvalidValue(f"where.{name}.{key}: expected {_KINDS[kind]}, got {echo(bound)}")
                parts.append(f"{column} {BOUNDS[key]} ?")
                params.append(_bound(kind, bound))
        elif isinstance(value, list):
            for v in value:
                if v is not None:
                    _check_value(name, kind, v)
            vals = [v for v in value if v is not None]
            alts = []
            if vals:
                alts.append(f"{column} IN ({', '.join('?' * len(vals))})")
                params.extend(_bound(kind, v) for v in vals)
            if len(vals) < len(value):
                alts.append(f"{column} IS NULL")
            parts.append("(" + (" OR ".join(alts) or "false") + ")")
        elif value is None:
            parts.append(f"{column} IS NULL")
        else:
            _check_value(name, kind, value)
            parts.append(f"{column} = ?")
            params.append(_bound(kind, value))
    for v in params:  # JSON may carry lone UTF-16 surrogates: no SQL string can hold one
        if isinstance(v, str) and not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                # a 400, as any text the store cannot hold (issue 20), not a 422 of a wrong type
                raise SelectionError(f"where: {echo(v)} is not valid Unicode (a lone surrogate)") from None
    return " AND ".join(parts) or "true", params


def condition(cur, where: dict | None, version: int) -> tuple[str, list]:
    """``where_sql`` with the properties of store version ``version``, its text values checked
    (``check_values``): the condition a query of the store runs."""
    properties = properties_at(cur, version)
    cond, params = where_sql(where, properties)
    check_values(cur, where, version, properties)
    return cond, params


def nearest(value: str, known: list[str], n: int = SUGGESTIONS) -> list[str]:
    """The known values nearest to ``value``: those equal but for case first, then difflib's
    closest matches (case-insensitive); none for a value too long to be a typo of one."""
    if len(value) > 1000:
        return []
    same = [k for k in known if k.casefold() == value.casefold()]
    folded: dict[str, list[str]] = {}
    for k in known:
        folded.setdefault(k.casefold(), []).append(k)
    close = difflib.get_close_matches(value.casefold(), list(folded), n, cutoff=0.6)
    return list(dict.fromkeys(same + [k for c in close for k in folded[c]]))[:n]


def check_values(cur, where: dict | None, version: int, properties: dict[str, str] | None = None) -> None:
    """Raise EmptySelectionError naming the first text value of ``where`` (TEXT_FIELDS and text
    properties, as a value or in a list) that no layer of store version ``version`` holds, with
    the nearest values it does hold."""
    text = set(TEXT_FIELDS) | {k for k, t in (properties or {}).items() if t == "text"}
    for name, value in (where or {}).items():
        if name not in text:
            continue
        column = field_sql(name)
        asked = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
            if isinstance(value, list) else []
        if not asked:
            continue
        held = {v for (v,) in cur.execute(f"SELECT DISTINCT {column} FROM {layers_at(version)} "
                                          f"WHERE {column} IN ({', '.join('?' * len(asked))})", asked).fetchall()}
        missing = [v for v in asked if v not in held]
        if not missing:
            continue
        known = [v for (v,) in cur.execute(f"SELECT DISTINCT {column} FROM {layers_at(version)} "
                                           f"WHERE {column} IS NOT NULL LIMIT 100000").fetchall()]
        near = nearest(missing[0], known)
        # the same words from every front end (CLI, Python API, HTTP): each can run this SQL
        hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else \
            (f"; list the values of {name} with SELECT DISTINCT {name if name in TEXT_FIELDS else ident(name)} "
             "FROM layers_with_models "
             f"(cnnfilterdb sql, db.sql(), POST /v1/sql) or GET /v1/fields")
        article = "a" if name in TEXT_FIELDS else "the"  # a property's name may not take "a" (an order)
        raise EmptySelectionError(f"where.{name}: {echo(missing[0])} is not {article} {name} of any model in the store "
                                  f"(store version {version}){hint}")


def natural_order(labels: list) -> list:
    """Labels in natural order: numbers by value, depth bins and deciles by their lower edge (the
    decile "0", a model's first layer, before them), text alphabetically; null last."""
    def key(v):
        if v is None:
            return (3, 0, "")
        if isinstance(v, (int, float)):
            return (0, v, "")
        if v == "0":
            return (1, -1.0, v)
        m = re.fullmatch(r"[\[(](\d+(?:\.\d+)?), (\d+(?:\.\d+)?)\]", str(v))
        if m:
            return (1, float(m.group(1)), str(v))
        return (2, 0, str(v).casefold() + "\0" + str(v))
    return sorted(labels, key=key)


@dataclass
class Selection:
    """The selected layers, their group, and per-group counts (groups in natural order)."""
    labels: list                       # one per group
    layer_ids: np.ndarray              # selected layers
    layer_group: np.ndarray            # group index of each selected layer
    n_filters: np.ndarray              # per group
    n_models: np.ndarray               # per group
    n_layers: np.ndarray               # per group
    empty_groups: list = field(default_factory=list)  # values asked for in where[group_by] with no layer


def layers_at(version: int) -> str:
    """The relation of layers with their models' metadata at store version ``version`` (an int
    the caller resolved against the store, see snapshot.Snapshot)."""
    return f"layers_with_models_at({int(version)})"


def _as_property(name: str, properties: dict[str, str] | None) -> list[str]:
    """A name spelled as a manifest's column (``Clean Accuracy``) as the property it became
    (``clean_accuracy``), when that is a property of ``properties`` or, without them, a
    well-formed property name: the suggestion for a name given as its column."""
    from .properties import PropertyError, property_name

    try:
        p = property_name(name)
    except PropertyError:
        return []
    return [p] if p != name and (p in properties if properties is not None else True) else []


def _suggest(name: str, known: list[str], properties: dict[str, str] | None) -> list[str]:
    """The names to suggest for an unknown ``name``: the property its column spelling becomes
    when that is known (``Clean Accuracy``: clean_accuracy), else the nearest known names, else
    that property name (a property the grammar cannot check without the store)."""
    as_property, near = _as_property(name, properties), nearest(name, known)
    return as_property if as_property and (as_property[0] in known or not near) else near


def groupable(properties: dict[str, str] | None) -> list[str]:
    """The fields a group_by takes: GROUP_FIELDS and the boolean and text properties."""
    return GROUP_FIELDS + [k for k, t in (properties or {}).items() if t in GROUPABLE_TYPES]


def check_group_by(group_by: str | None, properties: dict[str, str] | None = None, parameter: str = "group_by") -> None:
    """SelectionError naming the nearest known fields if ``group_by`` is not None, one of
    GROUP_FIELDS or a boolean or text property of ``properties`` (None: the grammar only, any
    well-formed property name); ``parameter``: its name in the message (a figure's color_by)."""
    if group_by is None or group_by in GROUP_FIELDS:
        return
    if isinstance(group_by, str):
        if properties is None and PROPERTY_NAME.match(group_by) and group_by not in RESERVED:
            return
        if properties and group_by in properties:
            if properties[group_by] in GROUPABLE_TYPES:
                return
            raise InvalidValue(f"{parameter} {group_by!r}: a property of type {properties[group_by]}; {parameter} takes "
                               f"boolean and text properties (select a range of a number with where, e.g. "
                               f'{{"{group_by}": {{"gte": ...}}}})')
    known = groupable(properties)
    near = _suggest(group_by, known, properties) if isinstance(group_by, str) else []
    hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
    raise UnknownName(f"unknown {parameter} {echo(group_by)}{hint}; known: {known}")


def select(cur, where: dict | None, group_by: str | None, version: int) -> Selection:
    """The layers of store version ``version`` that ``where`` selects, grouped by ``group_by``.

    Parameters
    ----------
    cur : a cursor on the catalog.
    where : as ``where_sql``.
    group_by : one of GROUP_FIELDS, or None (one group, labelled 'all').
    version : the store version (resolved by the caller).

    Returns
    -------
    Selection: labels (d,) in natural order; layer_ids (L,) ascending and layer_group (L,) the
    group of each; n_filters, n_models, n_layers (d,) int64 per group. SelectionError for an
    unknown ``group_by``; EmptySelectionError for a text value the store does not hold
    (check_values).
    """
    properties = properties_at(cur, version)
    check_group_by(group_by, properties)
    cond, params = where_sql(where, properties)
    check_values(cur, where, version, properties)
    label = field_sql(group_by) if group_by else "'all'"
    cols = cur.execute(f"SELECT layer_id, {label} AS label, n_filters, model_id FROM {layers_at(version)} "
                       f"WHERE {cond} ORDER BY layer_id", params).fetchnumpy()
    raw = cols["label"]
    if hasattr(raw, "mask"):  # NULL labels arrive masked
        raw = np.where(raw.mask, None, raw.data.astype(object))
    codes, uniques = pd.factorize(raw)  # NULL gets code -1; it is a label of its own (None)
    values = uniques.tolist()
    if len(codes) and codes.min() < 0:
        codes = np.where(codes < 0, len(values), codes)
        values.append(None)
    labels = natural_order(values)
    index = {v: i for i, v in enumerate(labels)}
    rank = np.array([index[v] for v in values], dtype=np.int64)  # factorize order -> natural order
    layer_ids = np.asarray(cols["layer_id"], dtype=np.int64)
    layer_group = rank[codes] if len(codes) else np.zeros(0, dtype=np.int64)
    n = len(labels)
    n_filters = np.bincount(layer_group, weights=np.asarray(cols["n_filters"], dtype=np.float64), minlength=n).astype(np.int64)
    n_layers = np.bincount(layer_group, minlength=n).astype(np.int64)
    model_ids = np.asarray(cols["model_id"], dtype=np.int64)
    pairs = np.unique(layer_group * (int(model_ids.max(initial=0)) + 1) + model_ids)  # distinct (group, model)
    n_models = np.bincount(pairs // (int(model_ids.max(initial=0)) + 1), minlength=n).astype(np.int64)
    empty = []
    if group_by is not None and where and group_by in where:
        asked = where[group_by] if isinstance(where[group_by], list) else [where[group_by]]
        empty = [v for v in asked if not isinstance(v, dict) and v not in index]
    return Selection(labels, layer_ids, layer_group, n_filters, n_models, n_layers, empty)
