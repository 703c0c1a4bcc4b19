"""Checkpoints and the run folder (appendix A2): any optimizer, cross-checks, manifest, lock, metrics, SIGTERM."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import config, rows

from nanogpt_lib import checkpoint as C
from nanogpt_lib import cli
from nanogpt_lib import train as T
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.model import GPT, GPTConfig, build_model

TOKENIZER = CharTokenizer([chr(i) for i in range(32, 97)])  # 65 characters
SMALL = GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32)


def strict(text: str):
    """json.loads that refuses NaN and Infinity, as every other JSON reader does."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- any optimizer's state ---------------------------------------------------------------------------


class Custom(torch.optim.Optimizer):
    """Momentum SGD whose state holds every plain kind: a tensor, an int, floats (one infinite), a tuple, None."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, dict(lr=lr, decay=(0.9, 0.999), tag="custom"))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                s = self.state[p]
                if not s:
                    s.update(buf=torch.zeros_like(p), count=0, scale=1.0, smallest=float("inf"), shape=tuple(p.shape))
                    s["unused"] = None
                s["count"] += 1
                s["scale"] *= group["decay"][1]
                s["smallest"] = min(s["smallest"], p.grad.norm().item())
                s["buf"].mul_(group["decay"][0]).add_(p.grad, alpha=s["scale"])
                p.add_(s["buf"], alpha=-group["lr"] / s["count"] ** 0.5)


OPTIMIZERS = {
    "adamw": lambda model: T.make_optimizer(model, 1e-2, 0.1),
    "sgd_momentum": lambda model: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True),
    "custom": lambda model: Custom(model.parameters()),
}


def steps(model, optimizer, batches):
    for x in batches:
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_any_optimizer_resumes_bit_exactly(tmp_path, name):
    """6 steps straight == 3 steps, save, load into a fresh model and optimizer, 3 steps: bit for bit."""
    batches = [torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(6)]
    torch.manual_seed(0)
    straight = GPT(SMALL)
    split = GPT(SMALL)
    split.load_state_dict(straight.state_dict())
    steps(straight, opt := OPTIMIZERS[name](straight), batches)
    first = OPTIMIZERS[name](split)
    steps(split, first, batches[:3])
    state = {"step": 3, "model_config": SMALL.to_dict(), "tokenizer": TOKENIZER.to_dict()}
    folder = C.save_checkpoint(tmp_path / "ckpt", split, first, state)
    skeleton = json.loads((folder / "state.json").read_text())["optimizer"]
    assert skeleton["state"] and "param_groups" in skeleton  # the non-tensor part is readable JSON

    torch.manual_seed(1)  # different initial weights: everything must come from the files
    resumed = GPT(SMALL)
    second = OPTIMIZERS[name](resumed)
    C.load_weights(resumed, folder / "model.safetensors")
    C.load_moments(second, folder / "optimizer.safetensors")
    assert second.state_dict()["param_groups"] == first.state_dict()["param_groups"]  # tuples stay tuples
    steps(resumed, second, batches[3:])
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if name == "custom":
        s = second.state[next(resumed.parameters())]
        assert s["count"] == 6 and isinstance(s["shape"], tuple) and s["unused"] is None
        plain = {k: v for k, v in opt.state[next(straight.parameters())].items() if k != "buf"}
        assert {k: v for k, v in s.items() if k != "buf"} == plain


def test_optimizer_state_that_is_not_plain_data_is_refused_by_name():
    model = GPT(SMALL)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.state[next(model.parameters())]["callback"] = print
    with pytest.raises(C.CheckpointError, match=r"state\.0\.callback: a builtin_function_or_method"):
        C.optimizer_to_files(opt)


def test_training_with_sgd_resumes_exactly(data_dir, tmp_path, monkeypatch):
    def sgd(model, lr, wd, betas, *muon_settings):
        return torch.optim.SGD(model.parameters(), lr, momentum=0.9)

    monkeypatch.setattr(T, "make_optimizer", sgd)
    common = dict(max_iters=8, eval_interval=4, dropout=0.1)
    T.train(config(data_dir, tmp_path / "straight", **common), progress=False)

    def stop_at_4(row):
        if row["step"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer like Ctrl-C

    first = T.train(config(data_dir, tmp_path / "split", **common), callback=stop_at_4, progress=False)
    assert first.stopped == "interrupted" and first.step == 5
    assert T.train(T.resume_config(tmp_path / "split"), progress=False).step == 8
    assert [r["train_loss"] for r in rows(tmp_path / "straight")] == [r["train_loss"] for r in rows(tmp_path / "split")]
    a = C.load_checkpoint(tmp_path / "straight" / "last")[0].state_dict()
    b = C.load_checkpoint(tmp_path / "split" / "last")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_version_1_checkpoint_still_resumes(tmp_path):
    """Version 1 stored AdamW's moments as `<index>.<name>` and nothing else about the optimizer."""
    torch.manual_seed(0)
    model = GPT(SMALL)
    opt = T.make_optimizer(model, 1e-2, 0.1)
    steps(model, opt, [torch.randint(0, 65, (4, 16))])
    folder = C.save_checkpoint(tmp_path / "ckpt", model, opt, {"step": 1, "model_config": SMALL.to_dict(),
                                                                 "tokenizer": TOKENIZER.to_dict()})  # fmt: skip
    old = {f"{i}.{k}": v for i, s in opt.state_dict()["state"].items() for k, v in s.items()}
    C.save_file(old, str(folder / "optimizer.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    del state["optimizer"]
    state["version"] = 1
    state["files"]["optimizer.safetensors"] = C.sha256_of(folder / "optimizer.safetensors")
    (folder / "state.json").write_text(json.dumps(state))
    fresh = T.make_optimizer(GPT(SMALL), 1e-2, 0.1)
    C.read_state(folder)
    C.load_moments(fresh, folder / "optimizer.safetensors")
    assert all(torch.equal(fresh.state_dict()["state"][i]["exp_avg"], s["exp_avg"])
               for i, s in opt.state_dict()["state"].items())  # fmt: skip


# --- files from elsewhere -------------------------------------------------------------------------------


def saved(folder: Path) -> Path:
    torch.manual_seed(0)
    model = GPT(SMALL)
    state = {"step": 3, "model_config": SMALL.to_dict(), "tokenizer": TOKENIZER.to_dict()}
    return C.save_checkpoint(folder, model, torch.optim.AdamW(model.parameters()), state)


def edit_state(folder: Path, change) -> None:
    state = json.loads((folder / "state.json").read_text())
    change(state)
    (folder / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("field", ["step", "model_config", "tokenizer", "files"])
def test_a_missing_field_is_named(tmp_path, field):
    folder = saved(tmp_path / "ckpt")
    edit_state(folder, lambda s: s.pop(field))
    with pytest.raises(C.CheckpointError, match=rf"state\.json has no '{field}' field"):
        C.load_checkpoint(folder)


def test_resuming_needs_the_random_states_and_says_so(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2), progress=False)
    edit_state(out / "last", lambda s: s.pop("rng"))
    with pytest.raises(C.CheckpointError, match=r"last/state\.json has no 'rng' field"):
        T.resume_config(out)
    C.load_checkpoint(out / "last")  # still fine for sampling


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    folder = saved(tmp_path / "ckpt")
    bigger = CharTokenizer([chr(i) for i in range(32, 102)]).to_dict()
    edit_state(folder, lambda s: s.update(tokenizer=bigger))
    with pytest.raises(C.CheckpointError, match=r"state\.json: the tokenizer has 70 tokens but model_config\.vocab"):
        C.load_checkpoint(folder)


def constructions(monkeypatch) -> list[str]:
    """Record the default device at each model construction inside the checkpoint module."""
    devices = []

    def recording(config):
        devices.append(torch.empty(0).device.type)
        return build_model(config)

    monkeypatch.setattr(C, "build_model", recording)
    return devices


@pytest.mark.parametrize("key", ["n_layer", "n_embd", "vocab_size", "block_size"])
def test_absurd_sizes_are_refused_before_anything_is_built(tmp_path, monkeypatch, key):
    folder = saved(tmp_path / "ckpt")
    edit_state(folder, lambda s: s["model_config"].update({key: 10**9}))
    devices = constructions(monkeypatch)
    with pytest.raises(C.CheckpointError, match=rf"model_config\.{key} is 1,000,000,000, beyond the limit"):
        C.load_checkpoint(folder)
    assert devices == []


def test_declared_shapes_are_compared_with_the_file_header_before_allocating(tmp_path, monkeypatch):
    folder = saved(tmp_path / "ckpt")
    # a plausible but much larger model than the file holds: about 50 GB of weights if it were built
    edit_state(folder, lambda s: s["model_config"].update(n_layer=16, n_embd=8192, n_head=64))
    devices = constructions(monkeypatch)
    with pytest.raises(C.CheckpointError, match="model.safetensors does not hold the model its state.json describes"):
        C.load_checkpoint(folder)
    assert devices == ["meta"]  # only the shapes were made, never the tensors


def test_an_oversized_or_deeply_nested_state_file_is_refused(tmp_path, monkeypatch):
    folder = saved(tmp_path / "ckpt")
    (folder / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(C.CheckpointError, match="state.json is corrupt"):
        C.load_checkpoint(folder)
    monkeypatch.setattr(C, "MAX_STATE_BYTES", 1000)
    with pytest.raises(C.CheckpointError, match="far larger than a checkpoint's state"):
        C.load_checkpoint(folder)


# --- the run folder -----------------------------------------------------------------------------------


def test_overwrite_deletes_only_what_the_trainer_wrote(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2), progress=False)
    assert json.loads((out / C.MANIFEST).read_text())["files"] == list(C.RUN_FILES)
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"also holds notes\.txt: move those away"):
        T.train(config(data_dir, out, max_iters=2), overwrite=True, progress=False)
    assert snapshot(out) == before
    (out / "notes.txt").unlink()
    assert T.train(config(data_dir, out, max_iters=1, eval_interval=1), overwrite=True, progress=False).step == 1


def test_overwrite_refuses_run_files_the_trainer_did_not_write(data_dir, tmp_path):
    out = tmp_path / "run"
    (out / "last").mkdir(parents=True)
    (out / "last" / "thesis.tex").write_text("mine")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds last/thesis\.tex, which the trainer did not write"):
        T.train(config(data_dir, out, max_iters=2), overwrite=True, progress=False)
    assert snapshot(out) == before and not (out / C.LOCK_FILE).exists()


def test_overwrite_recognises_a_run_from_before_the_manifest(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2), progress=False)
    (out / C.MANIFEST).unlink()
    assert T.train(config(data_dir, out, max_iters=1, eval_interval=1), overwrite=True, progress=False).step == 1
    assert (out / C.MANIFEST).exists()


def test_metrics_are_strict_json(data_dir, tmp_path, monkeypatch):
    assert strict(C.metrics_line({"step": 1, "val_loss": float("nan"), "lr": float("inf")})) == {
        "step": 1, "val_loss": None, "lr": None}  # fmt: skip
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, clip: torch.tensor(float("inf")))
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2), progress=False)
    logged = [strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("grad_norm", "absent") for r in logged] == ["absent", None, None]


def test_a_half_written_last_metrics_line_is_dropped_with_a_warning(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=4, eval_interval=4, lr_decay_iters=6), progress=False)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train_lo')  # the crash came mid-write
    with pytest.warns(UserWarning, match="dropped its damaged last line"):
        T.train(T.resume_config(out, {"max_iters": "6"}), progress=False)
    assert [r["step"] for r in rows(out)] == list(range(7))


def test_a_damaged_metrics_line_elsewhere_is_named(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2, lr_decay_iters=4), progress=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2, is not a metrics row"):
        T.train(T.resume_config(out, {"max_iters": "4"}), progress=False)
    assert not (out / C.LOCK_FILE).exists()


# --- other processes and signals -----------------------------------------------------------------------


def start_trainer(data_dir: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "nanogpt_lib.cli", "train", "--data", str(data_dir), "--out", str(out),
               "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
               "--max-iters", "1000000", "--log-interval", "1", "--eval-interval", "2", "--eval-iters", "1",
               "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((out / "last" / "state.json").exists() and len(rows(out)) >= 4):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run did not start"
        time.sleep(0.1)
    return proc


def nanogpt(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().err


def test_sigterm_saves_and_prints_how_to_resume(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    proc = start_trainer(data_dir, out)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and f"nanogpt train --resume --out {out}" in stderr
    stopped = json.loads((out / "last" / "state.json").read_text())["step"]
    assert stopped == rows(out)[-1]["step"] >= 3
    code, err = nanogpt(capsys, "train", "--resume", "--out", str(out), "--max-iters", str(stopped + 2))
    assert code == 0, err
    assert [r["step"] for r in rows(out)] == list(range(stopped + 3))


def test_a_second_trainer_is_refused_and_a_dead_ones_lock_is_taken_over(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    first = start_trainer(data_dir, out)
    try:
        code, err = nanogpt(capsys, "train", "--data", str(data_dir), "--out", str(out), "--overwrite")
        assert code == 1 and f"in use by another trainer (PID {first.pid})" in err
        assert (out / "last" / "state.json").exists(), "the refused trainer deleted nothing"
        code, err = nanogpt(capsys, "train", "--resume", "--out", str(out), "--max-iters", "3")
        assert code == 1 and f"PID {first.pid}" in err
    finally:
        first.kill()  # SIGKILL: no clean-up, its lock file stays behind
        first.communicate(timeout=60)
    assert (out / C.LOCK_FILE).read_text().strip() == str(first.pid)
    stopped = json.loads((T.last_checkpoint(out) / "state.json").read_text())["step"]
    code, err = nanogpt(capsys, "train", "--resume", "--out", str(out), "--max-iters", str(stopped + 1))
    assert code == 0, err
    assert not (out / C.LOCK_FILE).exists()


# --- folders the trainer did not create: links, foreign files, a run without a checkpoint ----------------------


def user_file(tmp_path: Path) -> Path:
    """A file of the user's, outside the run folder, that a link in the run folder points to."""
    mine = tmp_path / "elsewhere" / "thesis.tex"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("the user's own words")
    return mine


def test_the_manifest_is_never_written_through_a_link(tmp_path):
    out, mine = tmp_path / "run", user_file(tmp_path)
    out.mkdir()
    (out / (C.MANIFEST + ".tmp")).symlink_to(mine)
    C._write_manifest(out)
    assert mine.read_text() == "the user's own words"
    (out / C.MANIFEST).unlink()
    (out / C.MANIFEST).symlink_to(mine)  # the manifest's own name, a link: replaced by a file, not written through
    C._write_manifest(out)
    assert mine.read_text() == "the user's own words" and not (out / C.MANIFEST).is_symlink()
    assert json.loads((out / C.MANIFEST).read_text())["checkpoint_files"] == [*C.CHECKPOINT_FILES, "state.json"]


def test_the_metrics_log_is_never_written_through_a_link(tmp_path):
    out, mine = tmp_path / "run", user_file(tmp_path)
    out.mkdir()
    (out / "metrics.jsonl").write_text("".join(C.metrics_line({"step": s}) for s in range(5)))
    (out / "metrics.jsonl.tmp").symlink_to(mine)
    with C.open_metrics(out / "metrics.jsonl", step=2) as f:
        f.write(C.metrics_line({"step": 3}))
    assert mine.read_text() == "the user's own words" and not (out / "metrics.jsonl.tmp").exists()
    assert [r["step"] for r in rows(out)] == [0, 1, 2, 3]
    for target in (mine, tmp_path / "elsewhere" / "new.jsonl"):  # a link at the log's name, even a dangling one
        (out / "metrics.jsonl").unlink()
        (out / "metrics.jsonl").symlink_to(target)
        with pytest.raises(ValueError, match=r"metrics\.jsonl is a link: the trainer writes its metrics log only"):
            C.open_metrics(out / "metrics.jsonl", step=2)
    assert mine.read_text() == "the user's own words" and not (tmp_path / "elsewhere" / "new.jsonl").exists()


@pytest.mark.parametrize("name", ["last.tmp", "last.old", "last"])
@pytest.mark.parametrize("target", ["file", "folder"])
def test_a_checkpoint_save_never_writes_through_a_link(tmp_path, name, target):
    """state.json and the safetensors files go into a new last.tmp/; a link at any of the names is removed."""
    folder = saved(tmp_path / "run" / "last")
    mine = user_file(tmp_path)
    if target == "folder":  # a folder of the user's, shaped like a checkpoint
        mine = tmp_path / "elsewhere" / "ckpt"
        mine.mkdir()
        for file in ("model.safetensors", "optimizer.safetensors", "state.json", "notes.txt"):
            (mine / file).write_text(f"the user's {file}")
    before = snapshot(mine.parent)
    if name == "last":
        shutil.rmtree(folder)
    folder.with_name(name).symlink_to(mine)
    torch.manual_seed(1)
    model = GPT(SMALL)
    state = {"step": 4, "model_config": SMALL.to_dict(), "tokenizer": TOKENIZER.to_dict()}
    C.save_checkpoint(folder, model, torch.optim.AdamW(model.parameters()), state)
    assert snapshot(mine.parent) == before
    assert C.read_state(folder)["step"] == 4 and sorted(p.name for p in folder.parent.iterdir()) == ["last"]
    assert not folder.is_symlink()


def test_a_save_killed_inside_the_safetensors_writer_is_cleaned_up_but_a_users_file_is_not(tmp_path):
    """safetensors 0.8 writes `.tmpXXXXXX` and renames it: a kill -9 mid-write leaves it in last.tmp/, and the
    next save (or a resume) must treat it as the interrupted save's, while a file of the user's there is refused."""
    folder = saved(tmp_path / "run" / "last")
    half = folder.with_name("last.tmp")
    half.mkdir()
    (half / ".tmpAb12Cd").write_bytes(b"half a weights file")
    torch.manual_seed(1)
    model = GPT(SMALL)
    state = {"step": 4, "model_config": SMALL.to_dict(), "tokenizer": TOKENIZER.to_dict()}
    C.save_checkpoint(folder, model, torch.optim.AdamW(model.parameters()), state)
    assert C.read_state(folder)["step"] == 4 and sorted(p.name for p in folder.parent.iterdir()) == ["last"]
    half.mkdir()
    (half / ".tmpAb12Cd.txt").write_text("the user's own words")  # not the writer's pattern: kept, and named
    with pytest.raises(C.CheckpointError, match=r"holds last\.tmp/\.tmpAb12Cd\.txt, which no checkpoint save writes"):
        C.save_checkpoint(folder, model, torch.optim.AdamW(model.parameters()), state)
    assert (half / ".tmpAb12Cd.txt").read_text() == "the user's own words"


@pytest.mark.parametrize("name", ["best.tmp", "best.old", "best"])
def test_a_copy_to_best_never_writes_through_a_link(tmp_path, name):
    folder = saved(tmp_path / "run" / "last")
    mine = user_file(tmp_path)
    (folder.parent / name).symlink_to(mine)
    C.copy_checkpoint(folder, folder.parent / "best")
    assert mine.read_text() == "the user's own words" and C.read_state(folder.parent / "best")["step"] == 3
    assert sorted(p.name for p in folder.parent.iterdir()) == ["best", "last"]


def test_overwrite_refuses_a_file_of_the_users_inside_a_checkpoint_folder(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2), progress=False)
    (out / "last" / "my_notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds last/my_notes\.txt, which the trainer did not write"):
        T.train(config(data_dir, out, max_iters=2), overwrite=True, progress=False)
    assert snapshot(out) == before
    (out / "last" / "my_notes.txt").unlink()
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(mine := user_file(tmp_path))  # a link at a name that is not scratch
    with pytest.raises(ValueError, match=r"holds metrics\.jsonl, which the trainer did not write"):
        T.train(config(data_dir, out, max_iters=2), overwrite=True, progress=False)
    assert mine.read_text() == "the user's own words"


class Killed(BaseException):
    """The process dies here (kill -9): no clean-up of the trainer runs."""


def test_a_run_killed_before_its_first_checkpoint_is_started_again_by_train(data_dir, tmp_path, capsys):
    out = tmp_path / "run"

    def killed_at_step_1(row):
        if row["step"] == 1:
            raise Killed

    with pytest.raises(Killed):
        T.train(config(data_dir, out, max_iters=4, eval_interval=4), callback=killed_at_step_1, progress=False)
    assert not (out / "last").exists() and len(rows(out)) == 2  # the manifest and two rows, no checkpoint
    code, err = nanogpt(capsys, "train", "--resume", "--out", str(out))
    assert code == 1 and "stopped before writing its first checkpoint" in err and "Train without --resume" in err
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
            "--eval-iters", "1", "--device", "cpu", "--max-iters", "2", "--eval-interval", "2",
            "--log-interval", "1"]  # fmt: skip
    code, err = nanogpt(capsys, "train", "--data", str(data_dir), "--out", str(out), "--quiet", *tiny)
    assert code == 0, err
    assert [r["step"] for r in rows(out)] == [0, 1, 2] and C.read_state(out / "last")["step"] == 2
    code, err = nanogpt(capsys, "train", "--data", str(data_dir), "--out", str(out), "--quiet", *tiny)
    assert code == 1 and "already holds a run (checkpoints last/, best/). Continue it with --resume" in err


def test_a_metrics_file_without_a_manifest_or_checkpoint_needs_overwrite(data_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text("my own measurements\n")
    code, err = nanogpt(capsys, "train", "--resume", "--out", str(out))
    assert code == 1 and "there is no run there. Train without --resume" in err
    with pytest.raises(ValueError, match=rf"holds metrics\.jsonl but no checkpoint and no {C.MANIFEST}"):
        T.train(config(data_dir, out, max_iters=1), progress=False)
    assert (out / "metrics.jsonl").read_text() == "my own measurements\n"


def test_a_deeply_nested_state_is_refused_naming_the_file(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2), progress=False)
    deep: list = []
    for _ in range(400):
        deep = [deep]
    edit_state(out / "last", lambda s: s["optimizer"]["param_groups"][0].update(betas=deep))
    for action in (lambda: T.resume_config(out), lambda: C.load_checkpoint(out / "last")):
        with pytest.raises(C.CheckpointError, match=r"last/state\.json is corrupt or crafted: its JSON nests 4\d\d "
                                                    r"levels deep .* it is not a checkpoint's state"):  # fmt: skip
            action()


@pytest.mark.parametrize("forged", ["short", "not_base64", "missing_process"])
def test_a_forged_random_state_is_refused_naming_the_file(data_dir, tmp_path, forged):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2), progress=False)
    change = {
        "short": lambda rng: rng.update(batches=C.encode_bytes(torch.zeros(10, dtype=torch.uint8))),
        "not_base64": lambda rng: rng.update(batches="this is not base64!"),
        "missing_process": lambda rng: rng.update(torch=[]),
    }[forged]
    edit_state(out / "last", lambda s: change(s["rng"]))
    refused = r"last/state\.json: (rng\.batches is not the state of a PyTorch random generator|the field 'rng' does)"
    with pytest.raises(C.CheckpointError, match=refused):
        T.train(T.resume_config(out, {"max_iters": "4"}), progress=False)
    assert not (out / C.LOCK_FILE).exists()


def test_a_row_logged_just_before_a_kill_during_the_save_survives_resume(data_dir, tmp_path, monkeypatch):
    """kill -9 right after a checkpoint is written: the metrics row of its step is already in metrics.jsonl."""
    common = dict(max_iters=6, eval_interval=2, lr_decay_iters=6)
    straight = {r["step"]: r["train_loss"] for r in T.train(config(data_dir, tmp_path / "a", **common),
                                                             progress=False).history}  # fmt: skip
    real = T.save_checkpoint

    def killed_after_the_second_save(folder, *args):
        real(folder, *args)
        if args[-1]["step"] == 4:
            raise Killed

    monkeypatch.setattr(T, "save_checkpoint", killed_after_the_second_save)
    with pytest.raises(Killed):
        T.train(config(data_dir, tmp_path / "b", **common), progress=False)
    monkeypatch.undo()
    assert C.read_state(tmp_path / "b" / "last")["step"] == 4
    T.train(T.resume_config(tmp_path / "b"), progress=False)
    assert {r["step"]: r["train_loss"] for r in rows(tmp_path / "b")} == straight


def poisoned(folder: Path) -> str:
    """Write NaN into one weight of the checkpoint `folder`, with a valid checksum; returns that tensor's name."""
    tensors = C.load_file(str(folder / "model.safetensors"))
    name = sorted(tensors)[1]
    tensors[name][0] = float("nan")
    C.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": C.CHECKPOINT_FORMAT})
    edit_state(folder, lambda s: s["files"].update({"model.safetensors": C.sha256_of(folder / "model.safetensors")}))
    return name


def test_nonfinite_tensor_names_the_first_bad_parameter():
    model = GPT(SMALL)
    assert C.nonfinite_tensor(model) is None
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[3, 1] = float("inf")
    assert C.nonfinite_tensor(model) == "transformer.h.0.mlp.c_fc.weight"


def test_sample_refuses_a_checkpoint_with_nan_weights(tmp_path, capsys):
    folder = saved(tmp_path / "run" / "last")
    name = poisoned(folder)
    code = cli.main(["sample", "--ckpt", str(folder), "--max-new-tokens", "20"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert f"the checkpoint {folder} holds weights that are not finite numbers" in captured.err
    assert f"the first: {name}" in captured.err and "Use an earlier checkpoint, such as the run's best/" in captured.err


def test_resume_refuses_nan_weights_and_leaves_best_alone(data_dir, tmp_path):
    out = tmp_path / "run"
    T.train(config(data_dir, out, max_iters=2, eval_interval=2), progress=False)
    name = poisoned(out / "last")
    best = snapshot(out / "best")
    with pytest.raises(C.CheckpointError, match=rf"holds weights that are not finite numbers .*the first: {name}"):
        T.train(T.resume_config(out, {"max_iters": "4"}), progress=False)
    assert snapshot(out / "best") == best and not (out / C.LOCK_FILE).exists()
