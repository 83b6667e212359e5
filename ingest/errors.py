"""The ingest's own error: a filter source (dataset.h5, a model file, a manifest) that cannot be
read as one, or metadata given for it that cannot be stored.

``IngestError`` is a ``cnnfilterdb.errors.UserError`` (one line naming what and where, which the
CLI prints and exits 1 for), not the store's error: ``ingest_paths(skip_bad=True)`` skips a file
whose reading raised it, and a fault of the store itself is never mistaken for a bad input.
"""
from __future__ import annotations

from pathlib import Path

from cnnfilterdb.errors import UserError


class IngestError(UserError):
    """A bad input: its message is one line, ``"<path>: <reason>"`` when a file is at fault."""


def file_error(path: Path, message: str) -> IngestError:
    """IngestError ``"<path>: <message>"`` for the input file at ``path``."""
    return IngestError(f"{path}: {message}")
