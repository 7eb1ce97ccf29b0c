"""Export a training checkpoint as shipped-style weights (.safetensors + .json).

For runs that did not reach qsmnet-train's own export (killed, out of time). Prefer ending a run
with ``touch <run dir>/STOP``, which exports normally.

    python scripts/export_checkpoint.py outputs/train/RUN/checkpoints/last.ckpt --to qsmnet/weights/NAME
"""

from __future__ import annotations

import argparse
import sys

from qsmnet.training import export_checkpoint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a .ckpt written by qsmnet-train")
    ap.add_argument("--to", default=None, help="destination path stem (default: the run's weights/<name>)")
    args = ap.parse_args(argv)
    try:
        print(export_checkpoint(args.checkpoint, args.to))
    except (OSError, ValueError) as exc:
        print(f"export_checkpoint: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
