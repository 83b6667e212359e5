"""The command line: info, sql, demo; the README's shell queries in the real DuckDB shell."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from .helpers import REPO, cli_main, open_catalog, run_cli

DUCKDB_SHELL = str(Path(sys.executable).parent / "duckdb")


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_v1) -> Path:
    db = tmp_path_factory.mktemp("cli") / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    return db


def test_info(store, capsys):
    assert cli_main(["info", "--db", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    with open_catalog(store) as con:
        models, layers, filters = con.execute(
            "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM layers), (SELECT count(*) FROM filters)").fetchone()
    assert (info["models"], info["layers"], info["filters"]) == (models, layers, filters) == (12, layers, 60_000)
    assert info["basis"]["version"] == 1 and info["basis"]["n_filters"] == 60_000
    shard_bytes = sum(p.stat().st_size for p in (store / "shards").glob("*.parquet"))
    assert info["bytes"]["shards"] == shard_bytes and info["bytes"]["raw_float32"] == 60_000 * 36
    assert cli_main(["info", "--db", str(store)]) == 0
    text = capsys.readouterr().out
    assert "60,000" in text and "basis" in text


def test_info_on_missing_store(tmp_path, capsys):
    assert cli_main(["info", "--db", str(tmp_path / "nothing")]) == 1
    assert "no store here" in capsys.readouterr().err


def test_sql(store, capsys):
    assert cli_main(["sql", "SELECT task, count(*) AS n FROM models GROUP BY task ORDER BY task",
                     "--db", str(store), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    with open_catalog(store) as con:
        want = con.execute("SELECT task, count(*) FROM models GROUP BY task ORDER BY task").fetchall()
    assert got["columns"] == ["task", "n"] and [tuple(r) for r in got["rows"]] == want
    assert got["truncated"] is False


def test_sql_is_read_only(store, capsys):
    assert cli_main(["sql", "DELETE FROM models", "--db", str(store)]) == 1
    assert "read-only" in capsys.readouterr().err
    with open_catalog(store) as con:
        assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 12


def test_sql_csv_lines_end_in_lf_and_pipe_into_remove(tmp_path, sample_v1):
    """--format csv ends its lines in \\n, not csv's \\r\\n: ids piped into `remove` are ids ('6\\r' was not)."""
    import shlex

    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    cli = f"{shlex.quote(sys.executable)} -m cnnfilterdb.cli"
    query = shlex.quote("SELECT model_id FROM models ORDER BY model_id DESC LIMIT 2")
    p = subprocess.run(f"{cli} sql {query} --format csv --db {shlex.quote(str(db))}", shell=True, capture_output=True)
    assert p.returncode == 0 and b"\r" not in p.stdout
    with open_catalog(db) as con:
        ids = [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY model_id DESC LIMIT 2").fetchall()]
    assert p.stdout == ("model_id\n" + "".join(f"{i}\n" for i in ids)).encode()
    p = subprocess.run(f"{cli} sql {query} --format csv --db {shlex.quote(str(db))} | tail -n +2 "
                       f"| xargs {cli} remove --db {shlex.quote(str(db))}", shell=True, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    with open_catalog(db) as con:
        left = {r[0] for r in con.execute("SELECT model_id FROM models").fetchall()}
    assert len(left) == 10 and not left & set(ids)


def test_an_unknown_value_with_no_near_one_says_how_to_list_them_from_the_cli(store, tmp_path, capsys):
    """export's hint is one a CLI user can follow (it said only GET /v1/fields): its SQL runs in `cnnfilterdb sql`."""
    assert cli_main(["export", "--where", '{"task": "zzzz"}', "-o", str(tmp_path / "f.parquet"), "--db", str(store)]) == 1
    err = capsys.readouterr().err
    assert "'zzzz' is not a task of any model" in err and "cnnfilterdb sql" in err and "GET /v1/fields" in err
    query = re.search(r"(SELECT DISTINCT task FROM \w+)", err).group(1)
    assert cli_main(["sql", query, "--db", str(store), "--format", "json"]) == 0
    with open_catalog(store) as con:
        tasks = {r[0] for r in con.execute("SELECT DISTINCT task FROM models").fetchall()}
    assert {r[0] for r in json.loads(capsys.readouterr().out)["rows"]} == tasks


def test_env_var_selects_the_store(store, tmp_path):
    import os

    env = {**os.environ, "CNNFILTERDB_DB": str(store)}
    p = subprocess.run([sys.executable, "-m", "cnnfilterdb.cli", "info", "--json"], capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)["filters"] == 60_000


def _readme_queries() -> list[str]:
    text = (REPO / "docs/sql.md").read_text()
    block = re.search(r"<!-- shell-queries -->(.*?)<!-- /shell-queries -->", text, re.S).group(1)
    return [q.strip() for q in re.findall(r"```sql\n(.*?)```", block, re.S)]


def test_readme_queries_in_the_duckdb_shell(store, tmp_path):
    """The README's worked queries run in the real shell, read-only, from another directory."""
    queries = _readme_queries()
    assert len(queries) == 3
    outputs = []
    for q in queries:
        # As the README says: the views' shard paths resolve against the store directory.
        p = subprocess.run([DUCKDB_SHELL, "-readonly", "-json", "-cmd", f"SET file_search_path = '{store}'",
                            str(store / "catalog.duckdb"), "-c", q],
                           capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 0 and not p.stderr, p.stderr
        outputs.append(json.loads(p.stdout))
    by_task, one_layer, sparsest = outputs
    with open_catalog(store) as con:
        n_task = con.execute("SELECT count(*) FROM filters JOIN models USING (model_id) WHERE task = 'Classification'").fetchone()[0]
        first, last = con.execute("SELECT filter_id_first, filter_id_last FROM layers WHERE layer_id = 5").fetchone()
        top = con.execute("SELECT layer_id FROM layers ORDER BY sparsity DESC, layer_id LIMIT 10").fetchall()
    assert len(by_task) == min(n_task, 10) and all(len(r["w"]) == 9 for r in by_task)
    assert [r["filter_id"] for r in one_layer] == list(range(first, last + 1))
    assert all(len(r["w3x3"]) == 3 and all(len(row) == 3 for row in r["w3x3"]) for r in one_layer)
    assert [r["layer_id"] for r in sparsest] == [t[0] for t in top]


def test_demo_builds_a_labelled_sample(tmp_path, capsys):
    db = tmp_path / "demo"
    assert cli_main(["demo", "--db", str(db), "--models", "6", "--filters", "20000", "--no-serve"]) == 0
    with open_catalog(db) as con:
        assert con.execute("SELECT count(*) FROM models WHERE source LIKE 'SAMPLE%'").fetchone()[0] == 6
        assert con.execute("SELECT count(*) FROM filters").fetchone()[0] == 20_000
        assert con.execute("SELECT count(*) FROM layers WHERE sparsity = 1").fetchone()[0] >= 1


def test_serve_answers_over_http(store):
    """`cnnfilterdb serve` runs uvicorn: a real HTTP round trip."""
    import httpx

    from .helpers import start_serve

    p, _, port = start_serve(["--db", str(store), "--sql-timeout-s", "2.5", "--sql-max-rows", "777"], timeout=30)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        stats = httpx.get(f"http://127.0.0.1:{port}/v1/stats").json()
        assert stats["filters"] == 60_000
        assert stats["limits"]["sql_timeout_s"] == 2.5 and stats["limits"]["sql_max_rows"] == 777
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["info"]["title"] == "CNN Filter DB"
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_a_catalog_of_another_layout_is_refused(tmp_path, sample_v01, capsys):
    import shutil

    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    with duckdb.connect(str(db / "catalog.duckdb")) as con:
        con.execute("UPDATE _store SET schema_version = 99")
    before = (db / "catalog.duckdb").read_bytes()
    assert cli_main(["info", "--db", str(db)]) == 1
    assert "layout version 99" in capsys.readouterr().err
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 1
    assert "layout version 99" in capsys.readouterr().err
    r = TestClient(create_app(Settings(db=db))).get("/v1/stats")
    assert r.status_code == 503 and "layout version 99" in r.json()["error"]["message"]
    assert str(tmp_path) not in r.text  # a client sees store-relative names only
    assert (db / "catalog.duckdb").read_bytes() == before
    shutil.rmtree(db)


@pytest.mark.parametrize("command", [["serve"], ["demo", "--filters", "1000", "--models", "2"]])
def test_a_taken_port_is_one_line_before_any_work(tmp_path, command):
    import socket

    from .helpers import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(*command, "--db", str(tmp_path / "db"), "--port", str(port))
    assert code == 1
    assert err.strip().splitlines() == [f"cnnfilterdb: error: cannot listen on 127.0.0.1:{port} (Address already in use); "
                                        "choose another with --port"]
    assert not (tmp_path / "db").exists()  # the demo built nothing


@pytest.mark.parametrize("command", [
    ["sql", "SELECT * FROM filters LIMIT 100000", "--max-rows", "100000"],
    ["sql", "SELECT * FROM filters LIMIT 100000", "--max-rows", "100000", "--format", "csv"],
    ["info"],
    ["drift", "--group-by", "model"],
])
def test_output_piped_into_head_ends_quietly(store, command):
    """`cnnfilterdb ... | head -1`: the reader goes away early; no BrokenPipeError traceback."""
    import os
    import shlex

    cli = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "cnnfilterdb.cli", *command, "--db", str(store)])
    env = dict(os.environ)
    p = subprocess.run(f'{cli} | head -1; echo "exit ${{PIPESTATUS[0]}}"', shell=True, executable="/bin/bash",
                       capture_output=True, text=True, env=env)
    assert p.stderr == ""
    first, status = p.stdout.splitlines()
    assert first and status in ("exit 0", "exit 141")


def test_demo_builds_its_store_apart(tmp_path, monkeypatch, capsys):
    """The demo's store is ./filterdb-sample, not ./filterdb nor $CNNFILTERDB_DB; --db overrides."""
    from cnnfilterdb.cli import demo_db

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNFILTERDB_DB", str(tmp_path / "real"))
    assert demo_db(None) == tmp_path / "filterdb-sample"
    assert demo_db(Path("elsewhere")) == tmp_path / "elsewhere"
    assert cli_main(["demo", "--models", "3", "--filters", "3000", "--no-serve"]) == 0
    err = capsys.readouterr().err
    assert f"building the demo's sample store in {tmp_path / 'filterdb-sample'}" in err
    assert "synthetic sample data" in err
    assert (tmp_path / "filterdb-sample" / "catalog.duckdb").is_file()
    assert not (tmp_path / "real").exists() and not (tmp_path / "filterdb").exists()
    assert cli_main(["demo", "--no-serve"]) == 0  # the same store again: used as it is
    assert f"using the existing store at {tmp_path / 'filterdb-sample'}: 3 synthetic sample models" in capsys.readouterr().err


def test_demo_rebuild_leaves_a_store_of_real_models(tmp_path, capsys):
    """--rebuild deletes the sample store to write it anew; never a store holding real models."""
    import numpy as np

    from .helpers import store_snapshot

    np.savez(tmp_path / "real.npz", conv=np.random.default_rng(0).normal(size=(4, 2, 3, 3)).astype(np.float32))
    db = tmp_path / "db"
    assert cli_main(["ingest", "--allow-missing", str(tmp_path / "real.npz"), "--db", str(db)]) == 0
    before = store_snapshot(db)
    capsys.readouterr()
    assert cli_main(["demo", "--db", str(db), "--rebuild", "--no-serve", "--models", "2", "--filters", "1000"]) == 1
    assert "holds 1 real model(s): --rebuild would delete them" in capsys.readouterr().err
    assert store_snapshot(db) == before


def test_readme_export_copy_in_the_duckdb_shell(store, tmp_path):
    """The README's `COPY ... TO 'out.parquet'` runs in the real shell on the catalog opened
    read-only, from another directory, and writes the selection's filters there."""
    text = (REPO / "docs/sql.md").read_text()
    block = re.search(r"<!-- export-copy -->(.*?)<!-- /export-copy -->", text, re.S).group(1)
    copy, = [q.strip() for q in re.findall(r"```sql\n(.*?)```", block, re.S)]
    p = subprocess.run([DUCKDB_SHELL, "-readonly", "-cmd", f"SET file_search_path = '{store}'",
                        str(store / "catalog.duckdb"), "-c", copy], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and not p.stderr, p.stderr
    with open_catalog(store) as con:
        want = con.execute("SELECT filter_id, model_id, layer_id, w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM filters "
                           "JOIN models USING (model_id) WHERE task = 'Classification' ORDER BY filter_id").fetchall()
    with duckdb.connect() as con:
        got = con.execute(f"SELECT * FROM '{tmp_path / 'out.parquet'}' ORDER BY filter_id").fetchall()
        types = [t for _, t, *_ in con.execute(f"DESCRIBE SELECT * FROM '{tmp_path / 'out.parquet'}'").fetchall()]
    assert got == want and len(want) > 0
    assert types == ["BIGINT", "INTEGER", "INTEGER"] + ["FLOAT"] * 9
    assert not list(store.glob("out.*"))


def test_flags_take_underscores_and_mistakes_get_hints(v1_store):
    code, out, err = run_cli("drift", "--group_by", "task", "--as_of", "1", "--json", "--db", str(v1_store))
    assert code == 0, err
    assert json.loads(out)["store_version"] == 1
    code, _, err = run_cli("drift", "--group-by", "Task", "--db", str(v1_store))
    assert code == 1 and "unknown group_by 'Task' (did you mean 'task'?)" in err
    code, _, err = run_cli("sql", "SELECT count(*) FROM filter", "--db", str(v1_store))
    assert code == 1 and 'Did you mean "filters"' in err
    # A flag's value is left alone, underscores and all.
    code, out, err = run_cli("sql", "SELECT 'a_b' AS x", "--format", "csv", "--db", str(v1_store))
    assert code == 0 and "a_b" in out


def test_a_command_builds_its_own_options_only():
    """main builds the parser of the command it runs (a command starts without importing what the
    others' options need): each command's options are the full parser's, and COMMANDS lists them all."""
    import argparse

    from cnnfilterdb.cli import COMMANDS, build_parser

    def subparsers(p):
        (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        return sub.choices

    full = subparsers(build_parser())
    assert set(full) == set(COMMANDS)
    for command in COMMANDS:
        own = subparsers(build_parser(command))
        assert set(own) == set(full)
        assert [a.option_strings for a in own[command]._actions] == [a.option_strings for a in full[command]._actions]
