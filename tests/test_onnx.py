"""Chapter 11: the ONNX graph computes the model's logits, with and without a cache; ONNX Runtime's greedy text is
PyTorch's through the command line, for characters and for GPT-2's BPE tokens; chapter 09's options export; what
cannot be exported or run is refused by name; 8-bit weights shrink the file; `nanogpt sample --onnx` runs without
PyTorch."""

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import sharpened

from nanogpt_lib import export as X
from nanogpt_lib.cli import main
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.generate import generate, sample_next, top_k_filter, top_p_filter
from nanogpt_lib.model import GPT, GPTConfig
from nanogpt_lib.modern import ModernConfig, ModernGPT
from nanogpt_lib.train import save_checkpoint

CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROOT = Path(__file__).resolve().parent.parent


def run_folder(folder: Path, model, tokenizer_spec: dict) -> Path:
    state = {"step": 1, "model_config": model.config.to_dict(), "tokenizer": tokenizer_spec}
    save_checkpoint(folder / "best", model, torch.optim.AdamW(model.parameters()), state)
    return folder


def nanogpt(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> Path:
    """A run folder: a small random GPT over Shakespeare's characters, context 16."""
    torch.manual_seed(0)
    model = sharpened(GPT(GPTConfig(vocab_size=len(CHARS), block_size=16, n_layer=2, n_head=2, n_embd=32)))
    return run_folder(tmp_path_factory.mktemp("char_run"), model, CharTokenizer(CHARS).to_dict())


@pytest.fixture(scope="module")
def char_graph(char_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("char_graph") / "model.onnx"
    assert main(["export", "--format", "onnx", "--ckpt", str(char_run), "--out", str(out)]) == 0
    return out


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids), all_logits=True)[0].numpy()


def assert_parity(model, graph: Path, batch: int = 2) -> None:
    """The graph's logits within 1e-4 of the model's: whole, and in two steps through the cache."""
    sampler = X.OnnxSampler(graph)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (batch, model.config.block_size))
    expected = torch_logits(model, ids)
    whole, _ = sampler.run(ids)
    first, pasts = sampler.run(ids[:, :5])
    rest, presents = sampler.run(ids[:, 5:], pasts)
    assert np.abs(whole - expected).max() < 1e-4
    assert np.abs(np.concatenate([first, rest], axis=1) - expected).max() < 1e-4
    c = model.config
    assert presents[0].shape == (batch, c.n_head, c.block_size, c.n_embd // c.n_head)


def test_the_graph_has_the_contract_s_inputs_outputs_and_metadata(char_graph):
    sampler = X.OnnxSampler(char_graph)
    inputs = [(i.name, i.shape, i.type) for i in sampler.session.get_inputs()]
    outputs = [(o.name, o.shape) for o in sampler.session.get_outputs()]
    assert inputs[0] == ("input_ids", ["batch", "seq"], "tensor(int64)")
    assert inputs[1:3] == [("past_key_0", ["batch", 2, "past", 16], "tensor(float)"),
                           ("past_value_0", ["batch", 2, "past", 16], "tensor(float)")]  # fmt: skip
    assert [i[0] for i in inputs] == X.io_names(2)[0] and [n for n, _ in outputs] == X.io_names(2)[1]
    assert outputs[0] == ("logits", ["batch", "seq", len(CHARS)])
    assert outputs[1] == ("present_key_0", ["batch", 2, "past + seq", 16])
    assert sampler.block_size == 16 and sampler.vocab_size == len(CHARS)
    assert X.load_tokenizer(char_graph).encode("To be") == CharTokenizer(CHARS).encode("To be")


def test_logits_match_pytorch_with_and_without_past(char_run, char_graph):
    from nanogpt_lib.train import load_checkpoint

    model, _, _ = load_checkpoint(char_run)
    assert_parity(model, char_graph, batch=3)


@pytest.mark.parametrize("prompt", ["ROMEO:", ""])
def test_200_greedy_tokens_equal_nanogpt_sample_s_for_a_character_model(char_run, char_graph, capsys, prompt):
    greedy = ("--prompt", prompt, "--max-new-tokens", 200, "--temperature", 0)
    code, theirs, _ = nanogpt(capsys, "sample", "--ckpt", char_run, *greedy)
    assert code == 0
    code, ours, err = nanogpt(capsys, "sample", "--onnx", char_graph, *greedy)
    assert code == 0, err
    assert ours == theirs and len(ours) == len(prompt) + 200 + 1  # far past the context of 16


def test_200_greedy_tokens_equal_nanogpt_sample_s_for_a_gpt2_token_model(tmp_path, capsys):
    torch.manual_seed(1)
    model = sharpened(GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)))
    run = run_folder(tmp_path / "run", model, {"type": "tiktoken", "name": "gpt2"})
    graph = tmp_path / "gpt2.onnx"
    assert nanogpt(capsys, "export", "--format", "onnx", "--ckpt", run, "--out", graph)[0] == 0
    assert X.self_contained({"type": "tiktoken", "name": "gpt2"})["type"] == "bpe"  # the file needs no tiktoken
    greedy = ("--prompt", "To be, or not to be", "--max-new-tokens", 200, "--temperature", 0)
    _, theirs, _ = nanogpt(capsys, "sample", "--ckpt", run, *greedy)
    code, ours, err = nanogpt(capsys, "sample", "--onnx", graph, *greedy)
    assert code == 0, err
    assert ours == theirs


MODERN = {
    "every option": dict(rope=True, norm="rmsnorm", mlp="swiglu", qk_norm=True, tie_embeddings=False,
                         logit_softcap=10.0),
    "relu2, qk-norm, no biases": dict(mlp="relu2", qk_norm=True, bias=False),
    "rotary positions alone": dict(rope=True, rope_base=500.0),
    "tanh GELU, zero-initialised projections": dict(gelu_approx="tanh", zero_init_proj=True),
}  # fmt: skip


@pytest.mark.parametrize("options", MODERN.values(), ids=MODERN.keys())
def test_chapter_9_models_export_with_every_option(tmp_path, options):
    torch.manual_seed(2)
    config = ModernConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, **options)
    model = sharpened(ModernGPT(config))
    if options.get("zero_init_proj"):
        with torch.no_grad():  # trained a little, in effect: the projections are no longer zero
            for name, p in model.named_parameters():
                if "c_proj" in name:
                    p.normal_(0, 0.5)
    graph = X.export_onnx(model, tmp_path / "modern.onnx")
    assert_parity(model, graph)
    ids = np.array([[1, 2, 3]])
    ours = X.generate_onnx(graph, ids, 60, temperature=0)
    assert np.array_equal(ours, generate(model, torch.from_numpy(ids), 60, temperature=0).numpy())


def test_export_leaves_the_model_as_it_was_and_uses_eval_mode_and_float32(tmp_path):
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.5)).train()
    half = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16)).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = X.export_onnx(model, tmp_path / "dropout.onnx")
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert_parity(model.eval(), graph)  # the graph is the model in evaluation mode: no dropout
    graph = X.export_onnx(half, tmp_path / "bf16.onnx")
    assert next(half.parameters()).dtype == torch.bfloat16
    assert_parity(half.float(), graph)


def test_what_cannot_be_exported_is_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match="export_onnx writes the book's GPT .* a Linear has no `config`"):
        X.export_onnx(torch.nn.Linear(2, 2), tmp_path / "linear.onnx")

    class Doubled(GPT):  # a subclass whose forward is not GPT's path
        def forward_hidden(self, idx, cache=None):
            return 2 * super().forward_hidden(idx, cache)

    torch.manual_seed(4)
    model = Doubled(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="logits differ from the model's .* cannot be exported"):
        X.export_onnx(model, tmp_path / "doubled.onnx", tokenizer=CharTokenizer("abc"))
    assert list(tmp_path.iterdir()) == [], "nothing is written for a refused model"


def test_what_cannot_be_run_is_refused(char_graph, tmp_path):
    sampler = X.OnnxSampler(char_graph)
    _, pasts = sampler.run(np.zeros((1, 10), dtype=np.int64))
    with pytest.raises(ValueError, match="10 cached \\+ 7 new positions do not fit the context of 16"):
        sampler.run(np.zeros((1, 7), dtype=np.int64), pasts)
    with pytest.raises(ValueError, match="at least one token"):
        sampler.generate(np.zeros((1, 0), dtype=np.int64), 3)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sampler.generate(np.zeros((1, 1), dtype=np.int64), 3, temperature=-1)
    foreign = tmp_path / "foreign.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is not the default any more
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(foreign), dynamo=False)
    with pytest.raises(ValueError, match="not written by export_onnx"):
        X.OnnxSampler(foreign)
    with pytest.raises(FileNotFoundError, match="foreign.tokenizer.json is missing.*nanogpt export --format onnx"):
        X.load_tokenizer(foreign)


def test_the_command_refuses_what_it_cannot_do(char_run, char_graph, capsys, tmp_path):
    cases = [
        (("sample", "--onnx", char_graph, "--ckpt", char_run), "give one of them"),
        (("sample",), "give --ckpt DIR"),
        (("sample", "--onnx", char_graph, "--top-p", 2), "top_p must be in \\(0, 1\\]"),
        (("sample", "--onnx", char_graph, "--prompt", "ROMEO: é"), "cannot be encoded by the model's tokenizer"),
        (("export", "--ckpt", char_run, "--out", tmp_path / "hf", "--quantize"), "use it with --format onnx"),
        (("export", "--format", "onnx", "--ckpt", char_run, "--out", tmp_path / "folder"), "FILE.onnx"),
    ]
    for args, message in cases:
        code, _, err = nanogpt(capsys, *args)
        assert code == 1 and err.startswith(f"nanogpt {args[0]}: error: "), (args, err)
        assert re.search(message, err), (args, err)


def test_numpy_sampling_follows_chapter_6(char_graph, capsys):
    z = torch.randn(6, 40, generator=torch.Generator().manual_seed(5)) * 3
    for k in (1, 3, 40, 100):
        assert np.array_equal(np.isinf(X.top_k_mask(z.numpy(), k)), top_k_filter(z, k).isinf().numpy())
    for p in (0.01, 0.3, 0.8, 1.0):
        assert np.array_equal(np.isinf(X.top_p_mask(z.numpy(), p)), top_p_filter(z, p).isinf().numpy())
    for t in (0, 1e-40):
        assert np.array_equal(X.sample_next_np(z.numpy(), temperature=t), sample_next(z, temperature=t).numpy())
    draws = X.sample_next_np(np.repeat(z[:1].numpy(), 20_000, axis=0), 1.3, 5, 0.9, np.random.default_rng(0))
    want = top_p_filter(top_k_filter(z[:1] / 1.3, 5), 0.9).softmax(-1)[0].numpy()
    assert np.abs(np.bincount(draws[:, 0], minlength=40) / 20_000 - want).max() < 0.02
    args = ("sample", "--onnx", char_graph, "--prompt", "To be", "--max-new-tokens", 60, "--top-k", 10, "--seed", 3)
    first, again, streamed = (nanogpt(capsys, *a)[1] for a in (args, args, (*args, "--stream")))
    other = nanogpt(capsys, *args[:-1], 4)[1]
    assert first == again == streamed and first != other and len(first) == len("To be") + 60 + 1


def test_stop_strings_and_several_samples(char_graph, capsys):
    args = ("sample", "--onnx", char_graph, "--prompt", "KING:", "--max-new-tokens", 80, "--seed", 2)
    free = nanogpt(capsys, *args)[1][len("KING:") : -1]
    stop = free[20:22]
    for extra in ((), ("--stream",)):
        stopped = nanogpt(capsys, *args, "--stop", stop, *extra)[1]
        assert stopped == "KING:" + free[: free.index(stop)] + "\n", extra
    code, out, _ = nanogpt(capsys, *args, "--num-samples", 3)
    samples = out[:-1].split("\n" + "-" * 40 + "\n")
    assert code == 0 and len(samples) == 3 and len(set(samples)) == 3


def test_quantization_shrinks_the_file_and_keeps_the_graph_usable(char_run, char_graph, capsys, tmp_path):
    int8 = X.quantize_onnx(char_graph, tmp_path / "model.int8.onnx")
    assert int8.stat().st_size < 0.6 * char_graph.stat().st_size  # this small a graph is part structure
    assert X.tokenizer_file(int8).read_text() == X.tokenizer_file(char_graph).read_text()
    fp32, q8 = X.OnnxSampler(char_graph), X.OnnxSampler(int8)
    ids = np.random.default_rng(6).integers(0, len(CHARS), (2, 16))
    a, b = fp32.run(ids)[0], q8.run(ids)[0]
    assert q8.block_size == 16 and 0 < np.abs(a - b).max() < 0.25 * np.abs(a).max()  # rounded, not broken
    cli = tmp_path / "cli.int8.onnx"
    code, out, _ = nanogpt(capsys, "export", "--format", "onnx", "--ckpt", char_run, "--out", cli, "--quantize")
    assert code == 0 and "8-bit" in out and X.tokenizer_file(cli).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.int8.onnx", "cli.int8.tokenizer.json",
                                                         "model.int8.onnx", "model.int8.tokenizer.json"]  # fmt: skip
    assert cli.stat().st_size == int8.stat().st_size
    assert nanogpt(capsys, "sample", "--onnx", cli, "--max-new-tokens", 20, "--seed", 1)[0] == 0


def test_sampling_from_a_graph_never_imports_pytorch(char_graph):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # importing torch now raises ImportError\n"
        "from nanogpt_lib.cli import main\n"
        f"sys.exit(main(['sample', '--onnx', {str(char_graph)!r}, '--prompt', 'ROMEO:', '--max-new-tokens', '30',"
        " '--temperature', '0', '--stream']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:") and len(r.stdout) == len("ROMEO:") + 30 + 1


# --- where an export may write ------------------------------------------------------------------------


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_to_onnx_never_writes_into_a_run_or_a_checkpoint(char_run, capsys, tmp_path):
    from nanogpt_lib.checkpoint import MANIFEST

    run = tmp_path / "run"
    shutil.copytree(char_run, run)
    (run / MANIFEST).write_text('{"format": "nanogpt-run", "files": ["last", "best"]}\n')
    before = contents(run)
    for out in (run / "best" / "model.onnx", run / "model.onnx", run / "graphs" / "model.onnx"):
        code, _, err = nanogpt(capsys, "export", "--format", "onnx", "--ckpt", run, "--out", out, "--force")
        assert code == 1 and "a run's folder or a checkpoint" in err, err
        assert f"--out {tmp_path.resolve() / 'run.onnx'}" in err, err  # beside the run, not in it
    assert contents(run) == before
    outside_a_run = char_run / "best" / "m.onnx"  # a checkpoint, with no run folder around it
    code, _, err = nanogpt(capsys, "export", "--format", "onnx", "--ckpt", char_run, "--out", outside_a_run)
    assert code == 1 and str((char_run / "best").resolve()) in err, err


def test_export_to_onnx_over_files_no_export_wrote_needs_force(char_run, capsys, tmp_path):
    graph, tokenizer = tmp_path / "model.onnx", tmp_path / "model.tokenizer.json"
    graph.write_bytes(b"the user's own graph")
    tokenizer.write_text('{"version": "1.0", "model": {"type": "BPE"}}\n')  # a `tokenizers` file, not ours
    args = ("export", "--format", "onnx", "--ckpt", char_run, "--out", graph)
    code, _, err = nanogpt(capsys, *args)
    assert code == 1 and "model.onnx and model.tokenizer.json, which no export wrote" in err and "--force" in err, err
    graph.unlink()
    code, _, err = nanogpt(capsys, *args)
    assert code == 1 and "holds model.tokenizer.json," in err, err
    assert tokenizer.read_text() == '{"version": "1.0", "model": {"type": "BPE"}}\n' and not graph.exists()
    assert nanogpt(capsys, *args, "--force")[0] == 0
    assert X.load_tokenizer(graph).encode("To be") == CharTokenizer(CHARS).encode("To be")
    assert nanogpt(capsys, *args)[0] == 0  # its own files: exporting again needs no flag
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.tokenizer.json"]


def test_a_link_at_an_onnx_name_is_replaced_never_written_through(char_run, char_graph, capsys, tmp_path):
    users = {name: tmp_path / f"users_{name}" for name in ("model.onnx", "model.tokenizer.json")}
    for name, target in users.items():
        target.write_text(f"the user's {name}\n")
        (tmp_path / name).symlink_to(target)
    args = ("export", "--format", "onnx", "--ckpt", char_run, "--out", tmp_path / "model.onnx")
    assert nanogpt(capsys, *args)[0] == 1  # a link is never the export's own
    assert nanogpt(capsys, *args, "--force")[0] == 0
    assert all(target.read_text() == f"the user's {name}\n" for name, target in users.items())
    assert not any((tmp_path / name).is_symlink() for name in users)
    assert X.OnnxSampler(tmp_path / "model.onnx").block_size == 16


def test_the_library_writes_graphs_and_tokenizers_through_no_link(char_run, char_graph, tmp_path):
    """export_onnx and quantize_onnx write into a new folder of their own, then rename: a link someone put at a
    file's name, or at the temporary name an older writer used, is replaced, and what it points to is left alone."""
    from nanogpt_lib.train import load_checkpoint

    model, tokenizer, _ = load_checkpoint(char_run)
    user = tmp_path / "users_file"
    user.write_text("the user's file\n")
    names = ("model.tokenizer.json", ".model.onnx.tmp", "small.tokenizer.json", ".small.onnx.tmp")
    for name in names:
        (tmp_path / name).symlink_to(user)
    X.export_onnx(model, tmp_path / "model.onnx", tokenizer=tokenizer)
    X.quantize_onnx(tmp_path / "model.onnx", tmp_path / "small.onnx")
    assert user.read_text() == "the user's file\n"
    assert not (tmp_path / "model.tokenizer.json").is_symlink() and not (tmp_path / "small.tokenizer.json").is_symlink()
    assert X.load_tokenizer(tmp_path / "small.onnx").encode("To be") == CharTokenizer(CHARS).encode("To be")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.is_symlink()]  # nothing left over
