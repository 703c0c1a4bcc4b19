"""The test suite's own wiring: chapter notebooks are built so that parallel workers never see half a file."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The project's own conftest.py (the one at the root, not tests/conftest.py), loaded by its path.
_spec = importlib.util.spec_from_file_location("project_conftest", ROOT / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


def test_chapter_notebooks_are_written_whole_or_not_at_all(tmp_path: Path, monkeypatch):
    """Under `pytest -n N` workers rebuild the notebooks while others read them: the target is only ever renamed into
    place complete, and an interrupted build leaves the previous notebook and no temporary file."""
    chapter = ROOT / "chapters" / "00_setup.md"
    target = conftest.build_notebook(chapter, tmp_path)
    before = target.read_bytes()
    assert json.loads(before)["cells"], "a complete notebook"
    seen = []
    real_replace = os.replace

    def checked_replace(src, dst):
        assert Path(dst) == target and target.read_bytes() == before, "the target must not be written in place"
        seen.append(json.loads(Path(src).read_text()))  # the new file is complete before it is renamed
        real_replace(src, dst)

    monkeypatch.setattr(conftest.os, "replace", checked_replace)
    assert conftest.build_notebook(chapter, tmp_path) == target and len(seen) == 1
    assert json.loads(target.read_text())["cells"][0]["source"] == seen[0]["cells"][0]["source"]
    before = target.read_bytes()

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(conftest.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        conftest.build_notebook(chapter, tmp_path)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_parallel_runs_keep_each_file_on_one_worker():
    """`-n N` means `--dist load` (any test on any worker): a chapter's cells share a kernel, so files stay whole."""

    for given, expected in (("load", "loadfile"), ("loadfile", "loadfile"), ("no", "no")):
        config = SimpleNamespace(option=SimpleNamespace(dist=given))
        conftest.pytest_configure(config)
        assert config.option.dist == expected


def test_each_xdist_worker_gets_its_share_of_the_cores():
    """Under `pytest -n N` the root conftest gives each worker's PyTorch (and the kernels and subprocesses it starts,
    through the environment) cores // N threads, at least one; outside xdist nothing is limited."""
    probe = "import conftest, os, torch; print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))"
    cores = len(os.sched_getaffinity(0))
    for workers, expected in ((2, max(1, cores // 2)), (4 * cores, 1)):
        env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
        env["PYTEST_XDIST_WORKER_COUNT"] = str(workers)
        out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.stdout.split() == [str(expected), str(expected)], out.stderr
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and not k.startswith("PYTEST_XDIST")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    threads, variable = out.stdout.split()
    assert variable == "None" and int(threads) >= max(1, cores // 2)
