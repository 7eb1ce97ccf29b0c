"""``qsmnet methods``: every registered method (solvers and shipped networks) with its kind,
parameter defaults and a one-line description; ``--json`` for scripts."""

from __future__ import annotations

import argparse

HELP = "list the methods (solvers, shipped networks) with their kind, defaults and a description"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def _value(v) -> str:
    return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def run(args) -> int:
    import json

    from qsmnet.inference.methods import FALLBACK_METHOD, default_method, method_table

    rows = method_table()
    default = default_method(quiet=True)
    if args.json:
        print(json.dumps([{**r, "default": r["name"] == default} for r in rows], indent=2, default=str))
        return 0
    width = max(len(r["name"]) for r in rows) + 2
    for r in rows:
        tags = [r["kind"]] + ([f"default (guarded, {FALLBACK_METHOD} when flagged)" if r["kind"] == "network"
                               else "default"] if r["name"] == default else []) + (
            ["experimental"] if r["experimental"] else [])  # fmt: skip
        print(f"{r['name']:<{width}}{', '.join(tags)}: {r['description']}")
        params = " ".join(f"{k}={_value(v)}" for k, v in r["defaults"].items())
        print(f"{'':<{width}}  {params or '(no parameters)'}")
    return 0
