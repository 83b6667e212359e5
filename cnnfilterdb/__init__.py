"""CNN Filter DB: trained 3x3 convolution filters as a database and a service.

``db = cnnfilterdb.open("filterdb")`` reads a store in this process (``cnnfilterdb/api.py``);
``cnnfilterdb.Client("http://127.0.0.1:8000")`` has the same methods over HTTP (``client.py``).
Both are loaded on first use, so that ``import cnnfilterdb`` stays cheap.
"""
__version__ = "0.1.0"

# name -> the module that defines it (imported on first access: PEP 562)
_LAZY = {
    "open": "api", "FilterDB": "api",
    "Client": "client", "ServiceError": "client",
    "Result": "results", "DivergenceResult": "results", "PcaResult": "results", "HistogramsResult": "results",
    "KdeResult": "results", "Density2dResult": "results", "DegenerateResult": "results",
    "SimilarResult": "results", "FilterBatches": "results",
    "SelectionError": "selection", "EmptySelectionError": "selection",
    "StoreError": "layout", "VersionError": "catalog", "UserError": "errors", "SqlError": "errors", "NotFound": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnfilterdb' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
