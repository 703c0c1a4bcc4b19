"""Minor page faults per training step with glibc's default allocator settings and with `keep_freed_memory()`.

Prints a table; it asserts nothing. The allocator's settings are process-wide, so the script measures the
default first and then the change, in one fresh process. Linux with glibc only (elsewhere the change does
nothing). Run: `python bench/page_faults.py [--steps N]`.
"""

import argparse
import resource

import torch

from nanogpt_lib.model import GPT, GPTConfig
from nanogpt_lib.train import keep_freed_memory, make_optimizer


def faults_per_step(model: GPT, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="measured steps each way")
    args = parser.parse_args()
    torch.manual_seed(0)
    # the reference CPU configuration of bench/train_speed.py: 4 layers, 128 wide, context 64, batch 12
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False))
    opt = make_optimizer(model, 1e-3, 0.1)
    x = torch.randint(65, (12, 64))
    faults_per_step(model, opt, x, 3)  # warm up
    default = faults_per_step(model, opt, x, args.steps)
    applied = keep_freed_memory()
    faults_per_step(model, opt, x, 2)  # the first steps after the change fill the kept heap
    kept = faults_per_step(model, opt, x, args.steps)
    print(f"| allocator | minor page faults per step |\n|---|---|\n| glibc default | {default:,.0f} |")
    print(f"| keep_freed_memory() ({'applied' if applied else 'not applicable here'}) | {kept:,.0f} |")


if __name__ == "__main__":
    main()
