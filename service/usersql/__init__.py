"""User SQL (``POST /v1/sql``, ``cnnfilterdb sql``): read-only by construction, bounded by force.

SPEC 12: nothing a user sends writes anything anywhere, and every query ends within its limits.
Each of these layers holds on its own (``tests/test_sql_hostile.py`` tests them one by one):

1. ``guard.py``: DuckDB's parser and tokenizer, on the text's UTF-8 bytes as DuckDB reads them,
   admit exactly one reading statement (``SELECT`` in all its forms, ``EXPLAIN [ANALYZE]`` of
   one); the Python-object scans (``pandas_scan``, ``arrow_scan``, ...) and ``query()`` are refused
   wherever they are named.
2. ``worker.py``: the statement runs in a separate process whose only database is the catalog,
   opened ``read_only``; external access off except the store's shards, no extensions, no spill
   files, no replacement scans of Python variables, configuration locked; a DuckDB instance per
   request, so no object outlives its request.
3. ``confine.py`` (entered first by ``boot.py``): that process has a mount namespace of its own
   where the store is mounted read-only and is its root (chroot), holds no capability and has
   ``no_new_privs``; independently, Landlock forbids it to write any file or open a TCP
   connection. It also has a capped address space (``RLIMIT_AS``), a CPU-time limit per query,
   and the lowest priority (nice 19).
4. ``pool.py``: a fixed number of such workers; a full pool answers 429 at once; a worker that
   overruns the time limit by ``grace_s`` is killed and replaced, whatever its query does.

``tests/test_sql_sandbox.py`` switches layers off (``SqlLimits.switched_off_for_tests``, never a
setting) to show each kernel mechanism refusing every write alone.
"""
