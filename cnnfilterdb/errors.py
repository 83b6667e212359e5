"""The project's one kind of error a user can act on.

``UserError`` is what the CLI prints as one line (``cnnfilterdb: error: ...``) with exit code 1,
instead of a traceback. Each layer raises its own subclass: the store ``StoreError``
(cnnfilterdb/store.py), the ingest's readers ``IngestError`` (ingest/errors.py); a caller that
wants to tell them apart catches the subclass.
"""
from __future__ import annotations


class UserError(Exception):
    """A fault the user can act on; its message is one line naming what and where."""
