"""``strata bench NAME [flags]``: run ``benchmarks/bench_NAME.py`` from the source checkout.

Benchmarks live beside the tests (not in the wheel) because they write result files into the
repository; this command only finds and runs them with the given flags.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from strata.errors import StrataError


def benchmarks_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    folder = benchmarks_dir()
    return sorted(p.stem.removeprefix("bench_") for p in folder.glob("bench_*.py")) if folder.is_dir() else []


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: strata bench NAME [flags]   (NAME: " + (", ".join(names) or "none found") + ")")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in names:
        choices = ", ".join(names) or "(none here: run from a source checkout that has benchmarks/)"
        raise StrataError(f"unknown benchmark {name!r}; choose one of {choices}")
    script = benchmarks_dir() / f"bench_{name}.py"
    saved = sys.argv
    sys.argv = [str(script), *rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = saved
    return 0
