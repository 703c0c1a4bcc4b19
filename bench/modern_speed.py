"""Chapter 05's preset against chapter 10's modern preset, for the same wall-clock budget; not a timed test.

Each run is `train()` with a preset and `--time-budget` (what `nanogpt train --preset P --time-budget B`
runs, the allocator setting included), in a fresh process with a fixed number of PyTorch threads. The
presets alternate (interleaved), `--repeats` times each, so that a slow spell of the machine hits both.
It prints a Markdown table: preset, runs, steps, tokens/s (medians), validation loss median and range,
and whether the modern preset's gain is larger than the spread of the repeated runs.

    python bench/modern_speed.py [--budget 68] [--threads 2] [--repeats 3] [--quick]

Run it on a quiet machine: under load, two PyTorch threads contend badly with other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import nanogpt_lib.muon  # noqa: F401 (registers the optimizer "muon" of the modern preset)
from nanogpt_lib.data import prepare_dataset
from nanogpt_lib.train import make_config, train

PRESETS = ("shakespeare_char", "shakespeare_char_modern")


def measure(preset: str, data: Path, budget: float, quick: bool) -> dict:
    """One run of `preset` for `budget` seconds, in this process: steps, tokens/s, validation loss."""
    tiny = dict(n_layer=1, n_head=2, n_embd=32, batch_size=8, eval_iters=2, eval_interval=50) if quick else {}
    with tempfile.TemporaryDirectory() as out:
        config = make_config(preset, {**tiny, "data_dir": str(data), "out_dir": out, "time_budget": budget})
        r = train(config, overwrite=True, progress=False, reuse_memory=True)
    return {"steps": r.step, "tokens_per_s": r.tokens_per_s, "val_loss": r.val_loss}


def in_fresh_process(preset: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--measure", preset, "--data", str(args.data), "--budget", str(args.budget),
               "--threads", str(args.threads)] + (["--quick"] if args.quick else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(command, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"the run of {preset} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", choices=PRESETS, help=argparse.SUPPRESS)  # one run, in a fresh process
    parser.add_argument("--data", type=Path, help="a prepared shakespeare_char folder (default: prepare one)")
    parser.add_argument("--budget", type=float, default=68.0, help="seconds of training per run (default 68)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads per run (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each preset, interleaved (default 3)")
    parser.add_argument("--quick", action="store_true", help="a tiny model for 3 s, once each: check that it runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.budget, args.repeats = 3.0, 1
    if args.measure:
        print(json.dumps(measure(args.measure, args.data, args.budget, args.quick)))
        return
    if args.data is None:
        args.data = Path(tempfile.mkdtemp()) / "shakespeare_char"
        prepare_dataset("shakespeare_char", out_dir=args.data, progress=False)
    runs: dict[str, list[dict]] = {p: [] for p in PRESETS}
    for _ in range(args.repeats):
        for preset in PRESETS:
            runs[preset].append(in_fresh_process(preset, args))
    note = " (--quick: a tiny model, the figures mean nothing)" if args.quick else ""
    print(f"\n{args.budget:g} s per run, {args.threads} threads, {args.repeats} interleaved runs per preset, "
          f"load average {os.getloadavg()[0]:.1f}{note}\n")
    print("| preset | runs | steps | tokens/s | val loss median | val loss min-max |\n|---|---|---|---|---|---|")
    summary = {}
    for preset, rs in runs.items():
        losses = [r["val_loss"] for r in rs]
        summary[preset] = (statistics.median(losses), min(losses), max(losses))
        print(f"| {preset} | {len(rs)} | {statistics.median(r['steps'] for r in rs):,.0f} | "
              f"{statistics.median(r['tokens_per_s'] for r in rs):,.0f} | {summary[preset][0]:.4f} | "
              f"{summary[preset][1]:.4f}-{summary[preset][2]:.4f} |")
    (base, lo_b, hi_b), (modern, lo_m, hi_m) = summary[PRESETS[0]], summary[PRESETS[1]]
    spread = max(hi_b - lo_b, hi_m - lo_m)
    gain = base - modern
    verdict = "larger than" if gain > spread else "NOT larger than"
    print(f"\ngain of the modern preset: {gain:+.4f} in val loss median, {verdict} the spread of repeated runs "
          f"({spread:.4f}); modern preset {'≤' if modern <= 1.60 else '>'} 1.60")


if __name__ == "__main__":
    main()
