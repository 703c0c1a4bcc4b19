"""Chapter 09's model options: each one's maths, and the model, cache, checkpoints and trainer with each;
grouped-query attention's sharing, its smaller cache, its flag and its ONNX export."""

import json
import math
import re

import numpy as np
import pytest
import torch
from tiny_runs import config as tiny_config
from tiny_runs import rows

from nanogpt_lib import export as X
from nanogpt_lib import train as T
from nanogpt_lib import viz
from nanogpt_lib.cli import main
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.generate import KVCache, generate, next_token_logits
from nanogpt_lib.model import GPT, GPTConfig, config_from_dict
from nanogpt_lib.modern import (
    MODERN_OPTIONS,
    GroupedCache,
    ModernAttention,
    ModernConfig,
    ModernGPT,
    ReLU2MLP,
    RMSNorm,
    Rotary,
    SwiGLUMLP,
    apply_rotary,
    rotary_tables,
    softcap,
    swiglu_hidden,
)
from nanogpt_lib.pretrained import PretrainedError, export_hf

V, BLOCK = 37, 16
SIZES = dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32)
OPTIONS = {
    "rope": dict(rope=True),
    "rope_base": dict(rope=True, rope_base=500.0),
    "rmsnorm": dict(norm="rmsnorm"),
    "relu2": dict(mlp="relu2"),
    "swiglu": dict(mlp="swiglu"),
    "qk_norm": dict(qk_norm=True),
    "untied": dict(tie_embeddings=False),
    "zero_init": dict(tie_embeddings=False, zero_init_proj=True),
    "softcap": dict(logit_softcap=3.0),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "all": dict(rope=True, norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_head=2, tie_embeddings=False,
                logit_softcap=10.0),
}  # fmt: skip
TRAIN_OVERRIDES = {  # the options as `nanogpt train` flags take them (text), and the GPTConfig fields they set
    "rope": ({"rope": "true"}, dict(rope=True)),
    "rmsnorm": ({"norm": "rmsnorm"}, dict(norm="rmsnorm")),
    "relu2": ({"mlp": "relu2"}, dict(mlp="relu2")),
    "swiglu": ({"mlp": "swiglu"}, dict(mlp="swiglu")),
    "qk_norm": ({"qk-norm": "true"}, dict(qk_norm=True)),
    "zero_init": (
        {"tie-embeddings": "false", "zero-init-proj": "true"},
        dict(tie_embeddings=False, zero_init_proj=True),
    ),
    "softcap": ({"logit-softcap": "5"}, dict(logit_softcap=5.0)),
    "mqa": ({"n-kv-head": "1"}, dict(n_kv_head=1)),  # the tiny runs have 2 query heads
}


def make(options: dict, seed: int = 0) -> GPT:
    """A small model with `options`, its weights perturbed so that zero-initialised parts compute something too."""
    torch.manual_seed(seed)
    model = ModernGPT(ModernConfig(**SIZES, **options)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- the components --------------------------------------------------------------------------


def test_rmsnorm_is_the_hand_formula():
    torch.manual_seed(0)
    norm = RMSNorm(24)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(24))
    x = 3 * torch.randn(5, 7, 24) + 1
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    torch.testing.assert_close(norm(x), want)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_rotary_keeps_norms_and_makes_scores_depend_on_the_offset_only():
    torch.manual_seed(0)
    D, L = 16, 64
    rot = Rotary(D, L)
    q, k = torch.randn(D), torch.randn(D)
    qs, ks = rot(q.expand(L, D)), rot(k.expand(L, D))  # the same q and k placed at every position
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(L))
    scores = qs @ ks.T  # scores[m, n]: q at position m, k at position n
    for offset in (0, 1, 5, 30):
        diagonal = scores.diagonal(-offset)  # every (m, m - offset)
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(scores.diagonal(0)[0], scores.diagonal(-1)[0])  # the offset matters
    # positions start.. are the rows start.. of the full table: what the KV cache relies on
    x = torch.randn(2, 3, 5, D)
    torch.testing.assert_close(rot(x, start=9), rot(torch.cat([torch.zeros(2, 3, 9, D), x], 2))[:, :, 9:])


def test_rotary_is_the_block_diagonal_rotation_of_the_paper_up_to_a_reordering():
    """RoFormer turns neighbours (x0, x1), (x2, x3)...; the half-split form turns (x_i, x_{i+D/2}): same scores."""
    D, L = 8, 10
    cos, sin = rotary_tables(D, L, base=100.0)
    theta = 100.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    order = torch.stack([torch.arange(D // 2), torch.arange(D // 2) + D // 2], 1).flatten()  # half-split -> pairs
    x = torch.randn(L, D, dtype=torch.float64)
    for t in range(L):
        R = torch.zeros(D, D, dtype=torch.float64)
        for i, angle in enumerate(t * theta):
            c, s = math.cos(angle), math.sin(angle)
            R[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, -s], [s, c]])
        want = R @ x[t, order]
        got = apply_rotary(x[t].float(), cos[t], sin[t])[order]
        torch.testing.assert_close(got, want.float(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n_embd", [32, 48, 100, 128, 384, 768, 1000])
def test_swiglu_has_the_parameters_of_the_gelu_mlp_within_the_rounding(n_embd):
    h = swiglu_hidden(n_embd)
    assert h % 8 == 0 and abs(3 * n_embd * h - 8 * n_embd**2) <= 3 * n_embd * 4  # at most half a step of 8 off
    gelu = GPT(GPTConfig(**{**SIZES, "n_embd": n_embd, "n_head": 4})).transformer.h[0].mlp
    swiglu = SwiGLUMLP(n_embd, bias=False)
    weights = lambda m: sum(p.numel() for p in m.parameters() if p.dim() == 2)
    assert abs(weights(swiglu) - weights(gelu)) <= 12 * n_embd
    assert swiglu_hidden(768) == 2048  # 8/3 of 768 exactly


def test_swiglu_and_relu2_compute_their_formulas():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    m = SwiGLUMLP(16, bias=True).eval()
    gate, up = (x @ m.c_fc.weight.T + m.c_fc.bias).split(m.hidden, -1)
    torch.testing.assert_close(m(x), (gate * torch.sigmoid(gate) * up) @ m.c_proj.weight.T + m.c_proj.bias)
    r = ReLU2MLP(16, bias=False).eval()
    torch.testing.assert_close(r(x), (x @ r.c_fc.weight.T).clamp(min=0) ** 2 @ r.c_proj.weight.T)


def test_softcap_bounds_logits_and_leaves_small_ones_nearly_alone():
    x = torch.linspace(-1000, 1000, 2001)
    y = softcap(x, 15.0)
    assert y.abs().max() <= 15.0 and torch.all(y[1:] >= y[:-1])
    small = torch.linspace(-0.5, 0.5, 11)
    torch.testing.assert_close(softcap(small, 15.0), small, atol=1e-3, rtol=0)
    model = make(dict(logit_softcap=2.0))
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
        logits = model(tokens(2, BLOCK), all_logits=True)[0]
        raw = model.lm_head(model.forward_hidden(tokens(2, BLOCK)))
    assert raw.abs().max() > 100 and 1.9 < logits.abs().max() <= 2.0


# --- the config ---------------------------------------------------------------------------------


def test_default_config_dict_is_gpt2_s_and_options_appear_only_when_set():
    core = ["vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias"]
    assert list(GPTConfig(**SIZES).to_dict()) == core
    for options in OPTIONS.values():
        config = ModernConfig(**SIZES, **options)
        assert config.to_dict() == {**GPTConfig(**SIZES).to_dict(), **options}
        assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config  # a checkpoint's round trip


def test_default_model_has_gpt2_s_parameters_and_no_new_modules():
    model = GPT(GPTConfig(**SIZES))
    assert model.lm_head.weight is model.transformer.wte.weight and "transformer.wpe.weight" in model.state_dict()
    assert not any(isinstance(m, (RMSNorm, Rotary, SwiGLUMLP, ReLU2MLP)) for m in model.modules())
    assert ModernGPT(ModernConfig(**SIZES, rope=True)).state_dict().keys() == model.state_dict().keys() - {
        "transformer.wpe.weight"
    }  # the rotary tables are recomputed, never saved


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(rope="yes"), "ModernConfig.rope must be True or False"),
        (dict(norm="batchnorm"), "ModernConfig.norm must be 'layernorm' or 'rmsnorm'"),
        (dict(mlp="geglu"), "ModernConfig.mlp must be 'gelu', 'relu2' or 'swiglu'"),
        (dict(rope_base=1.0), "rope_base must be a finite number above 1"),
        (dict(logit_softcap=0), "logit_softcap must be a positive number or None"),
        (dict(logit_softcap=float("inf")), "logit_softcap must be a positive number or None"),
        (dict(qk_norm=1), "ModernConfig.qk_norm must be True or False"),
        (dict(rope=True, n_embd=36, n_head=4), "head size n_embd // n_head must be even, got 36 // 4 = 9"),
        (
            dict(n_kv_head=3),
            "n_kv_head must be None or a divisor of n_head (4), so that query heads form equal "
            "groups: one of [1, 2, 4]; got 3",
        ),
        (dict(n_kv_head=0), "n_kv_head must be None or a divisor of n_head (4)"),
        (dict(n_kv_head=8), "one of [1, 2, 4]; got 8"),
        (dict(n_kv_head=2.0), "one of [1, 2, 4]; got 2.0"),
        (dict(n_kv_head=True), "one of [1, 2, 4]; got True"),
    ],  # fmt: skip
)
def test_bad_options_are_refused_with_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModernConfig(**{**SIZES, **options})


# --- the model with each option -----------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIONS)
def test_shapes_flops_and_inspection(name):
    model = make(OPTIONS[name])
    idx = tokens(3, BLOCK)
    logits, loss = model(idx, idx)
    assert logits.shape == (3, BLOCK, V) and loss.ndim == 0 and torch.isfinite(loss)
    assert model(idx)[0].shape == (3, 1, V)
    torch.testing.assert_close(model(idx)[0], logits[:, -1:])  # inference computes the last position only
    assert model.forward_hidden(idx).shape == (3, BLOCK, 32)
    weights = model.attention_weights(idx)
    assert len(weights) == 2 and weights[0].shape == (3, 4, BLOCK, BLOCK)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, 4, BLOCK))
    explorer = viz.attention_weights(model, idx[0])  # chapter 7's explorer recomputes them its own way
    torch.testing.assert_close(explorer, torch.stack([w[0] for w in weights]), atol=1e-5, rtol=1e-5)
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    lookups = {n: p.numel() for n, p in model.named_parameters() if n.startswith("transformer.w")}
    if not model.config.tie_embeddings:
        assert model.flops_per_token() == 6 * (model.num_params() - sum(lookups.values())) + 12 * 2 * 32 * BLOCK


@pytest.mark.parametrize("name", OPTIONS)
def test_a_later_token_never_changes_earlier_logits(name):
    model = make(OPTIONS[name])
    idx = tokens(2, BLOCK)
    with torch.no_grad():
        base = model(idx, all_logits=True)[0]
        for t in (3, BLOCK - 1):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % V
            out = model(changed, all_logits=True)[0]
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=1e-6)
            assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("name", OPTIONS)
def test_cached_steps_give_the_full_pass_logits(name):
    model = make(OPTIONS[name])
    seq = tokens(2, BLOCK)
    with torch.no_grad():
        full = model(seq, all_logits=True)[0]
        cache, parts, start = KVCache.for_model(model), [], 0
        for n in (5, 1, 1, 9):
            parts.append(model(seq[:, start : start + n], cache=cache, all_logits=True)[0])
            cache.advance(n)
            start += n
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", OPTIONS)
def test_cached_and_uncached_generation_give_identical_tokens(name):
    """Past block_size too: there the window is recomputed (a rotary model does not keep a rolling cache)."""
    model = make(OPTIONS[name], seed=3)
    idx = tokens(2, 5)
    runs = [
        generate(model, idx, 2 * BLOCK, use_cache=c, generator=torch.Generator().manual_seed(7), top_k=8)
        for c in (True, False)
    ]
    assert runs[0].shape == (2, 5 + 2 * BLOCK) and torch.equal(runs[0], runs[1])
    cache = KVCache.for_model(model)
    with torch.no_grad():
        for t in range(5, runs[0].size(1)):
            cached = next_token_logits(model, runs[0][:, :t], cache)
            torch.testing.assert_close(cached, model(runs[0][:, max(0, t - BLOCK) : t])[0][:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["rope", "qk_norm", "rmsnorm", "all"])
def test_options_run_under_bf16_autocast_and_in_bf16(name):
    model = make(OPTIONS[name])
    idx = tokens(2, BLOCK)
    with torch.no_grad():
        ref = model(idx, all_logits=True)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(idx, all_logits=True)[0]
            cache = KVCache.for_model(model)
            step = [next_token_logits(model, idx[:, :t], cache) for t in range(4, BLOCK + 1)]
        half = model.to(torch.bfloat16)(idx, all_logits=True)[0]
    # bf16 keeps 7 explicit mantissa bits (8 significant): through two perturbed layers the logits move by 1-2% as
    # a whole, and a rare logit by a few tenths; a wrong computation moves them by tens of percent
    for got, want in ((auto, ref), (half, ref), (torch.stack(step), ref[:, 3:].transpose(0, 1))):
        error = got.float() - want
        assert error.norm() / want.norm() < 0.04 and error.abs().max() < 0.5, (name, error.abs().max().item())


def test_zero_initialised_projections_and_head_start_at_the_uniform_guess():
    model = ModernGPT(ModernConfig(**SIZES, tie_embeddings=False, zero_init_proj=True))
    zero = [n for n, p in model.named_parameters() if p.dim() == 2 and not p.any()]
    assert sorted(zero) == sorted([f"transformer.h.{i}.{m}.c_proj.weight" for i in range(2) for m in ("attn", "mlp")]
                                  + ["lm_head.weight"])  # fmt: skip
    idx = tokens(2, BLOCK)
    assert model(idx, idx)[1].item() == pytest.approx(math.log(V), abs=1e-6)
    tied = ModernGPT(ModernConfig(**SIZES, zero_init_proj=True))  # tied: the head is the embedding
    assert tied.lm_head.weight is tied.transformer.wte.weight and tied.lm_head.weight.std() > 0.01


def test_weight_decay_groups_put_norm_gains_aside_and_decay_an_untied_head():
    model = ModernGPT(ModernConfig(**SIZES, **OPTIONS["all"]))
    decay, no_decay = (set(map(id, g["params"])) for g in T.param_groups(model, 0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    assert id(model.lm_head.weight) in decay and id(model.transformer.wte.weight) in no_decay
    norms = [id(p) for m in model.modules() if isinstance(m, RMSNorm) for p in m.parameters()]
    assert len(norms) == 2 * 4 + 1 and set(norms) <= no_decay  # two norms and q, k norms per block, and ln_f
    assert all(names[i].endswith("weight") for i in decay)


@pytest.mark.parametrize("name", OPTIONS)
def test_gpt2_export_refuses_every_option_by_name(name, tmp_path):
    with pytest.raises(PretrainedError, match="GPT-2's format cannot represent") as e:
        export_hf(make(OPTIONS[name]), tmp_path / "hf")
    assert all(f"{k}=" in str(e.value) for k in OPTIONS[name]) and not (tmp_path / "hf").exists()
    assert set(OPTIONS[name]) <= set(MODERN_OPTIONS)


# --- checkpoints, sampling, the trainer -------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIONS)
def test_checkpoint_round_trip_and_the_sample_command(name, tmp_path, capsys):
    tok = CharTokenizer("".join(chr(ord("a") + i) for i in range(26)) + " .,;:!?'\n-ABCDEFGHI"[: V - 26])
    assert tok.vocab_size == V
    model = make(OPTIONS[name])
    T.save_checkpoint(tmp_path / "best", model, torch.optim.AdamW(model.parameters()),
                      {"step": 1, "model_config": model.config.to_dict(), "tokenizer": tok.to_dict()})  # fmt: skip
    loaded, _, info = T.load_checkpoint(tmp_path)
    assert loaded.config == model.config and info["model_config"] == model.config.to_dict()
    idx = tokens(2, BLOCK)
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx, all_logits=True)[0], model(idx, all_logits=True)[0], atol=0, rtol=0)
    assert (
        main(["sample", "--ckpt", str(tmp_path), "--prompt", "abc", "--max-new-tokens", "30", "--temperature", "0"])
        == 0
    )
    ids = generate(model, torch.tensor([tok.encode("abc")]), 30, temperature=0)
    assert capsys.readouterr().out == tok.decode(ids[0]) + "\n"


@pytest.mark.parametrize("name", TRAIN_OVERRIDES)
def test_train_with_the_option_then_resume(name, data_dir, tmp_path):
    out = tmp_path / "run"
    common = dict(max_iters=3, lr_decay_iters=8, eval_interval=3)
    flags, fields = TRAIN_OVERRIDES[name]
    first = T.train(tiny_config(data_dir, out, **common, **flags), progress=False)
    assert first.step == 3 and math.isfinite(rows(out)[-1]["val_loss"])
    saved = json.loads((out / "last" / "state.json").read_text())["model_config"]
    assert {k: saved.get(k) for k in MODERN_OPTIONS if k in saved} == fields
    longer = T.train(T.resume_config(out, {"max_iters": "6"}), progress=False)
    assert longer.step == 6 and [r["step"] for r in rows(out)] == list(range(7))
    assert T.load_checkpoint(out)[0].config.to_dict() == saved


def test_resume_continues_exactly_with_every_option(data_dir, tmp_path):
    """3 steps, then resumed to 6, ends on the weights of 6 steps straight, bit for bit."""
    options = {"rope": "true", "norm": "rmsnorm", "mlp": "swiglu", "qk-norm": "true", "n-kv-head": "1",
               "tie-embeddings": "false", "zero-init-proj": "true", "logit-softcap": "8", "dropout": "0.1"}  # fmt: skip
    common = dict(lr_decay_iters=8, eval_interval=3, **options)
    T.train(tiny_config(data_dir, tmp_path / "straight", max_iters=6, **common), progress=False)
    T.train(tiny_config(data_dir, tmp_path / "split", max_iters=3, **common), progress=False)
    T.train(T.resume_config(tmp_path / "split", {"max_iters": "6"}), progress=False)
    a = T.load_checkpoint(tmp_path / "straight" / "last")[0].state_dict()
    b = T.load_checkpoint(tmp_path / "split" / "last")[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in rows(tmp_path / "straight")] == [r["train_loss"] for r in rows(tmp_path / "split")]


def test_resume_refuses_an_option_changed_either_way(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(tiny_config(data_dir, out, max_iters=2, rope="true"), progress=False)
    with pytest.raises(ValueError, match="rope: True -> default"):
        T.train(T.resume_config(out, {"rope": "false", "max_iters": "4"}), progress=False)
    with pytest.raises(ValueError, match="qk_norm: default -> True"):
        T.train(T.resume_config(out, {"qk-norm": "true", "max_iters": "4"}), progress=False)


def test_unknown_model_option_on_the_command_line_is_refused(capsys):
    assert main(["train", "--mlp", "geglu", "--max-iters", "1"]) != 0
    assert "ModernConfig.mlp must be 'gelu', 'relu2' or 'swiglu'" in capsys.readouterr().err


def test_an_option_changes_the_model():
    """Guard against options that are accepted and silently ignored: each one changes the logits."""
    idx = tokens(2, BLOCK)
    base = make({})(idx, all_logits=True)[0]
    for name, options in OPTIONS.items():
        assert not torch.allclose(make(options)(idx, all_logits=True)[0], base), name


# --- grouped-query attention ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_grouped_query_attention_shapes_and_parameters(n_kv):
    C, H, D = 32, 4, 8
    attn = ModernAttention(C, H, bias=True, n_kv_head=n_kv)
    assert attn.c_attn.weight.shape == (C + 2 * n_kv * D, C) and attn.c_attn.bias.shape == (C + 2 * n_kv * D,)
    q, k, v = attn.heads(torch.randn(2, 5, C))
    assert q.shape == k.shape == v.shape == (2, H, 5, D)  # every query head gets its group's keys and values
    for h in range(H):  # query head h reads key/value head h // (H // n_kv): copies within a group, not across
        for j in range(H):
            same = h // (H // n_kv) == j // (H // n_kv)
            assert torch.equal(k[:, h], k[:, j]) == same and torch.equal(v[:, h], v[:, j]) == same
    full, grouped = make({}), make(dict(n_kv_head=n_kv))
    assert full.num_params() - grouped.num_params() == 2 * 2 * (H - n_kv) * D * (C + 1)  # k, v weights and biases
    assert grouped(tokens(2, BLOCK))[0].shape == (2, 1, V)


def test_grouped_query_attention_is_multi_head_attention_with_the_key_value_heads_copied():
    """A GQA layer computes what an MHA layer computes whose key and value heads are copies within each group."""
    torch.manual_seed(0)
    C, H, n_kv, D = 32, 4, 2, 8
    gqa = ModernAttention(C, H, n_kv_head=n_kv).eval()
    mha = ModernAttention(C, H).eval()
    wq, wk, wv = gqa.c_attn.weight.split([C, n_kv * D, n_kv * D])
    bq, bk, bv = gqa.c_attn.bias.split([C, n_kv * D, n_kv * D])
    repeat = lambda t: t.view(n_kv, D, *t.shape[1:]).repeat_interleave(H // n_kv, 0).reshape(C, *t.shape[1:])
    with torch.no_grad():
        mha.c_attn.weight.copy_(torch.cat([wq, repeat(wk), repeat(wv)]))
        mha.c_attn.bias.copy_(torch.cat([bq, repeat(bk), repeat(bv)]))
        mha.c_proj.load_state_dict(gqa.c_proj.state_dict())
    x = torch.randn(2, 7, C)
    torch.testing.assert_close(gqa(x), mha(x))
    torch.testing.assert_close(gqa(x, return_weights=True)[1], mha(x, return_weights=True)[1])


def test_n_kv_head_equal_to_n_head_is_the_model_without_it():
    plain = GPT(GPTConfig(**SIZES)).eval()
    same = ModernGPT(ModernConfig(**SIZES, n_kv_head=4)).eval()
    assert {k: v.shape for k, v in same.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    same.load_state_dict(plain.state_dict())
    idx = tokens(2, BLOCK)
    assert torch.equal(same(idx, all_logits=True)[0], plain(idx, all_logits=True)[0])
    assert ModernConfig(**SIZES).n_kv_head is None and "n_kv_head" not in ModernConfig(**SIZES).to_dict()


@pytest.mark.parametrize("n_kv", [1, 2])
def test_the_cache_keeps_only_the_key_value_heads_and_stays_exact(n_kv):
    model, full = make(dict(n_kv_head=n_kv, rope=True)), make(dict(rope=True))
    idx = tokens(3, BLOCK)
    sizes = {}
    for name, m in (("grouped", model), ("full", full)):
        cache = KVCache.for_model(m)
        with torch.no_grad():
            steps = [next_token_logits(m, idx[:, :t], cache) for t in range(1, BLOCK + 1)]
            whole = m(idx, all_logits=True)[0]
        torch.testing.assert_close(torch.stack(steps, 1), whole, atol=1e-5, rtol=1e-5)
        sizes[name] = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
        assert all(t.shape == (3, m.config.n_kv_head or 4, BLOCK, 8) for t in cache.k + cache.v)
    assert sizes["full"] == sizes["grouped"] * (4 // n_kv) == 2 * 2 * 3 * BLOCK * 32 * 4


def test_grouped_cache_stores_one_head_per_group_through_any_cache():
    cache = KVCache(n_layer=1, max_len=6)
    view = GroupedCache(cache, group=2)
    k = torch.randn(1, 2, 3, 4).repeat_interleave(2, dim=1)  # 4 heads, copies in pairs
    v = torch.randn(1, 2, 3, 4).repeat_interleave(2, dim=1)
    got_k, got_v = view.update(0, k, v)
    assert cache.k[0].shape == (1, 2, 6, 4) and view.pos == cache.pos == 0
    assert torch.equal(got_k, k) and torch.equal(got_v, v) and torch.equal(cache.k[0][:, :, :3], k[:, ::2])


def test_onnx_export_of_a_grouped_query_model_caches_its_key_value_heads(tmp_path):
    torch.manual_seed(2)
    model = ModernGPT(ModernConfig(**SIZES, rope=True, n_kv_head=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)  # clear choices: greedy decoding without near-ties
    graph = X.export_onnx(model, tmp_path / "gqa.onnx")
    ids = np.array([[1, 2, 3]])
    ours = X.generate_onnx(graph, ids, 2 * BLOCK, temperature=0)
    assert np.array_equal(ours, generate(model, torch.from_numpy(ids), 2 * BLOCK, temperature=0).numpy())
    import onnx

    past = onnx.load(graph).graph.input[1].type.tensor_type.shape.dim
    assert past[1].dim_value == 2  # the graph's cache holds the 2 key/value heads, not the 4 query heads


def test_n_kv_head_flag_trains_saves_and_loads(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--n-layer", "1", "--n-head", "4", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
             "--eval-iters", "1", "--eval-interval", "2", "--device", "cpu"]  # fmt: skip
    code = main(["train", "--data", str(data_dir), "--out", str(out), "--n-kv-head", "2", "--max-iters", "2",
                 "--quiet", *flags])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "last" / "state.json").read_text())
    assert saved["model_config"]["n_kv_head"] == 2 and saved["train_config"]["n_kv_head"] == 2
    model = T.load_checkpoint(out)[0]
    assert type(model) is ModernGPT and model.config.n_kv_head == 2
    assert model.transformer.h[0].attn.c_attn.weight.shape == (32 + 2 * 2 * 8, 32)
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "bad"), "--n-kv-head", "3",
                 "--max-iters", "1", "--quiet", *flags]) != 0  # fmt: skip
    assert "n_kv_head must be None or a divisor of n_head (4)" in capsys.readouterr().err
