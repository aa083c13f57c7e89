"""Installing the bridge (issue 11).

A normal install (item 2): `pip install .`, as a container or a buildpack runs it, holds what the release
phase (`bridge db upgrade`) and `bridge demo` read at run time. The wheel is built from a copy of the
checkout, installed into a directory of its own and run from outside the repository.

bin/*'s install into .venv (bin/_venv.sh) runs pip only when what decides that install changed."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from contextlib import closing
from pathlib import Path

import pytest

from bridge.migrate import head
from support.processes import ROOT

# What a fresh checkout lacks: the venv, caches, and what earlier builds left (a stale build/ would ship).
NOT_IN_A_CHECKOUT = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                           ".pytest_cache", ".hypothesis")


def pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pip {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` builds from this checkout (without build isolation: no index needed)."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "checkout"
    shutil.copytree(ROOT, source, ignore=NOT_IN_A_CHECKOUT)
    pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp / "dist"), ".", cwd=source)
    [built] = (tmp / "dist").glob("bridge-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a directory of its own (its dependencies are the test venv's)."""
    target = tmp_path_factory.mktemp("site-packages")
    pip("install", "--no-deps", "--target", str(target), str(wheel), cwd=target)
    return target


def files_under(directory: Path) -> set[str]:
    return {path.relative_to(ROOT).as_posix() for path in directory.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}


def test_the_wheel_holds_the_code_the_migrations_and_the_demo_events_only(wheel):
    """Every file of bridge/ and of migrations/ (as bridge/migrations/), and the demo's events; not the
    tests' own fixtures. pyproject.toml lists the packages: one left out of the list fails here, by name."""
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    expected = (files_under(ROOT / "bridge") | {f"bridge/{name}" for name in files_under(ROOT / "migrations")}
                | {"bridge/fixtures/onesignal-events.json"})
    assert shipped == expected


def run_installed(installed: Path, cwd: Path, env: dict[str, str], *args: str) -> str:
    """`python -m bridge ARGS` run from `cwd` on the installed copy; returns its stdout. `-S` leaves out the
    test venv's .pth files, so the editable install of this checkout cannot stand in for what the wheel
    lacks; the venv's packages are on PYTHONPATH after the installed copy, as a normal install has them."""
    venv_packages = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    path = os.pathsep.join([str(installed), *venv_packages])
    done = subprocess.run([sys.executable, "-S", "-m", "bridge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env, "PYTHONPATH": path})
    assert done.returncode == 0, f"bridge {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_a_normal_install_migrates_and_runs_the_demo_from_outside_the_repository(installed, tmp_path):
    database = tmp_path / "bridge.db"
    env = {"DATABASE_URL": f"sqlite:///{database}", "REDIS_URL": ""}
    latest = head(env["DATABASE_URL"])
    said = run_installed(installed, tmp_path, env, "db", "upgrade").splitlines()
    assert said[0].startswith("applied 0001 (") and said[-1] == f"database is at {latest}, the latest revision"
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(latest,)]
    shown = run_installed(installed, tmp_path, env, "demo")
    assert "40 accepted, 4 skipped (no External User ID), 2 ignored" in shown
    assert "Bridge stats: 40 delivered, 0 pending, 0 dead" in shown


# -- bin/*'s install into .venv (issue 11): only when what decides it changed -------------------------

FAKE_VENV_PYTHON = """#!/bin/sh
# The venv's python, except that pip is not run: each call is recorded, and fails when FAIL_PIP is set.
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "$*" >> "$(dirname "$0")/../pip-calls"
  [ -z "$FAIL_PIP" ]
  exit
fi
exec {python} "$@"
"""


@pytest.fixture
def checkout(tmp_path) -> Path:
    """bin/ and pyproject.toml in a directory of their own, with a .venv whose python records pip calls."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "bin", root / "bin")
    shutil.copy(ROOT / "pyproject.toml", root)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_VENV_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    return root


def install_venv(root: Path, asked: str, pip_fails: bool = False) -> list[str]:
    """bin/_venv.sh's install_venv ASKED, as bin/test runs it; returns the pip calls it made."""
    calls = root / ".venv" / "pip-calls"
    calls.unlink(missing_ok=True)
    done = subprocess.run(["bash", "-c", '. bin/_venv.sh && install_venv "$1"', "install_venv", asked], cwd=root,
                          env={**os.environ, "FAIL_PIP": "yes" if pip_fails else ""}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == (1 if pip_fails else 0), done.stdout + done.stderr
    return calls.read_text().splitlines() if calls.exists() else []


def installs(asked: str) -> list[str]:
    """The pip calls of an install of `asked`: pip brought up to date, then the project, editable."""
    return ["-m pip install --quiet --disable-pip-version-check --upgrade pip",
            f"-m pip install --quiet --disable-pip-version-check -e {asked}"]


def test_bin_scripts_install_only_when_what_decides_the_install_changed(checkout, tmp_path):
    assert install_venv(checkout, ".[test]") == installs(".[test]")
    assert install_venv(checkout, ".[test]") == []  # nothing changed: code is read from the checkout
    assert install_venv(checkout, ".") == installs(".")  # other extras
    assert install_venv(checkout, ".[test]") == install_venv(checkout, ".") == []  # each remembered
    with (checkout / "pyproject.toml").open("a") as pyproject:
        pyproject.write("# a change\n")
    assert install_venv(checkout, ".[test]") == installs(".[test]")
    assert install_venv(checkout, ".[test]") == []

    moved = tmp_path / "moved"  # the editable install points at the old place
    shutil.copytree(checkout, moved)
    assert install_venv(moved, ".[test]") == installs(".[test]")

    with (checkout / "pyproject.toml").open("a") as pyproject:
        pyproject.write("# another change\n")
    assert install_venv(checkout, ".[test]", pip_fails=True) == installs(".[test]")[:1]
    assert install_venv(checkout, ".[test]") == installs(".[test]")  # a failed install is not remembered
