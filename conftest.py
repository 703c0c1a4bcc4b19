"""Test-suite wiring: run every chapter as a notebook (nbval) in quick mode, offline.

Each `chapters/*.md` is converted by jupytext into `build/chapters/*.ipynb` (git-ignored) and
executed top to bottom in a fresh kernel. The kernel inherits this process's environment, so
the switches below reach the chapters too. Under `pytest -n N` every worker collects every
chapter, so each notebook is written to a temporary file and renamed into place: a worker never
reads another's half-written notebook. A notebook's cells share one kernel, so they must run on
one worker: `-n N` schedules by file (`--dist loadfile`).
"""

import os
import tempfile
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent
BUILD = ROOT / "build" / "chapters"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("NANOGPT_QUICK", "1")


def worker_threads(cores: int, workers: int) -> int:
    """The threads each of `workers` test processes may use on `cores` cores: its share, at least one."""
    return max(1, cores // max(1, workers))


# Under `pytest -n N` each worker (and every kernel or subprocess it starts, which inherit the environment)
# gets its share of the cores: N processes each running PyTorch with all the cores fight for them, and the
# suite then runs several times slower than serially. Set before anything imports PyTorch.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = str(worker_threads(cores, int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[variable] = share
# Offline copies of the datasets, where a checkout has them beside it (CI sets these itself).
if (SHARED_DATA / "tinyshakespeare" / "input.txt").exists():
    os.environ.setdefault("NANOGPT_TINYSHAKESPEARE", str(SHARED_DATA / "tinyshakespeare" / "input.txt"))
if (SHARED_DATA / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DATA / "tiktoken_cache"))


def pytest_configure(config: pytest.Config) -> None:
    # `-n N` alone means `--dist load`, which would scatter a notebook's cells over workers, each with its own
    # kernel; `loadfile` keeps each file (a chapter, a test module) on one worker.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadfile"


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

    build_notebook(file_path)
    return ChapterNotebook.from_parent(parent, path=file_path)


def build_notebook(chapter: Path, build: Path = BUILD) -> Path:
    """Write `build/<chapter>.ipynb` atomically (temporary file, then rename); returns its path."""
    build.mkdir(parents=True, exist_ok=True)
    target = build / (chapter.stem + ".ipynb")
    text = jupytext.writes(jupytext.read(chapter), fmt="ipynb")
    fd, tmp = tempfile.mkstemp(dir=build, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target



# Figures a test measures (a build's time, a browser's tokens/s) are printed in the summary, never asserted:
# a busy machine must not fail the suite. Under `-n N` each worker appends to one file that the main process
# prints at the end.
MEASURED = ROOT / "build" / "measured.txt"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        MEASURED.unlink(missing_ok=True)


@pytest.fixture
def measured(request):
    """`measured(text)` records one line for the end of the test run, after the test's name."""

    def record(text: str) -> None:
        MEASURED.parent.mkdir(parents=True, exist_ok=True)
        with MEASURED.open("a", encoding="utf-8") as f:
            f.write(f"{request.node.nodeid}: {text}\n")

    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if MEASURED.exists() and not hasattr(terminalreporter.config, "workerinput"):
        terminalreporter.section("measured (not asserted)")
        for line in MEASURED.read_text(encoding="utf-8").splitlines():
            terminalreporter.write_line(line)
