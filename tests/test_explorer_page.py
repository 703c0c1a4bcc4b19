"""tools/explorer_page.py: chapter 7's explorer for the site, from the chapter's checkpoints or an untrained model."""

import base64
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt_lib.checkpoint import save_checkpoint
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.model import GPT, GPTConfig
from nanogpt_lib.viz import attention_weights, decode_weights

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from explorer_page import CSS, ESM, chapter_prompt, explorer_state, longest_run, write_explorer_page  # noqa: E402

PROMPT = chapter_prompt(ROOT / "chapters" / "07_inside.md")


def book(tmp_path: Path) -> Path:
    (tmp_path / "chapters").mkdir()
    shutil.copy(ROOT / "chapters" / "07_inside.md", tmp_path / "chapters")
    return tmp_path


def directive(page: str) -> tuple[str, str, dict]:
    """The module, the CSS and the JSON body of the page's one `{anywidget}` directive."""
    (match,) = re.findall(r"^:::\{anywidget\} (\S+)\n:css: (\S+)\n(.*?)\n:::$", page, re.M | re.S)
    return match[0], match[1], json.loads(match[2])


def joined(run: dict) -> str:
    """A run's base64 weights, which the page stores as a list of short strings."""
    assert isinstance(run["weights"], list) and all(len(chunk) <= 1000 for chunk in run["weights"])
    return "".join(run["weights"])


def save(folder: Path, model: GPT, tok: CharTokenizer, step: int) -> None:
    state = {"step": step, "model_config": model.config.to_dict(), "tokenizer": tok.to_dict()}
    save_checkpoint(folder, model, torch.optim.AdamW(model.parameters()), state)


def test_the_chapter_prompt_is_read_from_its_code():
    assert PROMPT.startswith("ROMEO:\n") and "yonder window" in PROMPT


def test_without_checkpoints_the_page_shows_an_untrained_model_and_says_so(tmp_path):
    page = write_explorer_page(book(tmp_path)).read_text()
    esm, css, state = directive(page)
    assert (esm, css) == (ESM, CSS) and (ROOT / esm.lstrip("/")).is_file() and (ROOT / css.lstrip("/")).is_file()
    data = state["data"]
    assert data["prompt"] == PROMPT and len(data["tokens"]) == len(PROMPT) and len(data["runs"]) == 1
    assert "untrained model" in page and ":label: fig-explorer-live" in page


def test_with_the_chapters_checkpoints_the_page_shows_them(tmp_path):
    root = book(tmp_path)
    tok = CharTokenizer.from_text(PROMPT + "xyz")
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16)
    torch.manual_seed(0)
    late, early = GPT(config).eval(), GPT(config).eval()
    with torch.no_grad():  # sharper than a fresh model's near-uniform weights, so rounding is tested too
        for block in late.transformer.h:
            block.attn.c_attn.weight.mul_(30)
    save(root / "build" / "07_inside" / "run" / "last", late, tok, step=500)
    save(root / "build" / "07_inside" / "early", early, tok, step=50)
    page = write_explorer_page(root).read_text()
    assert "untrained" not in page and "at step 500" in page and "step 50 checkpoint" in page
    data = directive(page)[2]["data"]
    assert [r["name"] for r in data["runs"]] == ["step 500", "step 50"]
    T = len(PROMPT)
    stored = decode_weights(joined(data["runs"][0]), 2, 2, T)
    expected = attention_weights(late, tok.encode(PROMPT)).numpy()
    assert np.abs(stored - expected).max() <= 0.0005 + 1e-6
    assert len(base64.b64decode(joined(data["runs"][1]))) == 2 * 2 * 2 * T * (T + 1) // 2
    assert joined(data["runs"][0]) == explorer_state(root)[0]["data"]["runs"][0]["weights"]


def test_the_page_has_no_long_runs_of_non_space_text(tmp_path):
    """MyST's Markdown rules slow down sharply on long runs of non-space text: the page keeps them short, even
    for the chapter's own model (6 layers x 6 heads here, two checkpoints, 200 KB of data)."""
    root = book(tmp_path)
    tok = CharTokenizer.from_text(PROMPT)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=6, n_head=6, n_embd=48)
    torch.manual_seed(0)
    save(root / "build" / "07_inside" / "run" / "last", GPT(config).eval(), tok, step=500)
    save(root / "build" / "07_inside" / "early", GPT(config).eval(), tok, step=50)
    page = write_explorer_page(root).read_text()
    assert len(page) > 100_000 and longest_run(page) <= 2000, (len(page), longest_run(page))


def test_a_chapter_without_a_prompt_is_an_error(tmp_path):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "chapters" / "07_inside.md").write_text("# 7\n\n```{code-cell} ipython3\nx = 1\n```\n")
    with pytest.raises(ValueError, match="assigns no string to `prompt`"):
        write_explorer_page(tmp_path)
