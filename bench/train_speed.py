"""Training speed on the CPU reference config, measured side by side in one run; not a timed test.

The reference config (4 layers, 4 heads, 128 wide, context 64, batch 12, vocabulary 65) is the
one a widely used reference implementation runs at 25,200 tokens/s (30.5 ms/iter) on the
2-core CI machine, reaching val loss 1.886 after 2,000 iterations in 68 s. This script prints:

- the machine: matmul peak in fp32 and bf16 (`nanogpt_lib.device.measure_matmul_flops`), load;
- throughput of a plain fp32 training loop (PyTorch's AdamW, no autocast: the textbook loop),
  of our trainer forced to fp32, and of our trainer as it runs by default (bf16 autocast on a
  CPU with native bf16, fused AdamW), interleaved over several rounds, each measurement in a
  fresh process; tokens/s, ms/iter,
  achieved FLOP/s and MFU against both peaks;
- with --quality: validation loss after 2,000 iterations of the reference config, fp32 and default;
- with --budget SECONDS: `nanogpt train` with the CPU default preset and that time budget;
- with --sweep SECONDS: the preset candidates, each trained for that budget (the sweep behind
  the `shakespeare_char` preset).

    python bench/train_speed.py [--steps 150] [--rounds 3] [--quality] [--budget 68] [--sweep 68]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nanogpt_lib.data import get_batch, load_prepared, prepare_dataset
from nanogpt_lib.device import cpu_flags, measure_matmul_flops, pick_device, pick_precision
from nanogpt_lib.model import GPT
from nanogpt_lib.train import make_config, train

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, bias=False,
    learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=2000, eval_interval=250, eval_iters=20,
)  # fmt: skip
# candidates for the CPU default preset: (name, overrides); the sweep trains each for the same time budget
FAST = dict(REFERENCE, warmup_iters=50)
CANDIDATES = [
    ("reference: 4x128, ctx 64, batch 12, lr 1e-3", dict(REFERENCE)),
    ("4x128, ctx 64, batch 32, lr 2e-3", dict(FAST, batch_size=32, learning_rate=2e-3, min_lr=2e-4)),
    ("4x128, ctx 64, batch 32, lr 3e-3 (the preset)", dict(FAST, batch_size=32, learning_rate=3e-3, min_lr=3e-4)),
    ("4x128, ctx 64, batch 32, lr 4e-3", dict(FAST, batch_size=32, learning_rate=4e-3, min_lr=4e-4)),
    ("4x128, ctx 64, batch 64, lr 3e-3", dict(FAST, batch_size=64, learning_rate=3e-3, min_lr=3e-4)),
    ("4x128, ctx 64, batch 64, lr 4e-3", dict(FAST, batch_size=64, learning_rate=4e-3, min_lr=4e-4)),
    ("4x128, ctx 64, batch 128, lr 4e-3", dict(FAST, batch_size=128, learning_rate=4e-3, min_lr=4e-4)),
    ("4x128, ctx 128, batch 32, lr 3e-3", dict(FAST, block_size=128, batch_size=32, learning_rate=3e-3, min_lr=3e-4)),
    ("6x128, ctx 64, batch 64, lr 3e-3", dict(FAST, n_layer=6, batch_size=64, learning_rate=3e-3, min_lr=3e-4)),
    ("4x192, ctx 64, batch 64, lr 2e-3", dict(FAST, n_embd=192, n_head=6, batch_size=64, learning_rate=2e-3,
                                             min_lr=2e-4)),
]  # fmt: skip


def load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load unknown"


def data_dir() -> Path:
    folder = ROOT / "data" / "shakespeare_char"
    if not (folder / "meta.json").exists():
        prepare_dataset("shakespeare_char", out_dir=folder, data_dir=ROOT / "data")
    return folder


def plain_loop_tokens_per_s(data: Path, steps: int) -> float:
    """The textbook loop in fp32: forward, backward, clip, PyTorch's default AdamW (no fused kernel, no autocast)."""
    prepared = load_prepared(data)
    cfg = make_config(overrides={**REFERENCE, "data_dir": str(data)})
    torch.manual_seed(0)
    model = GPT(cfg.model_config(prepared.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 10):
        t0 = time.perf_counter()
        x, y = get_batch(prepared.train, cfg.batch_size, cfg.block_size, generator=g)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t0)
    return cfg.batch_size * cfg.block_size / statistics.mean(times[10:])


def trainer_tokens_per_s(data: Path, out: Path, steps: int, precision: str) -> float:
    """Our trainer's tokens/s (evaluation excluded) over `steps` steps, after 10 warm-up steps."""
    timing = {"max_iters": steps + 10, "eval_interval": 100_000, "eval_iters": 1, "log_interval": 10}
    run = {"data_dir": str(data), "out_dir": str(out), "precision": precision}
    cfg = make_config(overrides={**REFERENCE, **timing, **run})
    history = train(cfg, overwrite=True, progress=False, reuse_memory=True).history  # as `nanogpt train` runs it
    rows = [r for r in history if r["tokens_per_s"]][1:]
    return sum(r["tokens_per_s"] for r in rows) / len(rows)


def measure_in_fresh_process(variant: str, data: Path, steps: int) -> float:
    """tokens/s of one variant, measured in a new Python process.

    The trainer changes process-wide state (it keeps freed memory in glibc's allocator), so every
    measurement starts from a clean process; the plain loop then runs with the default allocator.
    """
    command = [sys.executable, __file__, "--measure", variant, "--data", str(data), "--steps", str(steps)]
    r = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one measurement, in a fresh process
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=150, help="timed steps per measurement (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant")
    parser.add_argument("--quality", action="store_true", help="also train 2,000 iterations, fp32 and default")
    parser.add_argument("--budget", type=float, help="also run `nanogpt train --time-budget BUDGET` (default preset)")
    parser.add_argument("--sweep", type=float, help="also train every preset candidate for this many seconds")
    parser.add_argument("--only", type=int, nargs="*", help="sweep only these candidates (indices)")
    args = parser.parse_args()
    if args.measure:
        if args.measure == "plain":
            print(plain_loop_tokens_per_s(args.data, args.steps))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                print(trainer_tokens_per_s(args.data, Path(tmp), args.steps, args.measure))
        return

    data = data_dir()
    device = pick_device()
    precision = pick_precision(device)
    native = "native bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "no native bf16"
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {native}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{device}, default precision {precision.name}; {load()}")  # fmt: skip
    peak32 = measure_matmul_flops(device, torch.float32)
    peak16 = measure_matmul_flops(device, torch.bfloat16)
    print(f"matmul peak (1024^3): fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s\n")

    prepared = load_prepared(data)
    cfg = make_config(overrides=REFERENCE)
    flops_per_token = GPT(cfg.model_config(prepared.vocab_size)).flops_per_token()
    tokens_per_step = cfg.batch_size * cfg.block_size
    variants = {"plain loop, fp32": "plain", "trainer, fp32": "fp32", f"trainer, {precision.name}": precision.name}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds if args.steps else 0):
        for name, variant in variants.items():
            results[name].append(measure_in_fresh_process(variant, data, args.steps))
    if not args.steps:
        results = {}
    base = statistics.median(results["plain loop, fp32"]) if results else 1.0
    print(f"reference config: 4 layers, 4 heads, 128 wide, context 64, batch 12; {flops_per_token / 1e6:.2f} MFLOP "
          f"per token; median of {args.rounds} interleaved rounds of {args.steps} steps\n")  # fmt: skip
    print("| variant | tokens/s | ms/iter | vs plain fp32 | vs reference 25,200 | GFLOP/s | MFU fp32 | MFU bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, values in results.items():
        tps = statistics.median(values)
        achieved = tps * flops_per_token
        print(f"| {name} | {tps:,.0f} | {1e3 * tokens_per_step / tps:.1f} | {tps / base:.2f}x | {tps / 25_200:.2f}x | "
              f"{achieved / 1e9:.0f} | {achieved / peak32:.0%} | {achieved / peak16:.0%} |")  # fmt: skip
    print(f"\n{load()}")

    if args.quality:
        print("\n| 2,000 iterations, reference config | val loss | wall s | tokens/s |\n|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("fp32", precision.name):
                cfg = make_config(overrides={**REFERENCE, "data_dir": str(data), "out_dir": str(Path(tmp, name)),
                                             "precision": name})  # fmt: skip
                t0 = time.perf_counter()
                r = train(cfg, progress=False)
                print(f"| {name} | {r.val_loss:.4f} | {time.perf_counter() - t0:.0f} | {r.tokens_per_s:,.0f} |")
        print(f"(reference implementation: val loss 1.886 in 68 s); {load()}")

    if args.budget:
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "nanogpt_lib.cli", "train", "--data", str(data), "--out", tmp,
                       "--time-budget", str(args.budget)]  # fmt: skip
            t0 = time.perf_counter()
            r = subprocess.run(command, capture_output=True, text=True)
            print(f"\n`nanogpt train --time-budget {args.budget:g}` (default preset), {time.perf_counter() - t0:.0f} s "
                  f"wall including start-up: {r.stdout.strip() or r.stderr.strip()}; {load()}")  # fmt: skip

    if args.sweep:
        print(f"\n| candidate ({args.sweep:g} s each) | steps | tokens/s | val loss |\n|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for i, (name, overrides) in enumerate(CANDIDATES):
                if args.only and i not in args.only:
                    continue
                cfg = make_config(overrides={**overrides, "data_dir": str(data), "out_dir": tmp,
                                             "time_budget": args.sweep})  # fmt: skip
                r = train(cfg, overwrite=True, progress=False)
                print(f"| {name} | {r.step} | {r.tokens_per_s:,.0f} | {r.val_loss:.4f} |", flush=True)
        print(load())


if __name__ == "__main__":
    main()
