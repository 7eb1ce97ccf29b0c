"""The one exception type for mistakes a user can fix (bad file, bad option, missing input)."""

from __future__ import annotations


class QSMNetError(Exception):
    """A user-facing error; its message is one line that says what is wrong and how to fix it.

    The CLI prints it as ``qsmnet: error: <message>`` on stderr and exits with status 2, without a
    traceback. Library callers can catch it like any exception.
    """
