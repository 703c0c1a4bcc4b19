"""Opening and saving a chapter in JupyterLab leaves it byte-identical (the project's jupytext.toml)."""

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.name for p in (ROOT / "chapters").glob("*.md"))


def as_jupyterlab_leaves_it(notebook: dict) -> None:
    """What running a notebook and looking at it in JupyterLab adds before the autosave."""
    notebook["metadata"]["language_info"] = {"name": "python", "version": "3.11.7", "file_extension": ".py"}
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            cell["execution_count"] = i + 1
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "output\n"}]
            cell["metadata"]["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00.000Z"}
            cell["metadata"]["collapsed"] = False
            cell["metadata"]["jupyter"] = {"outputs_hidden": False}


def round_trip(root: Path, name: str) -> tuple[bytes, bytes]:
    """Open a chapter through Jupytext's contents manager (as JupyterLab does), save it back; bytes before, after."""
    from jupytext import TextFileContentsManager

    path = root / "chapters" / name
    before = path.read_bytes()
    manager = TextFileContentsManager(root_dir=str(root))
    model = manager.get(f"chapters/{name}", content=True, type="notebook")
    as_jupyterlab_leaves_it(model["content"])
    manager.save(model, f"chapters/{name}")
    return before, path.read_bytes()


@pytest.mark.parametrize("name", CHAPTERS)
def test_opening_and_saving_a_chapter_leaves_it_unchanged(tmp_path: Path, name: str):
    (tmp_path / "chapters").mkdir()
    shutil.copy(ROOT / "chapters" / name, tmp_path / "chapters" / name)
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    before, after = round_trip(tmp_path, name)
    assert after == before, f"saving {name} through Jupytext rewrites it: adjust jupytext.toml or the chapter's header"


def test_without_the_settings_a_save_would_rewrite_the_header(tmp_path: Path):
    """The check can fail: without jupytext.toml, Jupytext writes its own version into the header."""
    name = CHAPTERS[0]
    (tmp_path / "chapters").mkdir()
    shutil.copy(ROOT / "chapters" / name, tmp_path / "chapters" / name)
    before, after = round_trip(tmp_path, name)
    assert after != before and b"jupytext_version" in after
