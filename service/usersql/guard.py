"""The first check on user SQL: exactly one statement, and one that reads.

DuckDB's own parser and tokenizer decide, not text patterns. Accepted:

- ``SELECT`` in every form DuckDB parses as one (``FROM t``, ``VALUES``, ``DESCRIBE``, ``SHOW``,
  ``SUMMARIZE``, ``PIVOT``/``UNPIVOT``, set operations, CTEs);
- ``EXPLAIN`` and ``EXPLAIN ANALYZE`` (or ``EXPLAIN (options)``) of such a statement. ``EXPLAIN
  ANALYZE`` runs its statement, so the statement inside is checked like a top-level one.

A ``PIVOT`` without an ``IN`` list is expanded by the parser into a ``CREATE TYPE`` of its column
values (in the connection's temporary catalog, no text of its own) followed by the ``SELECT``: those
generated statements are accepted, statements the user wrote are counted by the tokenizer's ``;``.

This check is one layer of several (see ``service/usersql/__init__.py``): a statement it let pass
still could not write, because the process that runs it cannot.
"""
from __future__ import annotations

import re

import duckdb

from cnnfilterdb.store import first_paragraph

READING = duckdb.StatementType.SELECT
EXPLAIN = duckdb.StatementType.EXPLAIN
CREATE = duckdb.StatementType.CREATE
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
READ_ONLY = "read-only: one reading statement (SELECT, or EXPLAIN [ANALYZE] of a SELECT) per request"


class SqlRefused(Exception):
    """A statement that is not run: ``status`` (400/403), ``code`` and a one-line message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _tokens(sql: str) -> list[tuple[int, str, str]]:
    """(position, kind, text) of each token. The tokenizer gives positions only, and skips
    comments: a token's text is its first character for operators (brackets and ``;`` are
    tokens of their own) and its leading word for keywords, never what follows it."""
    try:
        toks = duckdb.tokenize(sql)
    except duckdb.Error as e:
        raise SqlRefused(400, "sql_error", first_paragraph(e)) from None
    out = []
    for p, kind in toks:
        if kind.name == "operator":
            text = sql[p]
        elif kind.name == "keyword":
            m = _WORD.match(sql, p)
            text = m.group(0) if m else sql[p]
        else:
            text = ""
        out.append((p, kind.name, text))
    return out


def _count_statements(sql: str) -> int:
    """Statements the user wrote: non-empty runs of tokens between top-level ``;``."""
    count, pending = 0, False
    for _, kind, text in _tokens(sql):
        if kind == "operator" and text == ";":
            count += pending
            pending = False
        else:
            pending = True
    return count + pending


def _explained(statement_text: str) -> str:
    """The statement inside ``EXPLAIN [ANALYZE | (options)] statement``."""
    toks = _tokens(statement_text)
    i = 1  # toks[0] is EXPLAIN
    if i < len(toks) and toks[i][2].upper() in ("ANALYZE", "ANALYSE"):
        i += 1
    elif i < len(toks) and toks[i][2] == "(":
        depth = 0
        while i < len(toks):
            if toks[i][1] == "operator":
                depth += {"(": 1, ")": -1}.get(toks[i][2], 0)
            i += 1
            if depth <= 0:
                break
    if i >= len(toks):
        raise SqlRefused(400, "sql_error", "EXPLAIN of nothing")
    return statement_text[toks[i][0]:]


def check_reading(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ``SqlRefused`` unless ``sql`` is one reading statement (see the module docstring)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise SqlRefused(400, "sql_error", first_paragraph(e)) from None
    n = _count_statements(sql)
    if n != 1 or not statements:
        raise SqlRefused(400, "sql_one_statement", f"send exactly one statement per request (got {n})")
    *generated, last = statements
    if any(s.type != CREATE or s.query for s in generated) or (generated and last.type != READING):
        raise SqlRefused(403, "sql_read_only", f"{READ_ONLY}; this text holds other statements than that")
    if last.type == EXPLAIN:
        try:
            inner = con.extract_statements(_explained(last.query))
        except duckdb.Error as e:
            raise SqlRefused(400, "sql_error", first_paragraph(e)) from None
        if len(inner) != 1 or inner[0].type != READING:
            kind = inner[0].type.name if len(inner) == 1 else f"{len(inner)} statements"
            raise SqlRefused(403, "sql_read_only",
                             f"{READ_ONLY}; EXPLAIN only of a SELECT (EXPLAIN ANALYZE runs its statement); got {kind}")
    elif last.type != READING:
        raise SqlRefused(403, "sql_read_only", f"{READ_ONLY}; got {last.type.name}")
