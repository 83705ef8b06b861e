"""One exception type for problems the user can fix.

The CLI prints a ``StrataError`` as one line (no traceback) and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse


class StrataError(Exception):
    """A user-facing error: the message names the problem and the fix in one line."""

    exit_code = 2  # bad input: nothing was started


class RunFailed(StrataError):
    """A run that started and could not finish honestly (e.g. it diverged): one line, exit code 1."""

    exit_code = 1


def parse_or_refuse(parser: argparse.ArgumentParser, argv: list[str], usage: str) -> argparse.Namespace:
    """``parser.parse_known_args(argv)`` (a parser made with ``exit_on_error=False``) where a bad value or an
    unknown flag is one StrataError line ending in ``usage``, not argparse's usage dump and exit."""
    try:
        args, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as error:
        raise StrataError(f"{error}; {usage}") from error
    if extra:
        raise StrataError(f"unknown argument {extra[0]!r}; {usage}")
    return args
