"""Write chapter 11's playground for the site: MyST's `{anywidget}` directive, and the files it loads.

A static page has no kernel, but the playground needs none: its ES module (`nanogpt_lib/static/playground.js`)
runs the exported graph in the page with ONNX Runtime Web. MyST copies the module and its CSS into the site;
the graph and ONNX Runtime Web's two files (installed by `npm ci`) are served beside the pages, under
`playground/`, and the directive's JSON names their URLs. This script writes the directive to
`_build/playground/11_anywhere.md`, which the chapter includes, and the files to `_build/playground/files/`,
which the site workflow copies to `_build/html/playground/` after the build.

The graph is the chapter's own (`build/11_anywhere/model.onnx`, exported from chapter 05's model when the
chapter runs) when it exists; otherwise a small untrained model, and the page says so.

    python tools/playground_page.py [--root .] [--base-url /repo]   (default: $BASE_URL, as the site workflow sets)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explorer_page import anywidget_figure  # noqa: E402 (a sibling tool)

ROOT = Path(__file__).resolve().parent.parent
GRAPH = Path("build/11_anywhere/model.onnx")  # what the chapter exports (its BUILD folder)
PAGE = Path("_build/playground/11_anywhere.md")
FILES = Path("_build/playground/files")  # served as <base>/playground/
ESM, CSS = "/nanogpt_lib/static/playground.js", "/nanogpt_lib/static/playground.css"
PROMPT = "ROMEO:\n"


def _untrained(folder: Path) -> Path:
    import torch

    from nanogpt_lib.data import CharTokenizer, load_text
    from nanogpt_lib.export import export_onnx
    from nanogpt_lib.model import GPT, GPTConfig

    tok = CharTokenizer.from_text(load_text())
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)).eval()
    return export_onnx(model, folder / "untrained.onnx", tok)


def playground_markdown(state: dict[str, Any], about: str) -> str:
    """MyST Markdown for the page: a labelled figure holding the `{anywidget}` directive, and the sentence."""
    caption = ("The playground, live on this page: the model runs in your browser (ONNX Runtime Web), with no "
               f"server and no kernel. {about}")
    return anywidget_figure("fig-playground-live", ESM, CSS, state, caption)


def write_playground_page(root: Path = ROOT, base_url: str | None = None) -> Path:
    """Write the page fragment and copy the files it loads; returns the fragment's path."""
    from nanogpt_lib.export import ORT_WEB_FILES, ort_web_dir, playground_state

    base = (os.environ.get("BASE_URL", "") if base_url is None else base_url).rstrip("/")
    files = root / FILES
    files.mkdir(parents=True, exist_ok=True)
    graph = root / GRAPH
    if graph.is_file():
        about = ("It is the model chapter 05 trained, exported by this chapter when the site was built.")
    else:
        graph = _untrained(files)
        about = ("No trained model of this chapter was there when the site was built, so it shows a small "
                 "untrained model, which writes characters almost at random: run the chapter, then "
                 "`python tools/playground_page.py`, and rebuild.")
    shutil.copy(graph, files / "model.onnx")
    for name in ORT_WEB_FILES:
        shutil.copy(ort_web_dir() / name, files / name)
    state = playground_state(graph, prompt=PROMPT)  # the caption says which model it is
    state |= {"onnx_url": f"{base}/playground/model.onnx", "ort_url": f"{base}/playground/{ORT_WEB_FILES[0]}",
              "ort_wasm_url": f"{base}/playground/{ORT_WEB_FILES[1]}"}  # fmt: skip
    page = root / PAGE
    page.write_text(playground_markdown(state, about), encoding="utf-8")
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the book's folder (default: this project)")
    parser.add_argument("--base-url", default=None, help="the site's base URL (default: $BASE_URL, else none)")
    args = parser.parse_args()
    print(write_playground_page(args.root.resolve(), args.base_url))


if __name__ == "__main__":
    main()
