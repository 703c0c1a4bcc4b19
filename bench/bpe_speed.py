"""Byte-pair encoding speed on the whole of tiny Shakespeare (chapter 02, nanogpt_lib.bpe).

Prints one table:
  1. training a 512-token vocabulary with GPT-2's split pattern (target: <= 2 s; a widely used
     pure-Python reference implementation takes 61 s on the 2-core CI machine);
  2. encoding the whole text with GPT-2's merges, against tiktoken timed in the same run
     (target: <= 4x tiktoken's time), with a fresh chunk cache and with a warm one;
  3. the chapter's naive trainer on a slice, against the fast trainer on the same slice.

    python bench/bpe_speed.py [--repeats 3] [--slice 20000]

Each figure is the best of `--repeats` runs. Exits 1 if a target is missed.
"""

import argparse
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
# Offline copies beside the checkout, as in the test suite.
if (SHARED / "tinyshakespeare" / "input.txt").exists():
    os.environ.setdefault("NANOGPT_TINYSHAKESPEARE", str(SHARED / "tinyshakespeare" / "input.txt"))
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))

import jupytext  # noqa: E402
import regex  # noqa: E402
import tiktoken  # noqa: E402

from nanogpt_lib import bpe  # noqa: E402
from nanogpt_lib.data import load_text  # noqa: E402

TRAIN_TARGET_S = 2.0
REFERENCE_TRAIN_S = 61.0  # the pure-Python reference implementation, same task, same machine (issue 3)
ENCODE_TARGET_RATIO = 4.0


def best_of(repeats: int, fn, setup=None) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def chapter_naive_trainer():
    """The naive trainer exactly as chapter 02 teaches it (it is not part of the library)."""
    nb = jupytext.read(ROOT / "chapters" / "02_bpe.md")
    source = next(c.source for c in nb.cells if c.cell_type == "code" and "def train_naive" in c.source)
    namespace = {"Counter": Counter, "merge_pair": bpe.merge_pair, "N_BYTES": bpe.N_BYTES}
    exec(source.split("\n\n\n")[0], namespace)  # the function alone, not the cell's demo below it
    return namespace["train_naive"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slice", type=int, default=20_000, help="characters for the naive trainer")
    args = parser.parse_args(argv)

    text = load_text("tinyshakespeare", data_dir=ROOT / "data")
    rows = []

    t_train, tok = best_of(args.repeats, lambda: bpe.BPETokenizer.train(text, 512, pattern="gpt2"))
    assert tok.vocab_size == 512
    rows.append(
        (
            "train vocab 512, GPT-2 split, whole text",
            f"{t_train:.2f} s",
            f"pure-Python reference, 61 s (published): {REFERENCE_TRAIN_S / t_train:.0f}x faster",
            f"<= {TRAIN_TARGET_S:.0f} s",
            t_train <= TRAIN_TARGET_S,
        )
    )

    t_load, gpt2 = best_of(1, lambda: bpe.BPETokenizer.from_tiktoken("gpt2"))
    enc = tiktoken.get_encoding("gpt2")
    t_tiktoken, theirs = best_of(args.repeats, lambda: enc.encode(text))
    t_cold, ours = best_of(args.repeats, lambda: gpt2.encode(text), setup=gpt2._cache.clear)
    t_warm, _ = best_of(args.repeats, lambda: gpt2.encode(text))
    assert ours == theirs, "encode differs from tiktoken"
    rows.append(
        (
            "encode whole text, GPT-2 merges (fresh cache)",
            f"{t_cold:.3f} s",
            f"tiktoken {t_tiktoken:.3f} s: {t_cold / t_tiktoken:.1f}x",
            f"<= {ENCODE_TARGET_RATIO:.0f}x",
            t_cold <= ENCODE_TARGET_RATIO * t_tiktoken,
        )
    )
    rows.append(
        (
            "encode whole text, GPT-2 merges (warm cache)",
            f"{t_warm:.3f} s",
            f"tiktoken {t_tiktoken:.3f} s: {t_warm / t_tiktoken:.1f}x",
            "",
            None,
        )
    )
    rows.append(("load GPT-2's merges from tiktoken (once)", f"{t_load:.2f} s", "", "", None))

    small = text[: args.slice]
    chunks = [c.encode("utf-8") for c in regex.findall(bpe.GPT2_SPLIT_PATTERN, small)]
    train_naive = chapter_naive_trainer()
    t_naive, slow = best_of(1, lambda: train_naive(chunks, 256))
    t_fast, fast = best_of(args.repeats, lambda: bpe.train_merges(Counter(chunks), 256))
    assert slow == fast, "the two trainers disagree"
    rows.append(
        (
            f"naive trainer, {len(small):,} chars, 256 merges",
            f"{t_naive:.2f} s",
            f"fast trainer {t_fast:.3f} s: {t_naive / t_fast:.0f}x",
            "",
            None,
        )
    )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"bpe_speed: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, tiktoken {tiktoken.__version__}, load average {load:.2f}, "
        f"best of {args.repeats}"
    )
    header = ("task", "time", "baseline (tiktoken and the fast trainer: same run)", "target", "")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + " |")
    print("-|-".join("-" * w for w in widths) + "-|-----")
    for *cells, ok in rows:
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        print(" | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + f" | {verdict}")
    return 0 if all(ok is not False for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
