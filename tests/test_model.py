"""The GPT (chapter 04): configuration, shapes, counts, initialisation, the cache path, precision."""

import math

import pytest
import torch
from list_cache import ListCache

from nanogpt_lib.model import GPT, GPTConfig

SMALL = dict(vocab_size=37, block_size=16, n_layer=3, n_head=4, n_embd=32)


def make(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**SMALL, **overrides})).eval()


def formula_params(V, T, L, C, bias=True):
    """Embeddings + L blocks (attention 4C², MLP 8C², LayerNorms and biases) + final LayerNorm."""
    per_block = 12 * C * C + (13 * C if bias else 2 * C)
    return V * C + T * C + L * per_block + (2 * C if bias else C)


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_formula(bias):
    m = make(bias=bias)
    assert m.num_params() == formula_params(37, 16, 3, 32, bias)
    gpt2 = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    assert formula_params(50257, 1024, 12, 768) == 124_439_808  # GPT-2 small's published count
    with torch.device("meta"):
        assert GPT(gpt2).num_params() == 124_439_808


def test_weight_tying_is_one_parameter():
    m = make()
    assert m.lm_head.weight is m.transformer.wte.weight
    assert sum(p is m.lm_head.weight for p in m.parameters()) == 1


def test_gpt2_initialisation():
    m = make(n_layer=8, n_embd=128, vocab_size=500)
    std = m.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std - 0.02) < 0.002
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in m.transformer.h])
    assert abs(proj.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert torch.all(m.transformer.h[0].attn.c_attn.bias == 0)


@pytest.mark.parametrize("T", [16, 8])
def test_flops_per_token_matches_pytorchs_flop_counter(T):
    """The estimate against what PyTorch counts in a forward and backward pass of the model."""
    from torch.utils.flop_counter import FlopCounterMode

    m = make(bias=False)
    c = m.config
    idx = torch.randint(0, c.vocab_size, (2, T))
    with FlopCounterMode(display=False) as counter:
        m(idx, idx)[1].backward()
    # The counter does not see the CPU's fused attention kernel: count the same products written as matmuls.
    q, k, v = (torch.randn(2, c.n_head, T, c.n_embd // c.n_head, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as attention:
        ((q @ k.transpose(-2, -1)).softmax(-1) @ v).sum().backward()
    fused = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "attention" in str(op))
    counted = (counter.get_total_flops() - fused + c.n_layer * attention.get_total_flops()) / idx.numel()
    vector_params = sum(p.numel() for p in m.parameters() if p.dim() == 1)  # LayerNorm gains: in 6N, not matmuls
    assert counted <= m.flops_per_token(T) <= counted + 6 * vector_params


def test_forward_shapes_and_initial_loss():
    m = make(vocab_size=65, n_embd=64)
    torch.manual_seed(1)
    idx, targets = torch.randint(0, 65, (8, 16)), torch.randint(0, 65, (8, 16))
    logits, loss = m(idx, targets)
    assert logits.shape == (8, 16, 65)
    assert abs(loss.item() - math.log(65)) < 0.15
    assert m(idx)[1] is None
    targets[:, :8] = -1  # ignored positions
    assert torch.isfinite(m(idx, targets)[1])


def test_inference_computes_only_the_last_positions_logits():
    """Without targets only the next token's logits are computed (a 50,257-token head is costly); all_logits asks."""
    m = make(vocab_size=65, n_embd=64).eval()
    idx, targets = torch.randint(0, 65, (3, 16)), torch.randint(0, 65, (3, 16))
    with torch.no_grad():
        every, _ = m(idx, targets)
        last, loss = m(idx)
        assert last.shape == (3, 1, 65) and loss is None
        torch.testing.assert_close(last, every[:, -1:])
        torch.testing.assert_close(m(idx, all_logits=True)[0], every)
        # the explicit route to every position's logits: the final hidden states through the head
        torch.testing.assert_close(m.lm_head(m.forward_hidden(idx)), every)


def test_too_long_sequence_names_both_numbers():
    m = make()
    with pytest.raises(ValueError, match=r"17.*block_size 16"):
        m(torch.zeros(1, 17, dtype=torch.long))
    cache = ListCache()
    cache.pos = 12
    with pytest.raises(ValueError, match=r"12 cached \+ 5 new = 17.*block_size 16"):
        m(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_gradient_reaches_every_parameter():
    m = make(dropout=0.1).train()
    idx = torch.randint(0, 37, (4, 16))
    _, loss = m(idx, torch.randint(0, 37, (4, 16)))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_deterministic_under_a_seed():
    idx = torch.randint(0, 37, (2, 16))
    a, b = make(seed=3, dropout=0.2).train(), make(seed=3, dropout=0.2).train()
    torch.manual_seed(9)
    la = a(idx)[0]
    torch.manual_seed(9)
    lb = b(idx)[0]
    assert torch.equal(la, lb)
    assert not torch.equal(make(seed=4)(idx)[0], a.eval()(idx)[0])


@pytest.mark.parametrize("chunks", [[16], [1] * 16, [5, 1, 1, 9], [8, 8]])
def test_cache_path_equals_full_forward(chunks):
    m = make()
    idx = torch.randint(0, 37, (2, 16))
    with torch.no_grad():
        full = m(idx, all_logits=True)[0]
        cache, parts, start = ListCache(), [], 0
        for n in chunks:
            parts.append(m(idx[:, start : start + n], cache=cache, all_logits=True)[0])
            start += n
            cache.pos = start  # the caller advances the cache, never the model
    assert sorted(cache.kv) == [0, 1, 2]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_matches_fp32():
    m = make()
    idx = torch.randint(0, 37, (4, 16))
    with torch.no_grad():
        ref = m(idx, all_logits=True)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, loss = m(idx, idx)
    assert low.dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.05)


def test_attention_weights_per_layer():
    m = make()
    idx = torch.randint(0, 37, (2, 10))
    with torch.no_grad():
        weights = m.attention_weights(idx)
    assert len(weights) == 3 and weights[0].shape == (2, 4, 10, 10)
    for w in weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 10))
        assert torch.all(w.triu(1) == 0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_embd=30), r"n_embd \(30\) must be divisible by n_head \(4\)"),
        (dict(n_layer=0), r"n_layer must be a positive integer, got 0"),
        (dict(vocab_size=-5), r"vocab_size must be a positive integer"),
        (dict(block_size=8.0), r"block_size must be a positive integer, got 8.0"),
        (dict(n_head=True), r"n_head must be a positive integer"),
        (dict(dropout=1.0), r"dropout must be a probability in \[0, 1\), got 1.0"),
        (dict(dropout=-0.1), r"dropout must be a probability"),
        (dict(bias="yes"), r"bias must be True or False"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**SMALL, **change})


def test_config_from_dict():
    cfg = GPTConfig(**SMALL, dropout=0.1)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown GPTConfig field\(s\) \['n_embed'\]"):
        GPTConfig.from_dict({**SMALL, "n_embed": 32})
    with pytest.raises(ValueError, match=r"needs \['n_head'\]"):
        GPTConfig.from_dict({k: v for k, v in SMALL.items() if k != "n_head"})
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT(SMALL)
