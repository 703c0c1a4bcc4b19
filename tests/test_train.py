"""The trainer (chapter 05): optimizer, schedule, config, checkpoints, exact resume, stopping, the command."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_runs import config, rows
from torch import nn
from torch.nn import functional as F

from nanogpt_lib import cli
from nanogpt_lib import train as T
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.model import GPT, GPTConfig


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- optimizer, groups, schedule -------------------------------------------------------------------


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.lin = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight  # tied, as in the GPT

    def forward(self, idx):
        return self.head(self.norm(torch.relu(self.lin(self.emb(idx)))))


def test_param_groups_decay_linear_matrices_only():
    model = Toy()
    decay, rest = T.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert decay["params"] == [model.lin.weight]
    assert {id(p) for p in rest["params"]} == {id(model.emb.weight), id(model.lin.bias), id(model.norm.weight),
                                               id(model.norm.bias)}  # fmt: skip
    gpt = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16))
    decay, rest = T.param_groups(gpt, 0.1)
    assert len(decay["params"]) == 2 * 4  # qkv, attention output, MLP in, MLP out per block
    assert len(decay["params"]) + len(rest["params"]) == len(list(gpt.parameters()))


def test_optimizer_matches_torch_adamw_over_many_steps():
    """The trainer's (fused) AdamW against torch's reference loop, fed the same gradients."""
    torch.manual_seed(0)
    a, b = Toy(), Toy()
    b.load_state_dict(a.state_dict())
    ours = T.make_optimizer(a, 3e-3, 0.1, (0.9, 0.99))
    ref = torch.optim.AdamW(T.param_groups(b, 0.1), lr=3e-3, betas=(0.9, 0.99), foreach=False)
    for _ in range(100):
        idx = torch.randint(0, 10, (4, 5))
        ref.zero_grad()
        nn.functional.cross_entropy(b(idx).flatten(0, 1), idx.flatten()).backward()
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            p.grad = q.grad.clone()
        ours.step()
        ref.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), Toy().parameters(), strict=True))


def test_lr_schedule_warmup_then_cosine_to_floor():
    lr = [T.lr_at(s, 1.0, 0.1, 10, 110) for s in range(200)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0) and lr[60] == pytest.approx(0.55) and lr[110] == pytest.approx(0.1)
    assert lr[150] == pytest.approx(0.1)
    assert all(x >= y for x, y in zip(lr[9:], lr[10:], strict=False))
    assert T.lr_at(50, 1.0, 0.1, 10, 110, progress=0.5) == pytest.approx(0.55)
    assert T.lr_at(50, 1.0, 0.1, 10, 110, progress=1.5) == pytest.approx(0.1)


# --- configuration ---------------------------------------------------------------------------------


def test_config_overrides_accept_hyphens_underscores_and_text():
    c = T.make_config("shakespeare_char", {"--n-layer": "6", "n_embd": "96", "learning-rate": "3e-4",
                                           "bias": "true", "time_budget": "60", "lr_decay_iters": "none"})  # fmt: skip
    assert (c.n_layer, c.n_embd, c.learning_rate, c.bias, c.time_budget, c.lr_decay_iters) == (6, 96, 3e-4, True,
                                                                                               60.0, None)  # fmt: skip
    gpu = T.make_config("shakespeare_char_gpu")
    assert (gpu.n_layer, gpu.n_embd, gpu.block_size) == (6, 384, 256)
    assert T.make_config().out_dir == T.make_config(T.DEFAULT_PRESET).out_dir


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_layers": "2"}, "unknown config key 'n_layers'"),
        ({"n_layer": "two"}, "--n-layer expects an integer, got 'two'"),
        ({"n_layer": "2.5"}, "--n-layer expects an integer"),
        ({"bias": "maybe"}, "--bias expects true or false"),
        ({"n_head": "3"}, "divisible by n_head"),
        ({"dropout": "1.5"}, "dropout"),
        ({"batch_size": "0"}, "--batch-size must be at least 1"),
        ({"min_lr": "1"}, "min_lr <= learning_rate"),
        ({"time_budget": "-5"}, "--time-budget must be a positive"),
    ],
)
def test_config_refuses_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")):
        T.make_config(overrides=overrides)


def test_config_refuses_unknown_preset_and_wrong_python_types():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'.*shakespeare_char"):
        T.make_config("gpt5")
    with pytest.raises(ValueError, match="--max-iters must be an integer"):
        T.TrainConfig(max_iters=10.0)
    with pytest.raises(ValueError, match="--bias must be true or false"):
        T.TrainConfig(bias=1)


# --- checkpoints -------------------------------------------------------------------------------------


def tiny_checkpoint(folder: Path) -> tuple[GPT, Path]:
    gpt_config = GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(gpt_config)
    opt = T.make_optimizer(model, 1e-3, 0.1)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    tokenizer = CharTokenizer([chr(i) for i in range(32, 97)])
    state = {"step": 3, "model_config": gpt_config.to_dict(), "tokenizer": tokenizer.to_dict()}
    return model, T.save_checkpoint(folder, model, opt, state)


def test_checkpoint_round_trip(tmp_path):
    model, folder = tiny_checkpoint(tmp_path / "ckpt")
    assert sorted(os.listdir(folder)) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    loaded, tokenizer, info = T.load_checkpoint(tmp_path / "ckpt")
    x = torch.randint(0, 65, (2, 16))
    model.eval()
    assert torch.equal(loaded(x)[0], model(x)[0])
    assert info["step"] == 3 and tokenizer.vocab_size == 65
    # a run folder resolves to best/, else last/
    (tmp_path / "run").mkdir()
    os.replace(folder, tmp_path / "run" / "last")
    assert T.load_checkpoint(tmp_path / "run")[2]["path"].endswith("last")


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "bad_json", "missing"])
def test_damaged_or_foreign_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    _, folder = tiny_checkpoint(tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "foreign":
        save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
        (folder / "state.json").write_text(json.dumps({"model": "something else"}))
    elif damage == "bad_json":
        (folder / "state.json").write_text((folder / "state.json").read_text()[:50])
    else:
        (folder / "optimizer.safetensors").unlink()
    expected = {"truncate": "model.safetensors", "flip": "model.safetensors", "foreign": "state.json",
                "bad_json": "state.json", "missing": "optimizer.safetensors"}[damage]  # fmt: skip
    with pytest.raises(T.CheckpointError, match=expected):
        T.load_checkpoint(folder)
    with pytest.raises(T.CheckpointError, match="no checkpoint at"):
        T.load_checkpoint(tmp_path / "nowhere")


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    model, folder = tiny_checkpoint(tmp_path / "last")
    before = snapshot(folder)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    import nanogpt_lib.checkpoint as C

    monkeypatch.setattr(C, "save_file", crash)
    with pytest.raises(OSError, match="cannot write the checkpoint"):
        T.save_checkpoint(folder, model, T.make_optimizer(model, 1e-3, 0.1), {"step": 4})
    assert snapshot(folder) == before
    T.load_checkpoint(folder)


# --- training runs -------------------------------------------------------------------------------------


def test_train_logs_metrics_and_keeps_last_and_best(data_dir, tmp_path):
    out = tmp_path / "run"
    result = T.train(config(data_dir, out, max_iters=30, eval_interval=10, learning_rate=3e-3), progress=False)
    assert result.stopped == "max_iters" and result.step == 30
    logged = rows(out)
    assert [r["step"] for r in logged] == list(range(31))
    for r in logged[1:]:
        assert {"step", "train_loss", "lr", "tokens_per_s", "elapsed_s"} <= r.keys()
        assert r["tokens_per_s"] > 0 and math.isfinite(r["train_loss"])
    evaluated = [r for r in logged if r.get("val_loss") is not None]
    assert [r["step"] for r in evaluated] == [0, 10, 20, 30]
    assert evaluated[-1]["val_loss"] < evaluated[0]["val_loss"] - 0.3
    assert sorted(p.name for p in out.iterdir()) == ["best", "last", "metrics.jsonl", "nanogpt_run.json"]
    model, tokenizer, info = T.load_checkpoint(out)
    assert info["val_loss"] == min(r["val_loss"] for r in evaluated) == result.best_val_loss
    # the logged validation loss is the loss of the saved weights on the fixed windows
    data = T.load_prepared(data_dir)
    x, y = T.fixed_windows(data.val, 2 * 4, 16)
    assert T.evaluate(model, x, y, 4, T.pick_precision("cpu")) == pytest.approx(info["val_loss"], abs=1e-6)
    assert tokenizer.decode(tokenizer.encode("First Citizen")) == "First Citizen"


def test_resume_is_bitwise_exact(data_dir, tmp_path):
    """N steps straight == N/2 steps, Ctrl-C, resume, N/2 steps: the same losses and weights, bit for bit."""
    n = 16
    common = dict(max_iters=n, eval_interval=5, dropout=0.1, learning_rate=3e-3)
    straight = T.train(config(data_dir, tmp_path / "straight", **common), progress=False)

    def ctrl_c_at_half(row):
        if row["step"] == n // 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled by the trainer: stop after this step

    first = T.train(config(data_dir, tmp_path / "split", **common), callback=ctrl_c_at_half, progress=False)
    assert first.stopped == "interrupted" and first.step == n // 2 + 1
    assert json.loads((tmp_path / "split" / "last" / "state.json").read_text())["step"] == n // 2 + 1
    second = T.train(T.resume_config(tmp_path / "split"), progress=False)
    assert second.stopped == "max_iters" and second.step == n
    losses = [(r["step"], r["train_loss"]) for r in rows(tmp_path / "straight")[1:]]
    assert losses == [(r["step"], r["train_loss"]) for r in rows(tmp_path / "split")[1:]]
    assert [r.get("val_loss") for r in straight.history] == [r.get("val_loss") for r in rows(tmp_path / "split")]
    a = T.load_checkpoint(tmp_path / "straight" / "last")[0].state_dict()
    b = T.load_checkpoint(tmp_path / "split" / "last")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_can_extend_a_run_but_not_change_the_model(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=6, lr_decay_iters=12, eval_interval=3), progress=False)
    longer = T.train(T.resume_config(out, {"max_iters": "12"}), progress=False)
    assert longer.step == 12 and [r["step"] for r in rows(out)] == list(range(13))
    finished = T.train(T.resume_config(out), progress=False)  # nothing left to do: no extra step
    assert finished.step == 12 and finished.stopped == "max_iters" and len(rows(out)) == 13
    with pytest.raises(ValueError, match="n_embd: 32 -> 64"):
        T.train(T.resume_config(out, {"n_embd": "64", "max_iters": "20"}), progress=False)
    with pytest.raises(T.CheckpointError, match="no checkpoint to resume"):
        T.resume_config(tmp_path / "empty")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    forward = GPT.forward

    def poisoned(self, idx, targets=None, cache=None):
        logits, loss = forward(self, idx, targets, cache)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 7:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(T.TrainingDiverged, match=r"became nan by step 8.*last good checkpoint is .*last \(step 5\)"):
        T.train(config(data_dir, out, max_iters=20, eval_interval=5), progress=False)
    state = json.loads((out / "last" / "state.json").read_text())
    assert state["step"] == 5
    model = T.load_checkpoint(out / "last")[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # diverged before any checkpoint: the message does not promise one, and none is written
    calls["n"] = 100  # poisoned from the first step
    with pytest.raises(T.TrainingDiverged, match="No checkpoint was written") as error:
        T.train(config(data_dir, tmp_path / "early", max_iters=200, eval_interval=150), progress=False)
    assert "last good" not in str(error.value) and not (tmp_path / "early" / "last").exists()


def test_nan_validation_loss_stops_before_writing(data_dir, tmp_path, monkeypatch):
    losses = iter([3.0, 2.0, float("nan")])
    evaluate = T.evaluate
    monkeypatch.setattr(T, "evaluate", lambda *args: evaluate(*args) * 0 + next(losses))
    out = tmp_path / "run"
    with pytest.raises(T.TrainingDiverged, match=r"validation loss became nan by step 10.*last .*\(step 5\)"):
        T.train(config(data_dir, out, max_iters=20, eval_interval=5), progress=False)
    for folder in ("last", "best"):
        state = json.loads((out / folder / "state.json").read_text())
        assert state["step"] == 5 and state["best_val_loss"] == 2.0
    assert all(math.isfinite(r.get("val_loss", 0.0)) for r in rows(out))


def test_evaluate_is_the_mean_loss_over_every_window(data_dir):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.3))
    x, y = T.fixed_windows(T.load_prepared(data_dir).val, 10, 16)
    model.train()
    got = T.evaluate(model, x, y, batch_size=4)  # batches of 4, 4 and 2 windows
    assert model.training  # the mode is restored
    model.eval()  # by hand: every window at once, no dropout, the mean over all positions
    with torch.no_grad():
        logits = model(x, y)[0]
        expected = F.cross_entropy(logits.reshape(-1, 65), y.reshape(-1)).item()
    assert got == pytest.approx(expected, abs=1e-5)
    first_batch = F.cross_entropy(logits[:4].reshape(-1, 65), y[:4].reshape(-1)).item()
    assert abs(first_batch - expected) > 1e-3  # the windows differ: reading only some of them would show


def test_an_existing_run_is_never_overwritten_by_accident(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=4, eval_interval=2), progress=False)
    before = snapshot(out)
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        T.train(config(data_dir, out, max_iters=4), progress=False)
    with pytest.raises(ValueError, match="pick one"):
        T.train(T.resume_config(out), overwrite=True, progress=False)
    with pytest.raises(ValueError, match="block_size"):
        T.train(config(data_dir, out, block_size=200_000, n_embd=32), overwrite=True, progress=False)
    assert snapshot(out) == before
    again = T.train(config(data_dir, out, max_iters=3, eval_interval=3), overwrite=True, progress=False)
    assert again.step == 3 and [r["step"] for r in rows(out)] == [0, 1, 2, 3]


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that moves 10 ms at each read: a time budget counts reads, not the speed of a busy machine."""
    now = iter(range(10**9))
    monkeypatch.setattr(T.time, "perf_counter", lambda: next(now) * 0.01)


def test_time_budget_sizes_the_run(data_dir, tmp_path, fake_clock):
    run = config(data_dir, tmp_path / "run", time_budget=3.0, eval_interval=50)
    result = T.train(run, progress=False)
    assert result.stopped == "time_budget" and result.step >= 3
    logged = rows(tmp_path / "run")
    assert logged[-1]["val_loss"] is not None  # the final evaluation is inside the budget
    # the cosine decay runs over the budget: the rate falls after warmup, most of the way to min_lr
    decaying = [r["lr"] for r in logged[1:] if r["step"] > 2]
    assert all(a > b for a, b in zip(decaying, decaying[1:], strict=False))
    assert decaying[-1] < 0.6 * run.learning_rate


def test_missing_dataset_says_which_prepare_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="nanogpt prepare shakespeare_char"):
        T.train(config(tmp_path / "nothing", tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


# --- the command ---------------------------------------------------------------------------------------


def nanogpt(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_command_trains_and_resumes(data_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    tiny = ["--n-layer", "1", "--n_head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4"]
    code, stdout, _ = nanogpt(capsys, "train", "--data", str(data_dir), "--out", out, *tiny, "--max-iters", "4",
                              "--lr-decay-iters", "8", "--eval-interval", "2", "--log-interval", "1")  # fmt: skip
    assert code == 0 and "step 4" in stdout and out in stdout
    code, stdout, _ = nanogpt(capsys, "train", "--resume", "--out", out, "--max-iters", "8")
    assert code == 0 and "step 8" in stdout
    assert [r["step"] for r in rows(Path(out))] == list(range(9))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-embd", "thirty"], "--n-embd expects an integer, got 'thirty'"),
        (["--n-head", "5"], "divisible by n_head"),
        (["--block-size", "100000"], "block_size"),
        (["--gradient-accumulation-steps", "-1"], "must be at least 1"),
        (["--resume", "--overwrite"], "pick one"),
        ([], "already holds a run"),
    ],
)
def test_command_refuses_bad_input_and_overwrites_nothing(data_dir, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2), progress=False)
    before = snapshot(out)
    code, _, err = nanogpt(capsys, "train", "--data", str(data_dir), "--out", str(out), *args)
    assert code == 1 and message in err
    assert snapshot(out) == before


def test_command_refuses_unknown_keys_presets_and_missing_data(tmp_path, capsys):
    for args, message in (
        (["--n-layers", "2"], "unrecognized arguments: --n-layers"),
        (["--preset", "huge"], "invalid choice: 'huge'"),
    ):
        with pytest.raises(SystemExit) as exit:
            nanogpt(capsys, "train", *args)
        assert exit.value.code != 0 and message in capsys.readouterr().err
    code, _, err = nanogpt(capsys, "train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"))
    assert code == 1 and "nanogpt prepare shakespeare_char" in err


def test_ctrl_c_saves_and_exits_cleanly(data_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "nanogpt_lib.cli", "train", "--data", str(data_dir), "--out", str(out),
               "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
               "--max-iters", "1000000", "--log-interval", "1", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300  # a guard against a hang, generous for a busy machine
    while not ((out / "metrics.jsonl").exists() and len(rows(out)) >= 3):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    state = json.loads((out / "last" / "state.json").read_text())
    assert state["step"] == rows(out)[-1]["step"] >= 2
    T.load_checkpoint(out)


def test_keep_freed_memory_does_nothing_off_glibc(monkeypatch):
    monkeypatch.setattr(T.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(T.ctypes, "CDLL", lambda *a: pytest.fail("must not touch the C library"))
    assert T.keep_freed_memory() is False


def test_keep_freed_memory_sets_both_glibc_thresholds(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(T.platform, "system", lambda: "Linux")
    monkeypatch.setattr(T.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(T.ctypes, "CDLL", lambda *a: FakeLibc())
    assert T.keep_freed_memory() is True
    # the mmap threshold first: a fixed trim threshold alone would switch off the adaptive mmap threshold
    assert calls == [(T.M_MMAP_THRESHOLD, 32 << 20), (T.M_TRIM_THRESHOLD, 1 << 30)]


def test_the_library_leaves_the_allocator_alone_and_the_command_opts_in(data_dir, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(T, "keep_freed_memory", lambda: calls.append(1) or True)
    T.train(config(data_dir, tmp_path / "a", max_iters=2, eval_interval=2), progress=False)
    assert calls == []
    T.train(config(data_dir, tmp_path / "b", max_iters=2, eval_interval=2), progress=False, reuse_memory=True)
    assert calls == [1]
    code, _, _ = nanogpt(capsys, "train", "--data", str(data_dir), "--out", str(tmp_path / "c"), "--n-layer", "1",
                         "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--max-iters",
                         "2", "--eval-interval", "2", "--device", "cpu", "--quiet")  # fmt: skip
    assert code == 0 and calls == [1, 1]


def count_host_reads(monkeypatch) -> dict[str, int]:
    """Count reads of floating-point or boolean tensors back to Python: each one waits for the device."""
    count = {"n": 0}
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if self.is_floating_point() or self.dtype == torch.bool:
                count["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return count


def test_steps_between_logs_do_not_wait_for_the_device(data_dir, tmp_path, monkeypatch):
    count = count_host_reads(monkeypatch)
    reads = []
    for steps in (20, 40):
        count["n"] = 0
        T.train(config(data_dir, tmp_path / str(steps), max_iters=steps, log_interval=20, eval_interval=20),
                progress=False)  # fmt: skip
        reads.append(count["n"])
    # 20 more steps add one log, one evaluation and one checkpoint, and no read per step
    assert 0 < reads[1] - reads[0] <= 5, reads


def test_help_shows_the_defaults_that_apply(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    text = " ".join(out.split())
    entries = {e.split()[0]: " ".join(e.split()) for e in re.split(r"\n  (?=-)", out)}  # each option's lines
    defaults = T.make_config()
    assert defaults == T.TrainConfig()  # one source of truth: the default preset is the dataclass
    assert (defaults.batch_size, defaults.learning_rate, defaults.max_iters) == (32, 3e-3, 1500)
    for f in T.fields(T.TrainConfig):
        if f.name in ("data_dir", "out_dir", "time_budget", "init_from"):
            continue
        value = getattr(defaults, f.name)
        shown = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert f"(default: {shown})" in entries["--" + f.name.replace("_", "-")], f.name
    assert "this many more seconds" in text  # --time-budget on --resume


@pytest.mark.parametrize(
    "key, value, flag",
    [
        ("learning_rate", "nan", "--learning-rate"),
        ("learning_rate", "inf", "--learning-rate"),
        ("min_lr", "nan", "--min-lr"),
        ("weight_decay", "nan", "--weight-decay"),
        ("weight_decay", "inf", "--weight-decay"),
        ("grad_clip", "inf", "--grad-clip"),
        ("grad_clip", "nan", "--grad-clip"),
        ("beta1", "nan", "--beta1"),
        ("beta2", "nan", "--beta2"),
        ("dropout", "nan", "--dropout"),
        ("time_budget", "inf", "--time-budget"),
        ("time_budget", "nan", "--time-budget"),
        ("seed", "-1", "--seed"),
        ("seed", str(2**32), "--seed"),
        ("seed", str(2**70), "--seed"),
    ],
)
def test_config_refuses_non_finite_numbers_and_out_of_range_seeds(key, value, flag):
    with pytest.raises(ValueError) as error:
        T.make_config(overrides={key: value})
    message = str(error.value)
    assert message.startswith(flag + " must be") and "\n" not in message, message


def test_absurd_batch_or_evaluation_is_refused_with_the_estimate(data_dir, tmp_path):
    out = tmp_path / "run"
    estimate = r"needs at least [\d,.]+ GiB, more than the [\d,.]+ GiB available.*--batch-size"
    with pytest.raises(ValueError, match=estimate):
        T.train(config(data_dir, out, batch_size=10**12), progress=False)
    with pytest.raises(ValueError, match=r"evaluating --eval-iters .* GiB .*--eval-iters"):
        T.train(config(data_dir, out, eval_iters=10**12), progress=False)
    assert not out.exists()
    training, evaluation = T.memory_needed(config(data_dir, out), GPTConfig(65, 16, 1, 2, 32))
    weights = 4 * (65 * 32 + 16 * 32 + 12 * 32 * 32)
    assert training > 4 * weights and evaluation > weights


def test_time_budget_on_resume_is_more_time(data_dir, tmp_path, fake_clock):
    out = tmp_path / "run"
    first = T.train(config(data_dir, out, time_budget=2.0, eval_interval=1000), progress=False)
    assert first.stopped == "time_budget"
    # the earlier run's time does not count: a budget smaller than it still trains
    again = T.train(T.resume_config(out, {"time_budget": "0.5"}), progress=False)
    assert again.stopped == "time_budget" and again.step > first.step
    assert again.elapsed_s > first.elapsed_s


def test_command_shows_progress_unless_quiet(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "nanogpt_lib.cli", "train", "--data", str(data_dir), "--n-layer", "1", "--n-head",
            "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--max-iters", "6", "--eval-interval",
            "3", "--log-interval", "1", "--device", "cpu"]  # fmt: skip
    loud = subprocess.run([*base, "--out", str(tmp_path / "a")], env=env, capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0, loud.stderr
    assert "100%" in loud.stderr and "6/6 steps" in loud.stderr and "tok/s" in loud.stderr  # the bar
    assert re.search(r"step 3: train loss \d\.\d{4}, val loss \d\.\d{4}", loud.stderr)  # a line per evaluation
    assert "step 6 (max iters)" in loud.stdout
    quiet = subprocess.run([*base, "--out", str(tmp_path / "b"), "--quiet"], env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert "step 6 (max iters)" in quiet.stdout


# --- one run shared by two chapters (appendix A3): prepare once, wait for the folder, load or train --------------

HOLD_LOCK = (
    "import sys; from pathlib import Path; from nanogpt_lib.checkpoint import lock_out_dir; "
    "lock_out_dir(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.readline()"
)


def hold_lock(out: Path) -> subprocess.Popen:
    """Another process holding the run folder `out`, as a second trainer would, until a line is written to it."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0


def test_load_or_train_trains_a_missing_run_once_then_loads_it(data_dir: Path, tmp_path: Path):
    cfg = config(data_dir, tmp_path / "run", max_iters=4, eval_interval=2)
    assert not T.finished(cfg)
    model, tok, info, trained = T.load_or_train(cfg, timeout=120, poll=0.05)
    assert trained and info["step"] == 4 and T.finished(cfg) and not model.training
    again, _, info_again, trained_again = T.load_or_train(cfg, timeout=120, poll=0.05)
    assert not trained_again and info_again["path"] == info["path"]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))
    assert tok.decode(tok.encode("the")) == "the"
    longer = config(data_dir, tmp_path / "run", max_iters=6, eval_interval=2)  # another run in the same folder
    assert not T.finished(longer)
    _, _, info_longer, trained_longer = T.load_or_train(longer, timeout=120, poll=0.05)
    assert trained_longer and info_longer["step"] == 6 and not T.finished(cfg)
    assert not (tmp_path / "run" / ".nanogpt.lock").exists()


def test_a_run_cut_short_is_not_finished(data_dir: Path, tmp_path: Path):
    cfg = config(data_dir, tmp_path / "run", max_iters=4, eval_interval=2)

    def interrupt_at_2(row):
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    assert T.train(cfg, callback=interrupt_at_2).stopped == "interrupted"
    assert not T.finished(cfg)


def test_resume_is_refused_by_the_lock_before_the_checkpoint_is_read(data_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2))
    (out / "last" / "state.json").write_text("{half written")  # what a reader can meet while a trainer saves
    holder = hold_lock(out)
    try:
        with pytest.raises(RuntimeError, match=f"in use by another trainer \\(PID {holder.pid}\\)"):
            T.resume_config(out)
    finally:
        release(holder)
    with pytest.raises(ValueError, match="state.json"):  # free again: now the damage is what is reported
        T.resume_config(out)


def test_load_or_train_waits_while_another_process_holds_the_folder(data_dir: Path, tmp_path: Path):
    import threading

    cfg = config(data_dir, tmp_path / "run", max_iters=2, eval_interval=2)
    T.load_or_train(cfg, timeout=120, poll=0.05)
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(RuntimeError, match="in use by another trainer"):
            T.load_or_train(cfg, timeout=0, poll=0.01)  # no time to wait: the refusal comes through
        with pytest.raises(RuntimeError, match="in use by another trainer"):
            T.train_when_free(cfg, timeout=0, poll=0.01, overwrite=True)
        results: list = []
        reader = threading.Thread(target=lambda: results.append(T.load_or_train(cfg, timeout=120, poll=0.02)))
        reader.start()
        reader.join(timeout=1.0)
        assert reader.is_alive() and not results, "it must wait while the folder is held"
    finally:
        release(holder)
    reader.join(timeout=120)
    assert len(results) == 1 and results[0][3] is False and results[0][2]["step"] == 2


def test_train_when_free_raises_other_errors_at_once(tmp_path: Path):
    cfg = config(tmp_path / "no_data", tmp_path / "run", max_iters=2)
    with pytest.raises(FileNotFoundError, match="no prepared dataset"):
        T.train_when_free(cfg, timeout=3600, poll=0.01)


def test_prepare_chars_once_writes_a_whole_dataset_once(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(T, "load_text", lambda: "To be, or not to be: that is the question.\n" * 50)
    folder = tmp_path / "build" / "data"
    data = T.prepare_chars_once(folder)
    assert data.vocab_size == len(set("To be, or not to be: that is the question.\n"))
    stamp = (folder / "meta.json").stat().st_mtime_ns
    monkeypatch.setattr(T, "load_text", lambda: pytest.fail("a prepared dataset must not be prepared again"))
    assert T.prepare_chars_once(folder).meta == data.meta and (folder / "meta.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.parent.iterdir()) == ["data"], "no temporary folder is left behind"
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.bin").write_bytes(b"\0\0")
    monkeypatch.setattr(T, "load_text", lambda: "abc" * 100)
    with pytest.raises(FileExistsError, match="no prepared dataset .* delete it"):
        T.prepare_chars_once(tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "half"]


def test_prepare_chars_once_accepts_the_copy_of_a_process_that_was_first(tmp_path: Path, monkeypatch):
    """Two processes prepare at once: the second rename fails, and the first process's dataset is used."""
    monkeypatch.setattr(T, "load_text", lambda: "abcabc\n" * 100)
    folder = tmp_path / "data"
    real = T.prepare_char_dataset

    def other_process_first(text, out):
        real(text, folder)  # the other process renames its complete copy into place first
        return real(text, out)

    monkeypatch.setattr(T, "prepare_char_dataset", other_process_first)
    assert T.prepare_chars_once(folder).vocab_size == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --- the progress bar: steps, loss, tokens/s, time left; full at the end --------------------------------------

BAR = r"\d+%\|[^|]*\| (\d+)/(~?)(\d+) steps \[\d\d:\d\d(.*?)\]"


def lines(err: str) -> list[str]:
    """What stderr showed, line by line: tqdm redraws its line after a carriage return."""
    return re.split(r"[\r\n]", err)


def renders(err: str) -> list[re.Match]:
    """The states a progress bar on stderr went through, in order."""
    return [m for m in (re.search(BAR, line) for line in lines(err)) if m]


def test_progress_bar_counts_steps_and_shows_loss_speed_and_time_left(data_dir, tmp_path, capsys):
    run = T.start_run(config(data_dir, tmp_path / "run", max_iters=8, eval_interval=4), progress=True)
    try:
        for _ in range(4):
            T.train_step(run)
            T.show_progress(run)
        T.log_metrics(run, T.step_metrics(run))
        T.train_step(run)
        T.show_progress(run)
        shown = str(run.bar)
    finally:
        T.close_run(run)
    bar = re.search(BAR, shown)
    assert bar and bar.group(1, 2, 3) == ("5", "", "8"), shown  # steps, not seconds
    assert re.fullmatch(r", loss \d\.\d{3}, [\d,]+ tok/s, \d\d:\d\d left", bar.group(4)), shown
    assert f"loss {rows(tmp_path / 'run')[-1]['train_loss']:.3f}" in shown  # the last logged loss


def test_progress_bar_ends_full_and_the_first_line_has_no_missing_loss(data_dir, tmp_path, capsys):
    T.train(config(data_dir, tmp_path / "run", max_iters=12, eval_interval=6), progress=True)
    err = capsys.readouterr().err
    last = renders(err)[-1]
    assert last.group(0).startswith("100%|") and last.group(1, 2, 3) == ("12", "", "12"), err
    assert any(re.fullmatch(r"step 0: untrained, val loss \d\.\d{4}", line) for line in lines(err))
    assert any(re.fullmatch(r"step 6: train loss \d\.\d{4}, val loss \d\.\d{4}", line) for line in lines(err))
    assert "loss -" not in err


def test_a_time_budget_bar_estimates_its_steps_then_ends_full(data_dir, tmp_path, capsys, monkeypatch, fake_clock):
    shown, show = [], T.show_progress
    monkeypatch.setattr(T, "show_progress", lambda run: (show(run), shown.append(str(run.bar))))
    result = T.train(config(data_dir, tmp_path / "run", time_budget=3.0, eval_interval=1000), progress=True)
    assert result.stopped == "time_budget" and len(shown) == result.step
    during = [re.search(BAR, s) for s in shown[2:]]
    assert all(m and m.group(2) == "~" and m.group(4).endswith(" left") for m in during), shown[-1]
    assert int(during[-1].group(3)) == pytest.approx(result.step, rel=0.5)  # the estimate is about right at the end
    last = renders(capsys.readouterr().err)[-1]
    assert last.group(0).startswith("100%|") and last.group(1, 2, 3) == (str(result.step), "", str(result.step))


def test_a_final_evaluation_past_the_budget_is_said_in_one_line(data_dir, tmp_path, capsys, monkeypatch):
    clock = {"now": 0.0}

    def tick():
        clock["now"] += 0.01
        return clock["now"]

    def slow_save(*args, **kwargs):  # the checkpoint takes 5 s, which the run could not know in advance
        clock["now"] += 5.0
        return save(*args, **kwargs)

    save = T.save_checkpoint
    monkeypatch.setattr(T.time, "perf_counter", tick)
    monkeypatch.setattr(T, "save_checkpoint", slow_save)
    result = T.train(config(data_dir, tmp_path / "run", time_budget=3.0, eval_interval=1000), progress=True)
    err = capsys.readouterr().err
    assert result.stopped == "time_budget"
    said = [re.fullmatch(r"the final evaluation and checkpoint took (\d+\.\d) s past the 3 s budget", line)
            for line in lines(err)]  # fmt: skip
    said = [float(m[1]) for m in said if m]
    assert len(said) == 1 and 4.5 < said[0] < 6, err
    assert renders(err)[-1].group(0).startswith("100%|")


def test_tqdm_disable_hides_the_bar_even_when_asked_for(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    T.train(config(data_dir, tmp_path / "run", max_iters=4, eval_interval=2), progress=True)
    err = capsys.readouterr().err
    assert not renders(err) and "steps [" not in err
    assert "step 2: train loss" in err  # the evaluation lines the caller asked for remain


# --- resuming checks the dataset ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """Another dataset with the same vocabulary as `data_dir`'s: the same text, backwards."""
    folder = tmp_path_factory.mktemp("other") / "backwards"
    T.prepare_char_dataset(T.load_text()[:100_000][::-1], folder)
    return folder


def test_resume_on_another_dataset_is_refused_naming_both(data_dir, other_data, tmp_path, capsys):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=4, eval_interval=2), progress=False)
    before = snapshot(out)
    hashes = [json.loads((d / "meta.json").read_text())["source_sha256"] for d in (data_dir, other_data)]
    assert T.load_prepared(data_dir).meta["tokenizer"] == T.load_prepared(other_data).meta["tokenizer"]
    with pytest.raises(ValueError) as error:
        T.train(T.resume_config(out, {"data_dir": str(other_data), "max_iters": "8"}), progress=False)
    message = str(error.value)
    assert all(str(x) in message for x in (data_dir, other_data, *hashes, "--new-data")), message
    assert snapshot(out) == before
    code, _, err = nanogpt(capsys, "train", "--resume", "--out", str(out), "--data", str(other_data))
    assert code == 1 and "--new-data" in err and hashes[1] in err
    assert snapshot(out) == before


def test_new_data_resumes_on_another_dataset_with_a_new_best(data_dir, other_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    first = T.train(config(data_dir, out, max_iters=8, eval_interval=4), progress=False)
    worse = first.best_val_loss + 1.0  # the new data's validation loss: worse than the old best, yet the new best
    evaluate = T.evaluate
    monkeypatch.setattr(T, "evaluate", lambda *args: evaluate(*args) * 0 + worse)
    code, stdout, _ = nanogpt(capsys, "train", "--resume", "--out", str(out), "--data", str(other_data),
                              "--max-iters", "12", "--new-data", "--quiet")  # fmt: skip
    assert code == 0 and "step 12" in stdout
    best = json.loads((out / "best" / "state.json").read_text())
    assert best["step"] == 12 and best["best_val_loss"] == pytest.approx(worse)
    assert best["data"]["source_sha256"] == T.load_prepared(other_data).meta["source_sha256"]
    assert best["data"]["dir"] == str(other_data)


def test_a_relative_data_folder_is_recorded_absolute_and_resumed_from_anywhere(
    data_dir, other_data, tmp_path, monkeypatch
):
    import shutil

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copytree(data_dir, tmp_path / "a" / "data")
    shutil.copytree(other_data, tmp_path / "b" / "data")  # "data" from b is another dataset
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    T.train(config(Path("data"), out, max_iters=4, eval_interval=2), progress=False)
    state = json.loads((out / "last" / "state.json").read_text())
    assert Path(state["data"]["dir"]).is_absolute()
    assert Path(state["data"]["dir"]).resolve() == (tmp_path / "a" / "data").resolve()
    monkeypatch.chdir(tmp_path / "b")
    resumed = T.resume_config(out, {"max_iters": "6"})
    assert resumed.data_dir == state["data"]["dir"]
    assert T.train(resumed, progress=False).step == 6


# --- non-finite weights are never called good -----------------------------------------------------------------


def test_a_checkpoint_with_nan_weights_is_not_resumed_nor_copied_to_best(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=6, eval_interval=3), progress=False)
    model = T.load_checkpoint(out / "last")[0]
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    state = T.read_state(out / "last")
    state = {k: v for k, v in state.items() if k not in ("format", "version", "files", "optimizer")}
    state["best_val_loss"] = state["val_loss"]  # last/ claims to be the best: a resume would finish a copy to best/
    T.save_checkpoint(out / "last", model, T.make_optimizer(model, 1e-3, 0.1), state)  # valid hashes
    import shutil

    shutil.rmtree(out / "best")
    with pytest.raises(T.CheckpointError, match="not finite") as error:
        T.train(T.resume_config(out, {"max_iters": "12"}), progress=False)
    assert "last good" not in str(error.value)
    assert not (out / "best").exists(), "non-finite weights were copied to best/"


# --- messages ---------------------------------------------------------------------------------------------------


def test_interrupted_summary_shows_the_loss_of_its_own_step(data_dir, tmp_path, capsys, monkeypatch):
    log = T.log_metrics

    def ctrl_c_after_step_5(run, row):
        log(run, row)
        if row["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # handled by the trainer: stop after the next step

    monkeypatch.setattr(T, "log_metrics", ctrl_c_after_step_5)
    out = tmp_path / "run"
    code, stdout, _ = nanogpt(capsys, "train", "--data", str(data_dir), "--out", str(out), "--n-layer", "1",
                              "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
                              "--max-iters", "100", "--eval-interval", "4", "--log-interval", "1", "--device", "cpu",
                              "--quiet")  # fmt: skip
    assert code == 130
    summary = re.search(r"step (\d+) \(interrupted\), \d+ s, train loss (\d\.\d{4}),", stdout)
    assert summary, stdout
    row = next(r for r in rows(out) if r["step"] == int(summary[1]))
    assert summary[2] == f"{row['train_loss']:.4f}" and "val_loss" not in row
    monkeypatch.setattr(T, "log_metrics", log)
    result = T.train(T.resume_config(out, {"max_iters": "30"}), progress=False,
                     callback=lambda row: row["step"] == 9 and os.kill(os.getpid(), signal.SIGINT))  # fmt: skip
    assert result.stopped == "interrupted" and result.step == 10 and result.val_loss is None
    assert result.train_loss == rows(out)[-1]["train_loss"] and rows(out)[-1]["step"] == 10


def test_a_model_too_large_for_memory_says_so_not_the_batch(data_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        T.train(config(data_dir, out, n_embd=10_000_000), progress=False)
    message = str(error.value)
    assert "the model itself does not fit" in message and "--n-embd" in message and "--n-layer" in message
    assert "--batch-size" not in message and re.search(r"about [\d,]+ parameters", message)
    assert not out.exists()
    small = T.GPT(GPTConfig(65, 16, 2, 2, 32))
    assert T.parameter_count(config(data_dir, out), small.config) == pytest.approx(
        sum(p.numel() for p in small.parameters()), rel=0.05
    )
