"""The project's one kind of error a user can act on, and how an error is worded in one line.

``UserError`` is what the CLI prints as one line (``cnnfilterdb: error: ...``) with exit code 1,
instead of a traceback. Each layer raises its own subclass: the store ``StoreError``
(cnnfilterdb/layout.py), the ingest's readers ``IngestError`` (ingest/errors.py); a caller that
wants to tell them apart catches the subclass. ``first_line``, ``first_paragraph`` and
``shown_path`` word another error, or a path, so that a message stays one bounded line.
"""
from __future__ import annotations

import os


class UserError(Exception):
    """A fault the user can act on; its message is one line naming what and where."""


class NotFound(UserError, LookupError):
    """No such model, layer or filter (a LookupError as well)."""


class SqlError(UserError):
    """A query of ``db.sql`` that DuckDB refused or could not run (a syntax error, an unknown
    table, a write to the read-only catalog): DuckDB's message, in one paragraph."""


def first_line(e: BaseException) -> str:
    """The first line of the error's message (its type's name if it has none)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def first_paragraph(e: BaseException, limit: int = 500) -> str:
    """The error's lines up to its first blank one, joined: a DuckDB error with its hint
    ('Did you mean "filters"?', 'Candidate bindings: ...') but not the query it quotes."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = text.split("\n\n", 1)[0].splitlines()
    out = "; ".join(line.strip() for line in lines if line.strip())
    return out if len(out) <= limit else out[:limit] + "..."


def shown_path(path: str | os.PathLike, limit: int = 120) -> str:
    """A path as an error message shows it: whole up to ``limit`` characters, else its start and
    end around how long it is (a 5,000-character path is not a message)."""
    text = str(path)
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}...{text[-limit // 4:]} ({len(text):,} characters)"
