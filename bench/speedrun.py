"""The CPU speedrun: the lowest validation loss on tiny Shakespeare in nanoGPT's 2,000-iteration wall time.

    python bench/speedrun.py [--nanogpt DIR] [--budget SECONDS] [--presets P ...] [--repeats N] [--quick]

In the manner of the GPT-2 speedrun records, a record is a validation loss reached within a fixed wall-clock
budget, reproducible by one command: `nanogpt train --preset NAME --time-budget BUDGET`. The budget is what
nanoGPT takes on the same machine for the CPU run of its README (the reference config: 4 layers, 128 wide,
context 64, batch 12, 2,000 iterations, evaluating 20 batches of each split every 250): with `--nanogpt DIR`
(a checkout you cloned) that run goes first, in a fresh process, and its wall time (training and evaluation,
without start-up) becomes the budget of this run; its own final val loss is printed beside the records.
Without it, `--budget` (default 68 s, nanoGPT's published time for that run on this kind of 2-core CPU) and
the table says the budget was not measured.

Then every preset trains for the budget, each run in a fresh process (`nanogpt train`, as a user runs it),
interleaved over `--repeats` rounds, and the table gives its steps, tokens/s and the final val loss (the
trainer's: the same fixed validation windows for every run of a preset) as a median and a range. The
current record is always the preset `shakespeare_char_speedrun`; the target is a median <= 1.50.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench folder: train_speed's nanoGPT loop

from train_speed import REFERENCE, check_checkout, data_dir, load, nanogpt_run  # noqa: E402

TARGET = 1.50
PRESETS = ["shakespeare_char", "shakespeare_char_modern", "shakespeare_char_speedrun"]
PUBLISHED_BUDGET = 68.0  # nanoGPT's README CPU run on this kind of machine: published, not measured here


def nanogpt_budget(data: Path, checkout: Path) -> dict:
    """nanoGPT's 2,000-iteration CPU run, in a fresh process: its wall time and final val loss."""
    command = [sys.executable, __file__, "--measure-nanogpt", str(checkout), "--data", str(data)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def train_preset(preset: str, data: Path, budget: float, out: Path, quick: bool) -> dict:
    """`nanogpt train --preset PRESET --time-budget BUDGET` in a fresh process; the summary of its metrics."""
    command = [sys.executable, "-m", "nanogpt_lib.cli", "train", "--preset", preset, "--data", str(data),
               "--out", str(out), "--time-budget", f"{budget:.1f}", "--overwrite"]  # fmt: skip
    if quick:
        command += ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--eval-iters", "2"]
    subprocess.run(command, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = [r for r in rows if r.get("val_loss") is not None][-1]
    speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    return dict(steps=last["step"], val_loss=last["val_loss"], tokens_per_s=statistics.median(speeds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: its 2,000-iteration run sets the budget")
    parser.add_argument("--budget", type=float, default=PUBLISHED_BUDGET, help="seconds, without --nanogpt")
    parser.add_argument("--presets", nargs="+", default=PRESETS, help="the presets to train (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each preset, interleaved")
    parser.add_argument("--quick", action="store_true", help="tiny models for 3 s: check that it runs")
    parser.add_argument("--measure-nanogpt", type=Path, help=argparse.SUPPRESS)  # the fresh process's job
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_nanogpt:
        run = nanogpt_run(args.data, REFERENCE["max_iters"], args.measure_nanogpt, REFERENCE["eval_interval"])
        print(json.dumps(dict(wall=run["wall"], val_loss=run["val_loss"])))
        return
    data = data_dir()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {load()}")
    budget, reference = args.budget, None
    if args.quick:
        budget, args.repeats = 3.0, 1
    elif args.nanogpt:
        reference = nanogpt_budget(data, check_checkout(args.nanogpt))
        budget = reference["wall"]
        print(f"nanoGPT, its README's CPU run (2,000 iterations, evaluations included): {budget:.1f} s, "
              f"val loss {reference['val_loss']:.4f}; that is the budget")  # fmt: skip
    else:
        print(f"budget {budget:g} s: nanoGPT's published time, NOT measured here (pass --nanogpt DIR)")
    results: dict[str, list[dict]] = {p: [] for p in args.presets}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for preset in args.presets:
                results[preset].append(train_preset(preset, data, budget, Path(tmp, preset), args.quick))
    print(f"\n| preset (`nanogpt train --preset P --time-budget {budget:.0f}`) | runs | steps | tokens/s | "
          "val loss, median | min-max |\n|---|---|---|---|---|---|")
    for preset, runs in results.items():
        losses = [r["val_loss"] for r in runs]
        print(f"| {preset} | {len(runs)} | {statistics.median(r['steps'] for r in runs):,.0f} | "
              f"{statistics.median(r['tokens_per_s'] for r in runs):,.0f} | {statistics.median(losses):.4f} | "
              f"{min(losses):.4f}-{max(losses):.4f} |")  # fmt: skip
    if "shakespeare_char_speedrun" in results:
        record = statistics.median(r["val_loss"] for r in results["shakespeare_char_speedrun"])
        verdict = "met" if record <= TARGET else "NOT met"
        print(f"\ntarget: the record preset's median val loss <= {TARGET}: {record:.4f}, {verdict}"
              + ("" if reference else " (budget not measured side by side)"))
    print(load())


if __name__ == "__main__":
    main()
