"""The first check on user SQL: exactly one statement, and one that reads.

DuckDB's own parser and tokenizer decide, not text patterns, on the text as DuckDB sees it: the
UTF-8 bytes of the request. The tokenizer reports byte offsets; every slice and every token's
text is taken from those bytes (a Python string index is a code point, not a byte: indexing the
``str`` with the tokenizer's offsets once let ``EXPLAIN ANALYZE /*é...*/ <any statement>`` pass).
A text that is not valid Unicode (a lone surrogate), holds a NUL, or holds one of the Unicode
spaces that DuckDB's parser (not its tokenizer) turns into ASCII spaces when a first parse fails
(``UNICODE_SPACES``: ``EXPLAIN ANALYZE<U+00A0>CREATE ...`` is one identifier to the tokenizer and
a CREATE to the parser) is refused before DuckDB sees it, so the tokens checked are the parser's.
Accepted:

- ``SELECT`` in every form DuckDB parses as one (``FROM t``, ``VALUES``, ``DESCRIBE``, ``SHOW``,
  ``SUMMARIZE``, ``PIVOT``/``UNPIVOT``, set operations, CTEs);
- ``EXPLAIN`` and ``EXPLAIN ANALYZE`` (or ``EXPLAIN (options)``) of such a statement. ``EXPLAIN
  ANALYZE`` runs its statement, so the statement inside is checked like a top-level one.

A ``PIVOT`` without an ``IN`` list is expanded by the parser into a ``CREATE TYPE`` of its column
values (in the connection's temporary catalog, no text of its own) followed by the ``SELECT``;
under ``EXPLAIN`` the parser wraps the same expansion in a transaction. Those generated statements
are accepted; statements the user wrote are counted by the tokenizer's ``;``.

``check_functions`` is a check of its own (the worker runs it whatever else is switched off): no
call of the table functions that read Python objects through raw pointers (``pandas_scan(NULL)``
crashes the process), of those that run a statement held in a string, out of any check's sight
(``query``, ``json_execute_serialized_sql``), or of those that act on the instance rather than
read (logging, profiling, checkpoints, the random seed). A name counts wherever it is called: plain or
quoted, any case, any schema.

This check is one layer of several (see ``service/usersql/__init__.py``): a statement it let pass
still could not write, because the process that runs it cannot.
"""
from __future__ import annotations

import re

import duckdb

from cnnfilterdb.errors import first_paragraph

READING = duckdb.StatementType.SELECT
EXPLAIN = duckdb.StatementType.EXPLAIN
CREATE = duckdb.StatementType.CREATE
TRANSACTION = duckdb.StatementType.TRANSACTION
_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
READ_ONLY = "read-only: one reading statement (SELECT, or EXPLAIN [ANALYZE] of a SELECT) per request"
# Every function that takes a raw pointer (tests/test_sql_guard.py checks this is all of them);
# those that run SQL held in a string; those that write or act on the instance.
PYTHON_OBJECT_SCANS = frozenset({"pandas_scan", "arrow_scan", "arrow_scan_dumb", "python_map_function"})
SQL_FROM_STRINGS = frozenset({"query", "json_execute_serialized_sql"})
INSTANCE_ACTIONS = frozenset({"enable_logging", "disable_logging", "truncate_duckdb_logs", "write_log", "enable_profiling",
                              "disable_profiling", "checkpoint", "force_checkpoint", "setseed"})
REFUSED_FUNCTIONS = PYTHON_OBJECT_SCANS | SQL_FROM_STRINGS | INSTANCE_ACTIONS
# The characters DuckDB 1.5's parser reads as spaces and its tokenizer does not (all of them:
# tests/test_sql_guard.py asks the parser of every code point).
UNICODE_SPACES = frozenset(map(chr, [0xA0, *range(0x2000, 0x200C), 0x202F, 0x205F, 0x2060, 0x3000, 0xFEFF]))


class SqlRefused(Exception):
    """A statement that is not run: ``status`` (400/403), ``code`` and a one-line message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _utf8(sql: str) -> bytes:
    """The bytes DuckDB parses; refuses what it would parse differently from what we check."""
    try:
        raw = sql.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SqlRefused(400, "sql_error", f"the SQL text is not valid Unicode: a lone surrogate "
                                           f"(U+{ord(sql[e.start]):04X}) at character {e.start}") from None
    if "\0" in sql:
        raise SqlRefused(400, "sql_error", f"the SQL text holds a NUL character at character {sql.index(chr(0))}")
    space = next((i for i, ch in enumerate(sql) if ch in UNICODE_SPACES), None)
    if space is not None:
        raise SqlRefused(400, "sql_error", f"the SQL text holds U+{ord(sql[space]):04X}, a Unicode space, at character "
                                           f"{space}: DuckDB reads it as a space in some places and not in others; "
                                           f"write an ASCII space (in a string: chr({ord(sql[space])}))")
    return raw


def _tokens(raw: bytes) -> list[tuple[int, str, str]]:
    """(byte offset, kind, text) of each token of the UTF-8 text ``raw``. The tokenizer gives
    offsets only, and skips comments: a token's text is its first byte for operators (brackets
    and ``;`` are tokens of their own), its leading word for keywords, and the whole name for
    identifiers (quoted ones unquoted), lower-cased."""
    try:
        toks = duckdb.tokenize(raw.decode("utf-8"))
    except duckdb.Error as e:
        raise SqlRefused(400, "sql_error", first_paragraph(e)) from None
    out = []
    for p, kind in toks:
        if kind.name == "operator":
            text = raw[p:p + 1].decode("latin-1")
        elif kind.name in ("keyword", "identifier"):
            text = _name_at(raw, p)
        else:
            text = ""
        out.append((p, kind.name, text))
    return out


def _name_at(raw: bytes, p: int) -> str:
    """The word or the quoted identifier starting at byte ``p``, lower-cased ('' if neither)."""
    if raw[p:p + 1] == b'"':
        end = p + 1
        while True:
            end = raw.find(b'"', end)
            if end < 0:
                return ""
            if raw[end + 1:end + 2] != b'"':
                break
            end += 2
        return raw[p + 1:end].replace(b'""', b'"').decode("utf-8", "replace").lower()
    m = _WORD.match(raw, p)
    return m.group(0).decode("ascii").lower() if m else ""


def _count_statements(tokens: list[tuple[int, str, str]]) -> int:
    """Statements the user wrote: non-empty runs of tokens between top-level ``;``."""
    count, pending = 0, False
    for _, kind, text in tokens:
        if kind == "operator" and text == ";":
            count += pending
            pending = False
        else:
            pending = True
    return count + pending


def _explained(raw: bytes, tokens: list[tuple[int, str, str]]) -> str:
    """The statement inside ``EXPLAIN [ANALYZE | (options)] statement`` (``tokens`` of ``raw``,
    the first of them EXPLAIN), from the first byte of its first token."""
    i = 1
    if i < len(tokens) and tokens[i][2] in ("analyze", "analyse"):
        i += 1
    elif i < len(tokens) and tokens[i][2] == "(":
        # (option [value], ...): words and numbers only, no strings (a string of the options
        # would be one more place where what the check reads and what DuckDB runs could part)
        i += 1
        while i < len(tokens) and tokens[i][2] != ")":
            kind, text = tokens[i][1], tokens[i][2]
            if not (kind in ("keyword", "identifier", "numeric_const") or kind == "operator" and text == ","):
                raise SqlRefused(400, "sql_error", "EXPLAIN's options are words and numbers separated by commas, "
                                                   "e.g. EXPLAIN (ANALYZE, FORMAT json)")
            i += 1
        i += 1
    if i >= len(tokens):
        raise SqlRefused(400, "sql_error", "EXPLAIN of nothing")
    return raw[tokens[i][0]:].decode("utf-8")  # a token starts on a character's first byte


def _is_reading(statements: list) -> bool:
    """One SELECT, or the parser's expansion of one PIVOT: generated CREATEs (no text), then the SELECT."""
    *generated, last = statements
    return last.type == READING and all(s.type == CREATE and not s.query for s in generated)


def _is_explain(statements: list) -> bool:
    """One EXPLAIN, or the parser's expansion of EXPLAIN of a PIVOT: BEGIN, generated CREATEs,
    the EXPLAIN, COMMIT (all but the EXPLAIN without text of their own; the EXPLAIN's own text, as
    the parser regenerates it, is not used: it comes truncated when the user's ends in ``;``)."""
    if len(statements) == 1:
        return statements[0].type == EXPLAIN
    if len(statements) < 3:
        return False
    first, *middle, explain, last = statements
    return (explain.type == EXPLAIN and first.type == last.type == TRANSACTION and not first.query and not last.query
            and all(s.type == CREATE and not s.query for s in middle))


def _extract(con: duckdb.DuckDBPyConnection, text: str) -> list:
    try:
        return con.extract_statements(text)
    except duckdb.Error as e:
        raise SqlRefused(400, "sql_error", first_paragraph(e)) from None


def check_reading(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ``SqlRefused`` unless ``sql`` is one reading statement (see the module docstring)."""
    raw = _utf8(sql)
    statements = _extract(con, sql)
    tokens = _tokens(raw)
    n = _count_statements(tokens)
    if n != 1 or not statements:
        raise SqlRefused(400, "sql_one_statement", f"send exactly one statement per request (got {n})")
    if _is_reading(statements):
        return
    if not _is_explain(statements):
        kinds = sorted({s.type.name for s in statements} - {READING.name, TRANSACTION.name})
        raise SqlRefused(403, "sql_read_only", f"{READ_ONLY}; got {', '.join(kinds) or 'other statements'}")
    if not tokens or tokens[0][2] != "explain":
        raise SqlRefused(403, "sql_read_only", f"{READ_ONLY}; this text holds other statements than that")
    inner = _extract(con, _explained(raw, tokens))
    if not inner or not _is_reading(inner):
        kind = inner[-1].type.name if inner else "nothing"
        raise SqlRefused(403, "sql_read_only",
                         f"{READ_ONLY}; EXPLAIN only of a SELECT (EXPLAIN ANALYZE runs its statement); got {kind}")


def check_functions(sql: str) -> None:
    """Raise ``SqlRefused`` (403) if ``sql`` calls a function of ``REFUSED_FUNCTIONS``: a name
    token (plain or quoted, any case, any schema) followed by ``(``."""
    tokens = _tokens(_utf8(sql))
    for (_, kind, name), (_, next_kind, next_text) in zip(tokens, tokens[1:]):
        if kind in ("keyword", "identifier") and name in REFUSED_FUNCTIONS and next_kind == "operator" and next_text == "(":
            why = ("reads Python objects through raw pointers" if name in PYTHON_OBJECT_SCANS
                   else "runs SQL held in a string, out of the statement check's sight" if name in SQL_FROM_STRINGS
                   else "acts on the database instance rather than reading the store")
            raise SqlRefused(403, "sql_forbidden", f"{name}() is not available here: it {why}")
