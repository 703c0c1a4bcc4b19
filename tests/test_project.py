"""The project's own promises: packaging, conda in step with pip, the command, lint, the book's toc."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONDA_NAMES = {"torch": "pytorch"}


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower()


def extra(name: str) -> list[str]:
    """An extra's requirements, with the extras of this project it names (`nanogpt-lib[hf]`) expanded."""
    found = []
    for req in PYPROJECT["project"]["optional-dependencies"][name]:
        if requirement_name(req) == PYPROJECT["project"]["name"]:
            for other in re.search(r"\[(.*)\]", req).group(1).split(","):
                found += extra(other.strip())
        else:
            found.append(req)
    return found


def test_environment_yml_has_what_reading_needs_and_no_test_tools():
    """Conda readers get the runtime dependencies and the `book` extra; the test tools stay in the `dev` extra."""
    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {requirement_name(d) for d in env["dependencies"] if isinstance(d, str)}
    reading = PYPROJECT["project"]["dependencies"] + extra("book")
    missing = [name for name in map(requirement_name, reading) if CONDA_NAMES.get(name, name) not in conda]
    assert missing == [], f"add these to environment.yml: {missing}"
    book = set(map(requirement_name, extra("book")))
    test_tools = set(map(requirement_name, extra("dev"))) - book
    assert conda & test_tools == set(), "test tools belong to the dev extra, not to the readers' environment"
    assert "conda-forge" in env["channels"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [line.strip() for line in pip_section] == ["-e ."], "conda installs the dependencies; pip only the project"


def test_plotting_and_widgets_are_book_dependencies_not_runtime_ones():
    runtime = set(map(requirement_name, PYPROJECT["project"]["dependencies"]))
    book = set(map(requirement_name, extra("book")))
    assert {"matplotlib", "ipywidgets"} & runtime == set()
    assert {"matplotlib", "ipywidgets", "mystmd", "jupytext"} <= book


def test_the_library_imports_without_the_book_extra():
    """Every module of nanogpt_lib imports with matplotlib and the widget libraries absent."""
    modules = sorted(p.stem for p in (ROOT / "nanogpt_lib").glob("*.py") if p.stem != "__init__")
    code = (
        "import sys\n"
        "for name in ('matplotlib', 'ipywidgets', 'anywidget', 'IPython', 'jupytext'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        f"import importlib\nfor m in {modules!r}:\n    importlib.import_module('nanogpt_lib.' + m)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_ci_installs_pinned_versions_from_the_constraints_file():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'pip install -q -e "\.\[dev\]" -c constraints\.txt', ci)
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[\w.+!-]+", version), f"{line!r}: pin an exact version"
            pins[requirement_name(name).replace("_", "-")] = version
    assert "torch" not in pins and "nanogpt-lib" not in pins, "torch is pinned by .ci/run itself; the project is not"
    extras = PYPROJECT["project"]["optional-dependencies"]
    wanted = PYPROJECT["project"]["dependencies"] + extras["book"] + extras["dev"]
    unpinned = [
        name
        for req in wanted
        if ";" not in req and (name := requirement_name(req).replace("_", "-")) not in {"torch", "nanogpt-lib"}
        and name not in pins
    ]
    assert unpinned == [], f"regenerate constraints.txt (README: Updating the pinned versions): {unpinned}"


def test_dependencies_have_lower_bounds_only():
    deps = PYPROJECT["project"]["dependencies"]
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        deps = deps + extra
    for req in deps:
        assert not re.search(r"(==|<|~=)", req.split(";")[0]), f"{req}: use lower bounds only"


def test_dev_extra_includes_book_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "nanogpt-lib[book]" in extras["dev"]
    for tool in ("pytest", "nbval", "ruff", "pytest-xdist"):
        assert any(requirement_name(r) == tool for r in extras["dev"]), tool


def _nanogpt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nanogpt_lib.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_command_version_and_help():
    import nanogpt_lib

    r = _nanogpt("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"nanogpt {nanogpt_lib.__version__}"
    r = _nanogpt("--help")
    assert r.returncode == 0 and "usage: nanogpt" in r.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "nanogpt"
    assert script.exists(), "pip install -e . must install the `nanogpt` command"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("nanogpt ")


def test_ruff_is_clean():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "nanogpt_lib", "tools", "tests", "bench", "conftest.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def chapters() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "chapters").glob("*.md"))


def test_myst_toc_lists_every_chapter_in_order():
    import yaml

    toc = yaml.safe_load((ROOT / "myst.yml").read_text())["project"]["toc"]
    files = [entry["file"] for entry in toc]
    assert files[0] == "intro.md", "the introduction is the site's landing page, before the chapters"
    assert [f for f in files if not (ROOT / f).is_file()] == [], "the toc lists files that do not exist"
    listed = [f for f in files if f.startswith("chapters/")]
    assert listed == chapters()


def test_readme_lists_every_chapter():
    readme = (ROOT / "README.md").read_text()
    for chapter in chapters():
        assert f"({chapter})" in readme, f"README's chapter table is missing {chapter}"


@pytest.mark.parametrize("chapter", chapters())
def test_chapter_format(chapter: str):
    """A jupytext MyST notebook that reads the quick switch in exactly one place."""
    import jupytext

    text = (ROOT / chapter).read_text()
    assert "format_name: myst" in text
    nb = jupytext.read(ROOT / chapter)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    switch = [c for c in nb.cells if c.cell_type == "code" and "NANOGPT_QUICK" in c.source]
    assert len(switch) == 1, f"{chapter} must read NANOGPT_QUICK in one visible cell"
    assert "MPLBACKEND" not in text


def readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = readme_blocks()
    assert len(blocks[0].strip().splitlines()) == 1, "the first command is one line"
    setup = [command.strip() for command in blocks[0].strip().split("&&")]
    assert setup[0] == "pip install -e .", "the first command installs the project, the `nanogpt` command alone"
    assert setup[1:] == ["nanogpt prepare shakespeare_char", "nanogpt train --time-budget 60"]
    assert [command.strip() for command in blocks[1].strip().split("&&")] == ['pip install -e ".[dev]"', "pytest"]
    assert 'pip install -q -e ".[dev]"' in ci and "\npytest\n" in ci
    assert "nanogpt train" not in ci and "nanogpt prepare" not in ci, "CI installs and tests; it does not train"
    assert ci.index("torch==2.13.0") < ci.index('-e ".[dev]"')


def readme_nanogpt_commands() -> list[str]:
    """The README's `nanogpt` commands for a first run, in the order written: the first command's, the sample
    from its run, then the three of "Training on your own text"."""
    readme = (ROOT / "README.md").read_text()
    first = [c.strip() for c in readme_blocks()[0].split("&&") if c.strip().startswith("nanogpt ")]
    sample = re.search(r"`(nanogpt sample --ckpt out/shakespeare_char [^`]*)`", readme).group(1)
    own = re.search(r"## Training on your own text\n.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [*first, sample, *own.strip().splitlines()]


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    """The README's first-run commands work as written, one after the other, in a fresh folder with the reader's
    own text in `my_notes/` (tiny Shakespeare from NANOGPT_TINYSHAKESPEARE, offline); the two training runs get a
    2 s budget instead of 60 s."""
    from nanogpt_lib.data import load_text

    commands = readme_nanogpt_commands()
    assert [c.split()[1] for c in commands] == ["prepare", "train", "sample", "prepare", "train", "sample"]
    text = load_text()[:60_000]
    (tmp_path / "my_notes" / "plays").mkdir(parents=True)
    (tmp_path / "my_notes" / "notes.txt").write_text(text[:30_000], encoding="utf-8")
    (tmp_path / "my_notes" / "plays" / "more.md").write_text(text[30_000:], encoding="utf-8")
    env = dict(os.environ, NANOGPT_DATA_DIR=str(tmp_path / "data"), TQDM_DISABLE="1")
    nanogpt = str(Path(sys.executable).parent / "nanogpt")
    for command in commands:
        argv = shlex.split(command.replace("--time-budget 60", "--time-budget 2"))
        r = subprocess.run([nanogpt, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
        assert argv[1] != "sample" or r.stdout.strip(), f"{command} wrote nothing"
    assert (tmp_path / "out" / "shakespeare_char").is_dir() and (tmp_path / "out" / "my_notes").is_dir()


def test_readme_installs_name_the_extras_there_are():
    """Every `pip install -e ".[X]"` in the README names an extra of pyproject.toml, and the table of installs names
    the command's install and the book's and contributors' extras."""
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r'pip install -e "?\.\[([\w,]+)\]', readme))
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    assert named and named <= extras, f"the README installs extras that pyproject.toml lacks: {named - extras}"
    table = [line for line in readme.splitlines() if line.startswith("| ") and "pip install -e" in line]
    installs = [re.search(r"`(pip install -e [^`]*)`", row).group(1) for row in table]
    assert installs == ["pip install -e .", 'pip install -e ".[book]"', 'pip install -e ".[dev]"']


def test_the_command_installs_only_what_the_library_imports():
    """`pip install -e .` is the `nanogpt` command: each runtime dependency is a package the library imports (their
    import names are their names), and every package a module imports at its top is declared, at run time or in an
    extra (`export` is the `onnx` extra's module)."""
    import ast

    runtime = set(map(requirement_name, PYPROJECT["project"]["dependencies"]))
    extras = PYPROJECT["project"]["optional-dependencies"].values()
    declared = runtime | {requirement_name(r).replace("-", "_") for extra in extras for r in extra}
    anywhere, top = set(), set()
    for path in (ROOT / "nanogpt_lib").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "level", 0) == 0:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                found = {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"nanogpt_lib"}
                anywhere |= found
                top |= found if node in tree.body else set()
    assert runtime - anywhere == set(), f"runtime dependencies the library never imports: {runtime - anywhere}"
    assert top - declared == set(), f"imported at the top of a module but not declared: {top - declared}"


def test_jupyterlab_opens_chapters_as_notebooks_and_asks_nothing():
    settings = json.loads((ROOT / ".jupyter" / "labconfig" / "default_setting_overrides.json").read_text())
    viewers = settings["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["markdown"] == viewers["myst"] == "Jupytext Notebook"
    assert settings["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false", "no news popup"


def environment_variables() -> set[str]:
    """The environment variables the library and the chapters read: NANOGPT_* names, a named dataset's variable,
    and tiktoken's cache."""
    from nanogpt_lib.datasets import DATASETS, dataset_env_var

    found = {dataset_env_var(name) for name in DATASETS} | {"TIKTOKEN_CACHE_DIR"}
    for path in [*(ROOT / "nanogpt_lib").glob("*.py"), *(ROOT / "chapters").glob("*.md")]:
        found |= set(re.findall(r"\bNANOGPT_[A-Z0-9]+(?:_[A-Z0-9]+)*\b", path.read_text(encoding="utf-8")))
    return found


def test_readme_table_lists_every_environment_variable():
    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, re.M))
    assert {"NANOGPT_TINYSHAKESPEARE", "TIKTOKEN_CACHE_DIR", "NANOGPT_GPT2_DIR", "NANOGPT_QUICK"} <= rows
    assert environment_variables() - rows == set(), "add these to the README's table of environment variables"


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md", "docs/ARCHITECTURE.md", "bench/README.md"])
def test_documents_cite_only_files_in_the_repository(doc: str):
    """The project's documents are self-contained: every document they name exists in the repository."""
    text = (ROOT / doc).read_text()
    base = (ROOT / doc).parent
    linked = re.findall(r"\]\(([^)#:]+\.(?:md|toml|txt|yml|py))\)", text)
    named = re.findall(r"`([\w./-]+\.md)`", text)
    missing = [name for name in linked if not (base / name).exists()]
    ours = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.md") if not {"build", ".venv"} & set(p.parts)]
    missing += [
        name
        for name in named
        if "NN_" not in name and not any(path == name or path.endswith("/" + name) for path in ours)
    ]
    assert missing == [], f"{doc} names documents that are not in the repository: {missing}"


def test_contributing_points_to_the_architecture_in_the_repository():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    assert "docs/ARCHITECTURE.md" in text and "DESIGN" not in text
    architecture = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for topic in ("## Layout", "## The export contract", "## Public surface", "Quick mode", "Checkpoints", "Errors"):
        assert topic in architecture, topic


# The style rule "no exported cell over ~80 lines", checked for every chapter that exports code.
SHORT_CELL_CHAPTERS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "chapters").glob("*.md")
                             if "#| default_exp" in p.read_text(encoding="utf-8"))  # fmt: skip
MAX_EXPORTED_CELL_LINES = 80


@pytest.mark.parametrize("chapter", SHORT_CELL_CHAPTERS)
def test_exported_cells_are_short(chapter: str):
    sys.path.insert(0, str(ROOT / "tools"))
    import export_chapters

    module = export_chapters.read_chapter(ROOT / chapter, ROOT)
    assert module is not None and module.cells, f"{chapter} exports nothing"
    lines = {c.number: len(c.code.splitlines()) for c in module.cells}
    long = {number: n for number, n in lines.items() if n > MAX_EXPORTED_CELL_LINES}
    assert long == {}, f"{chapter}: exported cells over {MAX_EXPORTED_CELL_LINES} lines (code cell: lines): {long}"
