"""Messages go through :mod:`logging` under the ``qsmnet`` logger; this sets up the CLI's handler.

Library code logs (``log.info`` for notes and progress, ``log.warning`` for warnings) and prints
nothing; a program using qsmnet as a library decides where that goes. The ``qsmnet`` command
calls :func:`setup_logging`, which writes ``qsmnet: note: ...`` / ``qsmnet: warning: ...`` lines
on stderr (debug lines too with ``-v``). Imports nothing from qsmnet.
"""

from __future__ import annotations

import logging
import sys

_LEVEL_WORD = {logging.DEBUG: "debug", logging.INFO: "note", logging.WARNING: "warning",
               logging.ERROR: "error", logging.CRITICAL: "error"}  # fmt: skip


class _Stderr(logging.StreamHandler):
    """A handler that writes to the *current* ``sys.stderr`` (which tests and notebooks replace)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"qsmnet: {_LEVEL_WORD.get(record.levelno, 'note')}: {record.getMessage()}"


def setup_logging(verbose: int = 0) -> None:
    """One stderr handler on the ``qsmnet`` logger: notes and warnings, debug lines when ``verbose``.

    Calling it again replaces the handler (never two copies of a line)."""
    logger = logging.getLogger("qsmnet")
    for h in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(h)
    h = _Stderr()
    h.setFormatter(_Format())
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
