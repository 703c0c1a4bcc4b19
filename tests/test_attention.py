"""Causal self-attention (chapter 03) against PyTorch's own scaled_dot_product_attention."""

import math

import pytest
import torch
import torch.nn.functional as F
from list_cache import ListCache

from nanogpt_lib.attention import CausalSelfAttention, causal_mask


def make(n_embd=48, n_head=4, seed=0, **kw):
    torch.manual_seed(seed)
    return CausalSelfAttention(n_embd, n_head, **kw).eval()


def reference(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Attention written out head by head and position by position, with a Python loop over the past."""
    B, T, C = x.shape
    hd = C // attn.n_head
    q, k, v = attn.c_attn(x).split(C, dim=2)
    out = torch.zeros(B, T, C)
    for h in range(attn.n_head):
        cols = slice(h * hd, (h + 1) * hd)
        for t in range(T):
            scores = q[:, t, cols].unsqueeze(1) @ k[:, : t + 1, cols].transpose(1, 2) / math.sqrt(hd)
            out[:, t, cols] = (scores.softmax(-1) @ v[:, : t + 1, cols]).squeeze(1)
    return attn.c_proj(out)


def test_matches_loop_reference_and_sdpa():
    attn = make()
    x = torch.randn(3, 11, 48)
    with torch.no_grad():
        y = attn(x)
        torch.testing.assert_close(y, reference(attn, x), atol=1e-5, rtol=1e-5)
        # the same thing with PyTorch's kernel called directly on the projected heads
        q, k, v = (t.view(3, 11, 4, 12).transpose(1, 2) for t in attn.c_attn(x).split(48, dim=2))
        direct = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(3, 11, 48)
        torch.testing.assert_close(y, attn.c_proj(direct), atol=1e-6, rtol=1e-5)


def test_return_weights_rows_sum_to_one_and_match_fused_path():
    attn = make()
    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        y, w = attn(x, return_weights=True)
        torch.testing.assert_close(y, attn(x), atol=1e-6, rtol=1e-5)
    assert w.shape == (2, 4, 9, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9))
    assert torch.all(w.masked_select(~causal_mask(9, 9)) == 0), "no weight on the future"
    assert torch.all(w[..., 0, 0] == 1), "the first token can only look at itself"


@pytest.mark.parametrize("return_weights", [False, True])
def test_causal_future_tokens_do_not_change_the_past(return_weights):
    attn = make()
    x = torch.randn(2, 12, 48)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(2, 5, 48) * 10
    with torch.no_grad():
        y, y2 = attn(x, return_weights=return_weights), attn(x2, return_weights=return_weights)
    if return_weights:
        y, y2 = y[0], y2[0]
    torch.testing.assert_close(y[:, :7], y2[:, :7], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(y[:, 7:], y2[:, 7:])


def test_heads_are_independent():
    """Changing head 1's query weights changes head 1's output and no other head's."""
    attn = make()
    attn.c_proj.weight.data = torch.eye(48)  # let the heads' outputs through unmixed
    attn.c_proj.bias.data.zero_()
    x = torch.randn(2, 8, 48)
    with torch.no_grad():
        before = attn(x)
        attn.c_attn.weight[12:24] += torch.randn(12, 48)  # rows 12..23 of the Q block = head 1
        after = attn(x)
    changed = (before - after).abs().amax(dim=(0, 1)).view(4, 12).amax(-1)
    assert changed[1] > 1e-3
    assert torch.all(changed[[0, 2, 3]] == 0)


@pytest.mark.parametrize("chunks", [[1] * 10, [4, 1, 1, 4], [3, 7], [10]])
def test_cache_chunks_equal_full_forward(chunks):
    attn = make()
    x = torch.randn(2, sum(chunks), 48)
    cache, outs, start = ListCache(), [], 0
    with torch.no_grad():
        full = attn(x)
        for n in chunks:
            outs.append(attn(x[:, start : start + n], layer=0, cache=cache))
            start += n
            cache.pos = start
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_with_return_weights_has_offset_mask():
    attn = make()
    x = torch.randn(1, 7, 48)
    cache = ListCache()
    with torch.no_grad():
        _, full_w = attn(x, return_weights=True)
        attn(x[:, :4], cache=cache)
        cache.pos = 4
        y, w = attn(x[:, 4:], cache=cache, return_weights=True)
    assert w.shape == (1, 4, 3, 7)
    torch.testing.assert_close(w, full_w[:, :, 4:], atol=1e-6, rtol=1e-5)


def test_mask_offsets():
    assert torch.equal(causal_mask(3, 3), torch.ones(3, 3, dtype=torch.bool).tril())
    assert torch.equal(causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))


def test_dropout_only_while_training():
    attn = make(dropout=0.5)
    x = torch.randn(2, 6, 48)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn(x))
        attn.train()
        assert not torch.allclose(attn(x), attn(x))


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match=r"n_embd \(50\).*n_head \(4\)"):
        CausalSelfAttention(50, 4)


@pytest.mark.parametrize("T", [16, 160])  # the explicit CPU path for short contexts, the fused kernel beyond
def test_bf16_autocast_matches_fp32_on_both_paths(T):
    attn = make()
    x = torch.randn(2, T, 48)
    cache = ListCache()
    with torch.no_grad():
        ref = attn(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = attn(x)
            first = attn(x[:, : T // 2], cache=cache)
            cache.pos = T // 2
            rest = attn(x[:, T // 2 :], cache=cache)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.03, rtol=0.05)
    torch.testing.assert_close(torch.cat([first, rest], dim=1).float(), ref, atol=0.03, rtol=0.05)
