"""Labelling models: their built-in metadata and their typed properties, as one store version.

``label_models`` takes what ``cnnfilterdb label`` is given, from any of its three sources:
- model names (or ids) with values (``label onet --task GAN --set robust=true``),
- a selection (``label --where '{"task": "GAN"}' --set reviewed=true``: the analyses' ``where``),
- a manifest (``label --manifest meta.csv --key Name``, ``read_label_manifest``): one row per
  model, a column naming it (``key``), known columns mapped to the built-in fields (ALIASES), every
  other column a property named and typed as SPEC 13 says (cnnfilterdb/properties.py).

Everything is checked before anything is written, in one all-or-nothing transaction: every model
named exists, every property name is valid and not a built-in, every value parses as its
property's type (an existing property keeps its type: a value of another type is an error naming
both), and no categorical value is another spelling of one the store holds (ingest/values.py,
unless ``new_value``). A ``dry_run`` does all of it and commits nothing. A kill at any point
leaves the store as it was (the transaction's staging catalog is discarded).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnfilterdb.limits import MAX_MANIFEST_BYTES, MAX_PROPERTIES, MAX_TEXT_CHARS
from cnnfilterdb.properties import (
    NAME,
    TYPES,
    PropertyError,
    check_name,
    check_type,
    check_typed,
    ident,
    infer_type,
    nearest_property,
    parse_value,
    properties_at,
    property_name,
    type_of_value,
)
from cnnfilterdb.store import StoreTransaction, change_summary

from .curate import model_ids, models_where
from .errors import IngestError
from .h5 import normalize_task
from .model_files import META_FIELDS
from .values import check_spellings

# The built-in fields a label may change: the metadata given at ingest but the model's unique name.
LABEL_FIELDS = [f for f in META_FIELDS if f != "model"] + ["producer"]
# Manifest columns that are built-in fields (SPEC 13), besides the fields' own names.
ALIASES = {"Name": "name", "Task": "task", "Visual Category": "visual_category", "Datatype": "visual_category",
           "Training-Dataset": "training_dataset", "Pretraining-Dataset": "pretraining_dataset", "Paper": "paper",
           "Accessible": "accessible", "Dataset URL": "dataset_url", "Producer": "producer"}


_ALIASES_FOLDED = {k.casefold(): v for k, v in ALIASES.items()}  # "Visual category" is "Visual Category"


@dataclass
class Labels:
    """What a label gives: per model (a name or model_id), the values of its fields, and where each
    row was given (for messages: "meta.csv: line 7"). A value is text to be typed (a manifest's
    cell, ``--set``'s VALUE) or, from Python, a typed value (bool, int, float, str)."""
    rows: list[tuple[str, dict[str, Any], str]]
    skipped: list[str] = field(default_factory=list)  # manifest columns with no value: no property made
    by_name: bool = False  # the models named by their unique name only (a manifest's key), never by model_id


def _text(value: str, field_name: str, where: str) -> str:
    """A text value as the store holds it: stripped of surrounding white space, non-empty, valid
    UTF-8, no NUL."""
    value = value.strip()
    if not value:
        raise IngestError(f"{where}: {field_name} is empty; give a value (a manifest's empty cell leaves a field as it is)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise IngestError(f"{where}: {field_name} {value!r} is not valid UTF-8 text") from None
    if "\0" in value:
        raise IngestError(f"{where}: {field_name} holds a NUL character")
    if len(value) > MAX_TEXT_CHARS:
        raise IngestError(f"{where}: {field_name} is {len(value):,} characters long, at most {MAX_TEXT_CHARS:,}")
    return value


def read_label_manifest(path: Path, key: str = "model") -> Labels:
    """A CSV with one row per model: the column ``key`` names the model (its unique ``model``),
    columns named as built-in fields or their ALIASES set those, every other column is a property
    (``properties.property_name``); an empty cell leaves a field as it is, a column of no value is
    skipped (``Labels.skipped``)."""
    try:
        size = os.stat(path).st_size
        if size > MAX_MANIFEST_BYTES:
            raise IngestError(f"{path}: the manifest is {size:,} bytes, at most {MAX_MANIFEST_BYTES:,}")
        # utf-8-sig: a spreadsheet's CSV starts with a byte-order mark; strict: an unclosed quote is an error
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, strict=True))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise IngestError(f"{path}: cannot read the manifest ({e})") from None
    header = [h.strip() for h in rows[0]] if rows else []
    if key not in header:
        raise IngestError(f"{path}: no column {key!r} naming the models (--key COLUMN names it; the columns: "
                          f"{header[:20]})")
    if len(set(header)) < len(header):
        raise IngestError(f"{path}: the header names a column twice: {sorted({h for h in header if header.count(h) > 1})}")
    if len(header) > MAX_PROPERTIES + len(LABEL_FIELDS) + 1:
        raise IngestError(f"{path}: {len(header):,} columns; a manifest may give at most {MAX_PROPERTIES} properties")
    fields: dict[str, str] = {}  # column -> field
    for column in header:
        if column == key:
            continue
        name = column if column in LABEL_FIELDS else _ALIASES_FOLDED.get(" ".join(column.casefold().split()))
        if name is None:
            if column == "model":
                raise IngestError(f"{path}: column 'model' is the models' unique name; with --key {key!r} drop it "
                                  "or use it as the key")
            name = property_name(column, f"{path}")
        if name in fields.values():
            other = next(c for c, f in fields.items() if f == name)
            raise IngestError(f"{path}: columns {other!r} and {column!r} both give {name!r}")
        fields[column] = name
    out, seen = [], {}
    filled = dict.fromkeys(fields, False)
    for i, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(header):
            raise IngestError(f"{path}: line {i} has {len(row)} cells, the header {len(header)}")
        r = dict(zip(header, row))
        model = r.pop(key).strip()
        if not model:
            raise IngestError(f"{path}: line {i} has no {key}")
        if model in seen:
            raise IngestError(f"{path}: line {i} labels {model!r} again (line {seen[model]}): one row per model")
        seen[model] = i
        values = {}
        for column, cell in r.items():
            if cell.strip():
                values[fields[column]] = _text(cell.strip(), fields[column], f"{path}: line {i}")
                filled[column] = True
        out.append((model, values, f"{path}: line {i}"))
    return Labels(out, skipped=[c for c, f in filled.items() if not f], by_name=True)


def parse_assignments(items: list[str], where: str = "--set") -> dict[str, str]:
    """``--set NAME=VALUE`` arguments as {name: text}; a name given twice is an error."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:
            raise IngestError(f"{where} {item[:80]!r}: expected NAME=VALUE")
        name = name.strip()
        if name in out:
            raise IngestError(f"{where}: {name!r} is given twice")
        out[name] = value.strip()
    return out


def parse_types(items: list[str]) -> dict[str, str]:
    """``--type NAME=TYPE`` arguments as {property: type}; NAME as the property or as the
    manifest's column (``Clean Accuracy``: clean_accuracy)."""
    out = {}
    for name, value in parse_assignments(items, "--type").items():
        out[check_name(name if NAME.match(name) else property_name(name, "--type"), "--type")] = \
            check_type(value, f"--type {name}")
    return out


def _property_types(rows, existing: dict[str, str], types: dict[str, str]) -> dict[str, str]:
    """The type of every property the rows give: the store's for an existing one (a --type of
    another is an error naming both), else --type's, else inferred from every value given."""
    given: dict[str, list] = {}
    for _, values, _ in rows:
        for name, v in values.items():
            if name not in LABEL_FIELDS:
                given.setdefault(name, []).append(v)
    out = {}
    for name, values in given.items():
        if name in existing:
            if name in types and types[name] != existing[name]:
                raise PropertyError(f"--type {name}={types[name]}: the store's property {name} is {existing[name]}; "
                                    "a property keeps its type")
            out[name] = existing[name]
        elif name in types:
            out[name] = types[name]
        elif all(isinstance(v, str) for v in values):
            out[name] = infer_type(values)
        else:
            kinds = {type_of_value(v) for v in values}
            out[name] = kinds.pop() if len(kinds) == 1 else "double" if kinds == {"integer", "double"} else "text"
    return out


def _typed_value(name: str, value: Any, type_name: str, existing: dict[str, str], where: str) -> Any:
    try:
        if isinstance(value, str):
            return parse_value(value, type_name, f"{where}: {name}")
        return check_typed(value, type_name, f"{where}: {name}")
    except PropertyError:
        if name in existing:
            given = infer_type([value]) if isinstance(value, str) else type_of_value(value)
            shown = repr(value[:80]) if isinstance(value, str) else repr(value)
            raise PropertyError(f"{where}: {name} {shown} is {given}, the store's property {name} is "
                                f"{existing[name]} (a property keeps its type: give values of {existing[name]}, or "
                                f"make another property with --type NAME={given})") from None
        raise


def label_models(db: Path, labels: Labels | list[tuple[str, dict]] | None = None, *, where: dict | None = None,
                 values: dict | None = None, types: dict[str, str] | None = None, new_value: bool = False,
                 new_property: bool = False, skip_unknown: bool = False, dry_run: bool = False) -> dict:
    """Relabel models, all or nothing, as one new store version.

    Parameters
    ----------
    db : the store directory.
    labels : the models and their values (``Labels``, or (model name or model_id, {field: value})
        pairs); fields among LABEL_FIELDS or property names.
    where : instead of ``labels``, a selection (the analyses' ``where``) whose models all get ``values``.
    values : with ``where``, the values every selected model gets.
    types : property -> type ("boolean", "integer", "double", "text") for new properties (an
        existing property keeps its own).
    new_value : store a categorical value that is another spelling of one the store holds.
    new_property : make a new property whose name is near an existing one's (by default refused
        as a likely typo: did you mean ...?).
    skip_unknown : leave out the rows of models the store does not hold (listed in
        ``skipped_models``) instead of refusing the label (a study's meta.csv lists more models).
    dry_run : check everything and say what would change; commit nothing.

    Returns
    -------
    dict with ``version`` (None if nothing changed or ``dry_run``: no version is committed),
    ``changed`` the models whose metadata changed (or would), ``unchanged`` those already so
    labelled, ``properties_added`` {name: type} of the properties this label creates,
    ``skipped_columns`` the manifest's columns of no value, ``skipped_models`` (with
    ``skip_unknown``), ``dry_run``.
    """
    types = {check_name(k, "--type"): check_type(t, f"--type {k}") for k, t in (types or {}).items()}
    if isinstance(labels, list):
        labels = Labels([(m, v, "label") for m, v in labels])
    if where is not None and labels is not None:
        raise IngestError("label: give models (or a manifest) or a selection (--where), not both")
    if where is None and labels is None:
        raise IngestError("label: name the models to label, or give --where or --manifest")
    if where is None and not any(v for _, v, _ in labels.rows) and not labels.skipped:
        raise IngestError(f"nothing to label: give at least one of {['--' + f.replace('_', '-') for f in LABEL_FIELDS]} "
                          "or --set NAME=VALUE")
    if where is not None and not values:
        raise IngestError("label --where: give the values to set (a metadata flag or --set NAME=VALUE)")
    with StoreTransaction(db) as tx:
        if where is not None:
            names = models_where(tx, where)
            labels = Labels([(m, dict(values), "label --where") for m in names])
        names = [m for m, _, _ in labels.rows]
        if len(set(names)) < len(names):
            raise IngestError("label: a model is named twice; name each once")
        skipped_models = []
        if skip_unknown:
            held = set(model_ids(tx, names, missing_ok=True, names_only=labels.by_name))
            skipped_models = [m for m in names if m not in held]
            labels = Labels([r for r in labels.rows if r[0] in held], labels.skipped)
            names = [m for m, _, _ in labels.rows]
        ids = model_ids(tx, names, where={m: at for m, _, at in labels.rows}, names_only=labels.by_name)
        existing = properties_at(tx.con, tx.base_version)
        rows = []
        for m, vals, at in labels.rows:
            for name in vals:
                if name not in LABEL_FIELDS and name not in existing:
                    check_name(name, at)
                    if not new_property and (near := nearest_property(name, existing)):
                        raise PropertyError(f"{at}: {name!r} would be a new property, and the store has {near!r}: "
                                            f"did you mean {near!r}? Give --new-property to make {name!r}")
            rows.append((m, vals, at))
        property_types = _property_types(rows, existing, types)
        if unused := sorted(set(types) - set(property_types)):
            raise PropertyError(f"--type {unused[0]}: no column or --set of this label gives {unused[0]!r} (the "
                                f"properties it gives: {sorted(property_types)[:20]})")
        added = {k: t for k, t in property_types.items() if k not in existing}
        if len(existing) + len(added) > MAX_PROPERTIES:
            raise PropertyError(f"label: the store would hold {len(existing) + len(added)} properties, at most "
                                f"{MAX_PROPERTIES}")
        changes, given = [], []
        for m, vals, at in rows:
            out = {}
            for name, v in vals.items():
                if name in LABEL_FIELDS:
                    if not isinstance(v, str):
                        raise IngestError(f"{at}: {name} must be text, got {v!r}")
                    out[name] = _text(v, name, at)
                else:
                    out[name] = _typed_value(name, _text(v, name, at) if isinstance(v, str) else v,
                                             property_types[name], existing, at)
                given.append((name, out[name], f"{at} ({m})"))
            if "task" in out:
                out["task_raw"], out["task"] = out["task"], normalize_task(out["task"])
            changes.append((m, out))
        text_properties = {k for k, t in property_types.items() if t == "text"}
        check_spellings(tx.con, tx.base_version, given, text_properties, new_value,
                        held_properties={k for k in text_properties if k in existing})
        for name, type_name in added.items():
            tx.con.execute(f"ALTER TABLE _models ADD COLUMN {ident(name)} {TYPES[type_name]}")
        changed, unchanged = [], []
        for m, out in changes:
            (changed if out and tx.relabel(ids[m], out) else unchanged).append(m)
        fields = list(dict.fromkeys(k for _, out in changes for k in out if k != "task_raw"))
        summary = change_summary([], changed, []) + (f"; set {', '.join(fields[:8])}" if fields else "") + \
            ("" if len(fields) <= 8 else f", ... {len(fields) - 8} more")
        version = tx.commit("label", summary=summary) if changed and not dry_run else None
    return {"db": str(Path(db).resolve()), "version": version, "changed": changed, "unchanged": unchanged,
            "properties_added": added if changed else {}, "skipped_columns": labels.skipped,
            "skipped_models": skipped_models, "dry_run": dry_run}


__all__ = ["ALIASES", "LABEL_FIELDS", "Labels", "label_models", "parse_assignments", "parse_types",
           "read_label_manifest"]
