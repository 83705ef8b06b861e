"""The lock file: it covers every declared dependency inside its declared range, and `check` sees drift."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires, version

from conftest import REPO_ROOT
from packaging.requirements import Requirement

LOCK = REPO_ROOT / "constraints.txt"
TOOL = REPO_ROOT / "tools" / "lock.py"


def pins() -> dict[str, str]:
    sys.path.insert(0, str(TOOL.parent))
    try:
        import lock
    finally:
        sys.path.pop(0)
    return lock.read_lock(LOCK)


def declared() -> list[Requirement]:
    """pyproject.toml's dependencies and extras, as installed (the venv is rebuilt when pyproject changes)."""
    return [Requirement(r) for r in requires("strata")]


def test_every_declared_dependency_is_pinned_inside_its_range():
    locked = pins()
    for req in declared():
        key = req.name.lower().replace("_", "-")
        assert key in locked, f"{req.name} is declared but not in constraints.txt: run make lock"
        assert req.specifier.contains(locked[key], prereleases=True), (req, locked[key])


def run_check(lock_text: str, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "constraints.txt"
    path.write_text(lock_text)
    return subprocess.run([sys.executable, str(TOOL), "check", str(path)], capture_output=True, text=True)


def test_check_accepts_this_environment_and_reports_a_drifted_pin(tmp_path):
    have = version("pytest")
    ok = run_check(f"pytest=={have}\nnot-installed-anywhere==1.0\n", tmp_path)
    assert ok.returncode == 0, ok.stderr
    drift = run_check("pytest==0.0.1\n", tmp_path)
    assert drift.returncode == 1
    assert f"pytest {have} (lock: 0.0.1)" in drift.stderr


def test_check_ignores_the_local_build_label(tmp_path):
    # torch 2.13.0+cpu and 2.13.0+cu128 are the same release: the lock names the release only.
    torch_version = version("torch")
    release = torch_version.split("+")[0]
    assert run_check(f"torch=={release}\n", tmp_path).returncode == 0
