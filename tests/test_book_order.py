"""The book reads in order: a chapter builds only on the chapters before it.

A main chapter's exported cells import only library modules that a chapter up to it (or an appendix)
built; the chapters of the basic model (03-05) do not name what later chapters add; no import inside a
library function dodges a cycle; every module imports first, in a fresh interpreter; and every main
chapter stays short enough to read.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))
MAIN = [c for c in CHAPTERS if c.name[:2].isdigit()]
LATER_OPTIONS = (
    "rope", "rmsnorm", "swiglu", "relu2", "qk_norm", "softcap", "Muon", "from_pretrained", "load_hf_gpt2", "n_kv_head"
)
HANDWRITTEN = ("__init__", "cli")


def exported_cells(chapter: Path) -> list[str]:
    cells = jupytext.read(chapter).cells
    return [c.source for c in cells if c.cell_type == "code" and re.search(r"(?m)^#\|\s*export\s*$", c.source)]


def first_chapters() -> dict[str, str]:
    """Each generated module and the first chapter (in book order) that exports into it."""
    first: dict[str, str] = {}
    for chapter in CHAPTERS:
        for name in re.findall(r"(?m)^#\|\s*default_exp\s+(\w+)", chapter.read_text()):
            first.setdefault(name, chapter.name)
    return first


def _order(name: str) -> tuple[int, str]:
    """Main chapters by number; an appendix (A1, A2, ...) counts as coming before every main chapter."""
    prefix = name.split("_")[0]
    return (int(prefix), "") if prefix.isdigit() else (-1, prefix)


def library_imports(code: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nanogpt_lib."):
            modules.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "nanogpt_lib":
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nanogpt_lib.")}
    return modules


def forward_imports(chapter: Path, cells: list[str], first: dict[str, str]) -> list[str]:
    found = []
    for module in sorted(set().union(*map(library_imports, cells)) if cells else set()):
        origin = first.get(module)
        if origin is not None and _order(origin) > _order(chapter.name):
            found.append(f"{chapter.name} imports nanogpt_lib.{module}, which {origin} builds")
    return found


@pytest.mark.parametrize("chapter", MAIN, ids=lambda p: p.name)
def test_a_chapter_imports_only_what_earlier_chapters_built(chapter):
    assert forward_imports(chapter, exported_cells(chapter), first_chapters()) == []


def test_the_order_check_catches_a_forward_import():
    first = first_chapters()
    cell = "#| export\nfrom nanogpt_lib.modern import RMSNorm\n"
    assert forward_imports(ROOT / "chapters" / "03_attention.md", [cell], first) == [
        "03_attention.md imports nanogpt_lib.modern, which 09_modern.md builds"
    ]
    assert forward_imports(ROOT / "chapters" / "10_muon.md", ["import nanogpt_lib.modern\n"], first) == []


@pytest.mark.parametrize("prefix", ["03_", "04_", "05_"])
def test_the_basic_model_does_not_name_what_later_chapters_add(prefix):
    (chapter,) = (c for c in MAIN if c.name.startswith(prefix))
    pattern = re.compile(r"\b(" + "|".join(LATER_OPTIONS) + r")\b")
    named = [m.group(1) for cell in exported_cells(chapter) for m in pattern.finditer(cell)]
    assert named == [], f"{chapter.name}'s exported code names {sorted(set(named))}, which later chapters add"


def test_no_library_function_imports_the_library():
    """An import of nanogpt_lib inside a function is how a cycle gets dodged; the generated modules have none."""
    deferred = []
    for module in sorted((ROOT / "nanogpt_lib").glob("*.py")):
        if module.stem in HANDWRITTEN:
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and library_imports(ast.unparse(inner)):
                        deferred.append(f"{module.name}:{inner.lineno} in {node.name}: {ast.unparse(inner)}")
    assert deferred == []


# One interpreter imports the third-party libraries once, then forks a child per order: each child starts with
# no nanogpt_lib module loaded, as a fresh interpreter would, at a fraction of the cost of starting one.
FORKED_IMPORTS = """
import importlib, os, sys, traceback
import numpy, torch
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            for m in line.split():
                importlib.import_module('nanogpt_lib.' + m)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        sys.exit('importing nanogpt_lib.' + line.split()[0] + ' first failed')
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    modules = sorted(p.stem for p in (ROOT / "nanogpt_lib").glob("*.py") if p.stem != "__init__")
    orders = [[first, *reversed(modules[:i]), *modules[i + 1:]] for i, first in enumerate(modules)]
    if hasattr(os, "fork"):
        r = subprocess.run([sys.executable, "-c", FORKED_IMPORTS], input="".join(" ".join(o) + "\n" for o in orders),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        return
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module('nanogpt_lib.' + m)\n"
    for order in orders:
        r = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"importing nanogpt_lib.{order[0]} first: {r.stderr[-2000:]}"


@pytest.mark.parametrize("chapter", MAIN, ids=lambda p: p.name)
def test_main_chapters_stay_within_1000_lines(chapter):
    lines = chapter.read_text().count("\n")
    assert lines <= 1000, f"{chapter.name} has {lines} lines: move engineering to an appendix"
