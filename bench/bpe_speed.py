"""Byte-pair encoding speed on the whole of tiny Shakespeare (chapter 02, nanogpt_lib.bpe).

Prints one table:
  1. training a 512-token vocabulary with GPT-2's split pattern (target: <= 2 s); with
     `--minbpe DIR` (a checkout of minbpe you cloned: git clone https://github.com/karpathy/minbpe)
     its `RegexTokenizer` trains the same vocabulary on the same text in the same run, and its
     `BasicTokenizer` (no split pattern) on the slice of row 3; without it that column says so;
  2. encoding the whole text with GPT-2's merges, against tiktoken timed in the same run
     (target: <= 2x tiktoken's time), with a fresh chunk cache and with a warm one; with `--minbpe`,
     encoding the slice with each side's own 512-token vocabulary;
  3. the chapter's naive trainer on a slice, against the fast trainer on the same slice.

    python bench/bpe_speed.py [--minbpe DIR] [--repeats 3] [--slice 20000] [--quick]

Each figure is the best of `--repeats` runs (minbpe's, which take a minute, run once). Exits 1 if a
target is missed.
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
NOT_MEASURED = "not measured (pass --minbpe DIR)"
ENCODE_TARGET_RATIO = 2.0


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


def import_minbpe(checkout: Path):
    """The `minbpe` package of a checkout (its folder holds `minbpe/__init__.py`)."""
    checkout = checkout.expanduser().resolve()
    if not (checkout / "minbpe" / "__init__.py").exists():
        raise SystemExit(f"--minbpe {checkout}: no minbpe/__init__.py there; pass the folder of a minbpe checkout")
    sys.path.insert(0, str(checkout))
    import minbpe

    return minbpe


def minbpe_rows(minbpe, text: str, small: str, ours: bpe.BPETokenizer) -> list[tuple]:
    """minbpe against our tokenizer, the same tasks in the same run; each of its runs once (they are slow)."""
    theirs = minbpe.RegexTokenizer(bpe.GPT2_SPLIT_PATTERN)
    t_theirs, _ = best_of(1, lambda: theirs.train(text, 512))
    t_ours, _ = best_of(1, lambda: bpe.BPETokenizer.train(text, 512, pattern="gpt2"))
    agree = next((i for i, (a, b) in enumerate(zip(ours.merges, theirs.merges, strict=False)) if a != b), 256)
    basic = minbpe.BasicTokenizer()
    t_basic, _ = best_of(1, lambda: basic.train(small, 512))
    t_basic_ours, _ = best_of(1, lambda: bpe.BPETokenizer.train(small, 512, pattern=r"(?s).+"))  # one chunk
    t_enc_theirs, _ = best_of(1, lambda: theirs.encode(small))
    t_enc_ours, _ = best_of(1, lambda: ours.encode(small))
    return [
        (f"train vocab 512, GPT-2 split, {len(text):,} chars (once each)", f"{t_ours:.2f} s",
         f"minbpe RegexTokenizer {t_theirs:.1f} s: ours {t_theirs / t_ours:.1f}x as fast; first {agree} merges equal",
         "", None),
        (f"train vocab 512, no split, {len(small):,} chars", f"{t_basic_ours:.2f} s",
         f"minbpe BasicTokenizer {t_basic:.2f} s: ours {t_basic / t_basic_ours:.1f}x as fast", "", None),
        (f"encode {len(small):,} chars, own 512 vocab", f"{t_enc_ours:.3f} s",
         f"minbpe {t_enc_theirs:.3f} s: ours {t_enc_theirs / t_enc_ours:.1f}x as fast", "", None),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slice", type=int, default=20_000, help="characters for the naive trainer")
    parser.add_argument("--minbpe", type=Path, help="a minbpe checkout: measure it in the same run")
    parser.add_argument("--quick", action="store_true", help="a 50,000-character text, once: check that it runs")
    args = parser.parse_args(argv)
    minbpe = import_minbpe(args.minbpe) if args.minbpe else None

    text = load_text("tinyshakespeare", data_dir=ROOT / "data")
    if args.quick:
        text, args.slice, args.repeats = text[:50_000], min(args.slice, 5_000), 1
    rows = []

    t_train, tok = best_of(args.repeats, lambda: bpe.BPETokenizer.train(text, 512, pattern="gpt2"))
    assert tok.vocab_size == 512
    rows.append(
        (
            f"train vocab 512, GPT-2 split, {len(text):,} chars",
            f"{t_train:.2f} s",
            "minbpe: see below" if minbpe else f"minbpe: {NOT_MEASURED}",
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
            f"encode {len(text):,} chars, GPT-2 merges (fresh cache)",
            f"{t_cold:.3f} s",
            f"tiktoken {t_tiktoken:.3f} s: {t_cold / t_tiktoken:.1f}x",
            f"<= {ENCODE_TARGET_RATIO:.0f}x",
            t_cold <= ENCODE_TARGET_RATIO * t_tiktoken,
        )
    )
    rows.append(
        (
            f"encode {len(text):,} chars, GPT-2 merges (warm cache)",
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

    if minbpe:
        rows += minbpe_rows(minbpe, text, small, tok)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"bpe_speed: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, tiktoken {tiktoken.__version__}, load average {load:.2f}, "
        f"best of {args.repeats}"
    )
    header = ("task", "time", "baseline (tiktoken, minbpe, the fast trainer: all in this run)", "target", "")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + " |")
    print("-|-".join("-" * w for w in widths) + "-|-----")
    for *cells, ok in rows:
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        print(" | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + f" | {verdict}")
    return 0 if all(ok is not False for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
