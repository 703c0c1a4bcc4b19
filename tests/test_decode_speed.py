"""Decoding at the speed of memory (appendix A6): the compiled one-token step gives the same tokens as the model,
falls back cleanly where it cannot compile, and the bound's two measurements (bytes a step reads, bandwidth)."""

import contextlib
import io
import warnings

import pytest
import torch
from tiny_runs import sharpened
from torch._dynamo.utils import counters

from nanogpt_lib.cli import main
from nanogpt_lib.generate import CompiledDecoder, KVCache, generate, next_token_logits, read_bandwidth, step_bytes
from nanogpt_lib.model import GPT, GPTConfig
from nanogpt_lib.modern import ModernConfig, ModernGPT

BLOCK = 16


def gpt(seed=0):
    torch.manual_seed(seed)
    return sharpened(GPT(GPTConfig(vocab_size=37, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32)))


def modern(seed=0):
    torch.manual_seed(seed)
    options = dict(rope=True, norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_head=2, tie_embeddings=False)
    shape = dict(vocab_size=37, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32)
    return sharpened(ModernGPT(ModernConfig(**shape, **options)))


def prompt(batch, length, seed=1):
    return torch.randint(0, 37, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [gpt, modern], ids=["gpt", "modern-all-options"])
def test_compiled_steps_give_the_uncached_tokens_inside_and_past_the_context(make):
    model = make()
    fast = CompiledDecoder(model)
    counters.clear()
    for length, settings in ((3, dict(temperature=0)), (BLOCK - 2, dict(temperature=1.0, top_k=5))):
        idx = prompt(1, length, seed=length)
        runs = [generate(m, idx, 2 * BLOCK, use_cache=c, generator=torch.Generator().manual_seed(7), **settings)
                for m, c in ((fast, True), (model, False))]  # fmt: skip
        assert torch.equal(runs[0], runs[1])  # 2 contexts' worth: past the context the window is recomputed
    assert fast.failed is None
    assert counters["stats"]["unique_graphs"] >= 1  # the one-token steps really ran compiled


def test_compiled_logits_match_the_model_along_a_generation():
    model = gpt(3)
    fast = CompiledDecoder(model)
    seq = generate(model, prompt(2, 4), BLOCK - 4, generator=torch.Generator().manual_seed(0))
    caches = [KVCache.for_model(model), KVCache.for_model(model)]
    with torch.inference_mode():
        for t in range(4, seq.size(1)):
            compiled = next_token_logits(fast, seq[:, :t], caches[0])
            torch.testing.assert_close(compiled, next_token_logits(model, seq[:, :t], caches[1]), atol=1e-5, rtol=1e-5)


def test_a_failed_compile_warns_once_and_samples_uncompiled(monkeypatch):
    def no_compiler(model, **kwargs):
        def step(*args, **kw):
            raise RuntimeError("InductorError: no C++ compiler found\n(a long traceback)")

        return step

    monkeypatch.setattr(torch, "compile", no_compiler)
    model = gpt(1)
    fast = CompiledDecoder(model)
    idx = prompt(1, 5)
    with pytest.warns(RuntimeWarning, match=r"could not be compiled \(RuntimeError: InductorError: no C\+\+ compiler"):
        tokens = generate(fast, idx, 10, temperature=0)
    assert fast.failed.startswith("RuntimeError: InductorError") and "traceback" not in fast.failed
    assert torch.equal(tokens, generate(model, idx, 10, temperature=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: later steps run uncompiled without a word
        assert torch.equal(generate(fast, idx, 10, temperature=0), tokens)


def test_the_wrapper_leaves_the_model_s_mode_and_weights_alone():
    model = gpt(2).train()
    fast = CompiledDecoder(model)
    generate(fast, prompt(1, 3), 4, temperature=0)
    assert model.training and fast.training
    assert list(fast.parameters()) == list(model.parameters())  # shared, not copied
    idx, targets = prompt(2, 8), prompt(2, 8, seed=5)
    model.eval()
    torch.testing.assert_close(fast(idx, targets)[1], model(idx, targets)[1], rtol=0, atol=0)  # training calls: as is


@pytest.mark.parametrize("make", [gpt, modern], ids=["gpt", "modern-gqa"])
def test_step_bytes_are_the_weights_and_the_cached_keys_and_values(make):
    model = make()
    position = 11
    cache = KVCache.for_model(model)
    with torch.inference_mode():
        model(prompt(1, position), cache=cache)
    kv = sum(t[:, :, :position].numel() * t.element_size() for t in cache.k + cache.v)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert step_bytes(model, position) == weights + kv
    if make is modern:  # 2 key/value heads for 4 query heads: half the cache of full multi-head attention
        assert kv == 2 * 2 * position * (2 * 8) * 4  # layers x (k, v) x positions x (kv heads x head dim) x fp32


def test_read_bandwidth_is_a_plausible_rate():
    rate = read_bandwidth("cpu", mb=32, repeats=2)
    assert 1e8 < rate < 1e13  # 0.1 GB/s to 10 TB/s: bytes per second, not bits or GB


def test_sample_compile_prints_the_same_text(tmp_path):
    torch.manual_seed(0)
    from nanogpt_lib.data import CharTokenizer
    from nanogpt_lib.train import save_checkpoint

    tok = CharTokenizer("abcdefgh \n")
    model = sharpened(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)))
    state = {"step": 1, "model_config": model.config.to_dict(), "tokenizer": tok.to_dict()}
    save_checkpoint(tmp_path / "best", model, torch.optim.AdamW(model.parameters()), state)
    printed = []
    for extra in ([], ["--compile"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            args = ["sample", "--ckpt", str(tmp_path), "--prompt", "ab", "--max-new-tokens", "12", "--seed", "3"]
            assert main(args + extra) == 0
        printed.append(out.getvalue())
    assert printed[0] == printed[1] and len(printed[0]) > 12


def test_sample_compile_with_onnx_is_refused(tmp_path, capsys):
    assert main(["sample", "--onnx", str(tmp_path / "m.onnx"), "--compile"]) == 1
    assert "drop --compile" in capsys.readouterr().err
