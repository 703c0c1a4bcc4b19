"""Training speed on the CPU reference config, measured side by side in one run; not a timed test.

The reference config (4 layers, 4 heads, 128 wide, context 64, batch 12, vocabulary 65) is the small
CPU run of nanoGPT's README. This script prints:

- the machine: matmul peak in fp32 and bf16 (`nanogpt_lib.device.measure_matmul_flops`), load;
- throughput, each measurement in a fresh process, interleaved over several rounds: a plain fp32
  training loop (PyTorch's AdamW, no autocast: the textbook loop); with `--nanogpt DIR`, nanoGPT
  itself (the `model.py` of a checkout you cloned, with the settings of its `train.py`: AdamW from
  its `configure_optimizers`, autocast only off the CPU, a loss read every step as its CPU command
  logs); our trainer forced to fp32; and our trainer as it runs by default (bf16 autocast on a CPU
  with native bf16, fused AdamW). tokens/s, ms/iter, achieved FLOP/s and MFU against both peaks;
  then the trainer's own gain (fp32 against fp32) and the bf16 gain (our trainer, bf16 against fp32)
  separately. Without `--nanogpt` the nanoGPT column says it was not measured;
- with --quality: validation loss after 2,000 iterations of the reference config, fp32 and default;
- with --budget SECONDS: `nanogpt train` with the CPU default preset and that time budget;
- with --sweep SECONDS: the preset candidates, each trained for that budget (the sweep behind
  the `shakespeare_char` preset).

    git clone https://github.com/karpathy/nanoGPT /path/to/nanoGPT
    python bench/train_speed.py [--nanogpt /path/to/nanoGPT] [--steps 150] [--rounds 3] [--quick]
                                [--quality] [--budget 68] [--sweep 68]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
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


def nanogpt_run(data: Path, steps: int, checkout: Path, eval_interval: int | None = None) -> dict:
    """nanoGPT's model and training step, set up as its train.py sets them up for the reference config; with
    `eval_interval`, its evaluation too (`estimate_loss`: eval_iters batches of each split, every eval_interval
    iterations and at the last). Returns the step times (s), the wall time of the whole loop and the last val loss."""
    sys.path.insert(0, str(checkout))
    from model import GPT as NanoGPT  # the checkout's model.py
    from model import GPTConfig as NanoConfig

    prepared = load_prepared(data)
    device = pick_device()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    ptdtype = torch.bfloat16 if bf16 else torch.float16  # its train.py: bf16 where supported, else fp16 + scaler
    ctx = nullcontext() if device.type == "cpu" else torch.autocast(device_type=device.type, dtype=ptdtype)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type != "cpu" and not bf16)
    shape = {k: REFERENCE[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")}
    torch.manual_seed(1337)
    model = NanoGPT(NanoConfig(vocab_size=prepared.vocab_size, **shape)).to(device)
    optimizer = model.configure_optimizers(0.1, REFERENCE["learning_rate"], (0.9, 0.99), device.type)
    B, T = REFERENCE["batch_size"], REFERENCE["block_size"]

    def get_batch(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        ids = prepared.train if split == "train" else prepared.val
        ix = torch.randint(len(ids) - T, (B,))
        x = torch.stack([torch.from_numpy(ids[i : i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(ids[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        return x.to(device), y.to(device)

    @torch.no_grad()
    def val_loss() -> float:  # its estimate_loss, both splits as it computes them
        model.eval()
        losses = {split: [model(*get_batch(split))[1].item() for _ in range(REFERENCE["eval_iters"])]
                  for split in ("train", "val")}  # fmt: skip
        model.train()
        return statistics.mean(losses["val"])

    def lr_at(it: int) -> float:  # linear warm-up, then cosine decay to min_lr over max_iters
        warm, total, lr, min_lr = (REFERENCE[k] for k in ("warmup_iters", "max_iters", "learning_rate", "min_lr"))
        if it < warm:
            return lr * (it + 1) / (warm + 1)
        return min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, (it - warm) / (total - warm)))) * (lr - min_lr)

    x, y = get_batch()
    times, loss_val, start = [], float("nan"), time.perf_counter()
    for it in range(steps + 1 if eval_interval else steps + 10):  # its loop runs iterations 0 to max_iters
        if eval_interval and (it % eval_interval == 0 or it == steps):
            loss_val = val_loss()
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        with ctx:
            _, loss = model(x, y)
        x, y = get_batch()  # its loop fetches the next batch while the device works
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # its CPU command logs every step (--log_interval=1)
        times.append(time.perf_counter() - t0)
    return dict(times=times, wall=time.perf_counter() - start, val_loss=loss_val)


def nanogpt_tokens_per_s(data: Path, steps: int, checkout: Path) -> float:
    """nanoGPT's training throughput on the reference config, after 10 warm-up steps."""
    times = nanogpt_run(data, steps, checkout)["times"]
    return REFERENCE["batch_size"] * REFERENCE["block_size"] / statistics.mean(times[10:])


def trainer_tokens_per_s(data: Path, out: Path, steps: int, precision: str) -> float:
    """Our trainer's tokens/s (evaluation excluded) over `steps` steps, after 10 warm-up steps."""
    timing = {"max_iters": steps + 10, "eval_interval": 100_000, "eval_iters": 1, "log_interval": 10}
    run = {"data_dir": str(data), "out_dir": str(out), "precision": precision}
    cfg = make_config(overrides={**REFERENCE, **timing, **run})
    history = train(cfg, overwrite=True, progress=False, reuse_memory=True).history  # as `nanogpt train` runs it
    rows = [r for r in history if r["tokens_per_s"]][1:]
    return sum(r["tokens_per_s"] for r in rows) / len(rows)


def measure_in_fresh_process(variant: str, data: Path, steps: int, nanogpt: Path | None = None) -> float:
    """tokens/s of one variant, measured in a new Python process.

    The trainer changes process-wide state (it keeps freed memory in glibc's allocator), so every
    measurement starts from a clean process; the plain loop then runs with the default allocator.
    """
    command = [sys.executable, __file__, "--measure", variant, "--data", str(data), "--steps", str(steps)]
    if nanogpt is not None:
        command += ["--nanogpt", str(nanogpt)]
    r = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


NOT_MEASURED = "not measured (pass --nanogpt DIR)"


def check_checkout(path: Path) -> Path:
    path = path.expanduser().resolve()
    if not (path / "model.py").exists():
        raise SystemExit(f"--nanogpt {path}: no model.py there; pass the folder of a nanoGPT checkout "
                         "(git clone https://github.com/karpathy/nanoGPT)")  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one measurement, in a fresh process
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: measure it in the same run")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per measurement (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant")
    parser.add_argument("--quick", action="store_true", help="a few steps, one round: check that it runs")
    parser.add_argument("--quality", action="store_true", help="also train 2,000 iterations, fp32 and default")
    parser.add_argument("--budget", type=float, help="also run `nanogpt train --time-budget BUDGET` (default preset)")
    parser.add_argument("--sweep", type=float, help="also train every preset candidate for this many seconds")
    parser.add_argument("--only", type=int, nargs="*", help="sweep only these candidates (indices)")
    args = parser.parse_args()
    nanogpt = check_checkout(args.nanogpt) if args.nanogpt else None
    if args.quick:
        args.steps, args.rounds = min(args.steps, 5), 1
    if args.measure:
        if args.measure == "plain":
            print(plain_loop_tokens_per_s(args.data, args.steps))
        elif args.measure == "nanogpt":
            print(nanogpt_tokens_per_s(args.data, args.steps, nanogpt))
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
    n = 256 if args.quick else 1024
    peak32 = measure_matmul_flops(device, torch.float32, n=n)
    peak16 = measure_matmul_flops(device, torch.bfloat16, n=n)
    print(f"matmul peak ({n}^3): fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s\n")

    prepared = load_prepared(data)
    cfg = make_config(overrides=REFERENCE)
    flops_per_token = GPT(cfg.model_config(prepared.vocab_size)).flops_per_token()
    tokens_per_step = cfg.batch_size * cfg.block_size
    variants = {"plain loop, fp32": "plain"}
    if nanogpt:
        variants["nanoGPT, its train.py settings"] = "nanogpt"
    variants |= {"trainer, fp32": "fp32", f"trainer, {precision.name}": precision.name}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds if args.steps else 0):
        for name, variant in variants.items():
            results[name].append(measure_in_fresh_process(variant, data, args.steps, nanogpt))
    if not args.steps:
        results = {}
    tps = {name: statistics.median(values) for name, values in results.items()}
    base = tps.get("plain loop, fp32", 1.0)
    ref = tps.get("nanoGPT, its train.py settings")
    print(f"reference config: 4 layers, 4 heads, 128 wide, context 64, batch 12; {flops_per_token / 1e6:.2f} MFLOP "
          f"per token; median of {args.rounds} rounds of {args.steps} steps, all in this run\n")  # fmt: skip
    print("| variant | tokens/s | ms/iter | vs plain fp32 | vs nanoGPT | GFLOP/s | MFU fp32 | MFU bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, value in tps.items():
        achieved = value * flops_per_token
        vs_ref = f"{value / ref:.2f}x" if ref else NOT_MEASURED
        print(f"| {name} | {value:,.0f} | {1e3 * tokens_per_step / value:.1f} | {value / base:.2f}x | {vs_ref} | "
              f"{achieved / 1e9:.0f} | {achieved / peak32:.0%} | {achieved / peak16:.0%} |")  # fmt: skip
    if tps:
        fp32, default = tps["trainer, fp32"], tps[f"trainer, {precision.name}"]
        own = f"{fp32 / ref:.2f}x nanoGPT's" if ref else NOT_MEASURED
        print(f"\nthe trainer's own gain, both in fp32: {own}; {fp32 / base:.2f}x the plain loop")
        print(f"the {precision.name} gain, our trainer {precision.name} against fp32: {default / fp32:.2f}x")
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
        print(load())

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
