"""Chapter 11's playground in a real browser: the reader's model writes in the page, with ONNX Runtime Web.

Headless Chromium (Debian's, driven by Playwright, as in tests/test_browser.py; every request outside
127.0.0.1 blocked) opens the playground on a page served from the built site's files and in JupyterLab,
writes 100 tokens greedily from a fixed prompt, and checks them against PyTorch's greedy tokens for the same
model and prompt. The browser's tokens/s are printed at the end of the test run. ONNX Runtime Web comes
from `npm ci` (package.json); CI installs it.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_browser import SITE_HOST, browser, built_anywidget, lab, run_all_in_lab, serve, watch  # noqa: F401

from nanogpt_lib.bpe import BPETokenizer
from nanogpt_lib.data import CharTokenizer
from nanogpt_lib.generate import generate
from nanogpt_lib.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "to be or not"
pytestmark = pytest.mark.slow


TEXT = "to be, or not to be: that is the question. 'Tis nobler in the mind, café and naïve, to suffer!\n" * 20


def tokenizer(kind: str):
    """A character tokenizer, or a byte-level BPE one (chapter 02's, GPT-2's split pattern) trained on TEXT."""
    return CharTokenizer.from_text(TEXT) if kind == "char" else BPETokenizer.train(TEXT, 300)


@pytest.fixture(scope="module", params=["char", "bpe"])
def graph(request, tmp_path_factory) -> tuple[Path, list[int]]:
    """A small model with sharp weights exported to ONNX, and PyTorch's 100 greedy tokens after PROMPT."""
    from nanogpt_lib.export import ORT_WEB_FILES, export_onnx, ort_web_dir

    missing = [f for f in ORT_WEB_FILES if not (ROOT / "node_modules" / "onnxruntime-web" / "dist" / f).is_file()]
    if missing and os.environ.get("CI") != "true":
        pytest.skip("ONNX Runtime Web is not installed: run `npm ci`")
    assert ort_web_dir().is_dir()
    tok = tokenizer(request.param)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # sharper than a fresh model's near-uniform logits: no near-ties for argmax to split
        for p in model.parameters():
            p.mul_(3)
    path = export_onnx(model, tmp_path_factory.mktemp(request.param) / "model.onnx", tok)
    ids = torch.tensor([tok.encode(PROMPT)])
    expected = generate(model, ids, 100, temperature=0)[0].tolist()  # the prompt's ids, then 100 new, past the context
    return path, expected


def write_greedily(page, root, count: int = 100) -> tuple[list[int], float]:
    """Fill the playground's controls for greedy decoding, press Write; the prompt's ids and the new tokens."""
    root.locator(".ngp-prompt").fill(PROMPT)
    root.locator(".ngp-temperature").fill("0")
    root.locator(".ngp-count").fill(str(count))
    page.wait_for_function("r => ['ready', 'error'].includes(r.dataset.status)", arg=root.element_handle(),
                           timeout=120_000)  # fmt: skip
    assert root.get_attribute("data-status") == "ready", root.locator(".ngp-status").inner_text()
    root.locator(".ngp-write").click()
    page.wait_for_function("r => r.dataset.status === 'done'", arg=root.element_handle(), timeout=300_000)
    tokens = [int(t) for t in root.get_attribute("data-tokens").split(",")]
    prompt = [int(t) for t in root.get_attribute("data-prompt-tokens").split(",")]
    return prompt + tokens, float(root.get_attribute("data-tokens-per-s"))


def test_the_playground_on_the_built_site_writes_pytorchs_tokens(browser, graph, tmp_path, measured):  # noqa: F811
    """tools/playground_page.py's `{anywidget}` node, built by `myst build --site`, served with the files the site
    workflow copies beside it: 100 greedy tokens equal PyTorch's."""
    sys.path.insert(0, str(ROOT / "tools"))
    from playground_page import FILES, GRAPH, write_playground_page

    path, expected = graph
    book = tmp_path / "book"
    (book / GRAPH).parent.mkdir(parents=True)
    shutil.copy(path, book / GRAPH)
    shutil.copy(path.with_suffix(".tokenizer.json"), (book / GRAPH).with_suffix(".tokenizer.json"))
    shutil.copytree(ROOT / "nanogpt_lib" / "static", book / "nanogpt_lib" / "static")
    write_playground_page(book, base_url="")
    node, content = built_anywidget(book, "page.md", "_build/playground/11_anywhere.md")
    assert "untrained" not in json.dumps(content)
    public = book / "_build" / "site" / "public"
    shutil.copytree(book / FILES, public / "playground")  # what the site workflow does after the build
    (public / "host.html").write_text(SITE_HOST.replace("NODE", json.dumps(node).replace("</", "<\\/")))
    errors: list[str] = []
    with serve(public) as base:
        page = browser.new_page()
        watch(page, errors)
        page.goto(f"{base}/host.html")
        root = page.locator(".ngp-root")
        root.wait_for()
        tokens, per_second = write_greedily(page, root)
        page.close()
    assert errors == []
    assert tokens == expected, "the browser's prompt ids or greedy tokens differ from PyTorch's"
    kind = json.loads(path.with_suffix(".tokenizer.json").read_text())["type"]
    measured(f"the playground on a static page, a {kind} model: 100 tokens at {per_second:.0f} tokens/s")


NOTEBOOK = """from nanogpt_lib.export import Playground

Playground({path!r}, prompt={prompt!r}, about="a test model")"""


@pytest.mark.parametrize("graph", ["char"], indirect=True)  # the BPE model runs on the static page
def test_the_playground_in_jupyterlab_writes_pytorchs_tokens(browser, graph, lab, tmp_path, measured):  # noqa: F811
    """The widget a cell returns, in JupyterLab with a live kernel: 100 greedy tokens equal PyTorch's."""
    import nbformat

    base, token = lab  # it serves tmp_path
    path, expected = graph
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK.format(path=str(path),
                                                                                         prompt=PROMPT))])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "playground.ipynb")
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    watch(page, errors)
    run_all_in_lab(page, f"{base}/lab/tree/playground.ipynb?token={token}", 300)
    root = page.locator(".ngp-root")
    root.wait_for(timeout=120_000)
    tokens, per_second = write_greedily(page, root)
    page.close()
    assert errors == []
    assert tokens == expected, "the browser's prompt ids or greedy tokens differ from PyTorch's"
    measured(f"the playground in JupyterLab: 100 tokens at {per_second:.0f} tokens/s (ONNX Runtime Web, wasm)")
