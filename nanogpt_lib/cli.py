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
    from nanogpt_lib.data import prepare_dataset, prepare_text

    options = dict(tokenizer=args.tokenizer, val_fraction=args.val_fraction, progress=not args.quiet)
    if args.name == "text":
        if not args.source or not args.out:
            raise ValueError("`nanogpt prepare text` needs --source FILE_OR_FOLDER (your UTF-8 text) and --out DIR")
        meta = prepare_text(args.source, args.out, block_size=args.block_size, **options)
    else:
        meta = prepare_dataset(args.name, source=args.source, out_dir=args.out, data_dir=args.data_dir, **options)
    skipped = f"; {meta['binary_skipped']} binary file(s) skipped" if meta.get("binary_skipped") else ""
    print(
        f"wrote {meta['out_dir']}: train.bin ({meta['train_tokens']:,} tokens), val.bin ({meta['val_tokens']:,} "
        f"tokens) as {meta['dtype']}, and meta.json (vocabulary of {meta['vocab_size']}); "
        f"read {meta.get('files', 1)} file(s){skipped}"
    )
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenize a dataset, or your own text, into train/val splits for `nanogpt train`",
        description="Write train.bin, val.bin and meta.json. `nanogpt prepare text --source FILE_OR_FOLDER --out DIR` "
        "prepares any UTF-8 text: one file, or every text file in a folder and its subfolders (binary and hidden "
        "files skipped). `shakespeare_char` and `shakespeare` download (or verify) tiny Shakespeare.",
    )
    p.add_argument("name", choices=["shakespeare_char", "shakespeare", "text"], help="what to prepare")
    p.add_argument(
        "--source", metavar="FILE", help="for text: your file or folder; else a local copy instead of downloading"
    )
    p.add_argument("--out", metavar="DIR", help="where to write train.bin, val.bin, meta.json (default: DATA_DIR/NAME)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where downloads go (default: NANOGPT_DATA_DIR, else the "
        "project's data/ folder in a checkout, else ~/.cache/nanogpt)",
    )
    p.add_argument("--tokenizer", default="char", metavar="T", help="char, gpt2 or bpe:N (default: char)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F", help="the validation share (default: 0.1)")
    p.add_argument(
        "--block-size",
        type=int,
        default=64,
        metavar="N",
        help="for text: the context you will train with; each split needs N + 1 tokens (default: 64)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_prepare)


def _train(args: argparse.Namespace) -> int:
    from nanogpt_lib.train import TrainConfig, TrainingDiverged, make_config, resume_config, train

    names = set(TrainConfig.__dataclass_fields__)
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if overrides.get("init_from") not in (None, "scratch", "resume") and not args.resume:
        overrides = _pretrained_sizes(overrides)
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


def _pretrained_sizes(overrides: dict) -> dict:
    """A finetuning run records the pretrained model's sizes (so that --resume rebuilds the same model)."""
    import json

    from nanogpt_lib.pretrained import check_init_from, config_from_hf, resolve_pretrained

    check_init_from(overrides["init_from"])
    config_file = resolve_pretrained(overrides["init_from"]) / "config.json"
    shape = config_from_hf(json.loads(config_file.read_text(encoding="utf-8")), str(config_file))
    sizes = {"n_layer": shape.n_layer, "n_head": shape.n_head, "n_embd": shape.n_embd, "bias": shape.bias}
    changed = [f"--{k.replace('_', '-')}" for k, v in sizes.items() if k in overrides and str(overrides[k]) != str(v)]
    if changed:
        raise ValueError(f"{', '.join(changed)} cannot change when finetuning {overrides['init_from']}: it has its own")
    return {**overrides, **{k: str(v) for k, v in sizes.items()}}


def _register_kinds() -> None:
    """Import the chapters that register kinds of model, optimizers and schedules, so that every flag and checkpoint
    works: chapter 9's model (--rope, --norm, ...), chapter 10's optimizer and schedule (--optimizer muon)."""
    import nanogpt_lib.modern  # noqa: F401
    import nanogpt_lib.muon  # noqa: F401


def _add_train(sub, full: bool = True) -> None:
    help_text = "train a GPT on a prepared dataset"
    if not full:  # the options come from the trainer, which imports PyTorch: declared only for `nanogpt train`
        sub.add_parser("train", help=help_text)
        return
    from dataclasses import fields

    _register_kinds()
    from nanogpt_lib.train import DEFAULT_PRESET, PRESETS, TrainConfig, make_config

    p = sub.add_parser(
        "train",
        help=help_text,
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
    p.add_argument(
        "--init-from", metavar="SOURCE", help="finetune from GPT-2's weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
        "or a folder in Hugging Face's format (the dataset must use GPT-2's tokens)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines; only the final summary")
    defaults = make_config(DEFAULT_PRESET)
    config = p.add_argument_group(f"config fields (defaults: the {DEFAULT_PRESET} preset)")
    for f in fields(TrainConfig):
        if f.name in ("data_dir", "out_dir", "time_budget", "init_from"):
            continue
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        config.add_argument(*flags, dest=f.name, metavar="VALUE", help=f"default {getattr(defaults, f.name)!r}")
    p.set_defaults(run=_train)


def _prompt(args: argparse.Namespace) -> str:
    """The prompt of `nanogpt sample`, after checking the counts: --prompt, or the text of --prompt-file."""
    if args.max_new_tokens < 0 or args.num_samples < 1:
        raise ValueError(
            f"--max-new-tokens must be >= 0 and --num-samples >= 1, got {args.max_new_tokens} and {args.num_samples}"
        )
    if args.prompt_file is None:
        return args.prompt
    try:
        with open(args.prompt_file, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the prompt file {args.prompt_file}: {e}") from None


def _onnx_module():
    """nanogpt_lib.export (chapter 11), which needs the `onnx` extra."""
    try:
        import nanogpt_lib.export as export
    except ImportError as e:
        raise RuntimeError(f"ONNX needs the onnx extra ({e}): pip install 'nanogpt-lib[onnx]'") from None
    return export


def _sample_onnx(args: argparse.Namespace) -> int:
    """`nanogpt sample --onnx FILE`: the exported graph in ONNX Runtime, with NumPy; PyTorch is never imported."""
    if args.ckpt is not None:
        raise ValueError("--onnx FILE samples from an exported graph, --ckpt DIR from a checkpoint: give one of them")
    export = _onnx_module()
    export.check_sampling_options(args.temperature, args.top_k, args.top_p)  # before loading anything
    prompt = _prompt(args)
    sampler, tokenizer = export.OnnxSampler(args.onnx), export.load_tokenizer(args.onnx)
    import numpy as np

    rng = np.random.default_rng(args.seed)  # one generator for every sample, as with --ckpt
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=rng)
    if not args.stream:
        texts = [""] * args.num_samples
        n, stop = args.num_samples, args.stop
        steps = export.onnx_texts(sampler, tokenizer, prompt, args.max_new_tokens, n, stop, **options)
        for texts in steps:  # noqa: B007 - each step's texts so far; the last are the samples
            pass
        print(("\n" + "-" * 40 + "\n").join(prompt + text for text in texts))
        return 0
    for i in range(args.num_samples):
        if i:
            print("-" * 40)
        print(prompt, end="", flush=True)
        for piece in export.stream_onnx_text(sampler, tokenizer, prompt, args.max_new_tokens, args.stop, **options):
            print(piece, end="", flush=True)
        print()
    return 0


def _sample(args: argparse.Namespace) -> int:
    if args.onnx is not None:
        return _sample_onnx(args)
    if args.ckpt is None:
        raise ValueError("give --ckpt DIR (a checkpoint, or a model in Hugging Face's format) or --onnx FILE "
                         "(a graph written by `nanogpt export --format onnx`)")  # fmt: skip
    import torch

    from nanogpt_lib.device import pick_device
    from nanogpt_lib.generate import check_sampling_args, generate_text, stream_text
    from nanogpt_lib.train import load_checkpoint

    check_sampling_args(args.temperature, args.top_k, args.top_p)  # refuse bad settings before loading anything
    prompt = _prompt(args)
    _register_kinds()  # so that a checkpoint of chapter 9's model loads
    device = pick_device()
    from nanogpt_lib.pretrained import is_pretrained_source, load_pretrained_for_sampling

    if is_pretrained_source(args.ckpt):
        model, tokenizer = load_pretrained_for_sampling(args.ckpt, device)
    else:
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
        help="generate text from a trained checkpoint or an exported ONNX graph",
        description="Generate text from a checkpoint written by `nanogpt train` (--ckpt), or from a graph written "
        "by `nanogpt export --format onnx` (--onnx: ONNX Runtime and NumPy, without PyTorch). An empty prompt (the "
        "default) starts at the beginning of a line (a newline). --temperature 0 means greedy decoding: always the "
        "most likely token. Several samples are printed one after another, separated by a line of dashes.",
    )
    p.add_argument(
        "--ckpt", metavar="DIR", help="a run folder (uses best/, else last/), a checkpoint, a folder "
        "in Hugging Face's format, or a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl)",
    )  # fmt: skip
    p.add_argument(
        "--onnx", metavar="FILE", help="instead of --ckpt: an exported graph (FILE.onnx, with FILE.tokenizer.json "
        "beside it), run by ONNX Runtime; the same seed gives the same text there, not the text of --ckpt",
    )  # fmt: skip
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


def _export(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        return _export_onnx(args)
    if args.quantize:
        raise ValueError("--quantize stores an ONNX graph's weights in 8 bits: use it with --format onnx")
    from nanogpt_lib.pretrained import export_checkpoint_hf

    _register_kinds()
    out = export_checkpoint_hf(args.ckpt, args.out)
    print(f"wrote {out}: model.safetensors and config.json in Hugging Face's GPT-2 format")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    """`nanogpt export --format onnx`: the checkpoint as an ONNX graph with a KV cache, its tokenizer beside it."""
    from pathlib import Path

    out = Path(args.out)
    if out.suffix != ".onnx":
        raise ValueError(f"with --format onnx, --out names the graph's file, FILE.onnx; got {args.out}")
    export = _onnx_module()
    from nanogpt_lib.checkpoint import load_checkpoint, read_state

    _register_kinds()
    model, _, info = load_checkpoint(args.ckpt, device="cpu")
    tokenizer = read_state(info["path"]).get("tokenizer")
    if not args.quantize:
        export.export_onnx(model, out, tokenizer=tokenizer)
    else:  # the float32 graph first, beside the 8-bit one, then removed
        fp32 = out.with_name(f".{out.stem}.fp32.onnx")
        try:
            export.quantize_onnx(export.export_onnx(model, fp32, tokenizer=tokenizer), out)
        finally:
            for leftover in (fp32, export.tokenizer_file(fp32)):
                leftover.unlink(missing_ok=True)
    weights = "8-bit" if args.quantize else "float32"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {weights} weights) and {export.tokenizer_file(out).name}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint in another format (Hugging Face's GPT-2, or ONNX)")
    p.add_argument(
        "--format", choices=["hf", "onnx"], default="hf", help="hf: a folder transformers loads (default); onnx: "
        "a graph with a KV cache for ONNX Runtime, and its tokenizer beside it (FILE.tokenizer.json)",
    )  # fmt: skip
    p.add_argument("--ckpt", required=True, metavar="DIR", help="a run folder (uses best/, else last/) or a checkpoint")
    p.add_argument("--out", required=True, metavar="PATH", help="the folder to write (hf), or FILE.onnx (onnx)")
    p.add_argument("--quantize", action="store_true", help="onnx: store the weights in 8 bits (about 4x smaller)")
    p.set_defaults(run=_export)


def build_parser(command: str | None = "train") -> argparse.ArgumentParser:
    """The parser of `nanogpt`; `command`, the subcommand about to run, decides whether `train`'s many options
    (from the trainer, which imports PyTorch) are declared: only for `train`."""
    parser = argparse.ArgumentParser(
        prog="nanogpt",
        description="Train and sample small GPT language models (the library of Build nanoGPT).",
    )
    parser.add_argument("--version", action="version", version=f"nanogpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_prepare(sub)
    _add_train(sub, full=command == "train")
    _add_sample(sub)
    _add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command=next((a for a in argv if not a.startswith("-")), None))
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
