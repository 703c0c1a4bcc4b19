"""The book's site, checked offline: MyST builds every page's content with no broken references.

MyST's book theme is downloaded when the site is built, and no package registry ships it, so
these tests build the site's *content* (`myst build --site --strict`, which writes one JSON file
per page under `_build/site/content`) against the stand-in template in `.ci/site-template`. The
error rules in `myst.yml` make unresolved references, missing citations and broken links errors,
and `--strict` turns errors into a failed build. The HTML itself is built online by
`.github/workflows/site.yml`. Needs the `myst` command (pip's `mystmd`) and Node >= 18.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from check_site import (  # noqa: E402
    AWAITING_DOWNLOADS,
    apparatus,
    apparatus_problems,
    broken_links,
    download_problems,
    duplicate_numbers,
    empty_cells,
    explorer_problems,
    kernel_outputs,
    page_data,
    pages_without_outputs,
    playground_problems,
)
from explorer_page import chapter_prompt, longest_run, write_explorer_page  # noqa: E402
from playground_page import write_playground_page  # noqa: E402
from site_notebooks import write_notebooks  # noqa: E402

TEMPLATE = ROOT / ".ci" / "site-template"
SKIP_DIRS = {".git", ".venv", "build", "_build", "out", "runs", "node_modules", "__pycache__"}
EXERCISED = [f"chapters/{n:02d}_" for n in range(12)] + [f"chapters/A{n}_" for n in range(1, 9)]  # A9 is the checker


def _myst() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("MyST needs Node.js >= 18 on PATH (apt-get install nodejs, or nodejs.org)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        pytest.fail(f"MyST needs Node.js >= 18; this machine has {version}")
    myst = shutil.which("myst") or str(Path(sys.executable).parent / "myst")
    if not Path(myst).exists():
        pytest.fail("the `myst` command is missing: pip install mystmd (it is in the book extra)")
    return myst


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in SKIP_DIRS or n.endswith(".ipynb")}
    if Path(folder) == ROOT / "data":
        skipped |= {n for n in names if (Path(folder) / n).is_dir()}  # downloaded datasets
    return skipped


def copy_project(dest: Path) -> Path:
    """A copy of the book's sources in `dest`, with the site pointed at the stand-in template."""
    shutil.copytree(ROOT, dest, ignore=_ignore)
    config = yaml.safe_load((dest / "myst.yml").read_text())
    config["site"]["template"] = str(TEMPLATE)
    (dest / "myst.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_notebooks(dest)
    write_explorer_page(dest)  # no checkpoints in the copy (build/ is skipped): a small untrained model
    write_playground_page(dest, base_url="")  # likewise: an untrained model's graph
    return dest


def stop_servers_in(project: Path) -> None:
    """End the Jupyter servers MyST started for `project`: they run in a session of their own and outlive it."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if b"jupyter_server" in b" ".join(args) and any(str(project).encode() in a for a in args):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)


def build(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`myst build --site --strict` in `project`, then the link check; the finished process (output in .stdout).

    `env` adds variables (None removes one). A broken internal link makes the returned process fail
    too, with the link in its output.
    """
    command = [_myst(), "build", "--site", "--strict", *args]
    env = {k: v for k, v in {**os.environ, "NO_COLOR": "1", **(env or {})}.items() if v is not None}
    proc = subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    # `--execute` starts a Jupyter server that outlives MyST: end MyST's group and that server afterwards
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stop_servers_in(project)
    result = subprocess.CompletedProcess(command, proc.returncode, out, err)
    if result.returncode == 0 and (broken := broken_links(project / "_build" / "site")):
        result.returncode, result.stdout = 1, result.stdout + "\nbroken links: " + ", ".join(broken)
    return result


def toc_files(project: Path) -> list[str]:
    return [entry["file"] for entry in yaml.safe_load((project / "myst.yml").read_text())["project"]["toc"]]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    project = copy_project(tmp_path_factory.mktemp("site") / "book")
    return project, build(project)


def test_site_builds_strictly(site):
    project, result = site
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_every_chapter_is_in_the_toc_and_every_page_built(site):
    project, result = site
    toc = toc_files(project)
    assert toc[0] == "intro.md", "the introduction is the landing page"
    chapters = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "chapters").glob("*.md"))
    assert [f for f in toc if f.startswith("chapters/")] == chapters
    built = {}
    for page in (project / "_build" / "site" / "content").glob("*.json"):
        data = json.loads(page.read_text())
        built[data["location"].lstrip("/")] = data
    assert sorted(built) == sorted(toc), result.stdout[-2000:]
    for file, data in built.items():
        assert data["mdast"]["children"], f"{file} built as an empty page"
    config = json.loads((project / "_build" / "site" / "config.json").read_text())
    assert config["projects"][0]["index"] == "index"
    assert len(config["projects"][0]["pages"]) == len(toc) - 1  # the introduction is the index


def test_each_chapter_page_offers_its_own_notebook(site):
    project, _ = site
    assert download_problems(project / "_build" / "site") == []
    for page in (project / "_build" / "site" / "content").glob("*.json"):
        data = json.loads(page.read_text())
        for download in data["frontmatter"].get("downloads", []):
            notebook = project / "_build" / "site" / "public" / download["url"].lstrip("/")
            assert json.loads(notebook.read_text())["cells"], f"{download['url']} is not a notebook"


def test_the_download_check_fails_a_page_offering_another_chapters_notebook(site, tmp_path):
    project, _ = site
    copy = shutil.copytree(project / "_build" / "site", tmp_path / "site")
    page = next(p for p in (copy / "content").glob("*.json") if json.loads(p.read_text())["location"]
                == "/chapters/07_inside.md")
    data = json.loads(page.read_text())
    data["frontmatter"]["downloads"][0]["filename"] = "01_data.ipynb"
    page.write_text(json.dumps(data))
    assert download_problems(copy) == ["/chapters/07_inside.md: downloads ['01_data.ipynb'], expected its own "
                                       "07_inside.ipynb"]


def test_only_chapters_without_a_downloads_entry_await_one():
    for stem in AWAITING_DOWNLOADS:
        header = (ROOT / "chapters" / f"{stem}.md").read_text().split("\n---\n", 1)[0]
        assert "\ndownloads:" not in header, f"{stem} names its notebook now: remove it from AWAITING_DOWNLOADS"


def _explorer_node(project: Path) -> dict:
    stack, found = [page_data(project / "_build" / "site", "/chapters/07_inside.md")["mdast"]], []
    while stack:
        node = stack.pop()
        found += [node] if node.get("type") == "anywidget" else []
        stack += node.get("children", [])
    (node,) = found
    return node


def test_chapter_07_embeds_the_live_explorer(site):
    """The explorer's module, CSS and data for the chapter's prompt are in the built site (read from its JSON:
    the stand-in template renders no HTML; tests/test_browser.py renders the same node in Chromium)."""
    project, _ = site
    site_dir = project / "_build" / "site"
    assert explorer_problems(site_dir) == []
    node = _explorer_node(project)
    prompt = chapter_prompt(project / "chapters" / "07_inside.md")
    assert node["model"]["data"]["prompt"] == prompt and len(node["model"]["data"]["tokens"]) == len(prompt)
    assert node["model"]["view"] == "pattern" and node["model"]["layer"] == 0 and node["model"]["head"] == 0
    page = json.dumps(page_data(site_dir, "/chapters/07_inside.md"), separators=(",", ":"))
    assert "untrained model" in page, "without checkpoints the page must say it shows an untrained model"
    assert '"identifier":"fig-explorer-live"' in page


def test_chapter_11_embeds_the_live_playground(site):
    project, _ = site
    assert playground_problems(project / "_build" / "site") == []
    page = json.dumps(page_data(project / "_build" / "site", "/chapters/11_anywhere.md"), separators=(",", ":"))
    assert "untrained model" in page and '"identifier":"fig-playground-live"' in page


def test_the_explorer_check_fails_without_the_data_or_the_module(site, tmp_path):
    project, _ = site
    copy = shutil.copytree(project / "_build" / "site", tmp_path / "site")
    page = next(p for p in (copy / "content").glob("*.json") if '"/chapters/07_inside.md"' in p.read_text())
    node = _explorer_node(project)
    (copy / "public" / node["esm"].lstrip("/")).unlink()
    data = json.loads(page.read_text())
    data["mdast"] = json.loads(json.dumps(data["mdast"]).replace('"runs": [', '"runs_gone": ['))
    page.write_text(json.dumps(data))
    problems = explorer_problems(copy)
    assert any("ES module" in p for p in problems) and any("no tokens, shape or runs" in p for p in problems)


def test_a_missing_explorer_page_fails_the_build(tmp_path):
    project = copy_project(tmp_path / "book")
    (project / "_build" / "explorer" / "07_inside.md").unlink()
    result = build(project)
    assert result.returncode != 0 and "07_inside.md" in result.stdout + result.stderr


def test_no_page_shows_an_empty_cell_and_every_number_is_the_chapters_own(site):
    """The `#| default_exp` cells are hidden (tag `remove-cell`); figures and equations are numbered per chapter
    ("Figure 4.2"), so no two in the book share a number."""
    project, _ = site
    site_dir = project / "_build" / "site"
    assert empty_cells(site_dir) == [] and duplicate_numbers(site_dir) == []
    for chapter in sorted((ROOT / "chapters").glob("*.md")):
        prefix = chapter.stem.split("_")[0]
        prefix = prefix.lstrip("0") or "0" if prefix.isdigit() else prefix
        header = chapter.read_text().split("\n---\n", 1)[0]
        assert f"\nnumbering:\n  enumerator: {prefix}.%s" in header, f"{chapter.name}: number its figures {prefix}.N"
    page = json.dumps(page_data(site_dir, "/chapters/04_gpt.md")["mdast"])
    assert re.search(r'"kind": "figure"[^{}]*"enumerator": "4\.1"', page), "chapter 4's first figure is Figure 4.1"


def test_the_checks_catch_an_empty_cell_and_a_number_used_twice(site, tmp_path):
    project, _ = site
    copy = shutil.copytree(project / "_build" / "site", tmp_path / "site")
    page = next(p for p in (copy / "content").glob("*.json") if '"/chapters/03_attention.md"' in p.read_text())
    data = json.loads(page.read_text())
    stack = [data["mdast"]]
    while stack:  # show the hidden `default_exp` cell; give the second figure the first one's number
        node = stack.pop()
        if node.get("type") == "block" and node.get("visibility") == "remove":
            node["visibility"] = "show"
        if node.get("kind") == "figure" and node.get("enumerator") == "3.2":
            node["enumerator"] = "3.1"
        stack += node.get("children", [])
    page.write_text(json.dumps(data))
    assert [p for p in empty_cells(copy) if p.startswith("/chapters/03_attention.md")] == [
        "/chapters/03_attention.md: code cell 2 is empty on the page (tag it remove-cell)"]
    assert any(p.startswith("figure 3.1: /chapters/03_attention.md#") for p in duplicate_numbers(copy))


def test_every_main_chapter_has_its_diagrams_and_predict_then_run_exercises(site):
    """Each main chapter: >= 2 explanatory diagrams (`fig-diagram-` labels), >= 5 exercises, >= 2 of them
    predict-then-run (`-predict-` labels); >= 20 diagrams in the book. Counted on the built pages."""
    project, _ = site
    site_dir = project / "_build" / "site"
    counts = apparatus(site_dir)
    assert len(counts) == len(list((ROOT / "chapters").glob("[0-9][0-9]_*.md"))), counts
    assert apparatus_problems(site_dir) == []


def test_the_apparatus_check_counts_labels_on_the_page(site, tmp_path):
    """Relabelling one diagram and one predict exercise of chapter 03 as ordinary ones is caught by the check."""
    project, _ = site
    copy = shutil.copytree(project / "_build" / "site", tmp_path / "site")
    page = next(p for p in (copy / "content").glob("*.json") if '"/chapters/03_attention.md"' in p.read_text())
    text = page.read_text()
    before = apparatus(copy)["/chapters/03_attention.md"]
    for prefix in ("fig-diagram-", "ex-03-predict-"):
        first = re.search(re.escape(prefix) + r"[\w-]+", text).group(0)
        text = text.replace(f'"{first}"', f'"{first.replace("diagram-", "plain-").replace("predict-", "plain-")}"')
    page.write_text(text)
    after = apparatus(copy)["/chapters/03_attention.md"]
    assert (after[0], after[2]) == (before[0] - 1, before[2] - 1)


def test_the_site_has_a_favicon_and_wraps_long_code_lines(site):
    project, _ = site
    site_dir = project / "_build" / "site"
    options = json.loads((site_dir / "config.json").read_text())["options"]
    favicon, style = _public_file(site_dir, options["favicon"]), _public_file(site_dir, options["style"])
    assert favicon.read_text().lstrip().startswith("<svg") and favicon.stat().st_size < 4096
    assert re.search(r"pre[^{]*\{[^}]*white-space: pre-wrap", style.read_text())


def _public_file(site_dir: Path, url: str) -> Path:
    path = site_dir / "public" / url.lstrip("/").removeprefix("build/")  # MyST names copied files /build/<name>
    assert path.is_file(), f"{url} was not copied into the site"
    return path


def test_chapter_07_with_a_full_size_explorer_builds_in_seconds(tmp_path, measured):
    """The explorer of chapter 07's full-mode model (4 layers x 4 heads, two checkpoints, ~170 KB): its include
    has no long runs of non-space text, which MyST's Markdown rules are slow on; the build's time is recorded."""
    import torch

    from nanogpt_lib.checkpoint import save_checkpoint
    from nanogpt_lib.data import CharTokenizer
    from nanogpt_lib.model import GPT, GPTConfig

    project = copy_project(tmp_path / "book")
    tok = CharTokenizer.from_text(chapter_prompt(project / "chapters" / "07_inside.md"))
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128)
    for folder, step in (("run/last", 1500), ("early", 100)):
        model = GPT(config)
        save_checkpoint(project / "build" / "07_inside" / folder, model, torch.optim.AdamW(model.parameters()),
                        {"step": step, "model_config": config.to_dict(), "tokenizer": tok.to_dict()})
    page = write_explorer_page(project).read_text()
    assert len(page) > 150_000 and longest_run(page) <= 2000, (len(page), longest_run(page))
    result = build(project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = re.search(r"Built chapters/07_inside\.md in [^\n]*", result.stdout + result.stderr)
    measured(f"MyST processed chapter 07 with a {len(page) // 1000} KB explorer: {line and line.group(0)}")


TRAIN_CELL = """from nanogpt_lib.data import prepare_char_dataset
from nanogpt_lib.train import make_config, train

prepare_char_dataset("to be or not to be, that is the question\\n" * 40, "data")
tiny = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=3, eval_iters=1, device="cpu")
train(make_config(overrides={**tiny, "data_dir": "data", "out_dir": "out"}))
print(6 * 7)"""


def _widget_project(tmp_path: Path) -> Path:
    """A one-page book whose cells train (the trainer's progress bar, by default), print, and return a widget in
    a `remove-output` cell."""
    tmp_path.mkdir(parents=True)
    _one_cell_project(tmp_path)
    (tmp_path / "page.md").write_text(
        "---\nkernelspec:\n  name: python3\n  display_name: Python 3\n  language: python\n---\n# Page\n\n"
        f"```{{code-cell}} ipython3\n{TRAIN_CELL}\n```\n\n"
        "```{code-cell} ipython3\n:tags: [remove-output]\n\nimport ipywidgets\n\nipywidgets.IntSlider()\n```\n"
    )
    return tmp_path


def test_the_site_workflow_executes_chapters_without_progress_bars(tmp_path):
    """With the site workflow's own environment, training leaves no widget on the page; without it, the output
    check catches the progress bar that a static page cannot draw."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "site.yml").read_text())
    env = {k: v for k, v in workflow["jobs"]["build"]["env"].items() if "${{" not in str(v)}
    env["JUPYTER_CONFIG_PATH"] = str(ROOT / ".ci" / "jupyter")
    assert env.get("TQDM_DISABLE") == "1" and env.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1"
    with_site_env = _widget_project(tmp_path / "site-env")
    result = build(with_site_env, "--execute", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    site_dir = with_site_env / "_build" / "site"
    assert pages_without_outputs(site_dir) == [] and kernel_outputs(site_dir) == []
    assert "42\\n" in (site_dir / "content" / "index.json").read_text()
    plain = _widget_project(tmp_path / "plain")
    build(plain, "--execute", env={**env, "TQDM_DISABLE": None})
    assert kernel_outputs(plain / "_build" / "site") == ["/page.md: code cell 1 shows a widget that needs a kernel"]


def test_bibliography_entries_are_unique_and_complete():
    text = (ROOT / "references.bib").read_text()
    keys = re.findall(r"^@\w+\{([^,]+),", text, re.M)
    assert len(keys) == len(set(keys)), "duplicate citation keys"
    for entry in re.split(r"^@", text, flags=re.M)[1:]:
        for field in ("author", "title", "year"):
            assert re.search(rf"^\s*{field}\s*=", entry, re.M), f"@{entry[:40]} has no {field}"


BREAKAGES = {
    "unresolved reference": ("See {ref}`no-such-label`.", "no-such-label"),
    "missing citation": ("As shown by {cite:p}`nobody2099nothing`.", "nobody2099nothing"),
    "broken internal link": ("See [the missing chapter](chapters/99_missing.md).", "99_missing"),
    "missing label": ("See [a section](#no-such-section).", "no-such-section"),
}


def one_page_project(dest: Path, text: str) -> Path:
    """The book's site settings (its error rules, its bibliography) around one page, intro.md, holding `text`."""
    dest.mkdir(parents=True)
    config = yaml.safe_load((ROOT / "myst.yml").read_text())
    config["project"]["toc"] = [{"file": "intro.md"}]
    config["site"]["template"] = str(TEMPLATE)
    (dest / "myst.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(ROOT / "references.bib", dest / "references.bib")
    (dest / "intro.md").write_text(f"# One page\n\n(sec-one)=\n## A section\n\n{text}\n")
    return dest


def test_the_one_page_project_builds_cleanly(tmp_path):
    result = build(one_page_project(tmp_path / "book", "See {ref}`sec-one` and {cite:p}`vaswani2017attention`."))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
def test_a_broken_reference_fails_the_check(kind, tmp_path):
    line, name = BREAKAGES[kind]
    project = one_page_project(tmp_path / "book", line)
    result = build(project)
    assert result.returncode != 0, f"a {kind} must fail the site check:\n{result.stdout[-3000:]}"
    assert name in result.stdout + result.stderr


def test_output_check_flags_pages_built_without_execution(site):
    project, _ = site
    empty = pages_without_outputs(project / "_build" / "site")
    assert "/chapters/03_attention.md" in empty, "a chapter built without --execute has no outputs"
    assert "/intro.md" not in empty, "a page without code cells needs no outputs"


def _one_cell_project(tmp_path: Path) -> Path:
    (tmp_path / "myst.yml").write_text(
        yaml.safe_dump({"version": 1, "project": {"title": "t", "toc": [{"file": "page.md"}]},
                        "site": {"template": str(TEMPLATE)}})
    )
    (tmp_path / "page.md").write_text(
        "---\nkernelspec:\n  name: python3\n  display_name: Python 3\n  language: python\n---\n"
        "# Page\n\n```{code-cell} ipython3\nprint(6 * 7)\n```\n"
    )
    return tmp_path


def test_execution_produces_outputs_with_the_ci_jupyter_config(tmp_path):
    """MyST executes through a Jupyter server; as root it starts only with allow_root (.ci/jupyter)."""
    _one_cell_project(tmp_path)
    result = build(tmp_path, "--execute", env={"JUPYTER_CONFIG_PATH": str(ROOT / ".ci" / "jupyter")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert pages_without_outputs(tmp_path / "_build" / "site") == []
    page = (tmp_path / "_build" / "site" / "content" / "index.json").read_text()
    assert "42\\n" in page
    assert subprocess.run([sys.executable, str(ROOT / "tools" / "check_site.py"), "--outputs",
                           str(tmp_path / "_build" / "site")], capture_output=True).returncode == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="Jupyter refuses only root")
def test_as_root_without_allow_root_pages_lose_their_outputs_and_the_check_says_so(tmp_path):
    """The failure the output check exists for: MyST's build 'succeeds' while writing no outputs."""
    _one_cell_project(tmp_path)
    empty_config = tmp_path / "no-jupyter-config"
    empty_config.mkdir()
    result = build(tmp_path, "--execute", env={"JUPYTER_CONFIG_PATH": None, "JUPYTER_CONFIG_DIR": str(empty_config)})
    assert pages_without_outputs(tmp_path / "_build" / "site") == ["/page.md"], result.stdout[-3000:]
    checked = subprocess.run([sys.executable, str(ROOT / "tools" / "check_site.py"), "--outputs",
                              str(tmp_path / "_build" / "site")], capture_output=True, text=True)
    assert checked.returncode == 1 and "/page.md" in checked.stderr


@pytest.mark.parametrize("prefix", EXERCISED)
def test_chapter_ends_with_labelled_exercises_and_solutions(prefix):
    (chapter,) = ROOT.glob(prefix + "*.md")
    text = chapter.read_text()
    assert "\n## Exercises\n" in text, f"{chapter.name} has no Exercises section"
    exercises = text[text.index("\n## Exercises\n"):]
    labels = re.findall(r"^:::+\{exercise\}\n:label: (ex-[\w-]+)$", exercises, re.M)
    low, high = (5, 7) if chapter.name[0].isdigit() else (3, 5)  # a main chapter adds its predict-then-run ones
    assert low <= len(labels) <= high, f"{chapter.name}: {len(labels)} exercises, expected {low} to {high}"
    solved = re.findall(r"^:::+\{solution-start\} (ex-[\w-]+)$", exercises, re.M)
    assert solved == labels, f"{chapter.name}: every exercise needs one solution, in order"
    assert exercises.count(".must_pass()") >= len(labels), f"{chapter.name}: every solution must run its check"


def test_workflows_parse_and_run_what_the_project_has():
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    site = yaml.safe_load((ROOT / ".github" / "workflows" / "site.yml").read_text())
    ci_runs = [s.get("run", "") for job in ci["jobs"].values() for s in job["steps"]]
    assert any(r.strip() == "bash .ci/run" for r in ci_runs) and (ROOT / ".ci" / "run").exists()
    steps = site["jobs"]["build"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "myst build --html --execute" in runs
    for script in re.findall(r"python (tools/\S+\.py)", runs):
        assert (ROOT / script).exists(), f"site.yml runs {script}, which does not exist"
    assert (ROOT / site["jobs"]["build"]["env"]["JUPYTER_CONFIG_PATH"].split("}}/")[-1]).is_dir()
    uses = [s.get("uses", "") for job in site["jobs"].values() for s in job["steps"]]
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert site[True]["push"]["branches"] == ["main"]  # YAML 1.1 reads the key `on` as True
    assert "pages" in site["permissions"] and "id-token" in site["permissions"]
