"""What the tests need (issue 21, part 5): the README's test command installs the `test` extra
alone, which pulls no torch (PyPI's is a CUDA build of several GB) and no PySpark; the tests that
need torch, chromium or Spark (PySpark and Java) skip without them, saying what to install, and fail
instead where CI is set (tests/conftest.py), as in .ci/run, which installs them all."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, requires

import pytest
from packaging.requirements import Requirement

from . import conftest
from .helpers import REPO

HEAVY = re.compile(r"^(torch|torchvision|torchaudio|triton|pyspark|nvidia-.*|jax|jaxlib|tensorflow)$")
PYTEST_LINE = ".venv/bin/python -m pytest -q"
TEST_COMMAND = f"python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && {PYTEST_LINE}"  # the README's


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def test_the_test_extra_pulls_no_torch_and_no_pyspark():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = project["dependencies"] + project["optional-dependencies"]["test"]
    assert [r for r in direct if HEAVY.match(_name(r))] == []
    # Nor through what they require, as far as this environment has them installed.
    seen, todo, reached = set(), [(_name(r), ()) for r in direct], []
    while todo:
        name, path = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for r in map(Requirement, reqs):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                sub = re.sub(r"[-_.]+", "-", r.name).lower()
                (reached.append((*path, name, sub)) if HEAVY.match(sub) else todo.append((sub, (*path, name))))
    assert reached == []
    assert {"torch", "spark"} <= set(project["optional-dependencies"])  # the extras the skip reasons name


@pytest.mark.parametrize("value, ci", [(None, False), ("", False), ("0", False), ("false", False), ("No", False),
                                       ("1", True), ("true", True), ("yes", True)])
def test_ci_is_set(value, ci):
    assert conftest.in_ci({} if value is None else {"CI": value}) is ci


def test_a_missing_need_skips_saying_what_to_install_and_fails_where_ci_is_set(monkeypatch):
    monkeypatch.setattr(conftest, "_found", lambda part: None)
    expect = {
        "torch": ["pip install torch --index-url https://download.pytorch.org/whl/cpu"],
        "chromium": ["apt-get install chromium", "pip install -e '.[test]'"],
        "spark": ["apt-get install openjdk-17-jre-headless", "pip install -e '.[spark]'"],
    }
    for what, installs in expect.items():
        with pytest.raises(pytest.skip.Exception) as e:
            conftest.need(what, environ={})
        assert all(i in str(e.value) for i in installs) and "\n" not in str(e.value), str(e.value)
        with pytest.raises(pytest.fail.Exception) as e:
            conftest.need(what, environ={"CI": "1"})
        assert str(e.value).startswith("CI is set, and ") and all(i in str(e.value) for i in installs), str(e.value)
    monkeypatch.setattr(conftest, "_found", lambda part: f"/found/{part}")
    assert conftest.need("chromium", environ={"CI": "1"}) == "/found/chromium"


def test_the_marker_skips_before_any_fixture_and_fails_where_ci_is_set(tmp_path):
    """A test marked requires('spark'), run by pytest with no Java on PATH: skipped with the reason
    (its module's store never built), and failed with CI=1 (an error in its setup: exit code 1)."""
    test = "tests/test_cli_faults.py::test_spark_refresh_on_a_full_disk_is_one_line_and_changes_nothing"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "JAVA_HOME", "PYTEST_ADDOPTS")}
    env["PATH"] = str(tmp_path)  # no java there
    for ci, rc, outcome in [(None, 0, "1 skipped"), ("1", 1, "1 error")]:
        run_env = env if ci is None else {**env, "CI": ci}
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=REPO, env=run_env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == rc and outcome in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
        assert "apt-get install openjdk-17-jre-headless" in p.stdout, p.stdout[-3000:]
        assert ("CI is set, and spark tests need" in p.stdout) is (ci is not None), p.stdout[-3000:]


def test_a_pt_ingest_without_torch_is_one_line_naming_the_cpu_build(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from cnnfilterdb.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "ingest", "--allow-missing", str(REPO / "tests" / "data" / "models" / "pnet.pt"),
                        "--db", str(tmp_path / "db")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("cnnfilterdb: error: ") and "is a PyTorch file, and reading it needs torch" in p.stderr
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in p.stderr
    assert "pip install 'cnnfilterdb[torch]'" in p.stderr
    assert not (tmp_path / "db" / "catalog.duckdb").exists()


def test_ci_runs_the_readme_test_command_with_everything_installed():
    """The README's test command installs the test extra alone; .ci/run installs torch (the CPU
    build on this kind of machine's disk), the test and spark extras, chromium and a JRE, sets CI=1,
    and ends with the README's test command's pytest."""
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert lines[-1] == PYTEST_LINE and lines[-2] == "export CI=1"
    assert ".venv/bin/pip install --quiet torch==2.13.0" in lines
    assert ".venv/bin/pip install --quiet -e '.[test,spark]'" in lines
    assert "need+=(chromium)" in " ".join(lines) and "need+=(openjdk-17-jre-headless)" in " ".join(lines)
    readme = [line for line in (REPO / "README.md").read_text().splitlines() if "-m pytest" in line]
    assert readme[:1] == [TEST_COMMAND], readme  # no torch: PyPI's is a CUDA build of several GB
