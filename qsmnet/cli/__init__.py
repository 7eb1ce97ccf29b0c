"""Command-line entry points (`qsmnet`, `qsmnet-train`): argument parsing and messages only."""
