"""The ``qsmnet`` command: one subcommand per module in this package.

Each subcommand lives in ``qsmnet/cli/<name>.py`` and defines

    HELP: str                                   one-line summary shown by ``qsmnet --help``
    def add_arguments(parser) -> None            argparse options (no heavy imports at module level)
    def run(args) -> int                         does the work; returns the exit status

Mistakes a user can fix raise :class:`qsmnet.errors.QSMNetError` (or ValueError / OSError from
the library); they are printed as one line on stderr with exit status 2, never a traceback.
Set ``QSMNET_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from qsmnet import __version__

#: Subcommands in the order ``--help`` lists them; a module that does not exist yet is skipped.
SUBCOMMANDS = ("info", "predict", "qsm", "methods", "simulate", "compare", "demo")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qsmnet",
        description="Quantitative Susceptibility Mapping: networks and classical solvers.",
    )
    parser.add_argument("--version", action="version", version=f"qsmnet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="also print debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"qsmnet.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"qsmnet.cli.{name}":
                continue
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from qsmnet.errors import QSMNetError
    from qsmnet.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        rc = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at exit
        return rc
    except BrokenPipeError:  # e.g. `qsmnet methods | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("qsmnet: interrupted", file=sys.stderr)
        return 130
    except (QSMNetError, ValueError, OSError) as e:
        if os.environ.get("QSMNET_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"qsmnet {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
