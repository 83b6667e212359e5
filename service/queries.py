"""The SQL the routers run on the serving catalog (a cursor of ``catalog.Generation``), in one
place: small functions taking a cursor and parameters and returning rows. Column and field names
come from the fixed lists here, from the engine's (``cnnfilterdb.selection``) or from the store's
own columns (the model properties: ``properties.properties_at``, quoted by ``properties.ident``),
never from a request; every value is bound as a parameter. The analysis endpoints read through the engine
(``cnnfilterdb.analysis``), the versions through ``cnnfilterdb.store``, user SQL through
``usersql/``: none of their SQL is here."""
from __future__ import annotations

from typing import Any

from cnnfilterdb.catalog import SAMPLE_MODELS
from cnnfilterdb.properties import TYPES, ident
from cnnfilterdb.results import models_query
from cnnfilterdb.selection import GROUPABLE_TYPES, nearest

# A model as /v1/models returns it: the listing's columns (cnnfilterdb.results.models_query, shared
# with db.models() and the Client: results.MODEL_COLUMNS, then the version's properties), the
# MAPs as JSON text (parsed in Python 2x faster than DuckDB's conversion of MAP values).
JSON_COLUMNS = ("kernel_counts::JSON::VARCHAR AS kernel_counts, op_counts::JSON::VARCHAR AS op_counts, "
                "extra::VARCHAR AS extra")
# The columns of a layer (l: layers, m: its model).
LAYER_COLUMNS = """l.layer_id, l.model_id, m.model, l.conv_depth, l.conv_depth_norm, l.depth_bin, l.filter_id_first,
    l.filter_id_last, l.n_filters, l.in_channels, l.out_channels, l.groups, l.sparsity, l.variance_entropy,
    l.variance_entropy_norm, l.variance_entropy_clean, l.orthogonality"""
# A filter's nine weights, row-major.
WEIGHTS = ", ".join(f"w{i}" for i in range(9))
# The models columns /v1/models filters on (a query parameter each; repeat one for several values).
FILTER_COLUMNS = ["task", "task_raw", "visual_category", "training_dataset", "pretraining_dataset", "name",
                  "model", "producer", "paper", "accessible"]


def rows_as_dicts(cur) -> list[dict]:
    """The rows of the cursor's last query, as column -> value."""
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


# ---- models and layers -------------------------------------------------------------------------

def _models_where(values: dict[str, list]) -> tuple[str, list]:
    """A condition on FILTER_COLUMNS: each column given must hold one of its values."""
    where, params = [], []
    for column in FILTER_COLUMNS:  # column names from the fixed list; values bound as parameters
        given = values.get(column)
        if given:
            where.append(f"{column} IN ({', '.join('?' * len(given))})")
            params.extend(given)
    return " AND ".join(where) or "true", params


def unknown_value(cur, values: dict[str, list]) -> tuple[str, str, list[str]] | None:
    """The first value given for a column (FILTER_COLUMNS) that no model holds, as (column,
    value, the nearest values the models hold: ``selection.nearest``), or None: a typo, not an
    empty page (as ``selection.check_values`` for the analyses' where)."""
    for column in FILTER_COLUMNS:  # column names from the fixed list; values bound as parameters
        given = values.get(column)
        if not given:
            continue
        held = {v for (v,) in cur.execute(f"SELECT DISTINCT {column} FROM models "
                                          f"WHERE {column} IN ({', '.join('?' * len(given))})", given).fetchall()}
        missing = [v for v in given if v not in held]
        if missing:
            known = [v for (v,) in cur.execute(f"SELECT DISTINCT {column} FROM models WHERE {column} IS NOT NULL "
                                               "LIMIT 100000").fetchall()]
            return column, missing[0], nearest(missing[0], known)
    return None


def store_version(cur) -> int:
    """The serving catalog's store version (0: nothing committed)."""
    return cur.execute("SELECT coalesce(max(version), 0) FROM _versions").fetchone()[0]


def _models(where: dict | None, properties: dict[str, str], values: dict[str, list]) -> tuple[str, list]:
    """The models ``where`` (the analyses' grammar, checked: results.check_listing) selects that
    hold one of the given values in each column given (FILTER_COLUMNS): ``FROM ... WHERE ...``
    over the listing's SELECT (results.models_query: one SQL builder for every listing)."""
    sql, params = models_query(where, None, properties)
    cond, label_params = _models_where(values)
    return f"FROM ({sql}) AS t WHERE {cond}", params + label_params


def count_models(cur, where: dict | None, properties: dict[str, str], values: dict[str, list]) -> int:
    """How many models ``where`` selects and hold one of the given values in each column given."""
    source, params = _models(where, properties, values)
    return cur.execute(f"SELECT count(*) {source}", params).fetchone()[0]


def model_page(cur, where: dict | None, properties: dict[str, str], values: dict[str, list], after: int | None,
               limit: int) -> list[dict]:
    """Up to ``limit`` of those models with model_id > ``after`` (None: from the first), in
    model_id order: the columns of results.MODEL_COLUMNS, then the ``properties``."""
    source, params = _models(where, properties, values)
    if after is not None:
        source += " AND model_id > ?"
        params.append(after)
    cur.execute(f"SELECT * REPLACE ({JSON_COLUMNS}) {source} ORDER BY model_id LIMIT ?", params + [limit])
    return rows_as_dicts(cur)


def model(cur, model_id: int, properties: dict[str, str]) -> dict | None:
    """One model (the columns of model_page), or None."""
    sql, params = models_query(None, None, properties)
    cur.execute(f"SELECT * REPLACE ({JSON_COLUMNS}) FROM ({sql}) AS t WHERE model_id = ?", params + [model_id])
    rows = rows_as_dicts(cur)
    return rows[0] if rows else None


def model_exists(cur, model_id: int) -> bool:
    return cur.execute("SELECT count(*) FROM models WHERE model_id = ?", [model_id]).fetchone()[0] > 0


def model_layers(cur, model_id: int) -> list[dict]:
    """The model's layers, in filter order."""
    cur.execute(f"""SELECT {LAYER_COLUMNS} FROM layers l JOIN models m USING (model_id)
                    WHERE l.model_id = ? ORDER BY l.filter_id_first""", [model_id])
    return rows_as_dicts(cur)


def layer(cur, layer_id: int) -> dict | None:
    cur.execute(f"SELECT {LAYER_COLUMNS} FROM layers l JOIN models m USING (model_id) WHERE l.layer_id = ?", [layer_id])
    rows = rows_as_dicts(cur)
    return rows[0] if rows else None


# ---- filters -----------------------------------------------------------------------------------

def filter_weights(cur, first: int, last: int) -> dict[str, Any]:
    """The filters first..last: numpy columns filter_id, w0..w8, in filter_id order."""
    return cur.execute(f"SELECT filter_id, {WEIGHTS} FROM filters WHERE filter_id BETWEEN ? AND ? "
                       "ORDER BY filter_id", [first, last]).fetchnumpy()


def filter_weight_batches(cur, first: int, last: int, batch_rows: int):
    """The weights w0..w8 of the filters first..last in filter_id order, as Arrow record batches of
    ``batch_rows`` rows (a reader: the rows are read as it is iterated)."""
    return cur.execute(f"SELECT {WEIGHTS} FROM filters WHERE filter_id BETWEEN ? AND ? "
                       "ORDER BY filter_id", [first, last]).to_arrow_reader(batch_rows)


def filter_row(cur, filter_id: int) -> tuple | None:
    """(filter_id, model_id, layer_id, w0, ..., w8) of one filter, or None."""
    rows = cur.execute(f"SELECT filter_id, model_id, layer_id, {WEIGHTS} FROM filters WHERE filter_id = ?",
                       [filter_id]).fetchall()
    return rows[0] if rows else None


# ---- the store ---------------------------------------------------------------------------------

def basis_version(cur) -> int | None:
    """The version of the global basis (None: no basis yet)."""
    return cur.execute("SELECT max(version) FROM basis").fetchone()[0]


def store_counts(cur) -> dict[str, Any]:
    """The store's id, its current version and its counts, as /v1/stats reports them."""
    names = ("store_id", "store_version", "models", "sample_models", "layers", "filters", "shards", "shard_bytes",
             "ingests", "last_ingest_at")
    row = cur.execute(f"""
        SELECT (SELECT store_id FROM _store), (SELECT coalesce(max(version), 0) FROM _versions),
               (SELECT count(*) FROM models), (SELECT count(*) FROM models WHERE {SAMPLE_MODELS}),
               (SELECT count(*) FROM layers),
               (SELECT coalesce(sum(n_filters), 0) FROM layers), (SELECT count(*) FROM _shards),
               (SELECT coalesce(sum(bytes), 0) FROM _shards), (SELECT count(*) FROM _ingests),
               (SELECT max(committed_at) FROM _ingests)""").fetchone()
    return dict(zip(names, row))


def basis_summary(cur) -> dict[str, Any] | None:
    """The global basis in brief (version, n_filters, explained_variance_ratio, range), or None."""
    b = cur.execute("SELECT version, n_filters, explained_variance_ratio, range_min, range_max FROM basis").fetchone()
    return None if b is None else {"version": b[0], "n_filters": b[1], "explained_variance_ratio": b[2],
                                   "range": (b[3], b[4])}


def field_values(cur, name: str, max_values: int) -> tuple[list[tuple], int, str | None]:
    """A field of layers_with_models (``name`` from the engine's fixed lists, never a request's):
    up to ``max_values + 1`` rows (value, models, layers, filters) in the field's order (depth bins
    by depth, others by value, null last), its number of distinct values, and its SQL type (None:
    no layers)."""
    from cnnfilterdb.selection import field_sql

    order = "min(conv_depth_norm)" if name in ("depth_bin", "depth_decile") else "value"  # the decile "0" first
    column = field_sql(name)  # depth_decile: computed, whatever macros the catalog persisted
    rows = cur.execute(f"""
        SELECT {column} AS value, count(DISTINCT model_id), count(*), sum(n_filters)
        FROM layers_with_models GROUP BY value ORDER BY {order} NULLS LAST
        LIMIT {int(max_values) + 1}""").fetchall()
    n_distinct = cur.execute(f"SELECT count(DISTINCT {column}) FROM layers_with_models").fetchone()[0]
    typ = cur.execute(f"SELECT typeof({column}) FROM layers_with_models LIMIT 1").fetchone()
    return rows, n_distinct, typ[0] if typ else None


def property_fields(cur, properties: dict[str, str], max_values: int) -> list[dict]:
    """The model properties as /v1/fields lists them (``properties``: name -> type, from
    ``properties.properties_at``, never from a request; quoted by ``properties.ident``): each
    with its SQL type, its number of distinct values, and, for boolean and text properties, up to
    ``max_values + 1`` rows (value, models, layers, filters) by value, null last, as
    ``field_values`` gives a field's; for integer and double ones their min and max and no rows.

    Two queries whatever the number of properties, over the models (a model's n_layers and
    n_filters are its layers' in layers_with_models, so the counts are field_values'): the
    properties' values as text in one UNPIVOT (a double's -0.0 made 0.0 first, equal in SQL),
    grouped, counted and cut at max_values + 1 per property; the numbers' ranges in one row."""
    if not properties:
        return []
    names = list(properties)
    numbers = [n for n, t in properties.items() if t not in GROUPABLE_TYPES]
    as_text = ", ".join(f"({ident(n)}{' + 0.0' if properties[n] == 'double' else ''})::VARCHAR AS {ident(n)}"
                        for n in names)
    rows = cur.execute(f"""
        WITH m AS (SELECT n_layers, n_filters, {as_text} FROM models WHERE n_layers > 0),
        u AS (FROM m UNPIVOT INCLUDE NULLS (value FOR field IN ({', '.join(map(ident, names))}))),
        g AS (SELECT field, value, count(*) AS models, sum(n_layers) AS layers, sum(n_filters) AS filters
              FROM u GROUP BY field, value)
        SELECT field, value, models, layers, filters, count(value) OVER (PARTITION BY field) AS n_distinct,
               row_number() OVER (PARTITION BY field ORDER BY value NULLS LAST) AS rank
        FROM g QUALIFY rank <= CASE WHEN list_contains(?, field) THEN 1 ELSE ? END
        ORDER BY field, rank""", [numbers, int(max_values) + 1]).fetchall()
    found: dict[str, dict] = {}
    for field, value, n_models, n_layers, n_filters, n_distinct, _ in rows:
        f = found.setdefault(field, {"rows": [], "n_distinct": n_distinct})
        if properties[field] == "boolean" and value is not None:
            value = value == "true"
        f["rows"].append((value, n_models, n_layers, n_filters))
    ranges = {}
    if numbers:
        row = cur.execute("SELECT " + ", ".join(f"min({ident(n)}), max({ident(n)})" for n in numbers)
                          + " FROM models WHERE n_layers > 0").fetchone()
        ranges = {n: row[2 * i: 2 * i + 2] for i, n in enumerate(numbers)}
    out = []
    for name, typ in properties.items():
        f = found.get(name, {"rows": [], "n_distinct": 0})
        lo, hi = ranges.get(name, (None, None))
        out.append({"name": name, "type": TYPES[typ], "groupable": typ in GROUPABLE_TYPES,
                    "rows": [] if name in ranges else f["rows"], "n_distinct": f["n_distinct"], "min": lo, "max": hi})
    return out
