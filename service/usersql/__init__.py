"""User SQL (``POST /v1/sql``, ``cnnfilterdb sql``): read-only by construction, bounded by force.

SPEC 12: nothing a user sends writes anything anywhere, and every query ends within its limits.
Each of these layers holds on its own (``tests/test_sql_hostile.py`` tests them one by one):

1. ``guard.py``: DuckDB's parser and tokenizer admit exactly one reading statement (``SELECT`` in
   all its forms, ``EXPLAIN [ANALYZE]`` of one).
2. ``worker.py``: the statement runs in a separate process whose only database is the catalog,
   opened ``read_only``; external access off except the store's shards, no extensions, no spill
   files, configuration locked; a fresh cursor per request, so no object outlives its request.
3. ``confine.py``: that process is chrooted to the store (every path it sees is relative to the
   store), may write no file and open no TCP connection (Landlock), has a capped address space
   (``RLIMIT_AS``), a CPU-time limit per query, and the lowest priority (nice 19).
4. ``pool.py``: a fixed number of such workers; a full pool answers 429 at once; a worker that
   overruns the time limit by ``grace_s`` is killed and replaced, whatever its query does.
"""
