"""The `nanogpt` command. Hand-written: it parses arguments and calls what the chapters export."""

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
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
