"""How fast Muon's orthogonalisation runs on this machine: float32 against bfloat16, one matrix at a time
against one batched product; not a timed test.

Five quintic Newton-Schulz steps (chapter 10's `newton_schulz`) on the MLP input matrices of chapter 05's
preset (4 layers, 512 x 128 each), the work Muon adds to every training step. It prints a Markdown table of
milliseconds per call, median of `--repeats` calls after a warm-up, the range of singular values each
precision leaves (the band Muon needs is about 0.7 to 1.2), and whether the CPU multiplies bfloat16 natively
(AVX-512 BF16 or AMX), which is what `ns_precision` decides by.

    python bench/muon_speed.py [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nanogpt_lib.device import cpu_has_native_bf16
from nanogpt_lib.muon import newton_schulz, ns_precision


def ms_per_call(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stack = torch.randn(4, 512, 128, generator=torch.Generator().manual_seed(0)) * 0.02
    print(f"{args.threads} threads; native bf16 on this CPU: {cpu_has_native_bf16()}; "
          f"ns_precision chooses {ns_precision(torch.device('cpu'))}\n")
    print("| precision | one at a time (ms) | batched (ms) | singular values after |")
    print("|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        values = torch.linalg.svdvals(newton_schulz(stack[0], dtype=dtype).float())
        one = ms_per_call(lambda dtype=dtype: [newton_schulz(w, dtype=dtype) for w in stack], args.repeats)
        batched = ms_per_call(lambda dtype=dtype: newton_schulz(stack, dtype=dtype), args.repeats)
        print(f"| {str(dtype).removeprefix('torch.')} | {one:.2f} | {batched:.2f} | "
              f"{values.min():.3f} to {values.max():.3f} |")


if __name__ == "__main__":
    main()
