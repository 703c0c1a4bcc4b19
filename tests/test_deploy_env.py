"""The environments that run the book elsewhere can run every chapter.

The site workflow (`.github/workflows/site.yml`) executes every chapter, and Binder
(`binder/requirements.txt`, then `binder/postBuild`) gives readers a kernel for them; neither runs
in the test suite's `dev` environment, which has everything. So this test reads their install
lines, expands what they install into its dependency closure (the project's extras from
pyproject.toml, every other package from its installed metadata), and checks that every module the
chapters import, and every module the library imports at its top level, comes from that closure.
"""

import ast
import importlib.metadata as md
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

import jupytext
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
OPTIONS_WITH_VALUES = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-f", "--find-links"}


def pip_requirements(command: str, here: Path = ROOT) -> list[str]:
    """The requirements that one shell line of `pip install ...` asks for (`-r` files read, `.` as the project)."""
    if not re.search(r"\bpip3? install\b", command.split("#", 1)[0]):
        return []
    words = ["pip" if w == "pip3" else w for w in shlex.split(command.split("#", 1)[0])]
    args, found = words[words.index("install", words.index("pip")) + 1:], []
    i = 0
    while i < len(args):
        word = args[i]
        if word in ("-r", "--requirement"):
            found += requirements_file(here / args[i + 1])
            i += 2
        elif word in ("-e", "--editable"):
            found.append(args[i + 1])
            i += 2
        elif word in OPTIONS_WITH_VALUES:
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            found.append(word)
            i += 1
    return [PYPROJECT["project"]["name"] + r[1:] if r.startswith(".") else r for r in found]


def requirements_file(path: Path) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-")]


def site_installs() -> list[str]:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "site.yml").read_text())
    runs = [s.get("run", "") for s in workflow["jobs"]["build"]["steps"]]
    return [r for run in runs for line in run.splitlines() for r in pip_requirements(line)]


def binder_installs() -> list[str]:
    # repo2docker installs binder/requirements.txt, then runs binder/postBuild
    found = requirements_file(ROOT / "binder" / "requirements.txt")
    for line in (ROOT / "binder" / "postBuild").read_text().splitlines():
        found += pip_requirements(line)
    return found


def _project_requirements(extras: Iterable[str]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return reqs


def closure(requirements: Iterable[str]) -> set[str]:
    """Every distribution (canonical name) that installing `requirements` brings, by the installed metadata."""
    stack, seen, done = [Requirement(r) for r in requirements], set(), set()
    while stack:
        req = stack.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        seen.add(name)
        if name == PROJECT:
            stack += _project_requirements(extras)
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # not installed here: counted, but its own dependencies are unknown
        for text in dist.requires or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ("", *extras)):
                stack.append(dep)
    return seen


def _imports(tree: ast.AST, top_level_only: bool = False) -> set[str]:
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def chapter_imports(chapter: Path) -> set[str]:
    """The top-level packages a chapter's code cells import (IPython's `%` and `!` lines left out)."""
    names = set()
    for cell in jupytext.read(chapter).cells:
        if cell.cell_type == "code":
            source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            names |= _imports(ast.parse(source))
    return names


def library_imports() -> set[str]:
    """What the library's modules import when they are imported (imports inside functions are left out)."""
    names = set()
    for module in (ROOT / "nanogpt_lib").glob("*.py"):
        names |= _imports(ast.parse(module.read_text()), top_level_only=True)
    return names


def missing_modules(installed: set[str]) -> list[str]:
    """`where: module (distribution)` for every module the book needs that `installed` does not provide."""
    providers = md.packages_distributions()
    needs = {f"chapters/{c.name}": chapter_imports(c) for c in sorted((ROOT / "chapters").glob("*.md"))}
    needs["nanogpt_lib"] = library_imports()
    missing = []
    for where, modules in needs.items():
        for module in sorted(modules - set(sys.stdlib_module_names) - {"nanogpt_lib", "__future__"}):
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists:
                missing.append(f"{where}: {module} (no installed distribution provides it)")
            elif not dists & installed:
                missing.append(f"{where}: {module} ({', '.join(sorted(dists))})")
    return missing


@pytest.mark.parametrize("environment", ["site.yml", "binder"])
def test_every_chapter_runs_in_the_deploy_environment(environment):
    installs = site_installs() if environment == "site.yml" else binder_installs()
    project = [r for r in installs if canonicalize_name(Requirement(r).name) == PROJECT]
    assert project, f"{environment} does not install the project"
    missing = missing_modules(closure(installs))
    assert missing == [], f"{environment} installs {installs}, which lacks what the book imports: {missing}"


def test_the_check_sees_a_missing_extra():
    """Without the `hf` extra's packages, chapter 08's `transformers` is reported (the site's failure in the past)."""
    without_hf = closure(["nanogpt-lib[book]"]) - closure(["transformers", "huggingface_hub"])
    missing = missing_modules(without_hf)
    assert any(m.startswith("chapters/08_gpt2.md: transformers") for m in missing), missing


def test_install_lines_are_read_as_pip_reads_them():
    assert pip_requirements('pip install -e ".[book,hf]"') == ["nanogpt-lib[book,hf]"]
    assert pip_requirements("pip install torch --index-url https://download.pytorch.org/whl/cpu") == ["torch"]
    assert pip_requirements("pip install --no-cache-dir -e .") == ["nanogpt-lib"]
    assert pip_requirements("nanogpt prepare shakespeare_char") == []
    assert re.fullmatch(r"[a-z0-9-]+", PROJECT)
