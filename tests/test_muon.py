"""Muon and the warmup-stable-decay schedule (chapter 09), and how the trainer (chapter 05) uses them."""

import json
import math
import os
import signal

import pytest
import torch
from tiny_runs import config, rows
from torch import nn

from nanogpt_lib import cli
from nanogpt_lib import train as T
from nanogpt_lib.device import cpu_has_native_bf16
from nanogpt_lib.model import GPT, GPTConfig
from nanogpt_lib.muon import NS_COEFFICIENTS, Muon, muon_param_groups, newton_schulz, ns_precision, wsd_at


def quintic(s: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The scalar map Newton-Schulz applies to each singular value (of G / ||G||_F)."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


# --- Newton-Schulz against the SVD -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (24, 24), (128, 512)])
def test_newton_schulz_is_the_svd_factor_up_to_the_quintic_band(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    P, s, Qt = torch.linalg.svd(G.double(), full_matrices=False)
    X = newton_schulz(G)
    assert X.shape == G.shape and X.dtype == G.dtype
    # An odd matrix polynomial keeps the singular vectors: in the SVD's basis X is diagonal, with the
    # quintic of each normalised singular value on it. fp32 arithmetic over 5 steps: errors ~1e-6.
    inner = P.mT @ X.double() @ Qt.mT
    torch.testing.assert_close(inner, torch.diag(quintic(s / G.double().norm())), atol=3e-5, rtol=0)
    # Against the exact orthogonal factor P Q^T the difference is the band the quintic leaves the values in:
    # five tuned steps do not converge to 1, they oscillate near it. The scalar map sends every value above
    # 1/500 of the norm into [0.675, 1.203], so |value - 1| <= 0.325 for each; smaller values (a square
    # Gaussian matrix can have one) are lifted less, and are left out of the comparison.
    kept = s / G.double().norm() > 1 / 500
    values = torch.diagonal(inner)[kept]
    assert values.min() > 0.67 and values.max() < 1.21
    orth = P[:, kept] @ Qt[kept]  # the SVD's orthogonal factor on those directions
    assert torch.linalg.matrix_norm(P[:, kept].mT @ (X.double() - orth) @ Qt[kept].mT, ord=2) < 0.33
    if kept.all():
        assert torch.linalg.matrix_norm(X.double() - orth, ord=2) < 0.33


def test_newton_schulz_in_bf16_stays_in_the_band_and_refuses_non_matrices():
    G = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    values = torch.linalg.svdvals(newton_schulz(G, dtype=torch.bfloat16))
    assert values.min() > 0.6 and values.max() < 1.2
    with pytest.raises(ValueError, match="matrices"):
        newton_schulz(torch.randn(5))


@pytest.mark.parametrize("shape", [(3, 24, 40), (2, 40, 24)])
def test_newton_schulz_of_a_stack_is_each_matrix_on_its_own(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    stacked = newton_schulz(G)
    for g, x in zip(G, stacked, strict=True):
        torch.testing.assert_close(x, newton_schulz(g), rtol=1e-5, atol=1e-6)


def test_muon_batches_same_shaped_matrices_and_orthogonalises_in_the_device_precision():
    torch.manual_seed(0)
    layers = [nn.Linear(32, 48, bias=False) for _ in range(3)] + [nn.Linear(48, 32, bias=False)]
    grads = [torch.randn_like(m.weight) for m in layers]
    starts = [m.weight.detach().clone() for m in layers]
    opt = Muon([{"params": [m.weight for m in layers], "muon": True}], lr=0.02, momentum=0.95, ns_dtype=None)
    for m, g in zip(layers, grads, strict=True):
        m.weight.grad = g.clone()
    opt.step()
    dtype = ns_precision(torch.device("cpu"))
    assert dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    for m, g, w0 in zip(layers, grads, starts, strict=True):
        update = 0.05 * g + 0.95 * (0.05 * g)  # Nesterov: the gradient pulled towards the new momentum
        rows, cols = g.shape
        expected = w0 - 0.02 * max(1.0, rows / cols) ** 0.5 * newton_schulz(update, dtype=dtype)
        torch.testing.assert_close(m.weight.detach(), expected, rtol=2e-2, atol=2e-3)


# --- the optimizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(96, 32), (32, 96)])
def test_muon_step_is_momentum_orthogonalised_and_scaled_for_the_shape(shape):
    m, n = shape
    W = nn.Parameter(torch.randn(*shape))
    opt = Muon([{"params": [W], "muon": True}], lr=0.02, momentum=0.95, weight_decay=0.1, ns_dtype=torch.float32)
    before = W.detach().clone()
    momentum = torch.zeros(shape)
    for k in range(3):
        W.grad = torch.randn(*shape, generator=torch.Generator().manual_seed(k))
        momentum = 0.95 * momentum + 0.05 * W.grad
        nesterov = 0.05 * W.grad + 0.95 * momentum
        expected = before * (1 - 0.02 * 0.1) - 0.02 * math.sqrt(max(1, m / n)) * newton_schulz(nesterov)
        opt.step()
        torch.testing.assert_close(W.detach(), expected)
        step = (W.detach() - before * (1 - 0.02 * 0.1)) / 0.02
        # every shape gets a step of RMS ~ 1/sqrt(fan-in), within the quintic's band
        assert 0.6 < step.pow(2).mean().sqrt().item() * math.sqrt(n) < 1.2
        before = W.detach().clone()
    torch.testing.assert_close(opt.state[W]["momentum_buffer"], momentum)


def test_muon_refuses_vectors_in_a_muon_group():
    with pytest.raises(ValueError, match="only 2-D parameters"):
        Muon([{"params": [nn.Parameter(torch.ones(4))], "muon": True}])


def untied_gpt(tied: bool = False) -> GPT:
    gpt = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True))
    if not tied:
        gpt.lm_head.weight = nn.Parameter(gpt.lm_head.weight.detach().clone())  # a head of its own
    return gpt


@pytest.mark.parametrize("tied", [True, False])
def test_muon_gets_the_hidden_matrices_and_adamw_everything_else_once(tied):
    gpt = untied_gpt(tied)
    groups = muon_param_groups(gpt, 0.1, 3e-3, 0.02)
    names = {id(p): n for n, p in gpt.named_parameters()}  # a tied tensor is named once
    muon, decayed, rest = ({names[id(p)] for p in g["params"]} for g in groups)
    assert [(g["muon"], g["lr"], g["weight_decay"]) for g in groups] == [(True, 0.02, 0.1), (False, 3e-3, 0.1),
                                                                         (False, 3e-3, 0.0)]  # fmt: skip
    assert muon == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                    for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}  # fmt: skip
    assert decayed == (set() if tied else {"lm_head.weight"})
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= rest
    everything = [id(p) for g in groups for p in g["params"]]
    assert len(everything) == len(set(everything)) and set(everything) == set(names)
    Muon(groups)  # the split is valid for the optimizer: no vector in a Muon group


def test_adamw_groups_of_muon_match_torch_adamw():
    torch.manual_seed(0)
    a = untied_gpt()
    b = untied_gpt()
    b.load_state_dict(a.state_dict())
    ours = Muon(muon_param_groups(a, 0.1, 3e-3, 0.02)[1:], betas=(0.9, 0.99))
    ref = torch.optim.AdamW(muon_param_groups(b, 0.1, 3e-3, 0.02)[1:], lr=3e-3, betas=(0.9, 0.99), foreach=False)
    for _ in range(30):
        idx = torch.randint(0, 20, (4, 8))
        ref.zero_grad()
        b(idx, idx)[1].backward()
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            p.grad = None if q.grad is None else q.grad.clone()
        ours.step()
        ref.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not torch.equal(a.lm_head.weight, untied_gpt().lm_head.weight)


# --- the schedule ----------------------------------------------------------------------------------


def test_wsd_warms_up_holds_then_decays_linearly_to_the_floor():
    lr = [wsd_at(s, 1.0, 0.1, 10, 110, 0.2) for s in range(200)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[10] == lr[50] == lr[90] == 1.0  # stable until the last 20% of the 100 steps after warmup
    assert lr[100] == pytest.approx(0.55) and lr[95] == pytest.approx(0.775) and lr[110] == pytest.approx(0.1)
    assert lr[150] == pytest.approx(0.1)
    assert all(x >= y for x, y in zip(lr[9:], lr[10:], strict=False))
    assert wsd_at(20, 1.0, 0.1, 10, 110, 0.2, progress=0.9) == pytest.approx(0.55)
    assert wsd_at(20, 1.0, 0.1, 10, 110, 0.2, progress=0.5) == 1.0
    assert wsd_at(20, 1.0, 0.1, 10, 110, 1.0, progress=0.5) == pytest.approx(0.55)  # all decay: linear
    with pytest.raises(ValueError, match="cooldown_frac"):
        wsd_at(20, 1.0, 0.1, 10, 110, 0.0)


# --- the trainer -----------------------------------------------------------------------------------


def recording(make, seen: list[list[float]]):
    """`make` (an optimizer factory), with every optimizer it builds recording its groups' rates at each step."""

    def make_and_record(*args, **kwargs):
        opt = make(*args, **kwargs)
        step = opt.step

        def step_and_record(*a, **k):
            seen.append([g["lr"] for g in opt.param_groups])
            return step(*a, **k)

        opt.step = step_and_record
        return opt

    return make_and_record


def stock_adamw(model, learning_rate, weight_decay, betas=(0.9, 0.99), *rest):
    """What the trainer built before Muon existed: PyTorch's fused AdamW over the two decay groups."""
    return torch.optim.AdamW(T.param_groups(model, weight_decay), lr=learning_rate, betas=betas, fused=True)


def test_adamw_path_is_stock_torch_adamw_with_the_cosine_rate(data_dir, tmp_path, monkeypatch):
    """The default run: the same losses as with torch.optim.AdamW, and every group at lr_at's rate exactly."""
    assert type(T.make_optimizer(untied_gpt(), 3e-3, 0.1)) is torch.optim.AdamW
    default = T.train(config(data_dir, tmp_path / "default", max_iters=8, eval_interval=4), progress=False)
    seen: list[list[float]] = []
    monkeypatch.setattr(T, "make_optimizer", recording(stock_adamw, seen))
    c = config(data_dir, tmp_path / "stock", max_iters=8, eval_interval=4)
    stock = T.train(c, progress=False)
    assert [r["train_loss"] for r in default.history] == [r["train_loss"] for r in stock.history]
    assert [r.get("val_loss") for r in default.history] == [r.get("val_loss") for r in stock.history]
    assert seen == [[T.lr_at(s, c.learning_rate, c.min_lr, c.warmup_iters, 8)] * 2 for s in range(8)]


def test_muon_groups_follow_the_schedule_from_their_own_peak(data_dir, tmp_path, monkeypatch):
    seen: list[list[float]] = []
    monkeypatch.setattr(T, "make_optimizer", recording(T.make_optimizer, seen))
    c = config(data_dir, tmp_path, max_iters=10, optimizer="muon", muon_lr=0.05, schedule="wsd", cooldown_frac=0.5)
    T.train(c, progress=False)
    assert len(seen) == 10
    for s, (muon, *adamw) in enumerate(seen):
        lr = wsd_at(s, c.learning_rate, c.min_lr, c.warmup_iters, 10, 0.5)
        assert adamw == [lr, lr] and muon == pytest.approx(0.05 * lr / c.learning_rate, rel=1e-12)
    assert seen[5][0] == pytest.approx(0.05) and seen[9][0] < 0.05 / 2


def test_embedding_tables_get_their_own_group_at_embedding_lr(data_dir, tmp_path, monkeypatch):
    """With --embedding-lr the embedding tables leave the third group for a fourth, whose rate follows the schedule
    from that peak; every parameter is still in exactly one group. Without it the groups are the three above."""
    gpt = untied_gpt()
    plain = T.make_optimizer(gpt, 3e-3, 0.1, optimizer="muon")
    faster = T.make_optimizer(gpt, 3e-3, 0.1, optimizer="muon", embedding_lr=0.03)
    tables = {id(gpt.transformer.wte.weight), id(gpt.transformer.wpe.weight)}
    assert len(plain.param_groups) == 3 and len(faster.param_groups) == 4
    assert {id(p) for p in faster.param_groups[3]["params"]} == tables
    assert not tables & {id(p) for g in faster.param_groups[:3] for p in g["params"]}
    assert sorted(id(p) for g in faster.param_groups for p in g["params"]) == sorted(id(p) for p in gpt.parameters())
    seen: list[list[float]] = []
    monkeypatch.setattr(T, "make_optimizer", recording(T.make_optimizer, seen))
    c = config(data_dir, tmp_path, max_iters=6, optimizer="muon", embedding_lr=0.03)
    T.train(c, progress=False)
    for s, (_, decayed, rest, embeddings) in enumerate(seen):
        lr = T.lr_at(s, c.learning_rate, c.min_lr, c.warmup_iters, 6)
        assert decayed == rest == lr and embeddings == pytest.approx(0.03 * lr / c.learning_rate, rel=1e-12)


def test_resume_keeps_the_embedding_group_or_refuses(data_dir, tmp_path):
    """A run with --embedding-lr resumes with it (its fourth group's moments load); switching it on or off at a
    resume is refused before anything is read, since the saved optimizer has the other number of groups."""
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=4, eval_interval=2, optimizer="muon", embedding_lr=0.03), progress=False)
    with pytest.raises(ValueError, match="cannot resume .* with --embedding-lr None: it was trained with --embedding"):
        T.resume_config(out, {"embedding_lr": None})
    resumed = T.train(T.resume_config(out, {"max_iters": 6, "embedding_lr": 0.05}), progress=False)
    assert resumed.step == 6
    plain = tmp_path / "plain"
    T.train(config(data_dir, plain, max_iters=2, eval_interval=2, optimizer="muon"), progress=False)
    with pytest.raises(ValueError, match="--embedding-lr 0.03: it was trained with --embedding-lr None"):
        T.resume_config(plain, {"embedding_lr": 0.03})


def test_a_muon_run_lowers_the_loss(data_dir, tmp_path):
    result = T.train(config(data_dir, tmp_path, max_iters=40, eval_interval=40, optimizer="muon", muon_lr=0.05,
                            eval_iters=4), progress=False)  # fmt: skip
    first, last = result.history[0]["val_loss"], result.val_loss
    assert last < first - 0.5, (first, last)


def test_resume_with_muon_and_wsd_is_bitwise_exact(data_dir, tmp_path):
    """N steps straight == N/2 steps, Ctrl-C, resume, N/2 steps, with Muon's momentum in the checkpoint."""
    n = 12
    common = dict(max_iters=n, eval_interval=5, dropout=0.1, optimizer="muon", schedule="wsd", cooldown_frac=0.5)
    T.train(config(data_dir, tmp_path / "straight", **common), progress=False)

    def ctrl_c_at_half(row):
        if row["step"] == n // 2:
            os.kill(os.getpid(), signal.SIGINT)

    first = T.train(config(data_dir, tmp_path / "split", **common), callback=ctrl_c_at_half, progress=False)
    assert first.stopped == "interrupted" and first.step == n // 2 + 1
    second = T.train(T.resume_config(tmp_path / "split"), progress=False)
    assert second.stopped == "max_iters" and second.step == n
    straight, split = rows(tmp_path / "straight"), rows(tmp_path / "split")
    assert [(r["step"], r["train_loss"], r.get("val_loss")) for r in straight] == [
        (r["step"], r["train_loss"], r.get("val_loss")) for r in split
    ]
    a = T.load_checkpoint(tmp_path / "straight" / "last")[0].state_dict()
    b = T.load_checkpoint(tmp_path / "split" / "last")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_muon_checkpoint_from_before_lr_scale_resumes_at_muons_rate(data_dir, tmp_path):
    """Checkpoints written before parameter groups carried `lr_scale` resume with the config's scale, so Muon's
    matrices keep their own peak rate (the saved groups replace the fresh ones, and lacked the key)."""
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=4, eval_interval=2, optimizer="muon", muon_lr=0.02), progress=False)
    state_file = T.last_checkpoint(out) / "state.json"
    state = json.loads(state_file.read_text())
    for group in state["optimizer"]["param_groups"]:
        group.pop("lr_scale", None)
    state_file.write_text(json.dumps(state))
    seen = []
    original = T.train_step

    def spy(run):
        original(run)
        seen.append({bool(g["muon"]): g["lr"] / run.lr for g in run.optimizer.param_groups})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "train_step", spy)
        T.train(T.resume_config(out, {"max_iters": 6}), progress=False)
    assert seen and all(s[True] == pytest.approx(0.02 / 3e-3) and s[False] == 1.0 for s in seen)


# --- the configuration and the command ----------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optimizer", "sgd", "--optimizer must be one of adamw, muon; got 'sgd'"),
        ("schedule", "linear", "--schedule must be one of cosine, wsd; got 'linear'"),
        ("muon_lr", "0", "--muon-lr > 0"),
        ("muon_momentum", "1", "0 <= --muon-momentum < 1"),
        ("cooldown_frac", "0", "0 < --cooldown-frac <= 1"),
        ("cooldown_frac", "nan", "--cooldown-frac must be a finite number"),
        ("embedding_lr", "0", "--embedding-lr must be a positive number"),
        ("embedding_lr", "inf", "--embedding-lr must be a finite number"),
    ],
)
def test_config_refuses_bad_optimizer_settings(key, value, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        T.make_config(overrides={key: value})


def test_command_trains_with_muon_and_wsd_and_shows_the_options(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(data_dir), "--out", str(out), "--n-layer", "1", "--n-head", "2",
                     "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--max-iters", "4",
                     "--eval-interval", "4", "--optimizer", "muon", "--schedule", "wsd", "--quiet"])  # fmt: skip
    assert code == 0 and "step 4" in capsys.readouterr().out
    saved = T.resume_config(out)
    assert (saved.optimizer, saved.schedule) == ("muon", "wsd")
    code = cli.main(["train", "--resume", "--out", str(out), "--optimizer", "adamw", "--max-iters", "8"])
    assert code == 1 and "trained with muon" in capsys.readouterr().err
    assert "momentum_buffer" in (out / "last" / "state.json").read_text()
    code = cli.main(["train", "--data", str(data_dir), "--out", str(tmp_path / "bad"), "--optimizer", "sgd"])
    assert code == 1 and "--optimizer must be one of adamw, muon" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--optimizer {adamw,muon}", "--muon-lr X", "--muon-momentum X", "--schedule {cosine,wsd}",
                 "--cooldown-frac X"):  # fmt: skip
        assert flag in text
