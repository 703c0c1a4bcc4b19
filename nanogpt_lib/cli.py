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


def _train(args: argparse.Namespace) -> int:
    from nanogpt_lib.train import TrainConfig, TrainingDiverged, make_config, resume_config, train

    names = {f for f in TrainConfig.__dataclass_fields__ if f not in ("init_from",)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.resume:
        out_dir = overrides.pop("out_dir", None) or make_config(args.preset).out_dir
        config = resume_config(out_dir, overrides)
    else:
        config = make_config(args.preset, overrides)
    try:
        result = train(config, overwrite=args.overwrite, progress=not args.quiet, reuse_memory=True)
    except TrainingDiverged as e:
        print(f"nanogpt train: stopped: {e}", file=sys.stderr)
        return 1
    val = f"val loss {result.val_loss:.4f}" if result.val_loss is not None else "no evaluation"
    print(
        f"step {result.step} ({result.stopped.replace('_', ' ')}), {result.elapsed_s:.0f} s, {val}, "
        f"best {result.best_val_loss if result.best_val_loss is None else round(result.best_val_loss, 4)}, "
        f"{result.tokens_per_s:,.0f} tokens/s; checkpoints and metrics.jsonl in {result.out_dir}"
    )
    if result.stopped == "interrupted":
        print(f"interrupted: continue with `nanogpt train --resume --out {result.out_dir}`", file=sys.stderr)
        return 130
    return 0


def _add_train(sub) -> None:
    from dataclasses import fields

    from nanogpt_lib.train import DEFAULT_PRESET, PRESETS, TrainConfig, make_config

    p = sub.add_parser(
        "train",
        help="train a GPT on a prepared dataset",
        description="Train a GPT on a folder written by `nanogpt prepare`. Any config field can be set with "
        "--<field> VALUE (hyphens or underscores).",
    )
    p.add_argument("--preset", choices=list(PRESETS), help=f"named configuration (default: {DEFAULT_PRESET})")
    p.add_argument("--data", dest="data_dir", metavar="DIR", help="a folder written by `nanogpt prepare`")
    p.add_argument("--out", dest="out_dir", metavar="DIR", help="where checkpoints and metrics.jsonl go")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder exactly")
    p.add_argument("--overwrite", action="store_true", help="delete a run already in the output folder")
    p.add_argument(
        "--time-budget", metavar="SECONDS", help="train for this many seconds instead of --max-iters; with --resume, "
        "this many more seconds (the time of earlier runs does not count)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines; only the final summary")
    defaults = make_config(DEFAULT_PRESET)
    config = p.add_argument_group(f"config fields (defaults: the {DEFAULT_PRESET} preset)")
    for f in fields(TrainConfig):
        if f.name in ("data_dir", "out_dir", "time_budget", "init_from"):
            continue
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        config.add_argument(*flags, dest=f.name, metavar="VALUE", help=f"default {getattr(defaults, f.name)!r}")
    p.set_defaults(run=_train)


def _sample(args: argparse.Namespace) -> int:
    import torch

    from nanogpt_lib.device import pick_device
    from nanogpt_lib.generate import check_sampling_args, generate_text, stream_text
    from nanogpt_lib.train import load_checkpoint

    check_sampling_args(args.temperature, args.top_k, args.top_p)  # refuse bad settings before loading anything
    if args.max_new_tokens < 0 or args.num_samples < 1:
        raise ValueError(
            f"--max-new-tokens must be >= 0 and --num-samples >= 1, got {args.max_new_tokens} and {args.num_samples}"
        )
    prompt = args.prompt
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the prompt file {args.prompt_file}: {e}") from None
    device = pick_device()
    model, tokenizer, _ = load_checkpoint(args.ckpt, device=device)
    generator = torch.Generator(device=device)
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator)
    for i in range(args.num_samples if args.stream else 1):
        if args.stream:
            if i:
                print("-" * 40)
            print(prompt, end="", flush=True)
            for piece in stream_text(model, tokenizer, prompt, args.max_new_tokens, stop=args.stop, **options):
                print(piece, end="", flush=True)
            print()
        else:
            texts = generate_text(
                model, tokenizer, prompt, args.max_new_tokens, args.num_samples, stop=args.stop, **options
            )
            print(("\n" + "-" * 40 + "\n").join(prompt + text for text in texts))
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a trained checkpoint",
        description="Generate text from a checkpoint written by `nanogpt train`. An empty prompt (the default) "
        "starts at the beginning of a line (a newline). --temperature 0 means greedy decoding: always the most "
        "likely token. Several samples are printed one after another, separated by a line of dashes.",
    )
    p.add_argument("--ckpt", required=True, metavar="DIR", help="a run folder (uses best/, else last/) or a checkpoint")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", metavar="TEXT", help="the text to continue (default: empty)")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 text file")
    p.add_argument("--max-new-tokens", type=int, default=500, metavar="N", help="tokens to generate (default: 500)")
    p.add_argument(
        "--temperature", type=float, default=0.8, metavar="T", help="0 = greedy; <1 sharper, >1 wilder (default: 0.8)"
    )
    p.add_argument("--top-k", type=int, metavar="K", help="sample only from the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="sample from the most likely tokens holding mass P, 0<P<=1")
    p.add_argument("--seed", type=int, metavar="S", help="seed the sampler: the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="how many samples (default: 1)")
    p.add_argument("--stop", metavar="TEXT", help="end a sample where this text first appears (not printed)")
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.set_defaults(run=_sample)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanogpt",
        description="Train and sample small GPT language models (the library of Build nanoGPT).",
    )
    parser.add_argument("--version", action="version", version=f"nanogpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_prepare(sub)
    _add_train(sub)
    _add_sample(sub)
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
