"""The sweep behind the `shakespeare_char_modern` preset, with fixed step counts; not a timed test.

On a machine shared with other jobs, wall-clock time says little, but the validation loss after a
fixed number of steps does not depend on the load. So each candidate is measured twice:

1. its relative step cost: a few training steps of the real trainer, timed against the chapter-05
   preset's, interleaved over rounds (all candidates in one fresh process); the ratio of the fastest
   times (other jobs only ever slow a step down);
2. its validation loss after the number of steps it would make in the time the chapter-05 preset
   makes `--steps` (default 1,600: its steps in `--time-budget 68` on a quiet 2-core CPU,
   bench/README.md), i.e. `steps / cost`, with the schedule decaying over exactly those steps;
   seeds fixed, each run in a fresh process.

It prints each result as it comes, then a Markdown table: candidate, relative step cost, steps,
validation loss.

    python bench/modern_sweep.py [--steps 1600] [--threads 1] [--jobs 2] [--only 0 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

import nanogpt_lib.modern  # noqa: F401 (registers the model options: rope, norm, ...)
import nanogpt_lib.muon  # noqa: F401 (registers the optimizer "muon" and the schedule "wsd")
from nanogpt_lib import train as T
from nanogpt_lib.data import prepare_dataset

MUON = dict(optimizer="muon", muon_lr=0.02)
WSD = dict(schedule="wsd", cooldown_frac=0.2)
M3 = dict(MUON, muon_lr=0.03, warmup_iters=10)  # the leader of the second sweep, varied from 30 on
# (name, overrides of the chapter-05 preset `shakespeare_char`); the indices are the tables' "#" in bench/README.md
CANDIDATES = [
    ("chapter 05 preset: AdamW, cosine, 4x128, batch 32", {}),
    ("AdamW, WSD 0.2", dict(WSD)),
    ("Muon 0.02, cosine", dict(MUON)),
    ("Muon 0.02, WSD 0.2", dict(MUON, **WSD)),
    ("Muon 0.01, WSD 0.2", {**MUON, **WSD, "muon_lr": 0.01}),
    ("Muon 0.04, WSD 0.2", {**MUON, **WSD, "muon_lr": 0.04}),
    ("Muon 0.02, WSD 0.4", {**MUON, **WSD, "cooldown_frac": 0.4}),
    ("Muon 0.02, WSD 0.2, AdamW lr 6e-3", dict(MUON, **WSD, learning_rate=6e-3, min_lr=6e-4)),
    ("Muon 0.02, WSD 0.2, batch 48", dict(MUON, **WSD, batch_size=48)),
    ("Muon 0.02, WSD 0.2, batch 64", dict(MUON, **WSD, batch_size=64)),
    ("Muon 0.02, WSD 0.2, 4x192 (6 heads)", dict(MUON, **WSD, n_embd=192, n_head=6)),
    ("Muon 0.03, cosine", {**MUON, "muon_lr": 0.03}),
    ("Muon 0.02, cosine, batch 48", dict(MUON, batch_size=48)),
    # the second sweep (1,250 steps of the chapter-05 preset)
    ("Muon 0.02, cosine, decay to 0", dict(MUON, min_lr=0.0)),
    ("Muon 0.02, cosine, context 128, batch 16", dict(MUON, block_size=128, batch_size=16)),
    ("Muon 0.02, cosine, untied head, zero-init projections", dict(MUON, tie_embeddings=False, zero_init_proj=True)),
    ("Muon 0.02, cosine, ReLU²", dict(MUON, mlp="relu2")),
    ("Muon 0.02, cosine, rotary positions", dict(MUON, rope=True)),
    ("Muon 0.02, cosine, 4x192 (6 heads)", dict(MUON, n_embd=192, n_head=6)),
    ("Muon 0.02, cosine, 6x128", dict(MUON, n_layer=6)),
    ("Muon 0.02, cosine, momentum 0.9", dict(MUON, muon_momentum=0.9)),
    ("Muon 0.02, cosine, warmup 10", dict(MUON, warmup_iters=10)),
    ("Muon 0.03, cosine, warmup 10", dict(M3)),
    ("Muon 0.03, cosine, AdamW lr 6e-3", dict(MUON, muon_lr=0.03, learning_rate=6e-3, min_lr=6e-4)),
    ("Muon 0.03, cosine, AdamW lr 1e-2", dict(MUON, muon_lr=0.03, learning_rate=1e-2, min_lr=1e-3)),
    ("Muon 0.03, cosine, no weight decay", dict(MUON, muon_lr=0.03, weight_decay=0.0)),
    ("Muon 0.04, cosine", dict(MUON, muon_lr=0.04)),
    ("Muon 0.02, cosine, seed 1", dict(MUON, seed=1)),
    ("Muon 0.02, cosine, seed 2", dict(MUON, seed=2)),
    ("Muon 0.03, cosine, seed 1", dict(MUON, muon_lr=0.03, seed=1)),
    ("Muon 0.03, cosine, warmup 10, 3x128", dict(M3, n_layer=3)),
    ("Muon 0.03, cosine, warmup 10, batch 24", dict(M3, batch_size=24)),
    ("Muon 0.03, cosine, warmup 10, 2 heads of 64", dict(M3, n_head=2)),
    ("Muon 0.03, cosine, warmup 10, 5x128", dict(M3, n_layer=5)),
    ("Muon 0.03, cosine, warmup 10, 4x160 (5 heads)", dict(M3, n_embd=160, n_head=5)),
    ("Muon 0.03, cosine, warmup 10, 2x128", dict(M3, n_layer=2)),
    ("Muon 0.03, cosine, warmup 10, 3x128, 2 heads of 64", dict(M3, n_layer=3, n_head=2)),
    ("Muon 0.04, cosine, warmup 10, 3x128", dict(M3, muon_lr=0.04, n_layer=3)),
    ("Muon 0.03, cosine, warmup 10, 3x160 (5 heads)", dict(M3, n_layer=3, n_embd=160, n_head=5)),
    ("Muon 0.03, cosine, warmup 10, 3x128, batch 48", dict(M3, n_layer=3, batch_size=48)),
    ("Muon 0.03, cosine, warmup 10, 3x128, seed 1", dict(M3, n_layer=3, seed=1)),
    ("Muon 0.03, cosine, warmup 10, seed 1", dict(M3, seed=1)),
    ("Muon 0.03, cosine, warmup 10, 2x128, seed 1", dict(M3, n_layer=2, seed=1)),
    ("Muon 0.03, cosine, warmup 10, 2x160 (5 heads)", dict(M3, n_layer=2, n_embd=160, n_head=5)),
    ("Muon 0.03, cosine, warmup 10, 2x192 (6 heads)", dict(M3, n_layer=2, n_embd=192, n_head=6)),
    ("Muon 0.03, cosine, warmup 10, 2x128, batch 48", dict(M3, n_layer=2, batch_size=48)),
    ("Muon 0.04, cosine, warmup 10, 2x128", dict(M3, muon_lr=0.04, n_layer=2)),
    ("AdamW, cosine, 3x128", dict(n_layer=3)),
    ("AdamW, cosine, 2x128", dict(n_layer=2)),
    ("Muon 0.03, cosine, warmup 10, 3x128, batch 64", dict(M3, n_layer=3, batch_size=64)),
    ("Muon 0.03, cosine, warmup 10, 2x128, batch 64", dict(M3, n_layer=2, batch_size=64)),
    ("Muon 0.03, cosine, warmup 10, 3x128, batch 48, seed 1", dict(M3, n_layer=3, batch_size=48, seed=1)),
    ("AdamW, cosine, 3x128, batch 48", dict(n_layer=3, batch_size=48)),
    ("Muon 0.02, cosine, 3x128, batch 48 (the preset)", dict(MUON, n_layer=3, batch_size=48)),
    ("Muon 0.03, cosine, 3x128, batch 48", dict(MUON, muon_lr=0.03, n_layer=3, batch_size=48)),
]


def config(overrides: dict, data: Path, out: Path, **more) -> T.TrainConfig:
    return T.make_config("shakespeare_char", {**overrides, "data_dir": str(data), "out_dir": str(out), **more})


def step_time(index: int, data: Path, steps: int) -> float:
    """Seconds per training step of candidate `index`, after two warm-up steps (in this process)."""
    with tempfile.TemporaryDirectory() as out:
        run = T.start_run(config(CANDIDATES[index][1], data, Path(out)), overwrite=True, progress=False)
        try:
            for _ in range(2):
                T.train_step(run)
            t0 = time.perf_counter()
            for _ in range(steps):
                T.train_step(run)
            return (time.perf_counter() - t0) / steps
        finally:
            T.close_run(run)


def measure_cost(chosen: list[int], data: Path, steps: int, rounds: int) -> dict[int, float]:
    """Each candidate's step time over the chapter-05 preset's (candidate 0), in interleaved rounds.

    The fastest time of each is kept: on a loaded machine the other jobs only ever slow a step down, so
    the minimum is the least disturbed measurement.
    """
    times: dict[int, list[float]] = {i: [] for i in chosen}
    for _ in range(rounds):
        for i in chosen:
            times[i].append(step_time(i, data, steps))
    return {i: min(times[i]) / min(times[0]) for i in chosen}


def measure_loss(index: int, data: Path, steps: int) -> float:
    """Validation loss of candidate `index` after `steps` steps, the schedule decaying over them."""
    with tempfile.TemporaryDirectory() as out:
        c = config(CANDIDATES[index][1], data, Path(out), max_iters=steps, eval_interval=steps, log_interval=steps)
        return T.train(c, overwrite=True, progress=False).val_loss


def in_fresh_process(args: argparse.Namespace, what: str, index: int, steps: int) -> Any:
    command = [sys.executable, __file__, "--measure", what, "--index", str(index), "--n", str(steps),
               "--data", str(args.data), "--threads", str(args.threads), "--rounds", str(args.rounds),
               "--only", *map(str, args.chosen)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(command, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{what} of candidate {index} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["value"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", choices=["cost", "loss"], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help="a prepared shakespeare_char folder (default: prepare one)")
    parser.add_argument("--steps", type=int, default=1600, help="the chapter-05 preset's steps in the budget")
    parser.add_argument("--cost-steps", type=int, default=10, help="timed steps per cost measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of cost measurements")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads per process")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once")
    parser.add_argument("--only", type=int, nargs="*", help="only these candidates (indices; 0 is always run)")
    parser.add_argument("--costs", nargs="*", metavar="I=COST", help="use these step costs (from an earlier sweep) "
                        "instead of measuring them; the candidates named are the ones run")
    parser.add_argument("--quick", action="store_true", help="a few steps, two candidates: check that it runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure == "cost":
        print(json.dumps({"value": measure_cost(args.only, args.data, args.n, args.rounds)}))
        return
    if args.measure == "loss":
        print(json.dumps({"value": measure_loss(args.index, args.data, args.n)}))
        return
    if args.data is None:
        args.data = Path(tempfile.mkdtemp()) / "shakespeare_char"
        prepare_dataset("shakespeare_char", out_dir=args.data, progress=False)
    chosen = [0, *[i for i in dict.fromkeys(args.only if args.only is not None else range(len(CANDIDATES))) if i]]
    if args.quick:
        chosen, args.steps, args.cost_steps, args.rounds = [0, 3], 20, 2, 1
    args.chosen = chosen
    if args.costs:
        ratio = {int(k): float(v) for k, v in (item.split("=") for item in args.costs)}
        chosen = args.chosen = list(ratio)
    else:
        ratio = {int(i): r for i, r in in_fresh_process(args, "cost", 0, args.cost_steps).items()}
    for i in chosen:
        print(f"cost {i}: {ratio[i]:.3f}", flush=True)
    steps = {i: max(1, round(args.steps / ratio[i])) for i in chosen}

    def loss(i: int) -> float:
        value = in_fresh_process(args, "loss", i, steps[i])
        print(f"loss {i} ({CANDIDATES[i][0]}), {steps[i]} steps: {value:.4f}", flush=True)
        return value

    with ThreadPoolExecutor(args.jobs) as pool:
        losses = dict(zip(chosen, pool.map(loss, chosen), strict=True))
    print(f"\n{args.steps} steps of the chapter-05 preset; {args.threads} thread(s) per process, {args.jobs} at once; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| # | candidate | step cost (x chapter 05) | steps | val loss |\n|---|---|---|---|---|")
    for i in chosen:
        print(f"| {i} | {CANDIDATES[i][0]} | {ratio[i]:.2f} | {steps[i]:,} | {losses[i]:.4f} |")


if __name__ == "__main__":
    main()
