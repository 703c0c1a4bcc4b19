"""Write every chapter as a Jupyter notebook for the site's downloads.

The chapters are MyST-Markdown notebooks; a reader who downloads one wants an `.ipynb`.
`myst.yml` lists `_build/notebooks/<chapter>.ipynb` under `downloads`, so this runs before a
site build (the deploy workflow and the offline site check both run it).

    python tools/site_notebooks.py                 # writes _build/notebooks/*.ipynb
    python tools/site_notebooks.py --out some/dir
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parent.parent


def write_notebooks(root: Path = ROOT, out: Path | None = None) -> list[Path]:
    """Convert each `chapters/*.md` under `root` to `out/<stem>.ipynb`; returns the files written."""
    out = out if out is not None else root / "_build" / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for chapter in sorted((root / "chapters").glob("*.md")):
        dest = out / (chapter.stem + ".ipynb")
        jupytext.write(jupytext.read(chapter), dest)
        written.append(dest)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the notebooks (default: _build/notebooks)")
    args = parser.parse_args()
    for path in write_notebooks(out=args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
