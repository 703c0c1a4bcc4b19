"""Check a MyST content build (`_build/site`) for what MyST's own error rules do not catch.

- **Broken internal links.** MyST resolves `[text](chapters/03_attention.md)` to the page; a link
  to a file that does not exist stays a plain relative link, silently. Every relative link left
  unresolved in a built page is reported.
- **Pages without outputs** (`--outputs`, after `myst build --execute`). MyST executes the
  chapters through a Jupyter server; when that server cannot start (as root without
  `allow_root`, see .ci/jupyter/), MyST still writes every page, only without outputs. Every
  page that has code cells but not a single output is reported.

    python tools/check_site.py [--outputs] [_build/site]

Exits 1 and names the pages when something is wrong.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|/|#)", re.I)  # a scheme (https:, mailto:), site-absolute, or a fragment


def _pages(site: Path) -> list[tuple[str, dict]]:
    files = sorted((site / "content").glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no page JSON under {site / 'content'}: run `myst build --site` (or --html) first")
    pages = []
    for file in files:
        data = json.loads(file.read_text())
        pages.append((data.get("location", file.name), data["mdast"]))
    return pages


def _nodes(node: dict) -> Iterator[dict]:
    yield node
    for child in node.get("children", []):
        yield from _nodes(child)


def broken_links(site: Path) -> list[str]:
    """`page: target` for each relative link that MyST left unresolved (a missing file)."""
    broken = []
    for location, mdast in _pages(site):
        for node in _nodes(mdast):
            url = node.get("url", "")
            if node.get("type") == "link" and not node.get("internal") and not node.get("static") \
                    and url and not EXTERNAL.match(url):
                broken.append(f"{location}: {url}")
    return broken


def _n_outputs(cell: dict) -> int:
    return sum(len(child.get("children", [])) for child in cell.get("children", []) if child.get("type") == "outputs")


def pages_without_outputs(site: Path) -> list[str]:
    """The pages that have notebook code cells but not a single output among them."""
    empty = []
    for location, mdast in _pages(site):
        cells = [n for n in _nodes(mdast) if n.get("type") == "block" and n.get("kind") == "notebook-code"]
        if cells and sum(_n_outputs(cell) for cell in cells) == 0:
            empty.append(location)
    return empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", type=Path, default=ROOT / "_build" / "site")
    parser.add_argument("--outputs", action="store_true", help="also require outputs on every page with code")
    args = parser.parse_args()
    problems = [f"broken link {link}" for link in broken_links(args.site)]
    if args.outputs:
        problems += [f"no outputs on {page} (did the execution run?)" for page in pages_without_outputs(args.site)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    checked = "links resolve, every page with code has outputs" if args.outputs else "links resolve"
    print(f"site content in {args.site}: {checked}")


if __name__ == "__main__":
    main()
