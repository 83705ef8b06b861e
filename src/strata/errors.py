"""One exception type for problems the user can fix.

The CLI prints a ``StrataError`` as one line (no traceback) and exits non-zero; anything
else is a bug and keeps its traceback.
"""


class StrataError(Exception):
    """A user-facing error: the message names the problem and the fix in one line."""

    exit_code = 2  # bad input: nothing was started


class RunFailed(StrataError):
    """A run that started and could not finish honestly (e.g. it diverged): one line, exit code 1."""

    exit_code = 1
