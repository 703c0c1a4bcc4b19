"""Sampling and the KV cache (chapter 06): filters against their definitions, cached == uncached, streaming."""

import pytest
import torch

from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.generate import (
    KVCache,
    encode_prompt,
    generate,
    generate_stream,
    generate_text,
    next_token_logits,
    sample_memory_bytes,
    sample_next,
    stream_text,
    top_k_filter,
    top_p_filter,
)
from nanogpt_lib.model import GPT, GPTConfig

BLOCK = 16


def make(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=37, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32) | overrides
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # larger weights than at init: sharper, more varied distributions to sample from
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    return model


def prompt(batch, length, seed=1, vocab=37):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- the filters and the draw ---------------------------------------------------------------


def test_top_k_keeps_exactly_the_k_largest():
    z = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    for k in (1, 3, 40, 100):
        out = top_k_filter(z, k)
        kept = torch.isfinite(out)
        assert torch.all(kept.sum(-1) == min(k, 40))
        expected = torch.zeros_like(kept).scatter(-1, z.topk(min(k, 40), dim=-1).indices, True)
        assert torch.equal(kept, expected)
        assert torch.equal(out[kept], z[kept])


def nucleus_reference(probs: list[float], p: float) -> set[int]:
    """The definition: walk the tokens from most to least likely until their mass reaches p."""
    chosen, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        chosen.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return chosen


@pytest.mark.parametrize("p", [1e-6, 0.3, 0.75, 0.95, 1.0])
def test_top_p_keeps_the_smallest_set_reaching_p(p):
    z = torch.randn(6, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    out = top_p_filter(z, p)
    for row in range(6):
        probs = z[row].softmax(-1)
        kept = set(torch.isfinite(out[row]).nonzero().flatten().tolist())
        assert kept == nucleus_reference(probs.tolist(), p)
        mass = probs[sorted(kept)]
        assert mass.sum() >= p - 1e-9 and mass.sum() - mass.min() < p


def test_temperature_zero_is_greedy_and_top_k_one_too():
    z = torch.randn(8, 20, generator=torch.Generator().manual_seed(2))
    assert torch.equal(sample_next(z, temperature=0), z.argmax(-1, keepdim=True))
    assert torch.equal(sample_next(z, top_k=1, generator=torch.Generator().manual_seed(0)), z.argmax(-1, keepdim=True))


def test_sampling_is_torch_multinomial_of_the_tempered_softmax():
    z = torch.randn(4, 20, generator=torch.Generator().manual_seed(3))
    got = sample_next(z, temperature=0.7, generator=torch.Generator().manual_seed(9))
    want = torch.multinomial((z / 0.7).softmax(-1), 1, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got, want)
    # and the draws follow the distribution
    many = torch.cat([sample_next(z[:1].expand(5000, -1), generator=torch.Generator().manual_seed(4))])
    freq = torch.bincount(many.flatten(), minlength=20) / 5000
    assert (freq - z[0].softmax(-1)).abs().max() < 0.03


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.5), r"temperature must be >= 0, got -0.5; use 0 for greedy"),
        (dict(temperature=float("nan")), r"temperature must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.01), r"top_p must be in \(0, 1\], got 1.01"),
        (dict(top_k=0), r"top_k must be a positive integer"),
        (dict(top_k=2.5), r"top_k must be a positive integer"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_next(torch.zeros(1, 5), **kwargs)
    with pytest.raises(ValueError, match=message):
        generate(make(), prompt(1, 3), 2, **kwargs)


# --- the cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [[BLOCK], [1] * BLOCK, [7, 1, 8], [3, 13]])
def test_cache_gives_the_full_forward_logits(chunks):
    model = make()
    seq = prompt(2, BLOCK)
    with torch.no_grad():
        full = model(seq, all_logits=True)[0]
        cache, parts, start = KVCache.for_model(model), [], 0
        for n in chunks:
            parts.append(model(seq[:, start : start + n], cache=cache, all_logits=True)[0])
            cache.advance(n)
            start += n
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == BLOCK and cache.k[0].shape == (2, 4, BLOCK, 8)


def test_cache_refuses_overflow_and_a_changed_batch():
    model = make()
    cache = KVCache.for_model(model)
    with torch.no_grad():
        model(prompt(2, 10), cache=cache)
        cache.advance(10)
        with pytest.raises(ValueError, match=r"10 cached \+ 7 new = 17"):
            cache.update(0, torch.zeros(2, 4, 7, 8), torch.zeros(2, 4, 7, 8))
        with pytest.raises(ValueError, match="reset"):
            cache.update(0, torch.zeros(3, 4, 1, 8), torch.zeros(3, 4, 1, 8))
        cache.reset()
        model(prompt(3, 4), cache=cache)  # a new batch after a reset is fine
    assert cache.k[1].shape[0] == 3


def test_cache_follows_the_dtype_of_the_keys():
    """A bf16 model gets a bf16 cache, whose logits are the uncached ones (to bf16 rounding), and the same tokens."""
    model = make().to(torch.bfloat16)
    seq = prompt(2, BLOCK)
    cache = KVCache.for_model(model)
    with torch.no_grad():
        cached = [next_token_logits(model, seq[:, :t], cache) for t in range(4, BLOCK + 1)]
        uncached = [next_token_logits(model, seq[:, :t]) for t in range(4, BLOCK + 1)]
    assert cache.k[0].dtype == cache.v[-1].dtype == torch.bfloat16
    assert cached[0].dtype == torch.bfloat16
    torch.testing.assert_close(torch.stack(cached), torch.stack(uncached), atol=0.1, rtol=0.02)
    out = generate(model, prompt(2, 4), BLOCK + 4, temperature=0)
    ref = generate(model, prompt(2, 4), BLOCK + 4, temperature=0, use_cache=False)
    assert out.shape == (2, BLOCK + 8)
    assert torch.equal(out, ref)


def test_window_past_the_context_is_recomputed_not_reused():
    """Past block_size the logits are those of the last block_size tokens at positions 0.., never stale keys."""
    model = make()
    seq = prompt(2, 3 * BLOCK)
    cache = KVCache.for_model(model)
    with torch.no_grad():
        for t in range(5, seq.size(1) + 1):
            got = next_token_logits(model, seq[:, :t], cache)
            want = model(seq[:, max(0, t - BLOCK) : t])[0][:, -1]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert cache.pos == (t if t <= BLOCK else 0)


# --- cached == uncached ----------------------------------------------------------------------

SETTINGS = [
    dict(temperature=0),
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.9),
]


@pytest.mark.parametrize("length", [3, BLOCK - 1, BLOCK, BLOCK + 5, 3 * BLOCK])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_and_uncached_generation_give_identical_tokens(length, settings, seed):
    """Short, full and over-long prompts, each generating 2.5 contexts' worth: well past block_size."""
    model = make(seed)
    idx = prompt(3, length, seed=seed + 10)
    runs = [
        generate(model, idx, 40, use_cache=c, generator=torch.Generator().manual_seed(seed), **settings)
        for c in (True, False)
    ]
    assert runs[0].shape == (3, length + 40)
    assert torch.equal(runs[0][:, :length], idx)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("length", [2, BLOCK, BLOCK + 3])
def test_cached_and_uncached_logits_agree_along_a_generation(length):
    """The tokens agree because the logits do: the same next-token logits, step after step, within fp32 rounding."""
    model = make(4)
    seq = generate(model, prompt(2, length), 2 * BLOCK, generator=torch.Generator().manual_seed(0))
    caches = {True: KVCache.for_model(model), False: None}
    with torch.no_grad():
        for t in range(length, seq.size(1)):
            cached = next_token_logits(model, seq[:, :t], caches[True])
            uncached = next_token_logits(model, seq[:, :t], caches[False])
            torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)


def test_same_seed_same_text_other_seed_other_text():
    model = make()
    a, b, c = (generate(model, prompt(2, 4), 30, generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batched_greedy_equals_each_row_alone():
    model = make()
    idx = prompt(4, 6)
    together = generate(model, idx, BLOCK + 4, temperature=0)
    for row in range(4):
        assert torch.equal(together[row : row + 1], generate(model, idx[row : row + 1], BLOCK + 4, temperature=0))


def test_generate_restores_training_mode_and_needs_no_grad():
    model = make().train()
    out = generate(model, prompt(1, 3), 5)
    assert model.training and not out.requires_grad
    assert torch.equal(generate(model, prompt(1, 3), 0), prompt(1, 3))
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate(model, prompt(1, 3), -1)


def test_dropout_model_generates_deterministically():
    """Generation runs in eval mode: dropout never perturbs the cached or the uncached path."""
    model = make(dropout=0.5).train()
    a = generate(model, prompt(2, 5), 20, temperature=0)
    b = generate(model, prompt(2, 5), 20, temperature=0, use_cache=False)
    assert torch.equal(a, b)


def test_stop_token_pads_finished_rows_and_ends_early():
    model = make()
    idx = prompt(3, 4)
    free = generate(model, idx, 60, generator=torch.Generator().manual_seed(1))
    stop = int(free[0, 4])  # row 0 stops at once
    out = generate(model, idx, 60, generator=torch.Generator().manual_seed(1), stop_token=stop)
    new = out[:, 4:]
    for row in range(3):
        hits = (new[row] == stop).nonzero().flatten().tolist()
        if hits:  # the row matches the free run up to its stop token, then stays at the stop token
            first = hits[0]
            assert torch.equal(new[row, : first + 1], free[row, 4 : 5 + first])
            assert torch.all(new[row, first:] == stop)
        else:
            assert torch.equal(new[row], free[row, 4 : 4 + new.size(1)])
    ends = [(row == stop).nonzero().flatten()[0].item() if (row == stop).any() else None for row in new]
    if None not in ends:
        assert new.size(1) == max(ends) + 1  # it stopped as soon as the last row finished


def test_generate_stream_yields_the_tokens_of_generate():
    model = make()
    idx = prompt(2, 5)
    streamed = list(generate_stream(model, idx, 25, generator=torch.Generator().manual_seed(3)))
    assert all(t.shape == (2, 1) for t in streamed)
    whole = generate(model, idx, 25, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([idx, *streamed], 1), whole)


# --- text: prompts, streaming, stop strings, several samples ---------------------------------

CHARS = "\n abcdefghijklmnopqrstuvwxyz.,;:!?'ABCDE"[:37]
TOK = CharTokenizer(CHARS)


def test_empty_prompt_starts_at_a_newline_and_unknown_characters_are_named():
    assert encode_prompt(TOK, "").tolist() == [[TOK.encode("\n")[0]]]
    assert encode_prompt(TOK, "ab").tolist() == [TOK.encode("ab")]
    no_newline = CharTokenizer("xyz")
    assert encode_prompt(no_newline, "").tolist() == [[0]]
    with pytest.raises(ValueError, match=r"prompt cannot be encoded.*'é' \(first at position 3\).*'Z'"):
        encode_prompt(TOK, "abcéZ")


def test_stream_text_is_the_generated_text():
    model = make()
    pieces = list(stream_text(model, TOK, "ab", 50, generator=torch.Generator().manual_seed(2)))
    idx = encode_prompt(TOK, "ab")
    out = generate(model, idx, 50, generator=torch.Generator().manual_seed(2))
    assert "".join(pieces) == TOK.decode(out[0, 2:])
    assert len(pieces) == 50  # one character per step: live, not all at the end
    [single] = generate_text(model, TOK, "ab", 50, generator=torch.Generator().manual_seed(2))
    assert single == "".join(pieces)


@pytest.mark.parametrize("stop_len", [1, 2, 3])
def test_stop_string_ends_the_stream_and_is_not_shown(stop_len):
    model = make()
    free = "".join(stream_text(model, TOK, "a", 80, temperature=1.5, generator=torch.Generator().manual_seed(7)))
    stop = free[30 : 30 + stop_len]  # a string the free run is known to contain
    first = free.index(stop)
    g = torch.Generator().manual_seed(7)
    pieces = list(stream_text(model, TOK, "a", 80, temperature=1.5, generator=g, stop=stop))
    assert "".join(pieces) == free[:first]
    [text] = generate_text(model, TOK, "a", 80, temperature=1.5, generator=torch.Generator().manual_seed(7), stop=stop)
    assert text == free[:first]


def test_generate_text_gives_several_different_samples():
    model = make()
    texts = generate_text(model, TOK, "", 30, num_samples=4, generator=torch.Generator().manual_seed(0))
    assert len(texts) == 4 and len(set(texts)) == 4 and all(len(t) == 30 for t in texts)
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        generate_text(model, TOK, "", 3, num_samples=0)
    with pytest.raises(ValueError, match="stop must be a non-empty string"):
        generate_text(model, TOK, "", 3, stop="")



def test_stream_text_with_byte_level_bpe_never_shows_half_a_character():
    """Byte-level tokens can split a multi-byte character: the stream waits for the rest of it."""
    from nanogpt_lib.bpe import BPETokenizer

    bpe = BPETokenizer.train("naïve café – déjà vu, “quoted” ‘text’ … " * 20, vocab_size=280)
    model = make(vocab_size=bpe.vocab_size)
    for seed in range(3):
        pieces = list(stream_text(model, bpe, "café", 60, generator=torch.Generator().manual_seed(seed)))
        out = generate(model, encode_prompt(bpe, "café"), 60, generator=torch.Generator().manual_seed(seed))
        # what was shown never changes afterwards: the pieces add up to the decoded text, character for character
        assert "".join(pieces) == bpe.decode(out[0, len(bpe.encode("café")) :].tolist())


# --- limits: vanishing temperatures, requests too large for memory ----------------------------


@pytest.mark.parametrize("temperature", [1e-30, 1e-40, 1e-300, 5e-324])
def test_a_temperature_that_underflows_is_greedy_decoding(temperature):
    model = make()
    logits = torch.randn(4, 37, generator=torch.Generator().manual_seed(0)) * 30
    logits[0, :2] = 1e9  # a tie that dividing by a tiny temperature turns into inf == inf: greedy keeps the first
    assert sample_next(logits, temperature).view(-1).tolist() == logits.argmax(-1).tolist()
    greedy = generate(model, prompt(3, 4), 20, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, prompt(3, 4), 20, temperature=temperature, generator=g), greedy)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, prompt(3, 4), 20, temperature=temperature, top_p=0.9, generator=g), greedy)


def test_sample_memory_estimate_covers_what_generation_allocates():
    model = make()
    cache = KVCache.for_model(model)
    with torch.no_grad():
        model(prompt(5, 10), cache=cache)
    cached = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    estimate = sample_memory_bytes(model, batch=5, length=10)
    assert cached <= estimate < 4 * cached + 5 * 37 * 4 * 8  # the cache, plus one step's activations and logits


def test_a_sample_request_too_large_for_memory_is_refused_up_front(monkeypatch):
    import nanogpt_lib.generate as gen

    model = make()
    need = sample_memory_bytes(model, batch=1000, length=4 + 5)  # the prompt and the new tokens
    monkeypatch.setattr(gen, "free_memory", lambda device: need // 2)
    with pytest.raises(ValueError, match=r"1000 samples of up to 9 tokens needs about .*B.*free") as e:
        generate(model, prompt(1000, 4), 5)
    assert f"about {need / 2**20:.1f} MiB" in str(e.value) and f"only {need / 2 / 2**20:.1f} MiB" in str(e.value)
    monkeypatch.setattr(gen, "free_memory", lambda device: 2 * need)
    assert generate(model, prompt(1000, 4), 2).shape == (1000, 6)
    monkeypatch.setattr(gen, "free_memory", lambda device: None)  # unknown: nothing is refused
    assert generate(model, prompt(10, 4), 2).shape == (10, 6)
