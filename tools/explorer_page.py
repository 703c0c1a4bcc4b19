"""Write chapter 7's attention explorer for the site: MyST's `{anywidget}` directive with the explorer's data.

A static page has no kernel, so the widget that chapter 7's cell returns cannot draw there. MyST's
`{anywidget}` directive can: it takes the widget's ES module (`nanogpt_lib/static/explorer.js`,
copied into the site by MyST), its CSS, and the model's initial state as JSON, which is what
`nanogpt_lib.viz.explorer_data` computes. This script computes that state for the chapter's
prompt and writes the directive to `_build/explorer/07_inside.md`, which the chapter includes.

The data come from the chapter's own checkpoints (`build/07_inside/run` and `build/07_inside/early`,
written when the chapter runs) when they exist; otherwise from a small untrained model, and the
page says so. The site workflow runs this before the build and again after the chapter executed.

    python tools/explorer_page.py [--root .] [--out _build/explorer/07_inside.md]
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

import jupytext
import torch

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = Path("chapters/07_inside.md")
RUNS = Path("build/07_inside")  # where the chapter keeps its checkpoints (its BUILD folder)
PAGE = Path("_build/explorer/07_inside.md")
ESM, CSS = "/nanogpt_lib/static/explorer.js", "/nanogpt_lib/static/explorer.css"  # from the project's root
# MyST's Markdown rules scan runs of non-space characters with patterns that slow down sharply on long ones
# (one 172 KB line of compact JSON took minutes), so the data are written in short lines: indented JSON,
# and each run's base64 weights as a list of strings that explorer.js joins.
CHUNK = 1000


def chapter_prompt(chapter: Path) -> str:
    """The string the chapter assigns to `prompt` in its first code cell that does so."""
    for cell in jupytext.read(chapter).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["prompt"]:
                return ast.literal_eval(node.value)
    raise ValueError(f"{chapter} assigns no string to `prompt`: the explorer page needs the chapter's prompt")


def _untrained(prompt: str) -> tuple[Any, Any]:
    from nanogpt_lib.data import CharTokenizer
    from nanogpt_lib.model import GPT, GPTConfig

    tok = CharTokenizer.from_text(prompt)
    torch.manual_seed(1337)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=max(64, len(prompt)), n_layer=2, n_head=4, n_embd=64)
    return GPT(config).eval(), tok


def explorer_state(root: Path = ROOT) -> tuple[dict[str, Any], str]:
    """The explorer's state for the chapter's prompt, and a sentence saying which model it shows."""
    from nanogpt_lib.checkpoint import load_checkpoint
    from nanogpt_lib.viz import explorer_data

    prompt = chapter_prompt(root / CHAPTER)
    runs = root / RUNS
    if (runs / "run" / "last").is_dir() and (runs / "early").is_dir():
        model, tok, info = load_checkpoint(runs / "run" / "last")
        early, _, early_info = load_checkpoint(runs / "early")
        names = (f"step {info['step']}", f"step {early_info['step']}")
        state = explorer_data(model, tok, prompt, compare_with=early, names=names)
        about = (f"The explorer shows the model this chapter trained, at step {info['step']}, on the chapter's "
                 f"prompt; its Compare view sets it beside the step {early_info['step']} checkpoint. Its data were "
                 "computed from the chapter's checkpoints when this site was built.")
    else:
        model, tok = _untrained(prompt)
        state = explorer_data(model, tok, prompt, names=("untrained",))
        about = ("No trained checkpoint of this chapter was there when this site was built, so the explorer shows "
                 f"a small untrained model ({model.config.n_layer} layers, {model.config.n_head} heads) on the "
                 "chapter's prompt: its heads spread their attention almost evenly. Run the chapter, then "
                 "`python tools/explorer_page.py`, and rebuild to see the trained model.")
    return state, about


def chunked(state: dict[str, Any], size: int = CHUNK) -> dict[str, Any]:
    """`state` with each run's base64 weights cut into a list of strings of at most `size` characters."""
    runs = [{**run, "weights": [run["weights"][i:i + size] for i in range(0, len(run["weights"]), size)]}
            for run in state["data"]["runs"]]
    return {**state, "data": {**state["data"], "runs": runs}}


def longest_run(text: str) -> int:
    """The length of the longest run of non-whitespace characters in `text`."""
    return max((len(word) for word in text.split()), default=0)


def anywidget_figure(label: str, esm: str, css: str, state: dict[str, Any], caption: str) -> str:
    """MyST Markdown for a labelled figure holding an `{anywidget}` directive; its JSON in short, indented lines."""
    body = json.dumps(state, ensure_ascii=False, indent=1)
    return f"::::{{figure}}\n:label: {label}\n\n:::{{anywidget}} {esm}\n:css: {css}\n{body}\n:::\n\n{caption}\n::::\n"


def explorer_markdown(state: dict[str, Any], about: str) -> str:
    """MyST Markdown for the page: a labelled figure holding the `{anywidget}` directive, and the sentence."""
    caption = f"The attention explorer, live on this page (click it, then use the arrow keys). {about}"
    return anywidget_figure("fig-explorer-live", ESM, CSS, chunked(state), caption)


def write_explorer_page(root: Path = ROOT, out: Path | None = None) -> Path:
    """Compute the explorer's state and write the page fragment (default `root/_build/explorer/07_inside.md`)."""
    out = out if out is not None else root / PAGE
    state, about = explorer_state(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(explorer_markdown(state, about), encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the book's folder (default: this project)")
    parser.add_argument("--out", type=Path, default=None, help=f"the file to write (default: {PAGE})")
    args = parser.parse_args()
    print(write_explorer_page(args.root.resolve(), args.out))


if __name__ == "__main__":
    main()
