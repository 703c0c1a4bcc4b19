"""The `nanogpt` command. Hand-written: it parses arguments and calls what the chapters export.

Each subcommand has an `_add_<name>(subparsers)` function that declares its options and sets
`run` to the function that carries it out. Library errors carry their own advice (what was
wrong, what to do), so the dispatcher prints them as they are and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys

from nanogpt_lib import __version__


def _prepare(args: argparse.Namespace) -> int:
    from nanogpt_lib.data import prepare_dataset

    meta = prepare_dataset(args.name, source=args.source, out_dir=args.out, data_dir=args.data_dir)
    print(
        f"wrote {meta['out_dir']}: train.bin ({meta['train_tokens']:,} tokens), val.bin ({meta['val_tokens']:,} "
        f"tokens) as {meta['dtype']}, and meta.json (vocabulary of {meta['vocab_size']})"
    )
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="download (or verify) a dataset and write its tokenized splits")
    p.add_argument("name", choices=["shakespeare_char"], help="the prepared dataset to write")
    p.add_argument("--source", metavar="FILE", help="a local copy of the text to use instead of downloading")
    p.add_argument("--out", metavar="DIR", help="where to write train.bin, val.bin, meta.json (default: DATA_DIR/NAME)")
    p.add_argument("--data-dir", default="data", metavar="DIR", help="where downloads go (default: data)")
    p.set_defaults(run=_prepare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanogpt",
        description="Train and sample small GPT language models (the library of Build nanoGPT).",
    )
    parser.add_argument("--version", action="version", version=f"nanogpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_prepare(sub)
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
