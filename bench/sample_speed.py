"""Sampling speed: tokens per second with and without the KV cache, inside and past the context, in PyTorch
and in ONNX Runtime (chapter 11), with float32 and 8-bit weights.

    python bench/sample_speed.py [--nanogpt DIR] [--ckpt DIR] [--threads N] [--repeats R] [--new-tokens N] [--quick]

A 6-layer, 6-head, 384-wide GPT with a 256-token context and random weights (speed does not depend on
what the weights learnt) generates 128 tokens after a 128-token prompt, greedily, one sequence at a
time; then after a 256-token prompt, past the context; then 8 samples as one batch (all their tokens
counted). Weights in fp32, and in the device's preferred precision (weights cast to it). Cached rows
inside the context are the best of `--repeats` runs; the slow rows run once. The same fp32 model is then
exported to ONNX (`nanogpt_lib.export`), once as it is and once with 8-bit weights, and ONNX Runtime runs
the same prompts on the CPU with as many threads as PyTorch. The MB column is the size of the weights:
the ONNX file for its rows, the parameters' bytes for PyTorch's.

With `--ckpt DIR` (a run folder or checkpoint of `nanogpt train`) its trained model replaces the random one
(prompts of half the context and the whole context), and the val loss column is each row's mean loss on
windows of the run's validation split: PyTorch's, the ONNX graph's (the same, to rounding) and the 8-bit
graph's (what the rounding costs). Without it the column says `-`: random weights have no loss worth showing.

With `--nanogpt DIR` (a checkout of nanoGPT you cloned: git clone https://github.com/karpathy/nanoGPT)
its `model.py` is imported, given the same weights, and its `generate` (no cache; greedy as top_k=1)
is timed in the same run: the "vs nanoGPT" column and the target (the cache at 12x nanoGPT's tokens/s)
are ratios measured side by side, and the tokens are checked identical. Without it they say so.

Batch-1 cached decoding reads every weight once per token, and the cache's keys and values so far: it is
bound by memory bandwidth, not arithmetic. The run measures the read bandwidth (the sum of a 256 MB
array), counts the bytes one token reads, and prints the bound in tokens/s (bandwidth / bytes) and the
fraction of it that each cached one-sequence row reaches.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import nanogpt_lib.modern  # noqa: F401 (registers chapter 9's model, so that its checkpoints load)
from nanogpt_lib.device import pick_device, pick_precision
from nanogpt_lib.export import OnnxSampler, export_onnx, quantize_onnx
from nanogpt_lib.generate import CompiledDecoder, generate, read_bandwidth
from nanogpt_lib.model import GPT, GPTConfig, build_model
from nanogpt_lib.train import load_checkpoint, load_prepared

TARGET_RATIO = 12.0  # the cache, one sequence inside the context, against nanoGPT's uncached generate
TARGET_BOUND = 0.5  # the same row, as a fraction of the memory-bandwidth bound
NOT_MEASURED = "not measured (pass --nanogpt DIR)"


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cache_bytes(config: GPTConfig, position: int, element_size: int) -> int:
    """Bytes of the keys and values a cached step at `position` reads: `position` of each, in every layer."""
    return 2 * config.n_layer * position * config.n_embd * element_size


def nanogpt_model(checkout: Path, config: GPTConfig, ours: GPT) -> torch.nn.Module:
    """nanoGPT's GPT from a checkout's model.py, with our model's weights (the parameter names are the same)."""
    checkout = checkout.expanduser().resolve()
    if not (checkout / "model.py").exists():
        raise SystemExit(f"--nanogpt {checkout}: no model.py there; pass the folder of a nanoGPT checkout")
    sys.path.insert(0, str(checkout))
    from model import GPT as NanoGPT  # the checkout's model.py
    from model import GPTConfig as NanoConfig

    shape = dict(vocab_size=config.vocab_size, block_size=config.block_size, n_layer=config.n_layer,
                 n_head=config.n_head, n_embd=config.n_embd, dropout=0.0, bias=config.bias)  # fmt: skip
    theirs = NanoGPT(NanoConfig(**shape)).to(next(ours.parameters()).device).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    if [k for k in missing if not k.endswith(".attn.bias")] or unexpected:
        raise SystemExit(f"nanoGPT's parameters do not match ours: missing {missing}, unexpected {unexpected}")
    return theirs


def compiled_row(model: GPT, name: str, prompt: torch.Tensor, n: int, repeats: int, mb: float, loss) -> tuple:
    """The cached row again with `CompiledDecoder` (A6): its tokens checked against the uncompiled cache's, and the
    first call's time (the compile) printed."""
    fast = CompiledDecoder(model)
    t0 = time.perf_counter()
    tokens = generate(fast, prompt, n, temperature=0)
    compile_s = time.perf_counter() - t0
    same = torch.equal(tokens, generate(model, prompt, n, temperature=0))
    failed = f"; compiling FAILED, so it ran uncompiled: {fast.failed}" if fast.failed else ""
    print(f"{name} compiled: first call {compile_s:.1f} s (compiling); same tokens as uncompiled: {same}{failed}")
    tps = n / best_time(lambda: generate(fast, prompt, n, temperature=0), repeats)
    return ("ours, KV cache, compiled", name, f"{prompt.size(1)} + {n}", tps, None, mb, loss)


def validation_windows(info: dict, block_size: int, n: int = 64) -> np.ndarray:
    """n windows of block_size + 1 tokens, spread evenly over the validation split of the checkpoint's run."""
    val = load_prepared(info["train_config"]["data_dir"]).val
    starts = np.linspace(0, len(val) - block_size - 1, n).astype(int)
    return np.stack([val[s : s + block_size + 1] for s in starts]).astype(np.int64)


def torch_loss(model: torch.nn.Module, windows: np.ndarray) -> float:
    x = torch.from_numpy(windows).to(next(model.parameters()).device)
    with torch.no_grad():
        return model(x[:, :-1], targets=x[:, 1:])[1].item()


def onnx_rows(model: GPT, prompts: dict, n: int, repeats: int, windows: np.ndarray | None) -> list[tuple]:
    """The ONNX Runtime rows: the fp32 model exported as it is and with 8-bit weights, on the same prompts."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "model.onnx")  # export_onnx works on a float32 copy on the CPU
        graphs = {"fp32": fp32, "int8": quantize_onnx(fp32, Path(tmp) / "model.int8.onnx")}
        for name, graph in graphs.items():
            sampler = OnnxSampler(graph, threads=torch.get_num_threads())
            mb, loss = graph.stat().st_size / 1e6, sampler.loss(windows) if windows is not None else None
            sampler.generate(prompts["inside"].cpu().numpy(), 8, temperature=0)  # warm-up
            fwd_ms = best_time(lambda s=sampler: s.run(np.zeros((1, 1), dtype=np.int64)), 20) * 1e3
            for label, key, times in (("ONNX Runtime, KV cache", "inside", repeats),
                                      ("ONNX Runtime, KV cache, past context", "past", 1),
                                      ("ONNX Runtime, KV cache, 8 samples", "batch", repeats)):  # fmt: skip
                ids = prompts[key].cpu().numpy()
                run = lambda s=sampler, i=ids: s.generate(i, n, temperature=0)  # noqa: E731
                tps = len(ids) * n / best_time(run, times)
                rows.append((label, name, f"{ids.shape[1]} + {n}", tps, fwd_ms, mb, loss))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: measure its generate in the same run")
    parser.add_argument("--ckpt", type=Path, help="a trained run or checkpoint instead of random weights: val loss")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="a small model and a few tokens: check that it runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    precision = pick_precision(device)
    torch.manual_seed(0)
    if args.quick:
        args.repeats, args.new_tokens = 1, min(args.new_tokens, 8)
    windows = None
    if args.ckpt:
        trained, _, info = load_checkpoint(args.ckpt, device=device)
        config = trained.config
        windows = validation_windows(info, config.block_size)
    elif args.quick:
        config = GPTConfig(vocab_size=65, block_size=256, n_layer=2, n_head=2, n_embd=64)
    else:
        config = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)
    models = {"fp32": trained.float().eval() if args.ckpt else GPT(config).to(device).eval()}
    if precision.name != "fp32":  # the device layer's choice, as stored weights: a cached step reads them all
        models[precision.name] = build_model(config).to(device).eval()
        models[precision.name].load_state_dict(models["fp32"].state_dict())
        models[precision.name].to(precision.dtype)
    V, T = config.vocab_size, config.block_size
    inside = torch.randint(0, V, (1, T // 2), device=device)
    past = torch.randint(0, V, (1, T), device=device)
    one = torch.randint(0, V, (1, 1), device=device)
    n = min(args.new_tokens, T - inside.size(1))  # inside the context from the half-context prompt

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}, {torch.get_num_threads()} threads, load average {load:.2f}, torch {torch.__version__}")
    print(f"model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, context {config.block_size}, "
          f"{models['fp32'].num_params() / 1e6:.1f}M parameters; greedy, batch 1, best of {args.repeats}\n")
    rows, reference = [], None
    if args.nanogpt:
        theirs = nanogpt_model(args.nanogpt, config, models["fp32"])
        run = lambda: theirs.generate(inside, n, top_k=1)  # noqa: E731 - top_k=1: its sampling made greedy
        theirs.generate(inside, 8, top_k=1)  # warm-up
        reference = n / best_time(run, 1)
        with torch.no_grad():
            fwd_ms = best_time(lambda: theirs(one), 20) * 1e3
        same = torch.equal(run(), generate(models["fp32"], inside, n, temperature=0))
        where = f"{inside.size(1)} + {n}"
        rows.append(("nanoGPT, its generate (no cache)", "fp32", where, reference, fwd_ms, None, None))
        print(f"nanoGPT's model.py from {args.nanogpt}, same weights: identical tokens to ours: {same}\n")
    results = {}
    for name, model in models.items():
        mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        loss = torch_loss(model, windows) if windows is not None else None
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
            rows.append((label, name, f"{prompt.size(1)} + {n}", tps, fwd_ms, mb, loss))
        rows.append(compiled_row(model, name, inside, n, args.repeats, mb, loss))
        results[name, "ours, KV cache"] = max(results[name, "ours, KV cache"], rows[-1][3])
    prompts = {"inside": inside, "past": past, "batch": inside.repeat(8, 1)}
    rows += onnx_rows(models["fp32"], prompts, n, args.repeats, windows)

    print(f"{'implementation':<38}{'weights':>8}{'prompt + new':>14}{'tokens/s':>10}", end="")
    print(f"{'vs nanoGPT':>12}{'1-token fwd':>13}{'MB':>8}{'val loss':>10}")
    for label, name, where, tps, fwd, mb, loss in rows:
        ratio = f"{tps / reference:.1f}x" if reference else "-"
        size, val = ("-" if mb is None else f"{mb:.1f}"), ("-" if loss is None else f"{loss:.4f}")
        fwd = "-" if fwd is None else f"{fwd:.2f} ms"
        print(f"{label:<38}{name:>8}{where:>14}{tps:>10.0f}{ratio:>12}{fwd:>13}{size:>8}{val:>10}")
    if not reference:
        print(f"vs nanoGPT: {NOT_MEASURED}")
    print_bound(rows, config, device, inside.size(1) + n // 2)
    best = results["fp32", "ours, KV cache"]  # the faster of the uncompiled and the compiled fp32 rows
    if reference:
        verdict = "met" if best >= TARGET_RATIO * reference else "NOT met"
        print(f"\ntarget: the fp32 cache, one sequence, >= {TARGET_RATIO:.0f}x nanoGPT's tokens/s in this run: "
              f"{best / reference:.1f}x, {verdict}")  # fmt: skip
    else:
        print(f"\ntarget: the cache, one sequence, >= {TARGET_RATIO:.0f}x nanoGPT's tokens/s: {NOT_MEASURED}")


def print_bound(rows: list[tuple], config: GPTConfig, device: torch.device, position: int) -> None:
    """The memory-bandwidth bound of each batch-1 cached row: its weights' bytes (the MB column, every weight read
    once a token) and its cache's, over the measured bandwidth; and the fraction of the bound it reaches."""
    bandwidth = read_bandwidth(device)
    print(f"\nmemory bandwidth (read): {bandwidth / 1e9:.1f} GB/s; one cached token at position {position} (the "
          "run's mean) reads its weights once and its keys and values so far:")
    for label, name, _, tps, _, mb, _ in rows:
        if "KV cache" not in label or "past" in label or "samples" in label or mb is None:
            continue
        need = mb * 1e6 + cache_bytes(config, position, 2 if name == "bf16" else 4)
        bound = bandwidth / need
        verdict = "met" if tps >= TARGET_BOUND * bound else "NOT met"
        print(f"  {label:<36}{name:>6}: {need / 1e6:6.1f} MB, bound {bound:6.0f} tokens/s, reached {tps / bound:4.0%} "
              f"(target >= {TARGET_BOUND:.0%}: {verdict})")


if __name__ == "__main__":
    main()
