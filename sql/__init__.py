"""The SQL of the store, kept as .sql files: the DuckDB shell and the service both load these."""
from importlib import resources


def read(name: str) -> str:
    """Text of ``sql/<name>.sql``."""
    return resources.files(__name__).joinpath(f"{name}.sql").read_text(encoding="utf-8")
