"""A chapter in JupyterLab as the README opens it: MyST rendered by jupyterlab-myst, a clean tab, no news popup.

JupyterLab starts with the book's `.jupyter/` settings (tests/test_browser.py's `jupyterlab`) and serves a copy of
chapter 03 beside the project's jupytext.toml; Debian's Chromium (driven by Playwright, every request outside
127.0.0.1 blocked) opens it. The markdown must render as MyST, offline: no raw role, target or directive text, the
exercises as exercise boxes, the equations typeset. Reading must change nothing: the tab stays clean, and saving
writes the chapter back byte for byte.
"""

import asyncio
import re
import runpy
import shutil
import time
from pathlib import Path

import pytest
from test_browser import SHOTS, UNRESOLVED_IN_LAB, browser, jupyterlab, open_in_lab, watch  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "chapters" / "03_attention.md"
pytestmark = pytest.mark.slow

# MyST source that shows up as text when the markdown is rendered as plain CommonMark.
RAW_MYST = re.compile(r"\{(numref|ref|cite|cite:p|cite:t|eq|math|exercise|solution-start|solution-end)\}|"
                      r"^\([\w-]+\)=|:::|```", re.M)  # fmt: skip


def labels(text: str) -> tuple[set[str], set[str]]:
    """A chapter's labels: those its markdown defines (targets, directives), and those of its code cells' figures."""
    markdown = set(re.findall(r"^\(([\w-]+)\)=$", text, re.M)) | set(re.findall(r"^:label: ([\w-]+)$", text, re.M))
    figures = set(re.findall(r"^label: ([\w-]+)$", text, re.M))
    return markdown, figures


def book_contents_manager(root: Path):
    """The contents manager that `.jupyter/jupyter_server_config.py` gives the Jupyter server, serving `root`."""
    from traitlets.config import Config

    settings = runpy.run_path(str(ROOT / ".jupyter" / "jupyter_server_config.py"), init_globals={"get_config": Config})
    return settings["c"].ServerApp.contents_manager_class(root_dir=str(root))


def test_the_server_hands_out_a_chapter_with_its_kernels_language_info(tmp_path):
    """JupyterLab marks a notebook unsaved when the kernel's `language_info` differs from the notebook's, and a
    chapter's file has none: the book's server adds exactly what a python3 kernel reports, and saving drops it."""
    from jupyter_client.manager import start_new_kernel

    (tmp_path / "chapters").mkdir()
    shutil.copy(CHAPTER, tmp_path / "chapters")
    shutil.copy(ROOT / "jupytext.toml", tmp_path)
    contents = book_contents_manager(tmp_path)
    model = asyncio.run(contents.get(f"chapters/{CHAPTER.name}"))
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        reported = client.kernel_info(reply=True, timeout=120)["content"]["language_info"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert "language_info" not in CHAPTER.read_text()
    assert model["content"]["metadata"]["language_info"] == reported
    asyncio.run(contents.save({"type": "notebook", "content": model["content"]}, f"chapters/{CHAPTER.name}"))
    assert (tmp_path / "chapters" / CHAPTER.name).read_bytes() == CHAPTER.read_bytes()


@pytest.fixture(scope="module")
def chapter(browser, tmp_path_factory):  # noqa: F811
    """Chapter 03 open in JupyterLab, its kernel started and every markdown cell rendered; the page, the copy
    JupyterLab serves, the errors the page logged, and the reference targets jupyterlab-myst could not resolve."""
    folder = tmp_path_factory.mktemp("lab")
    (folder / "chapters").mkdir()
    shutil.copy(CHAPTER, folder / "chapters")
    shutil.copy(ROOT / "jupytext.toml", folder)
    with jupyterlab(folder) as (base, token):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        unresolved: set[str] = set()
        watch(page, errors)
        page.on("console", lambda msg: unresolved.update(re.findall(r"not found: (\S+)", msg.text))
                if UNRESOLVED_IN_LAB.fullmatch(msg.text) else None)  # fmt: skip
        open_in_lab(page, f"{base}/lab/tree/chapters/{CHAPTER.name}?token={token}")
        page.wait_for_function(  # by jupyterlab-myst (.myst) or, without it, by JupyterLab's own Markdown renderer
            """() => { const md = document.querySelectorAll('.jp-MarkdownCell'), shown = document.querySelectorAll(
                         '.jp-MarkdownCell .myst, .jp-MarkdownCell .jp-RenderedMarkdown');
                       return md.length > 0 && shown.length === md.length; }""",
            timeout=120_000,
        )
        page.wait_for_timeout(3000)  # the kernel's language info reaches the notebook just after it is idle
        yield page, folder / "chapters" / CHAPTER.name, errors, unresolved
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "lab_myst.png"))
        page.close()


def tab_is_dirty(page) -> bool:
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=CHAPTER.name)
    return "jp-mod-dirty" in tab.get_attribute("class").split()


def test_markdown_renders_as_myst_without_raw_roles(chapter):
    page, _, _, _ = chapter
    cells = page.locator(".jp-MarkdownCell .myst")
    assert cells.count() == page.locator(".jp-MarkdownCell").count() > 20
    text = "\n".join(cells.all_inner_texts())
    raw = sorted({m.group(0) for m in RAW_MYST.finditer(text)})
    assert raw == [], f"raw MyST in the rendered chapter: {raw}"
    assert "(ch-attention)=" in CHAPTER.read_text() and "{numref}" in CHAPTER.read_text()  # what must not show


def test_exercises_and_solutions_render_as_boxes(chapter):
    page, _, _, _ = chapter
    source = CHAPTER.read_text()
    exercises = page.locator(".jp-MarkdownCell aside.myst-exercise[id]:not([id=''])")  # not solution-end's
    assert exercises.count() == source.count(":::{exercise}") >= 3
    first = page.locator("aside.myst-exercise#ex-03-heads-loop")
    assert first.locator(".myst-exercise-title").inner_text().strip() == "Exercise 1"
    assert "`c_attn`" not in first.inner_text() and "c_attn" in first.locator("code").all_inner_texts()
    solutions = page.locator(".jp-MarkdownCell details.myst-exercise summary")
    assert solutions.count() == source.count(":::{solution-start}")
    assert "Solution to Exercise 1" in " ".join(solutions.first.inner_text().split())


def test_equations_are_typeset_offline(chapter):
    page, _, errors, _ = chapter
    display = page.locator(".jp-MarkdownCell #eq-attention .katex-display")
    assert display.count() == 1 and display.is_visible()
    tex = display.locator("annotation[encoding='application/x-tex']").text_content()
    assert r"\operatorname{Attention}(Q, K, V)" in tex
    assert page.locator(".jp-MarkdownCell .myst .katex").count() > 50  # the inline math too
    assert errors == [], "rendering must need nothing outside 127.0.0.1 and log no error"


def test_unresolved_references_are_only_those_another_page_defines(chapter):
    """Inside one notebook jupyterlab-myst resolves the chapter's own markdown labels; what it cannot resolve are
    labels of other chapters and of figures that code cells draw, which the site resolves."""
    _, _, _, unresolved = chapter
    own, figures = labels(CHAPTER.read_text())
    others = set()
    for path in (ROOT / "chapters").glob("*.md"):
        if path != CHAPTER:
            others |= set().union(*labels(path.read_text()))
    assert unresolved, "jupyterlab-myst reports references it cannot resolve; none were seen"
    assert unresolved & own == set(), "a label the chapter's markdown defines must resolve in JupyterLab"
    assert unresolved <= others | figures, f"references to labels the book does not define: {unresolved - others}"


def test_no_news_popup(chapter):
    page, _, _, _ = chapter
    setting = page.evaluate(  # the user's setting, else the default that .jupyter/labconfig sets
        """async () => { const url = '/lab/api/settings/@jupyterlab/apputils-extension:notification';
                         const s = await (await fetch(url)).json();
                         return s.settings.fetchNews ?? s.schema.properties.fetchNews.default; }"""
    )
    assert setting == "false", "the book's .jupyter/ settings must turn JupyterLab's news off"
    toasts = page.locator(".Toastify__toast").all_inner_texts()
    assert not [t for t in toasts if "news" in t.lower()], toasts
    assert page.locator(".jp-Notification-Status").inner_text().strip() == "0", "no notification waits for the reader"


def test_reading_leaves_the_chapter_unchanged(chapter):
    """Opening the chapter and rendering it leaves the tab clean; saving writes the chapter back byte for byte."""
    page, served, _, _ = chapter
    assert not tab_is_dirty(page), "opening a chapter marked it unsaved"
    page.locator(".jp-MarkdownCell .myst", has_text="Exercise 1").first.dblclick()  # edit, then render again
    page.keyboard.press("Shift+Enter")
    page.locator(".jp-MarkdownCell .myst", has_text="Exercise 1").first.wait_for()
    assert not tab_is_dirty(page), "rendering a markdown cell marked the chapter unsaved"
    before = served.stat().st_mtime_ns
    page.locator(".jp-NotebookPanel-toolbar [data-command='docmanager:save']").click()
    deadline = time.monotonic() + 60
    while served.stat().st_mtime_ns == before and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    assert served.stat().st_mtime_ns != before, "JupyterLab did not save the chapter"
    assert served.read_bytes() == CHAPTER.read_bytes(), "saving a chapter that was only read changed it"
    assert not tab_is_dirty(page)
