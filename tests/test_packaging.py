"""Packaging: what litcache imports is what `pip install .` brings, CI installs it bare, and
`make test-slow` has tests to run."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys

from conftest import PYTHON, REPO, subprocess_env

#: Import names that differ from the distribution that provides them.
DISTRIBUTION_OF = {"PIL": "pillow", "google_crc32c": "google-crc32c", "distributed": "dask"}


def _install_requires() -> set[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = [line.split("#")[0].strip() for line in config["options"]["install_requires"].splitlines()]
    return {re.split(r"[\[<>=!~ ]", line)[0].lower() for line in lines if line}


def _third_party_imports() -> set[str]:
    names = set()
    for path in (REPO / "litcache").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("litcache", "__future__")}


def test_every_import_is_a_declared_requirement():
    declared = _install_requires()
    assert {"matplotlib", "google-crc32c"} <= declared  # sweep's plot; shards.py's index checksums
    missing = {name for name in _third_party_imports() if DISTRIBUTION_OF.get(name, name).lower() not in declared}
    assert not missing, f"imported by litcache but not in setup.cfg install_requires: {sorted(missing)}"


def test_ci_runs_the_tests_and_a_bare_install():
    run = (REPO / ".ci" / "run").read_text()
    assert "make test" in run and ".ci/install_check" in run  # README: .ci/run calls `make test`
    check = (REPO / ".ci" / "install_check").read_text()
    [install] = [line for line in check.splitlines() if "pip\" install" in line]
    assert install.rstrip().endswith(" -c constraints.txt .") and "[" not in install  # no extras
    for step in ("litcache\" --version", "litcache\" sweep", "pareto.png"):
        assert step in check, step


def test_slow_tests_exist_and_stay_out_of_the_default_run():
    def collect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args,
                               "tests/test_slow.py"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                              timeout=120)

    slow = collect("-m", "slow")  # what `make test-slow` runs
    assert slow.returncode == 0, slow.stdout + slow.stderr
    assert len([line for line in slow.stdout.splitlines() if "::" in line]) >= 2
    default = collect()  # setup.cfg's addopts leave them out of `make test`
    assert default.returncode == 5, default.stdout
    recipe = subprocess.run(["make", "-n", "test-slow"], cwd=REPO, capture_output=True, text=True)
    assert "pytest -q -m slow" in recipe.stdout
