"""The `nanogpt` command. Hand-written: it parses arguments and calls what the chapters export.

Each subcommand has an `_add_<name>(subparsers)` function that declares its options and sets
`run` to the function that carries it out. Library errors carry their own advice (what was
wrong, what to do), so the dispatcher prints them as they are and exits non-zero.

The help never imports PyTorch: `train`'s options are the table `TRAIN_OPTIONS` below, one entry per field
of the trainer's `TrainConfig` with its default and the values it accepts, and `PRESET_NOTES` describes the
presets; tests/test_cli_help.py checks both against the trainer, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import difflib
import os
import stat
import sys
import textwrap

from nanogpt_lib import __version__

BOOL = ("true", "false")  # also accepted: yes/no, 1/0
# (field of TrainConfig, its metavar or its choices, its default, what it does and the values it accepts)
TRAIN_OPTIONS: dict[str, tuple[tuple[str, str | tuple[str, ...], object, str], ...]] = {
    "data and length of the run": (
        ("data_dir", "DIR", "shakespeare_char", "a folder written by `nanogpt prepare`, or the name of one in the "
         "data folder (NANOGPT_DATA_DIR)"),
        ("out_dir", "DIR", "out/shakespeare_char", "where checkpoints and metrics.jsonl go; each preset has its own"),
        ("init_from", "SOURCE", "scratch", "scratch, or GPT-2's weights to finetune: gpt2, gpt2-medium, gpt2-large, "
         "gpt2-xl, or a folder in Hugging Face's format (the data must use GPT-2's tokens)"),
        ("max_iters", "N", 1500, "training steps, N >= 1"),
        ("time_budget", "SECONDS", None, "train for this many seconds instead of --max-iters; with --resume, this "
         "many more seconds (the time of earlier runs does not count); > 0"),
    ),
    "the model (chapters 04 and 09)": (
        ("n_layer", "N", 4, "transformer blocks (the depth), N >= 1"),
        ("n_head", "N", 4, "attention heads per block, N >= 1, dividing --n-embd"),
        ("n_embd", "N", 128, "the width: numbers per token, a multiple of --n-head"),
        ("block_size", "N", 64, "the context: tokens the model sees at once, N >= 1"),
        ("dropout", "X", 0.0, "the share of activations zeroed while training, 0 <= X < 1"),
        ("bias", BOOL, False, "biases in the linear layers and norms, as GPT-2 has"),
        ("rope", BOOL, False, "rotary position embeddings instead of a learned table (the head size must be even)"),
        ("rope_base", "X", 10000.0, "the rotary angles' base, X > 1"),
        ("norm", ("layernorm", "rmsnorm"), "layernorm", "the normalisation: GPT-2's LayerNorm, or RMSNorm"),
        ("mlp", ("gelu", "relu2", "swiglu"), "gelu", "the MLP: GELU (GPT-2's), squared ReLU, or SwiGLU"),
        ("qk_norm", BOOL, False, "RMS-normalise each head's queries and keys"),
        ("n_kv_head", "N", None, "key/value heads, each shared by a group of query heads (grouped-query "
         "attention); N divides --n-head; none: as many as --n-head"),
        ("tie_embeddings", BOOL, True, "the output layer shares the token embedding's weights"),
        ("zero_init_proj", BOOL, False, "the output projections (and an untied head) start at zero"),
        ("logit_softcap", "X", None, "squash the logits into (-X, X); X > 0, or none for no cap"),
    ),
    "optimization (chapters 05 and 10)": (
        ("batch_size", "N", 32, "sequences per micro-batch, N >= 1"),
        ("gradient_accumulation_steps", "N", 1, "micro-batches summed into one step, N >= 1"),
        ("optimizer", ("adamw", "muon"), "adamw", "AdamW, or Muon for the hidden layers' weight matrices"),
        ("learning_rate", "X", 3e-3, "the peak learning rate (AdamW's), X > 0"),
        ("min_lr", "X", 3e-4, "the learning rate at the end of the decay, 0 <= X <= --learning-rate"),
        ("weight_decay", "X", 0.1, "AdamW's weight decay, on weight matrices only, X >= 0"),
        ("beta1", "X", 0.9, "AdamW's momentum, 0 <= X < 1"),
        ("beta2", "X", 0.99, "AdamW's decay of squared gradients, 0 <= X < 1"),
        ("grad_clip", "X", 1.0, "clip the gradients' total norm to X; 0 turns clipping off"),
        ("muon_lr", "X", 0.02, "Muon's peak learning rate, X > 0; the schedule scales it like --learning-rate"),
        ("muon_momentum", "X", 0.95, "Muon's momentum, 0 <= X < 1"),
        ("embedding_lr", "X", None, "muon: AdamW's peak rate for the embedding tables, X > 0; none: --learning-rate"),
        ("schedule", ("cosine", "wsd"), "cosine", "cosine decay, or wsd: warmup, stable, then a linear decay"),
        ("decay_lr", BOOL, True, "follow --schedule after the warmup; false keeps --learning-rate constant"),
        ("warmup_iters", "N", 50, "steps of linear warmup, N >= 0"),
        ("lr_decay_iters", "N", None, "the step where the decay reaches --min-lr, N >= 1; none: --max-iters"),
        ("cooldown_frac", "X", 0.2, "wsd: the share of the run spent decaying, 0 < X <= 1"),
    ),
    "evaluation and logging": (
        ("eval_interval", "N", 250, "steps between evaluations (each saves a checkpoint), N >= 1"),
        ("eval_iters", "N", 20, "batches per evaluation, N >= 1"),
        ("log_interval", "N", 10, "steps between rows of metrics.jsonl, N >= 1"),
    ),
    "system": (
        ("device", ("auto", "cuda", "cuda:N", "mps", "cpu"), "auto", "where to train; auto: CUDA, else MPS, else CPU"),
        ("precision", ("auto", "fp32", "bf16", "fp16"), "auto", "the precision; auto: the best the device runs safely"),
        ("seed", "N", 1337, "the seed of the weights and batches, 0 <= N < 2**32"),
    ),
}  # fmt: skip
_TRAIN_FLAGS = {"data_dir": "--data", "out_dir": "--out"}  # the other fields: --<field> with hyphens
DEFAULT_PRESET = "shakespeare_char"
# name: (what it is, the settings it changes), as in the trainer's PRESETS
PRESET_NOTES: dict[str, tuple[str, dict[str, object]]] = {
    "shakespeare_char": ("the default: the best one-minute run on a 2-core CPU (bench/README.md)", {}),
    "shakespeare_char_gpu": ("nanoGPT's GPU run: 6 layers, 384 wide, 256 characters of context", dict(
        out_dir="out/shakespeare_char_gpu", n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2,
        batch_size=64, learning_rate=1e-3, min_lr=1e-4, max_iters=5000, warmup_iters=100, eval_interval=250,
        eval_iters=200, log_interval=10)),
    "shakespeare_char_modern": ("chapter 10's CPU minute: Muon on the hidden matrices, 3 layers, batches of 48",
                                dict(out_dir="out/shakespeare_char_modern", optimizer="muon", muon_lr=0.02, n_layer=3,
                                     batch_size=48)),
    "shakespeare_char_speedrun": ("the CPU speedrun record: the modern preset with its own head, the rate decayed "
                                  "to 0, embeddings at 10x the rate, one evaluation, for 89 s (nanoGPT's 2,000 "
                                  "iterations there; bench/README.md)",
                                  dict(out_dir="out/shakespeare_char_speedrun", optimizer="muon", muon_lr=0.02,
                                       n_layer=3, batch_size=48, tie_embeddings=False, min_lr=0.0, warmup_iters=20,
                                       eval_interval=100_000, time_budget=89.0, embedding_lr=0.03)),
}  # fmt: skip
MAX_NEW_TOKENS = 100_000  # `nanogpt sample`: about a novel of characters; run it again for more
PROMPT_FILE_LIMIT = 1_000_000  # bytes; the model reads only the last block_size tokens of a prompt anyway
SEED_LIMIT = 2**64  # a sampling seed is a 64-bit unsigned integer


def _prepare(args: argparse.Namespace) -> int:
    from nanogpt_lib.data import prepare_dataset, prepare_text, skipped_report

    options = dict(tokenizer=args.tokenizer, val_fraction=args.val_fraction, progress=not args.quiet)
    if args.name == "text":
        if not args.source or not args.out:
            raise ValueError("`nanogpt prepare text` needs --source FILE_OR_FOLDER (your UTF-8 text) and --out DIR")
        meta = prepare_text(args.source, args.out, block_size=args.block_size, **options)
    else:
        meta = prepare_dataset(args.name, source=args.source, out_dir=args.out, data_dir=args.data_dir, **options)
    print(
        f"wrote {meta['out_dir']}: train.bin ({meta['train_tokens']:,} tokens), val.bin ({meta['val_tokens']:,} "
        f"tokens) as {meta['dtype']}, and meta.json (vocabulary of {meta['vocab_size']}); "
        f"read {meta.get('files', 1)} file(s)"
    )
    for line in skipped_report(meta, limit=None if args.verbose else 3):
        print(line)
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
    p.add_argument("--verbose", action="store_true", help="for text: name every file skipped, not only the first few")
    p.set_defaults(run=_prepare)


def _register_kinds() -> None:
    """Import the chapters that register kinds of model, optimizers and schedules, so that every flag and checkpoint
    works: chapter 9's model (--rope, --norm, ...), chapter 10's optimizer and schedule (--optimizer muon)."""
    import nanogpt_lib.modern  # noqa: F401
    import nanogpt_lib.muon  # noqa: F401


def _pretrained_sizes(overrides: dict) -> dict:
    """A finetuning run records the pretrained model's sizes (so that --resume rebuilds the same model)."""
    from nanogpt_lib.pretrained import check_init_from, config_from_hf, read_json_file, resolve_pretrained

    check_init_from(overrides["init_from"])
    config_file = resolve_pretrained(overrides["init_from"]) / "config.json"
    shape = config_from_hf(read_json_file(config_file), str(config_file))  # bounded and checked before it is sized
    sizes = {"n_layer": shape.n_layer, "n_head": shape.n_head, "n_embd": shape.n_embd, "bias": shape.bias}
    changed = [f"--{k.replace('_', '-')}" for k, v in sizes.items() if k in overrides and str(overrides[k]) != str(v)]
    if changed:
        raise ValueError(f"{', '.join(changed)} cannot change when finetuning {overrides['init_from']}: it has its own")
    return {**overrides, **{k: str(v) for k, v in sizes.items()}}


def _formatter(prog: str) -> argparse.HelpFormatter:
    """Help laid out as written (description, epilog), with room for `train`'s longer flags."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34)


def _shown(value: object) -> str:
    """A default as it is typed on the command line: true/false, none, or the value."""
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def train_flag(field: str) -> str:
    """The command-line flag of a TrainConfig field: --data, --out, else --<field> with hyphens."""
    return _TRAIN_FLAGS.get(field, "--" + field.replace("_", "-"))


def _preset_settings(name: str) -> dict[str, object]:
    """A preset's key settings: its size and length, and everything it changes from the defaults."""
    defaults = {field: default for group in TRAIN_OPTIONS.values() for field, _, default, _ in group}
    key = ("out_dir", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "learning_rate", "max_iters")
    return {**{k: defaults[k] for k in key}, **PRESET_NOTES[name][1]}


def presets_text(settings: bool = True) -> str:
    """Each preset with one line on what it is and, with `settings`, the flags it amounts to."""
    lines = []
    for name, (note, _) in PRESET_NOTES.items():
        lines.append(f"  {name:<25} {note}")
        if settings:  # each flag and its value kept on one line
            flags = " ".join(f"{train_flag(k)}\0{_shown(v)}" for k, v in _preset_settings(name).items())
            wrapped = textwrap.fill(
                flags, 100, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False
            )
            lines.append(wrapped.replace("\0", " "))
    return "\n".join(lines)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a GPT on a prepared dataset",
        usage="nanogpt train [--preset NAME] [--data DIR] [--out DIR] [--resume | --overwrite]\n"
        "                     [--time-budget SECONDS] [--OPTION VALUE ...]",
        formatter_class=_formatter,
        description="Train a GPT on a folder written by `nanogpt prepare`. A preset sets many options at once;\n"
        f"an option given here replaces its value. The defaults below are the {DEFAULT_PRESET} preset's.\n"
        "N is an integer, X a number; true/false may also be written yes/no or 1/0.",
        epilog=f"presets (--preset NAME; --list-presets shows their settings):\n{presets_text(settings=False)}",
    )
    p.add_argument("--preset", choices=list(PRESET_NOTES), metavar="NAME", help=f"a named configuration, one of the "
                   f"presets below (default: {DEFAULT_PRESET})")  # fmt: skip
    p.add_argument("--list-presets", action="store_true", help="describe each preset and its settings, then exit")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder exactly")
    p.add_argument("--overwrite", action="store_true", help="delete a run already in the output folder")
    p.add_argument("--new-data", action="store_true", help="with --resume: go on training on another dataset than "
                   "the checkpoint's; the run's best/ starts again")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines; only the final summary")
    for title, options in TRAIN_OPTIONS.items():
        group = p.add_argument_group(title)
        for field, kind, default, text in options:
            metavar = "{" + ",".join(kind) + "}" if isinstance(kind, tuple) else kind
            group.add_argument(
                train_flag(field), dest=field, metavar=metavar, help=f"{text} (default: {_shown(default)})"
            )
    p.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    if args.list_presets:
        print(f"presets of `nanogpt train` (--preset NAME; an option given with it replaces its value):\n"
              f"{presets_text()}")  # fmt: skip
        return 0
    _register_kinds()  # chapter 9's model options, chapter 10's optimizer and schedule
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
        result = train(config, overwrite=args.overwrite, progress=not args.quiet, reuse_memory=True,
                       new_data=args.new_data)  # fmt: skip
    except TrainingDiverged as e:
        print(f"nanogpt train: stopped: {e}", file=sys.stderr)
        return 1
    val = f"val loss {result.val_loss:.4f}" if result.val_loss is not None else "no evaluation"
    if result.val_loss is None and result.train_loss is not None:  # stopped between evaluations: that step's loss
        val = f"train loss {result.train_loss:.4f}"
    print(
        f"step {result.step} ({result.stopped.replace('_', ' ')}), {result.elapsed_s:.0f} s, {val}, "
        f"best {result.best_val_loss if result.best_val_loss is None else round(result.best_val_loss, 4)}, "
        f"{result.tokens_per_s:,.0f} tokens/s; checkpoints and metrics.jsonl in {result.out_dir}"
    )
    if result.stopped == "interrupted":
        print(f"interrupted: continue with `nanogpt train --resume --out {result.out_dir}`", file=sys.stderr)
        return 130
    return 0


def _check_sample_args(args: argparse.Namespace) -> None:
    """Refuse counts and a seed out of range, before anything is loaded."""
    if not 0 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(
            f"--max-new-tokens must be from 0 to {MAX_NEW_TOKENS:,}, got {args.max_new_tokens:,}; for a longer "
            "text, run the command again with the end of this one as --prompt-file"
        )
    if args.num_samples < 1:
        raise ValueError(f"need --num-samples >= 1, got {args.num_samples}")
    if args.seed is not None and not 0 <= args.seed < SEED_LIMIT:
        raise ValueError(f"--seed must be an integer from 0 to 2**64 - 1 = {SEED_LIMIT - 1} (a 64-bit seed), "
                         f"got {args.seed}")  # fmt: skip
    if args.stop == "":
        raise ValueError("--stop needs a non-empty text (leave it out for no stop text)")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_prompt_file(name: str) -> str:
    """The text of `--prompt-file`, refused before it is read when it is not a regular file or holds more than
    PROMPT_FILE_LIMIT bytes (a device like /dev/zero, or a FIFO, would never end)."""
    try:  # without blocking: a FIFO opens at once, to be refused below, instead of waiting for a writer
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ValueError(f"cannot read the prompt file {name}: {e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"the prompt file {name} is {_file_kind(info.st_mode)}, not a text file: give a "
                             f"UTF-8 text file of at most {PROMPT_FILE_LIMIT:,} bytes")  # fmt: skip
        size = info.st_size
        if size <= PROMPT_FILE_LIMIT:
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(PROMPT_FILE_LIMIT + 1)  # bounded even if the file grew since
            size = max(size, len(data))
    finally:
        os.close(fd)
    if size > PROMPT_FILE_LIMIT:
        raise ValueError(
            f"the prompt file {name} holds {size:,} bytes, more than the {PROMPT_FILE_LIMIT:,} a prompt may have "
            f"(the model reads only its last --block-size tokens): keep its end, e.g. `tail -c 10000 {name} > "
            "prompt.txt`"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"cannot read the prompt file {name}: it is not UTF-8 text ({e})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # newlines as Python's text files read them


def _prompt(args: argparse.Namespace) -> str:
    """The prompt of `nanogpt sample`, after checking the counts: --prompt, or the text of --prompt-file."""
    _check_sample_args(args)
    return args.prompt if args.prompt_file is None else read_prompt_file(args.prompt_file)


def _print_samples(prompt: str, texts: list[str], interrupted: bool = False) -> int:
    """Print each sample after its prompt, separated by dashes; after Ctrl-C, what was generated so far."""
    print(("\n" + "-" * 40 + "\n").join(prompt + text for text in texts))
    if not interrupted:
        return 0
    print("nanogpt sample: interrupted; above is the text generated so far", file=sys.stderr)
    return 130


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
    if args.compile:
        raise ValueError("--compile compiles PyTorch's step for --ckpt; ONNX Runtime optimises an --onnx graph "
                         "itself: drop --compile")  # fmt: skip
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
        try:  # each step gives every sample's text so far; the last step's are the samples
            for texts in export.onnx_texts(sampler, tokenizer, prompt, args.max_new_tokens, n, stop, **options):  # noqa: B007
                pass
        except KeyboardInterrupt:
            return _print_samples(prompt, texts, interrupted=True)
        return _print_samples(prompt, texts)
    for i in range(args.num_samples):
        if i:
            print("-" * 40)
        print(prompt, end="", flush=True)
        for piece in export.stream_onnx_text(sampler, tokenizer, prompt, args.max_new_tokens, args.stop, **options):
            print(piece, end="", flush=True)
        print()
    return 0


def _sample_together(model, tokenizer, prompt: str, args: argparse.Namespace, options: dict) -> int:
    """The samples generated together as one batch, as `generate_text` does, keeping each token as it comes:
    on Ctrl-C the text so far is printed, not lost."""
    from nanogpt_lib.generate import encode_prompt, generate_stream

    stop, n = args.stop, args.num_samples
    idx = encode_prompt(tokenizer, prompt, next(model.parameters()).device).repeat(n, 1)
    rows: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    interrupted = False
    try:
        for token in generate_stream(model, idx, args.max_new_tokens, **options):
            for row, t in zip(rows, token[:, 0].tolist(), strict=True):
                row.append(t)
            if stop is not None:  # the last tokens of each row, enough to hold the stop text
                tails = [tokenizer.decode(row[-len(stop) - 8 :]) for row in rows]
                finished = [f or stop in tail for f, tail in zip(finished, tails, strict=True)]
                if all(finished):
                    break
    except KeyboardInterrupt:
        interrupted = True
    texts = [tokenizer.decode(row) for row in rows]
    return _print_samples(prompt, [t.split(stop, 1)[0] if stop else t for t in texts], interrupted)


def _sample(args: argparse.Namespace) -> int:
    if args.onnx is not None:
        return _sample_onnx(args)
    if args.ckpt is None:
        raise ValueError("give --ckpt DIR (a checkpoint, or a model in Hugging Face's format) or --onnx FILE "
                         "(a graph written by `nanogpt export --format onnx`)")  # fmt: skip
    prompt = _prompt(args)  # the counts and the prompt file checked before PyTorch is imported (seconds)
    import torch

    from nanogpt_lib.device import pick_device
    from nanogpt_lib.generate import CompiledDecoder, check_sampling_args, stream_text
    from nanogpt_lib.pretrained import is_pretrained_source, load_pretrained_for_sampling
    from nanogpt_lib.train import load_checkpoint

    check_sampling_args(args.temperature, args.top_k, args.top_p)  # refuse bad settings before loading anything
    _register_kinds()  # so that a checkpoint of chapter 9's model loads
    device = pick_device()
    if is_pretrained_source(args.ckpt):
        model, tokenizer = load_pretrained_for_sampling(args.ckpt, device)
    else:
        model, tokenizer, _ = load_checkpoint(args.ckpt, device=device)
    if args.compile:
        model = CompiledDecoder(model)
    generator = torch.Generator(device=device)
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator)
    if not args.stream:
        return _sample_together(model, tokenizer, prompt, args, options)
    for i in range(args.num_samples):
        if i:
            print("-" * 40)
        print(prompt, end="", flush=True)
        for piece in stream_text(model, tokenizer, prompt, args.max_new_tokens, stop=args.stop, **options):
            print(piece, end="", flush=True)
        print()
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a trained checkpoint or an exported ONNX graph",
        description="Generate text from a checkpoint written by `nanogpt train` (--ckpt), or from a graph written "
        "by `nanogpt export --format onnx` (--onnx: ONNX Runtime and NumPy, without PyTorch). An empty prompt (the "
        "default) starts at the beginning of a line (a newline). --temperature 0 means greedy decoding: always the "
        "most likely token. Several samples are printed one after another, separated by a line of dashes; Ctrl-C "
        "prints the text generated so far.",
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
    limit = f"{PROMPT_FILE_LIMIT:,}"
    prompt.add_argument(
        "--prompt-file", metavar="FILE", help=f"read the prompt from a UTF-8 text file (at most {limit} bytes)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=500, metavar="N", help=f"tokens to generate, 0 to {MAX_NEW_TOKENS:,} "
        "(default: 500)",
    )  # fmt: skip
    p.add_argument(
        "--temperature", type=float, default=0.8, metavar="T", help="0 = greedy; <1 sharper, >1 wilder (default: 0.8)"
    )
    p.add_argument("--top-k", type=int, metavar="K", help="sample only from the K most likely tokens, K >= 1")
    p.add_argument("--top-p", type=float, metavar="P", help="sample from the most likely tokens holding mass P, 0<P<=1")
    p.add_argument("--seed", type=int, metavar="S", help="seed the sampler, 0 <= S < 2**64: the same seed gives the "
                   "same text (default: a fresh random seed)")  # fmt: skip
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="how many samples, N >= 1 (default: 1)")
    p.add_argument("--stop", metavar="TEXT", help="end a sample where this text first appears (not printed)")
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--compile", action="store_true", help="compile the one-token step with torch.compile (on a "
                   "CPU it needs a C++ compiler): one sample decodes 2-3x faster after seconds of compiling at the "
                   "start, so it pays off for long samples; without a compiler a warning says so and sampling "
                   "runs as usual")  # fmt: skip
    p.set_defaults(run=_sample)


def _export(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        from nanogpt_lib.pretrained import check_onnx_target

        check_onnx_target(args.out, args.force)  # never inside a run, nor over files no export wrote
        return _export_onnx(args)
    if args.quantize:
        raise ValueError("--quantize stores an ONNX graph's weights in 8 bits: use it with --format onnx")
    from nanogpt_lib.pretrained import export_checkpoint_hf

    _register_kinds()
    out = export_checkpoint_hf(args.ckpt, args.out, force=args.force)
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
    else:  # the float32 graph first, in a folder of its own beside the 8-bit one, then removed
        import shutil
        import tempfile

        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
        try:
            export.quantize_onnx(export.export_onnx(model, scratch / "fp32.onnx", tokenizer=tokenizer), out)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    weights = "8-bit" if args.quantize else "float32"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {weights} weights) and {export.tokenizer_file(out).name}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint in another format (Hugging Face's GPT-2, or ONNX)",
        description="Write a checkpoint written by `nanogpt train` in another format: a folder in Hugging Face's "
        "GPT-2 format (model.safetensors and config.json, which transformers loads), or an ONNX graph with a KV "
        "cache and its tokenizer beside it, which `nanogpt sample --onnx` and ONNX Runtime (also in a browser) run "
        "without PyTorch.",
    )
    p.add_argument(
        "--format", choices=["hf", "onnx"], default="hf", help="hf: a folder transformers loads (default); onnx: "
        "a graph with a KV cache for ONNX Runtime, and its tokenizer beside it (FILE.tokenizer.json)",
    )  # fmt: skip
    p.add_argument("--ckpt", required=True, metavar="DIR", help="a run folder (uses best/, else last/) or a checkpoint")
    p.add_argument("--out", required=True, metavar="PATH", help="the folder to write (hf), or FILE.onnx (onnx)")
    p.add_argument("--quantize", action="store_true", help="onnx: store the weights in 8 bits (about 4x smaller)")
    p.add_argument(
        "--force", action="store_true", help="write even where files that no export wrote are: replace those of the "
        "export's names (never inside a run or a checkpoint)",
    )  # fmt: skip
    p.set_defaults(run=_export)


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser of `nanogpt` and each subcommand's. Building them imports nothing: the help needs no PyTorch."""
    parser = argparse.ArgumentParser(
        prog="nanogpt",
        description="Train and sample small GPT language models (the library of Build nanoGPT). "
        "`nanogpt COMMAND --help` explains a command.",
    )
    parser.add_argument("--version", action="version", version=f"nanogpt {__version__}")
    parser.set_defaults(run=lambda args: parser.print_help())  # `nanogpt` alone: the help
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_prepare, _add_train, _add_sample, _add_export):
        add(sub)
    return parser, dict(sub.choices)


def build_parser() -> argparse.ArgumentParser:
    """The parser of `nanogpt`, with every subcommand and its options."""
    return _parsers()[0]


def _hyphenate(argv: list[str]) -> list[str]:
    """Flags as the help shows them: `--max_iters` is read as `--max-iters` (a value is never changed)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        name, eq, value = arg.partition("=")
        out.append(name.replace("_", "-") + eq + value if arg.startswith("--") else arg)
    return out


def _did_you_mean(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match and match[0] != word else ""


def _parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; a mistyped command or flag is an error with the usage of the command it was meant
    for and the closest spelling (exit status 2)."""
    parser, commands = _parsers()
    argv = _hyphenate(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in commands:
        parser.error(f"unknown command {command!r}{_did_you_mean(command, commands)}; the commands are "
                     f"{', '.join(commands)}")  # fmt: skip
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        target = commands.get(args.command, parser)
        flag = next((a.partition("=")[0] for a in unknown if a.startswith("-")), "")
        flags = target._option_string_actions  # argparse's table of the flags it knows
        target.error(f"unrecognized arguments: {' '.join(unknown)}{_did_you_mean(flag, flags) if flag else ''}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    prefix = f"nanogpt {next((a for a in argv if not a.startswith('-')), '')}".strip()
    try:  # Ctrl-C before the trainer's own handler (during imports and setup) is one line, not a traceback
        args = _parse(argv)
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
