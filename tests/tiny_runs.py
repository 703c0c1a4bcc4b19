"""What the trainer's tests share: a tiny CPU run on the `data_dir` fixture (tests/conftest.py) and its metrics."""

import json
from pathlib import Path

import torch

from nanogpt_lib import train as T

TINY = dict(
    n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, eval_iters=2, log_interval=1, warmup_iters=2,
    device="cpu",
)  # fmt: skip


def config(data_dir: Path, out: Path, **overrides) -> T.TrainConfig:
    """A tiny CPU run on `data_dir` writing to `out`, with `overrides` on top."""
    return T.make_config(overrides={**TINY, "data_dir": str(data_dir), "out_dir": str(out), **overrides})


def rows(out: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def sharpened(model):
    """Random weights times 4 on the matrices: clear choices, so greedy decoding has no near-ties."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    return model.eval()
