"""The SQL of the store, kept as .sql files: the DuckDB shell and the service both load these.
``sql_string`` quotes a value as a SQL string literal, for the statements that take no
parameters (a view's file list, ATTACH, COPY ... TO)."""
from importlib import resources


def read(name: str) -> str:
    """Text of ``sql/<name>.sql``."""
    return resources.files(__name__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def sql_string(s: str) -> str:
    """``s`` as a SQL string literal: in single quotes, each quote doubled."""
    return "'" + s.replace("'", "''") + "'"
