"""The attention explorer in a real browser: JupyterLab with a live kernel, and the chapter as a static page.

Playwright drives Debian's Chromium (`apt-get install chromium`); `playwright install` is never used, since it
downloads a browser. Without /usr/bin/chromium these tests skip locally and fail in CI (`CI=true`).
Screenshots land in build/screenshots/.
"""

import base64
import contextlib
import http.server
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "chapters" / "07_inside.md"
CHROMIUM = Path(os.environ.get("NANOGPT_CHROMIUM", "/usr/bin/chromium"))
SHOTS = ROOT / "build" / "screenshots"
RUN_TIMEOUT_S = 1500  # the whole chapter in quick mode, on a slow shared CPU
TOOLTIP = re.compile(r"query \d+ '.+' → key \d+ '.+': .*\d\.\d{3}")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs Chromium at {CHROMIUM}: .ci/run installs it with apt-get install chromium")
        pytest.skip(f"no Chromium at {CHROMIUM}; install Debian's chromium to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server we started, then kill it if it does not exit."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


# jupyterlab-myst logs the references it cannot resolve inside one notebook (a label in another chapter, a figure
# that a code cell's output becomes) as console errors; the site resolves them, tests/test_lab_myst.py checks the list.
UNRESOLVED_IN_LAB = re.compile(r"(Cross reference target was not found: [\w.:-]+\n?)+")


def watch(page, errors: list[str]) -> None:
    """Collect console errors and uncaught exceptions; block every request that leaves 127.0.0.1."""

    def console(msg):
        if msg.type == "error" and not UNRESOLVED_IN_LAB.fullmatch(msg.text):
            errors.append(f"console: {msg.text}")

    page.on("console", console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def block(r):
        errors.append(f"request outside 127.0.0.1: {r.request.url}")
        r.abort()

    # Only requests that leave 127.0.0.1 are intercepted (Playwright's driver matches the pattern): an intercepted
    # request waits until this process next calls Playwright, and a save from JupyterLab would wait with it.
    page.route(re.compile(r"^https?://(?!(127\.0\.0\.1|localhost)[:/])"), block)


def canvas_png(locator) -> str:
    return locator.evaluate("c => c.toDataURL()")


def shot(locator, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(SHOTS / name))


def hover_fraction(page, locator, fx: float, fy: float) -> None:
    """Scroll `locator` into view and move the mouse to a point given as fractions of its size."""
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    locator.hover(position={"x": fx * box["width"], "y": fy * box["height"]})


def exercise_explorer(page, root, prefix: str) -> None:
    """Use every view of the explorer `root` like a reader would; assert each responds; take screenshots."""
    root.scroll_into_view_if_needed()
    matrix = root.locator("canvas.nge-matrix")
    matrix.wait_for()
    assert root.get_attribute("data-view") == "pattern"
    before = canvas_png(matrix)
    shot(root, f"{prefix}_pattern.png")

    root.click(position={"x": 5, "y": 5})  # focus the widget, then the keyboard moves between heads
    page.keyboard.press("ArrowRight")
    assert root.get_attribute("data-head") == "1"
    after = canvas_png(root.locator("canvas.nge-matrix"))
    assert after != before, "switching the head must redraw the matrix"
    page.keyboard.press("ArrowDown")
    assert root.get_attribute("data-layer") == "1"
    assert canvas_png(root.locator("canvas.nge-matrix")) != after

    tooltip = root.locator(".nge-tooltip")
    hover_fraction(page, root.locator("canvas.nge-matrix"), 0.45, 0.9)  # a cell below the diagonal
    tooltip.wait_for(state="visible")
    assert TOOLTIP.search(tooltip.inner_text()), tooltip.inner_text()
    shot(root, f"{prefix}_pattern_hover.png")

    root.locator("button[data-view=head]").click()
    lines = root.locator("canvas.nge-lines")
    lines.wait_for()
    hover_fraction(page, lines, 0.1, 0.5)
    tooltip.wait_for(state="visible")
    assert "looks most at" in tooltip.inner_text()
    with_all = canvas_png(lines)
    shot(root, f"{prefix}_head.png")
    root.locator(".nge-heads input[data-head='0']").uncheck()
    assert canvas_png(root.locator("canvas.nge-lines")) != with_all, "a head switched off must disappear"

    root.locator("button[data-view=model]").click()
    thumbs = root.locator(".nge-thumb")
    assert thumbs.count() == int(root.locator(".nge-grid").evaluate("g => g.children.length")) >= 4
    shot(root, f"{prefix}_model.png")
    root.locator(".nge-thumb[data-layer='0'][data-head='2']").click()
    assert (root.get_attribute("data-view"), root.get_attribute("data-layer"), root.get_attribute("data-head")) == (
        "pattern", "0", "2"
    )

    root.locator("button[data-view=compare]").click()
    assert root.locator("canvas.nge-matrix").count() == 3
    hover_fraction(page, root.locator("canvas.nge-matrix").nth(2), 0.5, 0.9)
    tooltip.wait_for(state="visible")
    assert len(re.findall(r"\d\.\d{3}", tooltip.inner_text())) == 2, tooltip.inner_text()
    shot(root, f"{prefix}_compare.png")
    root.locator("button[data-view=pattern]").click()


# ---------------------------------------------------------------- JupyterLab, live kernel


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 with a token, serving a copy of the chapter; always stopped afterwards."""
    (tmp_path / "chapters").mkdir()
    shutil.copy(CHAPTER, tmp_path / "chapters" / CHAPTER.name)
    with jupyterlab(tmp_path) as served:
        yield served


@contextlib.contextmanager
def jupyterlab(tmp_path: Path):
    """JupyterLab serving `tmp_path` as the README starts it (the book's `.jupyter/`), on 127.0.0.1 with a token;
    yields its address and token, and always stops it afterwards."""
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')  # every cell in the DOM
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_PATH=str(ROOT / ".jupyter"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               NANOGPT_QUICK="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
                time.sleep(1)
        yield base, token
    finally:
        stop(proc)
        log.close()


def wait_for_run(page, timeout_s: float) -> None:
    """Until every code cell has run; fail at once on an error output."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        error = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
        if error.count():
            pytest.fail(f"a cell raised:\n{error.first.inner_text()[-3000:]}")
        done = page.evaluate(
            """() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                       return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }"""
        )
        if done:
            return
        time.sleep(2)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "lab_timeout.png"))
    pytest.fail("the chapter did not finish running in time (screenshot: build/screenshots/lab_timeout.png)")


def open_in_lab(page, url: str) -> None:
    """Open the notebook at `url` in JupyterLab, take its Python 3 kernel and wait until the kernel is idle."""
    page.goto(url)
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=120_000)
    accept = page.locator(".jp-Dialog button.jp-mod-accept")  # "Select Kernel": take the notebook's python3
    kernel = page.locator(".jp-Toolbar-kernelName", has_text="Python 3")
    accept.or_(kernel).first.wait_for(timeout=180_000)
    if accept.count():
        accept.click()
    kernel.wait_for(timeout=120_000)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)


def run_all_in_lab(page, url: str, timeout_s: float) -> None:
    """Open the notebook at `url` in JupyterLab, take its Python 3 kernel, run all its cells and wait for them."""
    open_in_lab(page, url)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    wait_for_run(page, timeout_s)


def test_explorer_in_jupyterlab(browser, lab):
    base, token = lab
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    watch(page, errors)
    run_all_in_lab(page, f"{base}/lab/tree/chapters/{CHAPTER.name}?token={token}", RUN_TIMEOUT_S)

    roots = page.locator(".nge-root")
    assert roots.count() == 2  # the chapter's model, then the two-layer model of its induction heads
    root = roots.first
    active_cell = "() => [...document.querySelectorAll('.jp-Cell')].findIndex(c => c.matches('.jp-mod-active'))"
    exercise_explorer(page, root, "lab")
    root.click(position={"x": 5, "y": 5})  # activates the widget's cell and focuses the widget
    active = page.evaluate(active_cell)
    page.keyboard.press("ArrowDown")  # in command mode JupyterLab would move to the next cell
    still = page.evaluate(active_cell)
    assert still == active, "a key pressed inside the widget reached JupyterLab"

    # a live kernel recomputes the explorer for a new prompt typed into the text box
    box = page.locator(".widget-text input").first
    box.fill("JULIET:\nO Romeo, Romeo!")
    box.press("Enter")
    box.blur()  # a Text with continuous_update=False also sends its value when it loses focus
    page.wait_for_function("() => document.querySelector('.nge-root').dataset.tokens === '23'", timeout=60_000)
    root.locator("canvas.nge-matrix").wait_for()
    shot(root, "lab_new_prompt.png")
    page.screenshot(path=str(SHOTS / "lab_page.png"))
    page.close()
    assert errors == []


# ---------------------------------------------------------------- static HTML, no kernel, no network


@contextlib.contextmanager
def serve(folder: Path):
    """A static file server on 127.0.0.1 for `folder`, shut down afterwards."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_explorer_on_the_static_page(browser, tmp_path):
    import jupytext
    from nbclient import NotebookClient

    from nanogpt_lib.viz import notebook_html

    (tmp_path / "chapters").mkdir()
    nb = jupytext.read(CHAPTER)
    NotebookClient(nb, timeout=RUN_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path / "chapters")}}).execute()
    assert "application/vnd.jupyter.widget-state+json" in nb.metadata["widgets"]
    page_path = notebook_html(nb, tmp_path / "site" / "07_inside.html")
    html = page_path.read_text()
    assert "cdn.jsdelivr" not in html and "unpkg.com" not in html and "cdnjs" not in html

    errors: list[str] = []
    with serve(page_path.parent) as base:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        watch(page, errors)
        page.goto(f"{base}/{page_path.name}")
        page.wait_for_function("() => document.body.dataset.widgetsRendered !== undefined", timeout=60_000)
        roots = page.locator(".nge-root")
        roots.first.wait_for()
        assert roots.count() == 2  # the chapter's model, then the two-layer model of its induction heads
        exercise_explorer(page, roots.first, "static")
        page.close()
    assert errors == []


def test_static_renderer_shim_without_a_notebook(browser, tmp_path):
    """The shipped renderer alone: a hand-made page with one saved explorer state renders and responds."""
    import json

    import torch

    from nanogpt_lib.data import CharTokenizer
    from nanogpt_lib.model import GPT, GPTConfig
    from nanogpt_lib.viz import STATIC, explorer_data

    tok = CharTokenizer.from_text("abcdefgh \n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=3, n_embd=24)).eval()
    with torch.no_grad():  # sharper patterns than a fresh model's near-uniform ones
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(30)
    state = explorer_data(model, tok, "abc def\ngh abc", compare_with=GPT(model.config).eval())
    state |= {"_esm": (STATIC / "explorer.js").read_text(), "_css": (STATIC / "explorer.css").read_text()}
    saved = {"version_major": 2, "version_minor": 0, "state": {"m1": {"model_name": "AnyModel", "state": state}}}
    view = {"version_major": 2, "version_minor": 0, "model_id": "m1"}
    shutil.copy(STATIC / "static_widgets.js", tmp_path / "static_widgets.js")
    (tmp_path / "page.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<script type='application/vnd.jupyter.widget-state+json'>{json.dumps(saved)}</script></head><body>"
        f"<div><script type='application/vnd.jupyter.widget-view+json'>{json.dumps(view)}</script></div>"
        "<script src='static_widgets.js'></script></body></html>"
    )
    errors: list[str] = []
    with serve(tmp_path) as base:
        page = browser.new_page()
        watch(page, errors)
        page.goto(f"{base}/page.html")
        root = page.locator(".nge-root")
        root.wait_for()
        assert root.get_attribute("data-tokens") == "14"
        before = base64.b64encode(root.locator("canvas.nge-matrix").screenshot()).decode()
        root.locator("button.nge-step[title='next head']").click()
        assert root.get_attribute("data-head") == "1"
        assert base64.b64encode(root.locator("canvas.nge-matrix").screenshot()).decode() != before
        root.locator("button.nge-step[title='previous head']").click()
        exercise_explorer(page, root, "shim")
        page.close()
    assert errors == []


# ---------------------------------------------------------------- the site's {anywidget} node

# What a MyST theme does with an `anywidget` node, reduced to anywidget's front-end contract: import the node's
# ES module, load its CSS, and call the module's `initialize` and `render` with a model that holds the node's
# JSON. MyST's book theme is downloaded at build time and cannot run here; this host stands in for it. Like
# MyST's model on a static page, which has no kernel, its save_changes throws.
SITE_HOST = """<!doctype html><html><head><meta charset='utf-8'></head><body><div id='host'></div>
<script type='application/json' id='node'>NODE</script>
<script type='module'>
const node = JSON.parse(document.getElementById('node').textContent);
const values = structuredClone(node.model), handlers = {};
const model = {
  get: (k) => values[k],
  set: (k, v) => { values[k] = v; (handlers['change:' + k] || []).forEach((f) => f()); },
  save_changes: () => { throw new Error('MystAnyModel.save_changes not implemented yet'); }, send: () => {},
  on: (e, f) => { (handlers[e] = handlers[e] || []).push(f); },
  off: (e, f) => { handlers[e] = (handlers[e] || []).filter((g) => f && g !== f); },
};
const css = document.createElement('link');
Object.assign(css, { rel: 'stylesheet', href: node.css });
document.head.appendChild(css);
const mod = await import(node.esm);
const widget = mod.default ?? mod;
if (widget.initialize) await widget.initialize({ model });
await widget.render({ model, el: document.getElementById('host') });
document.body.dataset.rendered = 'yes';
</script></body></html>"""


def built_anywidget(root: Path, page: str, include: str) -> tuple[dict, dict]:
    """Build a one-page site in `root` whose page includes `include` (`myst build --site --strict`, the stand-in
    template); return its one `anywidget` node and the page's JSON."""
    import json

    (root / "myst.yml").write_text(f"version: 1\nproject:\n  title: t\n  toc:\n    - file: {page}\n"
                                   f"site:\n  template: {ROOT / '.ci' / 'site-template'}\n")  # fmt: skip
    (root / page).parent.mkdir(parents=True, exist_ok=True)
    (root / page).write_text(f"# A page\n\n```{{include}} {include}\n```\n")
    myst = shutil.which("myst") or str(Path(sys.executable).parent / "myst")
    built = subprocess.run([myst, "build", "--site", "--strict"], cwd=root, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "NO_COLOR": "1"})  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    content = json.loads(next((root / "_build" / "site" / "content").glob("*.json")).read_text())
    stack, nodes = [content["mdast"]], []
    while stack:
        node = stack.pop()
        nodes += [node] if node.get("type") == "anywidget" else []
        stack += node.get("children", [])
    (node,) = nodes
    return node, content


def test_explorer_node_of_the_built_site_renders(browser, tmp_path):
    """Chapter 7's {anywidget} node as MyST builds it (tools/explorer_page.py, then `myst build --site`): its
    module, CSS and data, served from the built site, render an explorer that responds to the reader."""
    import json
    import shutil as sh

    import torch

    from nanogpt_lib.checkpoint import save_checkpoint
    from nanogpt_lib.data import CharTokenizer
    from nanogpt_lib.model import GPT, GPTConfig
    from nanogpt_lib.viz import STATIC

    sys.path.insert(0, str(ROOT / "tools"))
    from explorer_page import chapter_prompt, write_explorer_page

    root = tmp_path / "book"
    (root / "chapters").mkdir(parents=True)
    sh.copy(CHAPTER, root / "chapters")
    sh.copytree(STATIC, root / "nanogpt_lib" / "static")
    prompt = chapter_prompt(CHAPTER)
    tok = CharTokenizer.from_text(prompt)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=3, n_embd=24)
    for folder, step, scale in (("run/last", 500, 30.0), ("early", 50, 1.0)):
        model = GPT(config)
        with torch.no_grad():  # sharper patterns than a fresh model's near-uniform ones
            for block in model.transformer.h:
                block.attn.c_attn.weight.mul_(scale)
        state = {"step": step, "model_config": config.to_dict(), "tokenizer": tok.to_dict()}
        save_checkpoint(root / "build" / "07_inside" / folder, model, torch.optim.AdamW(model.parameters()), state)
    write_explorer_page(root)
    node, _ = built_anywidget(root, "chapters/page.md", "../_build/explorer/07_inside.md")
    public = root / "_build" / "site" / "public"
    (public / "host.html").write_text(SITE_HOST.replace("NODE", json.dumps(node).replace("</", "<\\/")))

    errors: list[str] = []
    with serve(public) as base:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        watch(page, errors)
        page.goto(f"{base}/host.html")
        page.wait_for_function("() => document.body.dataset.rendered === 'yes'", timeout=60_000)
        root_el = page.locator(".nge-root")
        assert root_el.count() == 1 and root_el.get_attribute("data-tokens") == str(len(prompt))
        exercise_explorer(page, root_el, "site")
        page.set_viewport_size({"width": 420, "height": 900})  # a phone
        fits_a_narrow_screen(page, root_el)
        page.close()
    assert errors == [], "a static page has no kernel: saving the view must not raise"


LABELS = """r => [...r.querySelectorAll('canvas[data-label-px]')].map(
    c => Number(c.dataset.labelPx) * c.getBoundingClientRect().width / c.width)"""
OVERHANG = """r => Math.max(...[...r.querySelectorAll('.nge-frame, .nge-thumb, .nge-bar')].map(
    e => e.getBoundingClientRect().right - r.getBoundingClientRect().right))"""


def fits_a_narrow_screen(page, root) -> None:
    """In every view on a narrow screen, the explorer stays within the page, and its labels stay readable."""
    for view in ("pattern", "head", "model", "compare"):
        root.locator(f"button[data-view={view}]").click()
        shot(root, f"site_narrow_{view}.png")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 420, f"{view}: the page is {width} px wide in a 420 px window"
        assert root.evaluate(OVERHANG) <= 0.5, f"{view}: a part of the explorer sticks out of its frame"
        sizes = root.evaluate(LABELS)
        assert view == "model" or sizes, f"{view}: no labelled canvas"
        assert all(px >= 10 for px in sizes), f"{view}: token labels of {sizes} px"
