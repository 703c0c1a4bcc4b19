"""The `nanogpt` command. Hand-written: it parses arguments and calls what the chapters export.

Each subcommand has an `_add_<name>(subparsers)` function that declares its options and sets
`run` to the function that carries it out. Library errors carry their own advice (what was
wrong, what to do), so the dispatcher prints them as they are and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys

from nanogpt_lib import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanogpt",
        description="Train and sample small GPT language models (the library of Build nanoGPT).",
    )
    parser.add_argument("--version", action="version", version=f"nanogpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    del sub  # subcommands register here: _add_prepare(sub), _add_train(sub), _add_sample(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"nanogpt {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        print(f"nanogpt {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
