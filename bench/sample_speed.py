"""Sampling speed: tokens per second with and without the KV cache, inside and past the context.

    python bench/sample_speed.py [--threads N] [--repeats R] [--new-tokens N]

A 6-layer, 6-head, 384-wide GPT with a 256-token context and random weights (speed does not depend on
what the weights learnt) generates 128 tokens after a 128-token prompt, greedily, one sequence at a
time; then after a 256-token prompt, past the context; then 8 samples as one batch (all their tokens
counted). Weights in fp32, and in the device's preferred precision (weights cast to it). Cached rows
inside the context are the best of `--repeats` runs; the slow rows run once. The reference row is a
published figure for a widely used implementation without a cache on the 2-core CI machine
(36 tokens/s; one single-token forward ~3.1 ms); the target is 8x that with the cache. Every other
row is measured here, in this run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from nanogpt_lib.device import pick_device, pick_precision
from nanogpt_lib.generate import generate
from nanogpt_lib.model import GPT, GPTConfig

REFERENCE_TOKENS_PER_S = 36.0
REFERENCE_FORWARD_MS = 3.1
TARGET = 290.0  # the issue's target: 8x the reference


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    precision = pick_precision(device)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)
    models = {"fp32": GPT(config).to(device).eval()}
    if precision.name != "fp32":  # the device layer's choice, as stored weights: a cached step reads them all
        models[precision.name] = GPT(config).to(device).eval()
        models[precision.name].load_state_dict(models["fp32"].state_dict())
        models[precision.name].to(precision.dtype)
    n = args.new_tokens
    inside = torch.randint(0, 65, (1, 128), device=device)
    past = torch.randint(0, 65, (1, 256), device=device)
    one = torch.randint(0, 65, (1, 1), device=device)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}, {torch.get_num_threads()} threads, load average {load:.2f}, torch {torch.__version__}")
    print(f"model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, context {config.block_size}, "
          f"{models['fp32'].num_params() / 1e6:.1f}M parameters; greedy, batch 1, best of {args.repeats}\n")
    rows = [("reference, no cache (published)", "fp32", "128 + 128", REFERENCE_TOKENS_PER_S, REFERENCE_FORWARD_MS)]
    results = {}
    for name, model in models.items():
        generate(model, inside, 8, temperature=0)  # warm-up: first-call allocations, kernel selection
        generate(model, inside, 8, temperature=0, use_cache=False)
        with torch.no_grad():
            fwd_ms = best_time(lambda m=model: m(one), 20) * 1e3
        for label, prompt, cached in (
            ("ours, no cache", inside, False),
            ("ours, KV cache", inside, True),
            ("ours, no cache, past context", past, False),
            ("ours, KV cache, past context", past, True),
            ("ours, KV cache, 8 samples", inside.repeat(8, 1), True),
        ):
            run = lambda m=model, p=prompt, c=cached: generate(m, p, n, temperature=0, use_cache=c)  # noqa: E731
            repeats = args.repeats if cached and prompt is not past else 1  # the slow rows once: minutes otherwise
            tps = prompt.size(0) * n / best_time(run, repeats)  # tokens of every sample in the batch
            results[name, label] = tps
            rows.append((label, name, f"{prompt.size(1)} + {n}", tps, fwd_ms))

    print(f"{'implementation':<32}{'weights':>8}{'prompt + new':>14}{'tokens/s':>10}{'vs ref':>8}{'1-token fwd':>13}")
    for label, name, where, tps, fwd in rows:
        print(f"{label:<32}{name:>8}{where:>14}{tps:>10.0f}{tps / REFERENCE_TOKENS_PER_S:>7.1f}x{fwd:>10.2f} ms")
    best = max(v for (_, label), v in results.items() if label == "ours, KV cache")
    verdict = "met" if best >= TARGET else "NOT met"
    print(f"\ntarget with the cache, one sequence: >= {TARGET:.0f} tokens/s; best here {best:.0f} tokens/s: {verdict}")


if __name__ == "__main__":
    main()
