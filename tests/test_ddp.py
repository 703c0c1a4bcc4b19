"""Scale-out with torchrun (DDP on gloo): two CPU processes must train like one with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanogpt_lib.data import load_text, prepare_char_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp") / "data"
    prepare_char_dataset(load_text()[:100_000], folder)
    return folder


def run(launcher: list[str], data_dir: Path, out: Path) -> list[dict]:
    args = ["train", "--data", str(data_dir), "--out", str(out), "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
            "--block-size", "16", "--batch-size", "4", "--gradient-accumulation-steps", "2", "--max-iters", "8",
            "--eval-interval", "4", "--eval-iters", "4", "--log-interval", "1", "--warmup-iters", "2",
            "--dropout", "0", "--precision", "fp32", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "nanogpt_lib.cli", *args]
    try:
        r = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{' '.join(launcher[-2:])} did not exit within 120 s:\n{e.stdout}\n{e.stderr}") from None
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_with_the_same_global_batch(data_dir, tmp_path):
    one = run([sys.executable], data_dir, tmp_path / "one")
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"], data_dir, tmp_path / "two")
    # only rank 0 writes: one row per step, not two
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(9))
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "val_loss"):
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)
    # the losses move: the match is not two runs that did nothing
    assert one[-1]["val_loss"] < one[0]["val_loss"] - 0.1
    state = json.loads((tmp_path / "two" / "last" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]["torch"]) == 2
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best", "last", "metrics.jsonl", "nanogpt_run.json"]
