"""Test-suite wiring: run every chapter as a notebook (nbval) in quick mode, offline.

Each `chapters/*.md` is converted by jupytext into `build/chapters/*.ipynb` (git-ignored) and
executed top to bottom in a fresh kernel. The kernel inherits this process's environment, so
the switches below reach the chapters too.
"""

import os
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent
BUILD = ROOT / "build" / "chapters"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("NANOGPT_QUICK", "1")
# Offline copies of the datasets, where a checkout has them beside it (CI sets these itself).
if (SHARED_DATA / "tinyshakespeare" / "input.txt").exists():
    os.environ.setdefault("NANOGPT_TINYSHAKESPEARE", str(SHARED_DATA / "tinyshakespeare" / "input.txt"))
if (SHARED_DATA / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DATA / "tiktoken_cache"))


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix != ".md" or file_path.parent != ROOT / "chapters":
        return None
    from _pytest.compat import legacy_path
    from nbval.plugin import IPyNbFile

    class ChapterNotebook(IPyNbFile):
        """nbval's notebook collector, named after the chapter but running its .ipynb build."""

        @property
        def fspath(self):
            return legacy_path(BUILD / (self.path.stem + ".ipynb"))

    BUILD.mkdir(parents=True, exist_ok=True)
    jupytext.write(jupytext.read(file_path), BUILD / (file_path.stem + ".ipynb"))
    return ChapterNotebook.from_parent(parent, path=file_path)
