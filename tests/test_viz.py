"""The attention explorer's library side (nanogpt_lib/viz.py, chapter 07): weights, data, widget, plots."""

import json
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanogpt_lib.bpe import BPETokenizer
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.model import GPT, GPTConfig
from nanogpt_lib.viz import (
    MAX_TOKENS,
    STATIC,
    AttentionExplorer,
    AttentionOnlyGPT,
    ablate_head,
    attention_data,
    attention_weights,
    decode_weights,
    encode_weights,
    explorer_data,
    induction_score,
    logit_lens,
    plot_compare,
    plot_head_view,
    plot_model_view,
    plot_pattern,
    previous_token_score,
    repeat_segment,
    residual_stream,
    state_size,
    token_labels,
    write_explorer_json,
)

matplotlib.use("Agg")
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.from_text(TEXT)


def make_model(tok, seed=0, block_size=160):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=3, n_embd=24)
    return GPT(config).eval()


@pytest.fixture(scope="module")
def model(tok):
    return make_model(tok)


def test_token_labels_make_spaces_and_newlines_visible(tok):
    assert token_labels(tok, tok.encode("a p\n")) == ["a", "␣", "p", "⏎"]
    bpe = BPETokenizer.train("the cat the hat the mat " * 20, vocab_size=264)
    labels = token_labels(bpe, bpe.encode("the cat the hat"))
    assert "".join(labels).replace("␣", " ") == "the cat the hat"
    assert any(label.startswith("␣") and len(label) > 1 for label in labels), labels


def reference_weights(model, idx):
    """Attention weights from first principles: embeddings, then per block LN, q k projections, masked softmax."""
    C, H = model.config.n_embd, model.config.n_head
    T = idx.size(1)
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
    out = []
    for block in model.transformer.h:
        h = F.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias)
        q, k, _ = (h @ block.attn.c_attn.weight.T + block.attn.c_attn.bias).split(C, dim=2)
        w = torch.empty(H, T, T)
        for head in range(H):
            s = slice(head * C // H, (head + 1) * C // H)
            scores = q[0, :, s] @ k[0, :, s].T / math.sqrt(C // H)
            scores[torch.ones(T, T).triu(1).bool()] = -math.inf
            w[head] = scores.softmax(-1)
        out.append(w)
        x = block(x)
    return torch.stack(out)


def test_attention_weights_match_first_principles_and_the_model(tok, model):
    idx = torch.tensor(tok.encode(TEXT[:40]))
    A = attention_weights(model, idx)
    assert A.shape == (2, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(A, reference_weights(model, idx[None]), atol=1e-5)
        theirs = torch.stack([w[0] for w in model.attention_weights(idx[None])])
    assert torch.allclose(A, theirs, atol=1e-6)
    assert torch.allclose(A.sum(-1), torch.ones(()), atol=1e-5) and (A.triu(1) == 0).all()


def test_weights_are_the_ones_attention_uses(tok, model):
    """Mixing the values with the weights and projecting reproduces each attention layer's output."""
    idx = torch.tensor(tok.encode(TEXT[:30]))[None]
    A = attention_weights(model, idx)
    states = residual_stream(model, idx)
    C, H = model.config.n_embd, model.config.n_head
    with torch.no_grad():
        for layer, block in enumerate(model.transformer.h):
            h = block.ln_1(states[layer])
            v = block.attn.c_attn(h).split(C, dim=2)[2].view(1, 30, H, -1).transpose(1, 2)
            mixed = (A[layer][None] @ v).transpose(1, 2).reshape(1, 30, C)
            assert torch.allclose(block.attn.c_proj(mixed), block.attn(h), atol=1e-5)


def test_attention_weights_leave_training_mode_alone(tok):
    m = make_model(tok).train()
    attention_weights(m, tok.encode("Speak"))
    assert m.training


def test_logit_lens_ends_at_the_models_logits(tok, model):
    idx = torch.tensor(tok.encode(TEXT[:50]))[None]
    lens = logit_lens(model, idx)
    with torch.no_grad():
        logits, _ = model(idx, idx)
    assert lens.shape == (3, 1, 50, tok.vocab_size)
    assert torch.allclose(lens[-1], logits, atol=1e-5)
    assert not torch.allclose(lens[0], logits, atol=1e-3)


def test_encode_decode_round_trip_to_three_decimals(tok, model):
    w = attention_data(model, tok, TEXT[:70])["weights"]
    text = encode_weights(w)
    assert len(text) == math.ceil(2 * 2 * 3 * 70 * 71 / 2 / 3) * 4  # base64 of uint16 lower triangles
    back = decode_weights(text, 2, 3, 70)
    assert np.abs(back - w).max() <= 0.0005 + 1e-7
    assert (back[..., np.triu_indices(70, 1)[0], np.triu_indices(70, 1)[1]] == 0).all()


def test_prompt_length_is_capped_with_a_clear_error(tok):
    big = make_model(tok, block_size=256)
    attention_data(big, tok, "a" * MAX_TOKENS)
    with pytest.raises(ValueError, match=r"129 tokens.*at most 128.*shorten"):
        attention_data(big, tok, "a" * (MAX_TOKENS + 1))
    with pytest.raises(ValueError, match="empty"):
        attention_data(big, tok, "")


def test_explorer_state_is_json_small_and_compares(tok, model, tmp_path):
    other = make_model(tok, seed=1)
    state = explorer_data(model, tok, TEXT[:64], compare_with=other, names=("late", "early"))
    data = state["data"]
    assert [r["name"] for r in data["runs"]] == ["late", "early"]
    assert data["tokens"] == token_labels(tok, tok.encode(TEXT[:64]))
    a, b = (decode_weights(r["weights"], 2, 3, 64) for r in data["runs"])
    assert np.abs(a - b).max() >= 0.002  # two different random models: different weights
    assert state_size(state) < 300_000
    path = write_explorer_json(state, tmp_path / "sub" / "explorer.json")
    assert json.loads(path.read_text(encoding="utf-8")) == state
    wrong = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=160, n_layer=3, n_head=3, n_embd=24))
    with pytest.raises(ValueError, match="same architecture"):
        explorer_data(model, tok, "Speak", compare_with=wrong)


def test_ablate_head_equals_zeroing_its_projection_columns(tok):
    m = make_model(tok)
    idx = torch.tensor(tok.encode(TEXT[:60]))[None]
    with torch.no_grad():
        base = m(idx, idx)[1].item()
        with ablate_head(m, 1, 2):
            hooked = m(idx, idx)[1].item()
        assert m(idx, idx)[1].item() == base, "the hook must be removed after the block"
        m.transformer.h[1].attn.c_proj.weight[:, 16:24] = 0
        zeroed = m(idx, idx)[1].item()
    assert hooked != base and hooked == pytest.approx(zeroed, abs=1e-6)
    with pytest.raises(ValueError, match="does not exist"), ablate_head(m, 0, 3):
        pass


def test_widget_traits_prompt_box_and_shipped_front_end(tok, model):
    w = AttentionExplorer(model, tok, "Speak, speak.", compare_with=make_model(tok, seed=1))
    assert w.data["tokens"][-1] == "." and len(w.data["runs"]) == 2
    assert (w.view, w.layer, w.head) == ("pattern", 0, 0)
    assert "export default" in (STATIC / "explorer.js").read_text() and (STATIC / "explorer.css").is_file()
    assert "render" in w._esm
    box = w.with_prompt_box()
    text, message = box.children[0], box.children[1]
    text.value = "All:\nSpeak"
    assert w.data["tokens"] == ["A", "l", "l", ":", "⏎", "S", "p", "e", "a", "k"]
    text.value = "a" * 200
    assert "Not shown" in message.value and "200 tokens" in message.value
    assert w.data["prompt"] == "All:\nSpeak"


def test_static_fallbacks_draw_every_view(tok, model):
    import matplotlib.pyplot as plt

    data, other = attention_data(model, tok, TEXT[:20]), attention_data(make_model(tok, seed=1), tok, TEXT[:20])
    ax = plot_pattern(data, 1, 2)
    assert np.allclose(ax.images[0].get_array(), data["weights"][1, 2])
    assert [t.get_text() for t in ax.get_xticklabels()] == data["tokens"]
    ax = plot_head_view(data, 0, query=5, heads=[0, 2])
    assert len(ax.lines) == 2 * 6 + 2
    assert [line.get_alpha() for line in ax.lines[:6]] == pytest.approx(data["weights"][0, 0, 5, :6].tolist())
    fig = plot_model_view(data)
    assert len([a for a in fig.axes if a.images]) == 6
    fig = plot_compare(data, other, 1, 0)
    assert np.allclose(fig.axes[2].images[0].get_array(), data["weights"][1, 0] - other["weights"][1, 0])
    plt.close("all")


def test_package_data_ships_the_front_end():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["nanogpt_lib"]
    for name in ("explorer.js", "explorer.css", "static_widgets.js"):
        assert any(Path("static", name).match(p) for p in patterns), name


def test_attention_only_model_is_the_gpt_without_its_mlps(tok):
    """Same embeddings, norms and attention as chapter 4's GPT; each block adds attention's output only."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)
    full, bare = GPT(config).eval(), AttentionOnlyGPT(config).eval()
    assert not any("mlp" in n or "ln_2" in n for n, _ in bare.named_parameters())
    bare.load_state_dict({k: v for k, v in full.state_dict().items() if "mlp" not in k and "ln_2" not in k})
    for block in full.transformer.h:  # silence the MLPs: the full model now computes what the bare one does
        torch.nn.init.zeros_(block.mlp.c_proj.weight)
        torch.nn.init.zeros_(block.mlp.c_proj.bias)
    idx = torch.tensor(tok.encode(TEXT[:30]))[None]
    with torch.no_grad():
        assert torch.allclose(bare(idx, all_logits=True)[0], full(idx, all_logits=True)[0], atol=1e-6)
    assert torch.allclose(attention_weights(bare, idx[0]), attention_weights(full, idx[0]), atol=1e-6)
    x = torch.randn(1, 5, 16)
    h = bare.transformer.h[0]
    assert torch.allclose(h(x), x + h.attn(h.ln_1(x)))


def test_repeat_segment_writes_the_copy_and_marks_both_copies():
    x = torch.arange(100, 112).repeat(2, 1)  # two rows of distinct tokens 100..111
    rows, first, second = repeat_segment(x, torch.tensor([0, 3]), torch.tensor([4, 2]))
    assert rows[0].tolist() == [100, 101, 102, 103, 100, 101, 102, 103, 108, 109, 110, 111]
    assert rows[1].tolist() == [100, 101, 102, 103, 104, 103, 104, 107, 108, 109, 110, 111]
    # position t is marked when rows[t + 1] is inside a copy, after that copy's first token
    assert first[0].nonzero().ravel().tolist() == [0, 1, 2] and second[0].nonzero().ravel().tolist() == [4, 5, 6]
    assert first[1].nonzero().ravel().tolist() == [3] and second[1].nonzero().ravel().tolist() == [5]
    for r, s in zip(rows, second, strict=True):  # in the second copy, the next token is the one after its twin
        for t in s.nonzero().ravel().tolist():
            assert r[t + 1] in r[: t].tolist()


def test_induction_and_previous_token_scores_read_the_right_cells():
    T, start, length = 12, 2, 4
    w = torch.zeros(T, T)
    for t in range(start + length, start + 2 * length - 1):  # a perfect induction head on the second copy
        w[t, t - length + 1] = 1.0
    assert induction_score(w, start, length).item() == pytest.approx(1.0)
    assert previous_token_score(torch.diag(torch.ones(T - 1), -1)).item() == pytest.approx(1.0)
    one_step_off = torch.zeros(T, T)
    for t in range(start + length, start + 2 * length - 1):
        one_step_off[t, t - length] = 1.0  # attends to the token itself in the first copy: not induction
    assert induction_score(one_step_off, start, length).item() == 0.0
    assert induction_score(torch.stack([w, one_step_off]), start, length).tolist() == [1.0, 0.0]
