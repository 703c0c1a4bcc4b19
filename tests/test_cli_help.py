"""The `nanogpt` command explains itself: help without PyTorch that matches the trainer, one spelling per flag,
"did you mean" for a typo, bounded prompt files and counts, and Ctrl-C that ends in one line, not a traceback."""

import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import pytest
import torch

import nanogpt_lib.modern as modern
import nanogpt_lib.muon  # noqa: F401 - registers Muon and the wsd schedule
from nanogpt_lib import cli
from nanogpt_lib import device as D
from nanogpt_lib import generate as G
from nanogpt_lib import train as T
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.model import GPT, MODELS, GPTConfig

HAS_RLIMIT = sys.platform.startswith("linux")
CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TABLE = {field: (kind, default) for group in cli.TRAIN_OPTIONS.values() for field, kind, default, _ in group}


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def nanogpt(capsys, *args: str) -> tuple[int, str, str]:
    """`nanogpt ARGS` in this process: the exit status (argparse's included), stdout and stderr."""
    try:
        code = cli.main(list(args))
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:  # would stop the test session
        pytest.fail("KeyboardInterrupt escaped the command")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def help_entries(text: str) -> dict[str, str]:
    """Each option of a --help text and its lines, joined: {"--n-layer": "--n-layer N transformer blocks ..."}."""
    blocks = re.split(r"\n(?=  -|\S)", text)  # an option's lines, or a heading's
    return {b.split()[0]: " ".join(b.split()) for b in blocks if b.startswith("  -")}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder holding the best/ checkpoint of a small random-weight GPT over characters."""
    tok = CharTokenizer(CHARS)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    out = tmp_path_factory.mktemp("run")
    state = {"step": 1, "model_config": config.to_dict(), "tokenizer": tok.to_dict()}
    T.save_checkpoint(out / "best", model, torch.optim.AdamW(model.parameters()), state)
    return out


# --- help without PyTorch, matching the trainer -------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["train"], ["sample"], ["prepare"], ["export"]])
def test_help_answers_without_importing_pytorch(args):
    code = (
        "import sys\n"
        "from nanogpt_lib.cli import main\n"
        "try:\n"
        f"    main({[*args, '--help']!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('IMPORTED', sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert f"usage: nanogpt {' '.join(args)}".strip() in r.stdout
    assert r.stdout.strip().endswith("IMPORTED []"), r.stdout[-300:]


def test_list_presets_imports_no_pytorch_and_the_flags_it_prints_rebuild_each_preset():
    code = "import sys\nfrom nanogpt_lib.cli import main\nassert main(['train', '--list-presets']) == 0\n"
    r = run_python(code + "assert 'torch' not in sys.modules\n")
    assert r.returncode == 0, r.stderr
    flag_to_field = {cli.train_flag(f.name): f.name for f in fields(T.TrainConfig)}
    blocks = re.split(r"\n  (?=\S)", r.stdout)[1:]  # one per preset: its name, its note, then its flags
    assert [b.split()[0] for b in blocks] == list(T.PRESETS)
    for block, (name, (note, _)) in zip(blocks, cli.PRESET_NOTES.items(), strict=True):
        assert note in " ".join(block.split())
        pairs = re.findall(r"(--[\w-]+) (\S+)", block)
        overrides = {flag_to_field[flag]: value for flag, value in pairs}
        assert T.make_config(overrides=overrides) == T.make_config(name), name


def test_option_table_matches_the_trainer_and_the_registries():
    names = [field for group in cli.TRAIN_OPTIONS.values() for field, *_ in group]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in fields(T.TrainConfig)}
    defaults, hints = T.TrainConfig(), get_type_hints(T.TrainConfig)
    for name, (kind, default) in TABLE.items():
        value = getattr(defaults, name)
        assert (default, type(default)) == (value, type(value)), name
        base = next(t for t in (bool, int, float, str) if t is hints[name] or t in getattr(hints[name], "__args__", ()))
        expected = {bool: [cli.BOOL], int: ["N"], float: ["X", "SECONDS"]}.get(base)
        assert expected is None or kind in expected, (name, kind)  # N an integer, X a number, as the help says
    assert set(TABLE["optimizer"][0]) == set(T.OPTIMIZERS) == {"adamw", "muon"}
    assert set(TABLE["schedule"][0]) == set(T.SCHEDULES) == {"cosine", "wsd"}
    assert set(TABLE["precision"][0]) == {"auto", *D.PRECISIONS}
    assert set(TABLE["device"][0]) == {"auto", "cuda:N", *D.DEVICE_KINDS}
    model_fields = {f.name for kind in MODELS for f in fields(kind)} & set(names)
    assert {field for field, *_ in cli.TRAIN_OPTIONS["the model (chapters 04 and 09)"]} == model_fields
    assert (cli.DEFAULT_PRESET, {k: s for k, (_, s) in cli.PRESET_NOTES.items()}) == (T.DEFAULT_PRESET, T.PRESETS)


@pytest.mark.parametrize("field", ["norm", "mlp"])
def test_model_choices_are_those_chapter_09_accepts(field):
    shape = dict(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=8)
    for choice in TABLE[field][0]:
        assert getattr(modern.ModernConfig(**shape, **{field: choice}), field) == choice
    with pytest.raises(ValueError) as error:
        modern.ModernConfig(**shape, **{field: "unknown"})
    named = re.findall(r"'(\w+)'", str(error.value).split(", got")[0])
    assert named == list(TABLE[field][0])


def test_train_help_shows_one_spelling_the_values_and_the_default_of_every_option(capsys):
    code, out, _ = nanogpt(capsys, "train", "--help")
    assert code == 0
    entries = help_entries(out)
    for field, (kind, default) in TABLE.items():
        entry = entries[cli.train_flag(field)]
        metavar = "{" + ",".join(kind) + "}" if isinstance(kind, tuple) else kind
        assert entry.startswith(f"{cli.train_flag(field)} {metavar} "), entry
        shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        assert entry.endswith(f"(default: {shown})"), entry
    for flag in ("--norm {layernorm,rmsnorm}", "--mlp {gelu,relu2,swiglu}", "--optimizer {adamw,muon}",
                 "--schedule {cosine,wsd}", "--precision {auto,fp32,bf16,fp16}"):  # fmt: skip
        assert flag in out
    assert re.findall(r"--\w+_[\w-]*", out) == []  # no underscore spellings
    assert len(re.findall(r"(?m)^  --n-layer ", out)) == 1
    text = " ".join(out.split())
    for name, (note, _) in cli.PRESET_NOTES.items():
        assert f"{name} {note}" in text  # each preset described in the epilog
    assert "--list-presets" in text


def test_underscore_spellings_are_still_accepted_and_values_are_left_alone():
    args = cli._parse(["train", "--max_iters", "5", "--n_layer=2", "--data", "my_data", "--init-from", "a_b"])
    assert (args.max_iters, args.n_layer, args.data_dir, args.init_from) == ("5", "2", "my_data", "a_b")
    args = cli._parse(["sample", "--max_new_tokens", "7", "--stop=a_b"])
    assert (args.max_new_tokens, args.stop) == (7, "a_b")
    assert cli._hyphenate(["--top_k", "1", "--", "--top_p"]) == ["--top-k", "1", "--", "--top_p"]  # none after --


def test_export_and_every_command_are_described(capsys):
    _, commands = cli._parsers()
    for name, parser in commands.items():
        assert parser.description and len(parser.description) > 60, name
    code, out, _ = nanogpt(capsys, "export", "--help")
    assert code == 0 and "Hugging Face's GPT-2 format" in " ".join(out.split())


# --- mistakes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, usage, hint",
    [
        (["train", "--time-budjet", "30"], "usage: nanogpt train", "(did you mean --time-budget?)"),
        (["train", "--n-layers", "2"], "usage: nanogpt train", "(did you mean --n-layer?)"),
        (["train", "--learning_rte=0.1"], "usage: nanogpt train", "(did you mean --learning-rate?)"),
        (["sample", "--temprature", "0.5"], "usage: nanogpt sample", "(did you mean --temperature?)"),
        (["export", "--ckpt", "a", "--out", "b", "--formt", "hf"], "usage: nanogpt export", "(did you mean --format?)"),
        (["trian", "--max-iters", "3"], "usage: nanogpt [-h]", "unknown command 'trian' (did you mean train?)"),
        (["smaple"], "usage: nanogpt [-h]", "(did you mean sample?)"),
    ],
)
def test_a_typo_shows_the_command_s_usage_and_the_closest_spelling(capsys, args, usage, hint):
    code, out, err = nanogpt(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith(usage), err
    assert hint in err.splitlines()[-1], err


def test_no_suggestion_when_nothing_is_close(capsys):
    code, _, err = nanogpt(capsys, "train", "--zzzzzz", "1")
    assert code == 2 and "unrecognized arguments: --zzzzzz 1" in err and "did you mean" not in err


# --- sample: bounded input ---------------------------------------------------------------------------------


def sample_subprocess(*args: str) -> subprocess.CompletedProcess:
    """`nanogpt sample ARGS` in a fresh process, guarded: a FIFO that blocks times out, and reading /dev/zero or a
    huge file runs out of its 1 GiB of address space at once instead of filling the machine's memory."""
    limit = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n" if HAS_RLIMIT else ""
    code = f"{limit}import sys\nfrom nanogpt_lib.cli import main\nsys.exit(main({['sample', *args]!r}))\n"
    return run_python(code, timeout=60)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_prompt_file_that_never_ends_is_refused_before_reading(tmp_path):
    r = sample_subprocess("--ckpt", str(tmp_path / "none"), "--prompt-file", "/dev/zero")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "the prompt file /dev/zero is a character device" in r.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_prompt_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "prompt.fifo"
    os.mkfifo(fifo)
    r = sample_subprocess("--ckpt", str(tmp_path / "none"), "--prompt-file", str(fifo))
    assert r.returncode == 1 and f"the prompt file {fifo} is a FIFO (named pipe)" in r.stderr, r.stderr


def test_prompt_file_too_large_or_a_folder_is_refused_naming_it(tmp_path, capsys):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(10 * 2**30)  # 10 GiB, sparse: nothing is written, and nothing may be read
    r = sample_subprocess("--ckpt", str(tmp_path / "none"), "--prompt-file", str(big))
    assert r.returncode == 1 and r.stdout == ""
    assert f"the prompt file {big} holds 10,737,418,240 bytes, more than the 1,000,000" in r.stderr
    code, _, err = nanogpt(capsys, "sample", "--ckpt", str(tmp_path / "none"), "--prompt-file", str(tmp_path))
    assert code == 1 and f"the prompt file {tmp_path} is a folder" in err
    with open(big, "wb") as f:
        f.truncate(cli.PROMPT_FILE_LIMIT)  # exactly the limit is accepted
    assert cli.read_prompt_file(str(big)) == "\0" * cli.PROMPT_FILE_LIMIT


def test_prompt_file_newlines_are_read_as_text(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes("KING:\r\nMy lord é\r".encode())
    assert cli.read_prompt_file(str(prompt)) == "KING:\nMy lord é\n"
    prompt.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=f"cannot read the prompt file {re.escape(str(prompt))}: it is not UTF-8"):
        cli.read_prompt_file(str(prompt))


def test_max_new_tokens_and_seed_are_bounded(run_dir, capsys, monkeypatch):
    ckpt = ["--ckpt", str(run_dir), "--temperature", "0"]
    real = G.generate_stream

    def refused_first(*args, **kwargs):
        raise AssertionError("sampling started: the count was not checked")

    monkeypatch.setattr(G, "generate_stream", refused_first)
    code, out, err = nanogpt(capsys, "sample", *ckpt, "--max-new-tokens", "1000000000")
    assert code == 1 and out == "" and "--max-new-tokens must be from 0 to 100,000, got 1,000,000,000" in err
    monkeypatch.setattr(G, "generate_stream", real)
    code, out, err = nanogpt(capsys, "sample", *ckpt, "--seed", str(2**70))
    assert code == 1 and out == "" and "--seed must be an integer from 0 to 2**64 - 1 = 18446744073709551615" in err
    assert "Overflow" not in err
    code, out, _ = nanogpt(capsys, "sample", *ckpt, "--seed", str(2**64 - 1), "--max-new-tokens", "3")
    assert code == 0 and len(out) == 4
    code, _, err = nanogpt(capsys, "sample", "--ckpt", str(run_dir / "none"), "--max-new-tokens", "100000")
    assert code == 1 and "--max-new-tokens" not in err and "none" in err  # the bound itself is allowed


def test_samples_together_are_the_library_s(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("NANOGPT_DEVICE", "cpu")
    args = ["--ckpt", str(run_dir), "--prompt", "To", "--max-new-tokens", "30", "--num-samples", "3", "--seed", "5"]
    code, out, _ = nanogpt(capsys, "sample", *args, "--stop", "e")
    model, tok, _ = T.load_checkpoint(run_dir)
    generator = torch.Generator().manual_seed(5)
    texts = G.generate_text(model, tok, "To", 30, 3, temperature=0.8, generator=generator, stop="e")
    assert code == 0 and out == ("\n" + "-" * 40 + "\n").join("To" + t for t in texts) + "\n"


def test_ctrl_c_while_sampling_prints_the_text_so_far(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("NANOGPT_DEVICE", "cpu")
    args = ["--ckpt", str(run_dir), "--prompt", "ROMEO:", "--temperature", "0", "--num-samples", "2"]
    _, full, _ = nanogpt(capsys, "sample", *args, "--max-new-tokens", "20")
    real = G.generate_stream

    def interrupted_after_5(*a, **k):
        for i, token in enumerate(real(*a, **k)):
            if i == 5:
                raise KeyboardInterrupt
            yield token

    monkeypatch.setattr(G, "generate_stream", interrupted_after_5)
    code, out, err = nanogpt(capsys, "sample", *args, "--max-new-tokens", "20")
    first = full.split("\n" + "-" * 40 + "\n")[0]
    assert code == 130 and out == "\n".join([first[:11], "-" * 40, first[:11]]) + "\n"  # greedy: the same twice
    assert err == "nanogpt sample: interrupted; above is the text generated so far\n"


def test_ctrl_c_while_sampling_an_onnx_graph_prints_the_text_so_far(capsys, monkeypatch, tmp_path):
    X = pytest.importorskip("nanogpt_lib.export")

    def texts_then_ctrl_c(*args, **kwargs):
        yield ["a", "b"]
        yield ["ab", "bc"]
        raise KeyboardInterrupt

    monkeypatch.setattr(X, "OnnxSampler", lambda path: None)
    monkeypatch.setattr(X, "load_tokenizer", lambda path: None)
    monkeypatch.setattr(X, "onnx_texts", texts_then_ctrl_c)
    graph = str(tmp_path / "m.onnx")
    code, out, err = nanogpt(capsys, "sample", "--onnx", graph, "--prompt", "P", "--num-samples", "2")
    assert code == 130 and out == "Pab\n" + "-" * 40 + "\nPbc\n" and "interrupted" in err


# --- Ctrl-C before training starts ---------------------------------------------------------------------


def test_ctrl_c_during_the_imports_of_train_is_one_line(capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_register_kinds", interrupted)  # the first thing `train` does: import the chapters
    assert nanogpt(capsys, "train", "--max-iters", "1") == (130, "", "nanogpt train: interrupted\n")
    monkeypatch.setattr(cli, "_parsers", interrupted)  # still building the parser
    assert nanogpt(capsys, "train", "--max-iters", "1") == (130, "", "nanogpt train: interrupted\n")


def test_a_real_sigint_before_the_trainer_starts_gives_no_traceback(tmp_path):
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as in a terminal, whatever the parent ignores
        "from nanogpt_lib import cli\n"
        "cli._register_kinds = lambda: os.kill(os.getpid(), signal.SIGINT)\n"
        f"sys.exit(cli.main(['train', '--out', {str(tmp_path / 'run')!r}]))\n"
    )
    r = run_python(code)
    assert r.returncode == 130 and r.stderr == "nanogpt train: interrupted\n", r.stderr
    assert not (tmp_path / "run").exists()
