"""Fault injection: a crash or a full disk at every file operation of a checkpoint write, once or twice in a row.

`Faults` wraps each operation the checkpoint code uses to change the disk (mkdir, open for writing,
the safetensors writers, copyfile, fsync, replace, rmtree) and fails the Nth call, either with a
simulated crash (an exception no library code catches, after leaving what a real crash would leave:
half a file, half a deleted folder) or with OSError(ENOSPC). Each test then checks the folder as a
restarted process would see it.
"""

import builtins
import contextlib
import errno
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from nanogpt_lib import checkpoint as C
from nanogpt_lib import cli
from nanogpt_lib import train as T
from nanogpt_lib.data import CharTokenizer, load_text, prepare_char_dataset
from nanogpt_lib.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=65, block_size=8, n_layer=1, n_head=1, n_embd=8)
TOKENIZER = CharTokenizer([chr(i) for i in range(32, 97)])


class Crash(BaseException):
    """The process stops here: no `except OSError` and no clean-up in the library runs."""


class Faults:
    """Count the disk-changing operations while armed; make call number `at` fail as `kind` says.

    kind: "crash" (fail before the operation), "crash_after" (do it, then crash), "torn" (leave half of it
    done, then crash) or "enospc" (leave half of a write, then raise OSError(ENOSPC)).
    """

    def __init__(self, monkeypatch, at: int | None = None, kind: str = "crash"):
        self.at, self.kind, self.calls, self.armed, self.fired = at, kind, [], False, False
        real = {name: getattr(os, name) for name in ("replace", "fsync", "mkdir")}
        real |= {"rmtree": shutil.rmtree, "copyfile": shutil.copyfile, "open": builtins.open}
        real |= {"save_file": C.save_file, "save_model": C.save_model, "create_new": C.create_new}
        real["fsync"] = lambda fd: None  # the harness simulates crashes of the process, not of the machine
        self.real = real
        for name in ("replace", "fsync", "mkdir"):
            monkeypatch.setattr(os, name, self.wrap(name))
        monkeypatch.setattr(shutil, "rmtree", self.wrap("rmtree"))
        monkeypatch.setattr(shutil, "copyfile", self.wrap("copyfile"))
        monkeypatch.setattr(builtins, "open", self.wrap("open"))
        monkeypatch.setattr(C, "save_file", self.wrap("save_file"))
        monkeypatch.setattr(C, "save_model", self.wrap("save_model"))
        monkeypatch.setattr(C, "create_new", self.wrap("create_new"))  # how state.json is written

    def wrap(self, name):
        def operation(*args, **kwargs):
            writes = name != "open" or any(c in (args[1] if len(args) > 1 else kwargs.get("mode", "r")) for c in "wax+")
            if not (self.armed and writes):
                return self.real[name](*args, **kwargs)
            self.calls.append(name)
            if len(self.calls) - 1 != self.at:
                return self.real[name](*args, **kwargs)
            self.fired, self.armed = True, False
            return self.fail(name, args, kwargs)

        return operation

    def fail(self, name, args, kwargs):
        if self.kind == "crash":
            raise Crash(name)
        if self.kind == "crash_after":
            self.real[name](*args, **kwargs)
            raise Crash(name)
        if name == "rmtree" and self.kind == "torn":  # half deleted: the weights gone, state.json still there
            Path(args[0], "model.safetensors").unlink(missing_ok=True)
            raise Crash(name)
        if name in ("save_file", "save_model", "copyfile"):  # half of the file written
            self.real[name](*args, **kwargs)
            dest = Path(args[1])
            dest.write_bytes(dest.read_bytes()[: dest.stat().st_size // 2])
        if self.kind == "enospc":
            if name == "rmtree" and kwargs.get("ignore_errors"):
                return None
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise Crash(name)


@functools.cache
def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = GPT(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    return model, optimizer


def save(folder: Path, step: int) -> None:
    state = {"step": step, "model_config": CONFIG.to_dict(), "tokenizer": TOKENIZER.to_dict()}
    C.save_checkpoint(folder, *model_and_optimizer(step), state)


def run(monkeypatch, action, at=None, kind="crash") -> Faults:
    """`action()` with the Nth disk operation failing; returns the harness, which records the operations."""
    with monkeypatch.context() as m:
        faults = Faults(m, at, kind)
        faults.armed = True
        with contextlib.suppress(Crash):
            action()
        faults.armed = False
    return faults


def resumable_step(folder: Path) -> int:
    """What a restarted process finds: the step of the checkpoint `folder` stands for (it must be complete)."""
    chosen = C._choose(folder)
    assert chosen is not None, f"no checkpoint found: {sorted(p.name for p in folder.parent.iterdir())}"
    return C.read_state(chosen)["step"]


def family(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(folder.name))


# "torn" fails each operation half done (an atomic one before it happens); as a crash after operation k is a
# crash before operation k + 1, failing every operation this way reaches every state a crash can leave
KINDS = ("torn",)


def test_the_harness_sees_every_operation_of_a_save(monkeypatch, tmp_path):
    save(tmp_path / "last", 1)
    calls = run(monkeypatch, lambda: save(tmp_path / "last", 2)).calls
    assert {"mkdir", "save_model", "save_file", "create_new", "fsync", "replace", "rmtree"} <= set(calls)
    assert calls.count("replace") == 2 and resumable_step(tmp_path / "last") == 2
    copies = run(monkeypatch, lambda: C.copy_checkpoint(tmp_path / "last", tmp_path / "best")).calls
    assert copies.count("copyfile") == 3


def test_a_crash_at_any_operation_leaves_a_checkpoint_that_resume_finds(monkeypatch, tmp_path):
    save(tmp_path / "probe", 1)
    n = len(run(monkeypatch, lambda: save(tmp_path / "probe", 2)).calls)
    for at in range(n):
        for kind in KINDS:
            folder = tmp_path / f"{at}-{kind}" / "last"
            save(folder, 1)
            assert run(monkeypatch, lambda f=folder: save(f, 2), at, kind).fired
            assert resumable_step(folder) in (1, 2), (at, kind)
            save(folder, 3)  # the next save recovers and tidies up
            assert resumable_step(folder) == 3 and family(folder) == ["last"], (at, kind, family(folder))


def test_two_crashes_in_a_row_never_lose_the_newest_complete_checkpoint(monkeypatch, tmp_path):
    save(tmp_path / "probe", 1)
    first_ops = len(run(monkeypatch, lambda: save(tmp_path / "probe", 2)).calls)
    for at in range(first_ops):
        for kind in KINDS:
            base = tmp_path / f"{at}-{kind}"
            save(base / "last", 1)
            run(monkeypatch, lambda f=base / "last": save(f, 2), at, kind)
            found = resumable_step(base / "last")
            probe = tmp_path / f"{at}-{kind}-probe"
            shutil.copytree(base, probe)
            second_ops = len(run(monkeypatch, lambda p=probe: save(p / "last", 3)).calls)
            for at2 in range(second_ops):
                folder = tmp_path / f"{at}-{kind}-{at2}" / "last"
                shutil.copytree(base, folder.parent)
                run(monkeypatch, lambda f=folder: save(f, 3), at2, "torn")
                assert resumable_step(folder) >= found, (at, kind, at2, family(folder))
                save(folder, 4)
                assert resumable_step(folder) == 4 and family(folder) == ["last"]


@pytest.mark.parametrize("action", ["save", "copy"])
def test_a_full_disk_at_any_operation_gives_one_clear_error_and_leaves_the_previous_checkpoint(
    monkeypatch, tmp_path, action
):
    def write(root: Path):
        if action == "save":
            save(root / "last", 2)
        else:
            C.copy_checkpoint(root / "last", root / "best")

    def setup(root: Path):
        save(root / "last", 1)
        C.copy_checkpoint(root / "last", root / "best")
        save(root / "last", 2)

    setup(tmp_path / "probe")
    n = len(run(monkeypatch, lambda: write(tmp_path / "probe")).calls)
    dest = "last" if action == "save" else "best"
    for at in range(n):
        root = tmp_path / str(at)
        setup(root)
        before = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

        faults = Faults(monkeypatch, at, "enospc")
        faults.armed = True
        try:
            write(root)
            error = None
        except OSError as e:
            error = e
        faults.armed = False
        monkeypatch.undo()
        after = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        if error is None:  # the failure came after the new checkpoint was in place
            assert resumable_step(root / dest) == 2 and not (root / f"{dest}.tmp").exists()
            continue
        assert error.errno == errno.ENOSPC and "\n" not in str(error)
        assert f"cannot write the checkpoint {root / dest}: the disk is full. Free space" in str(error)
        assert after == before, f"operation {at} ({faults.calls[-1]}) changed the folder"


def test_a_full_disk_during_training_stops_with_one_line_and_resume_works(monkeypatch, tmp_path, capsys):
    data = tmp_path / "data"
    prepare_char_dataset(load_text()[:50_000], data)
    out = tmp_path / "run"
    saves = {"n": 0}
    real = C.save_file

    def fills_the_disk(tensors, filename, metadata=None):
        saves["n"] += 1
        if saves["n"] == 2:
            Path(filename).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(C, "save_file", fills_the_disk)
    tiny = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--block-size", "8", "--batch-size", "2",
            "--eval-iters", "1", "--device", "cpu"]  # fmt: skip
    code = cli.main(["train", "--data", str(data), "--out", str(out), *tiny, "--max-iters", "4", "--eval-interval=2"])
    err = capsys.readouterr().err  # after the progress bar: one line
    message = err[err.index("nanogpt train: error: ") :]
    assert code == 1 and message.count("\n") == 1
    assert f"cannot write the checkpoint {out / 'last'}: the disk is full. Free space" in message
    assert sorted(p.name for p in out.iterdir()) == ["best", "last", "metrics.jsonl", C.MANIFEST]
    assert C.read_state(out / "last")["step"] == 2
    monkeypatch.setattr(C, "save_file", real)
    assert T.train(T.resume_config(out), progress=False).step == 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "tiny_shakespeare"
    prepare_char_dataset(load_text()[:50_000], folder)
    return folder


def train_config(data_dir: Path, out: Path) -> T.TrainConfig:
    return T.make_config(overrides=dict(
        data_dir=str(data_dir), out_dir=str(out), n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
        eval_iters=1, log_interval=1, warmup_iters=1, max_iters=4, eval_interval=2, learning_rate=1e-2, dropout=0.1,
        device="cpu"))  # fmt: skip


def test_training_resumes_exactly_after_a_crash_anywhere_in_a_checkpoint_write(monkeypatch, data_dir, tmp_path):
    """Crash inside the second checkpoint write (last/ and its copy to best/), resume: the same final weights."""
    straight = T.train(train_config(data_dir, tmp_path / "straight"), progress=False)
    want = C.load_checkpoint(tmp_path / "straight" / "last")[0].state_dict()
    losses = {r["step"]: r["train_loss"] for r in straight.history}

    def crashing_run(out: Path, at: int | None, kind: str) -> Faults:
        calls = {"save_checkpoint": 0}
        with monkeypatch.context() as m:
            faults = Faults(m, at, kind)

            def armed_on_second_save(name):
                real = getattr(T, name)

                def call(*args, **kwargs):  # the second save of last/, and the copy to best/ that follows it
                    calls[name] = calls.get(name, 0) + 1
                    faults.armed = calls["save_checkpoint"] == 2 and not faults.fired
                    result = real(*args, **kwargs)
                    faults.armed = False
                    return result

                m.setattr(T, name, call)

            armed_on_second_save("save_checkpoint")
            armed_on_second_save("copy_checkpoint")
            with contextlib.suppress(Crash):
                T.train(train_config(data_dir, out), progress=False)
        return faults

    probe = crashing_run(tmp_path / "probe", None, "torn").calls
    assert "copyfile" in probe, "the second evaluation must improve, so that best/ is written too"
    # the operations that change what is on the disk (the others are covered by the tests above)
    for at in [i for i, name in enumerate(probe) if name in ("save_model", "replace", "rmtree", "copyfile")]:
        kind = "torn"
        out = tmp_path / f"{at}-{kind}"
        assert crashing_run(out, at, kind).fired
        resumed = T.train(T.resume_config(out), progress=False)
        assert resumed.step == 4
        got = C.load_checkpoint(out / "last")[0].state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), (at, kind)
        logged = {r["step"]: r["train_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
        # every logged loss is the straight run's; only the row written after the interrupted save may be missing
        assert all(losses[s] == loss for s, loss in logged.items()) and set(losses) - set(logged) <= {4}
        # best/ claims exactly what its files hold: the lowest validation loss of the run, at its step
        model, _, info = C.load_checkpoint(out / "best")
        assert info["val_loss"] == straight.best_val_loss == info["best_val_loss"]
        x, y = T.fixed_windows(T.load_prepared(data_dir).val, 4, 16)
        assert T.evaluate(model, x, y, 4, T.pick_precision("cpu")) == pytest.approx(info["val_loss"], abs=1e-6)


# --- a full disk on a later save, as the safetensors writer reports it -----------------------------------------

LATER_SAVE = """
import json, resource, signal, sys
import torch
from nanogpt_lib import checkpoint as C
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.model import GPT, GPTConfig

config = GPTConfig(vocab_size=65, block_size=8, n_layer=1, n_head=1, n_embd=8)
model = GPT(config)
tokenizer = CharTokenizer([chr(i) for i in range(32, 97)])
state = {"step": 2, "model_config": config.to_dict(), "tokenizer": tokenizer.to_dict()}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    C.save_checkpoint(sys.argv[1], model, torch.optim.AdamW(model.parameters()), state)
    print(json.dumps({"errno": None}))
except OSError as e:
    print(json.dumps({"errno": e.errno, "message": str(e)}))
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="no file-size limits on this system")
def test_a_file_size_limit_on_a_later_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """The safetensors writer hits the limit (ulimit -f) in the second save: its error becomes one clear OSError."""
    folder = tmp_path / "run" / "last"
    save(folder, 1)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    limit = (folder / "model.safetensors").stat().st_size // 2  # the new weights file cannot be written whole
    done = subprocess.run([sys.executable, "-c", LATER_SAVE, str(folder), str(limit)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["errno"] == errno.EFBIG and "\n" not in result["message"]
    assert f"cannot write the checkpoint {folder}: a file is larger than the file system" in result["message"]
    assert "(ulimit -f)" in result["message"] and result["message"].endswith("the previous checkpoint is intact")
    assert family(folder) == ["last"], "the half-written last.tmp/ must be removed"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and resumable_step(folder) == 1


def test_a_full_disk_in_the_safetensors_writer_on_a_later_save_is_one_line(monkeypatch, tmp_path, capsys):
    """safetensors reports a full disk as SafetensorError, not OSError: it must still end in the one-line message."""
    data = tmp_path / "data"
    prepare_char_dataset(load_text()[:50_000], data)
    out = tmp_path / "run"
    saves = {"n": 0}
    real = C.save_model

    def fills_the_disk(model, filename, metadata=None):
        saves["n"] += 1
        if saves["n"] == 2:
            Path(filename).write_bytes(b"half a file")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(model, filename, metadata=metadata)

    monkeypatch.setattr(C, "save_model", fills_the_disk)
    tiny = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--block-size", "8", "--batch-size", "2",
            "--eval-iters", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    code = cli.main(["train", "--data", str(data), "--out", str(out), *tiny, "--max-iters", "4", "--eval-interval=2"])
    err = capsys.readouterr().err
    message = err[err.index("nanogpt train: error: ") :]
    assert code == 1 and message.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write the checkpoint {out / 'last'}: the disk is full. Free space" in message
    assert sorted(p.name for p in out.iterdir()) == ["best", "last", "metrics.jsonl", C.MANIFEST]
    assert C.read_state(out / "last")["step"] == 2
