"""The SQL worker's entry point: ``python -P -m cnnfilterdb.service.usersql.boot STORE CONFIG_JSON``.

Its first step is the one that needs a process of one thread: a mount namespace of its own (and,
unless root, a user namespace; ``confine.enter_namespaces``). Only then does it import the worker,
whose DuckDB starts threads as it loads. Nothing here but the standard library runs before it.
"""
from __future__ import annotations

import os
import sys

from .confine import enter_namespaces


def main() -> int:
    parent = os.getppid()
    namespaced = enter_namespaces()
    from .worker import main as worker_main

    return worker_main(sys.argv[1:], namespaced, parent)


if __name__ == "__main__":
    sys.exit(main())
