"""`nanogpt sample`: text from a checkpoint, reproducible with a seed, and clear errors for bad input."""

import re
from pathlib import Path

import pytest
import torch

from nanogpt_lib.cli import main
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.generate import generate
from nanogpt_lib.model import GPT, GPTConfig
from nanogpt_lib.train import load_checkpoint, save_checkpoint

CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with a best/ checkpoint of a small random-weight GPT over a character vocabulary."""
    tok = CharTokenizer(CHARS)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    with torch.no_grad():  # sharper distributions than at init, so that greedy and sampled text differ visibly
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    out = tmp_path_factory.mktemp("run")
    state = {"step": 10, "model_config": config.to_dict(), "tokenizer": tok.to_dict()}
    save_checkpoint(out / "best", model, torch.optim.AdamW(model.parameters()), state)
    return out


def sample(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["sample", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_greedy_text_is_the_library_s_generation(run_dir, capsys):
    args = ["--ckpt", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--temperature", "0"]
    code, out, _ = sample(capsys, *args)
    assert code == 0
    model, tok, _ = load_checkpoint(run_dir)
    ids = generate(model, torch.tensor([tok.encode("ROMEO:")]), 40, temperature=0)
    assert out == tok.decode(ids[0]) + "\n"


def test_seed_reproduces_and_stream_prints_the_same_text(run_dir, capsys):
    args = ["--ckpt", str(run_dir), "--prompt", "To be", "--max-new-tokens", "60", "--top-k", "10", "--seed", "3"]
    _, first, _ = sample(capsys, *args)
    _, again, _ = sample(capsys, *args)
    _, streamed, _ = sample(capsys, *args, "--stream")
    _, other, _ = sample(capsys, *args[:-1], "4")
    assert first == again == streamed and first != other
    assert first.startswith("To be") and len(first) == len("To be") + 60 + 1


def test_several_samples_and_an_empty_prompt(run_dir, capsys):
    code, out, _ = sample(capsys, "--ckpt", str(run_dir), "--num-samples", "3", "--max-new-tokens", "30", "--seed", "1")
    samples = out[:-1].split("\n" + "-" * 40 + "\n")
    assert code == 0 and len(samples) == 3 and len(set(samples)) == 3
    assert all(len(s) == 30 for s in samples)  # an empty prompt prints nothing before the generated text
    _, streamed, _ = sample(capsys, "--ckpt", str(run_dir), "--num-samples", "2", "--max-new-tokens", "10", "--stream")
    assert streamed.count("-" * 40) == 1


def test_prompt_file_and_stop_string(run_dir, capsys, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("KING:\nMy lord", encoding="utf-8")
    args = ["--ckpt", str(run_dir), "--prompt-file", str(prompt_file), "--max-new-tokens", "80", "--seed", "2"]
    _, free, _ = sample(capsys, *args)
    assert free.startswith("KING:\nMy lord")
    continuation = free[len("KING:\nMy lord") : -1]
    stop = continuation[20:22]
    _, stopped, _ = sample(capsys, *args, "--stop", stop)
    assert stopped == "KING:\nMy lord" + continuation[: continuation.index(stop)] + "\n"


def test_checkpoint_folder_itself_is_accepted(run_dir, capsys):
    code, out, _ = sample(capsys, "--ckpt", str(run_dir / "best"), "--max-new-tokens", "5", "--temperature", "0")
    assert code == 0 and len(out) == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "Hello é and ü"], r"prompt cannot be encoded.*'é' \(first at position 6\).*'ü'"),
        (["--temperature", "-0.1"], r"temperature must be >= 0, got -0.1; use 0 for greedy"),
        (["--top-p", "0"], r"top_p must be in \(0, 1\], got 0.0"),
        (["--top-p", "1.5"], r"top_p must be in \(0, 1\], got 1.5"),
        (["--top-k", "0"], r"top_k must be a positive integer"),
        (["--num-samples", "0"], r"--num-samples >= 1"),
        (["--prompt-file", "/nonexistent/prompt.txt"], r"cannot read the prompt file /nonexistent/prompt.txt"),
    ],
)
def test_bad_input_is_named(run_dir, capsys, args, message):
    code, out, err = sample(capsys, "--ckpt", str(run_dir), *args)
    assert code == 1 and out == ""
    assert err.startswith("nanogpt sample: error: ")
    assert re.search(message, err), err


def test_missing_and_corrupt_checkpoints_are_named(run_dir, capsys, tmp_path):
    code, _, err = sample(capsys, "--ckpt", str(tmp_path / "nowhere"))
    assert code == 1 and "no checkpoint at" in err and "nowhere" in err
    broken = tmp_path / "broken"
    (broken / "best").mkdir(parents=True)
    for f in (run_dir / "best").iterdir():
        (broken / "best" / f.name).write_bytes(f.read_bytes())
    weights = broken / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    code, _, err = sample(capsys, "--ckpt", str(broken))
    assert code == 1 and "model.safetensors" in err and "corrupt" in err
    (broken / "best" / "state.json").write_text("{not json")
    code, _, err = sample(capsys, "--ckpt", str(broken))
    assert code == 1 and "state.json" in err


def test_prompt_and_prompt_file_are_exclusive(run_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--ckpt", str(run_dir), "--prompt", "a", "--prompt-file", "x"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
