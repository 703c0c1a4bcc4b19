"""Check a MyST content build (`_build/site`) for what MyST's own error rules do not catch.

- **Broken internal links.** MyST resolves `[text](chapters/03_attention.md)` to the page; a link
  to a file that does not exist stays a plain relative link, silently. Every relative link left
  unresolved in a built page is reported.
- **Pages without outputs** (`--outputs`, after `myst build --execute`). MyST executes the
  chapters through a Jupyter server; when that server cannot start (as root without
  `allow_root`, see .ci/jupyter/), MyST still writes every page, only without outputs. Every
  page that has code cells but not a single output is reported.
- **Chapter 11's playground.** Its page must hold an `{anywidget}` node with the package's
  `playground.js`, the graph's sizes, a tokenizer of the graph's vocabulary, and the URLs of
  the graph and ONNX Runtime Web's files (which the site workflow copies beside the pages).
- **Chapter 7's live explorer.** Its page must hold an `{anywidget}` node whose ES module and CSS
  were copied into the site and whose model carries the explorer's data (tokens and weights of
  the right size), as `tools/explorer_page.py` writes them.
- **Per-page downloads.** Every chapter's page must offer its own notebook.
- **Nothing asks for a kernel** (`--outputs`). A widget's output (a progress bar, a widget a cell
  returns) is a `widget-view` that a static page cannot draw: the theme shows "a Jupyter kernel
  connection is required" instead. Every shown output of that kind is reported.
- **No empty code boxes.** A cell whose only lines are directives (`#| default_exp ...`) shows as
  an empty box unless it is tagged `remove-cell`; every such cell left showing is reported.
- **The learner's apparatus.** Every main chapter (00-11) shows at least 2 explanatory diagrams
  (figures labelled `fig-diagram-...`, not data plots) and 20 in all, and has at least 5 exercises
  of which at least 2 ask for a prediction before running (labels holding `-predict-`).
- **Numbers unique across the book.** Each chapter numbers its figures, equations and tables with
  its own prefix (front matter `numbering: enumerator: "4.%s"`); two with the same number are reported.

    python tools/check_site.py [--outputs] [_build/site]

Exits 1 and names the pages when something is wrong.
"""

from __future__ import annotations

import argparse
import base64
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


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _shown(node: dict) -> bool:
    return node.get("visibility") not in ("remove", "hide")


def _code_blocks(mdast: dict) -> Iterator[dict]:
    yield from (n for n in _nodes(mdast) if n.get("type") == "block" and n.get("kind") == "notebook-code")


def kernel_outputs(site: Path) -> list[str]:
    """`page: cell N` for every shown output that only a live kernel can draw (a widget view)."""
    found = []
    for location, mdast in _pages(site):
        for number, block in enumerate(_code_blocks(mdast), start=1):
            outputs = [c for c in block.get("children", []) if c.get("type") == "outputs" and _shown(c)]
            data = [o.get("jupyter_data", {}).get("data", {}) for out in outputs for o in out.get("children", [])]
            if _shown(block) and any(WIDGET_VIEW in d for d in data):
                found.append(f"{location}: code cell {number} shows a widget that needs a kernel")
    return found


def empty_cells(site: Path) -> list[str]:
    """`page: cell N` for every shown code cell with no code (its lines were all `#|` directives)."""
    found = []
    for location, mdast in _pages(site):
        for number, block in enumerate(_code_blocks(mdast), start=1):
            code = [c for c in block.get("children", []) if c.get("type") == "code"]
            if _shown(block) and code and not any(c.get("value", "").strip() for c in code):
                found.append(f"{location}: code cell {number} is empty on the page (tag it remove-cell)")
    return found


def duplicate_numbers(site: Path) -> list[str]:
    """`kind number: pages` for every figure, equation or table number that two of them share across the book."""
    seen: dict[tuple[str, str], list[str]] = {}
    for location, mdast in _pages(site):
        for node in _nodes(mdast):
            kind = node.get("kind") if node.get("type") == "container" else node.get("type")
            if kind in ("figure", "table", "math") and node.get("enumerator") and node.get("identifier"):
                seen.setdefault((kind, node["enumerator"]), []).append(f"{location}#{node['identifier']}")
    return [f"{kind} {number}: {', '.join(where)}" for (kind, number), where in sorted(seen.items()) if len(where) > 1]


MAIN_CHAPTER = re.compile(r"^/chapters/\d\d_")
MIN_DIAGRAMS, MIN_ALL_DIAGRAMS, MIN_EXERCISES, MIN_PREDICT = 2, 20, 5, 2


def apparatus(site: Path) -> dict[str, tuple[int, int, int]]:
    """For each main chapter's page: (explanatory diagrams, exercises, predict-then-run exercises)."""
    counts = {}
    for location, mdast in _pages(site):
        if not MAIN_CHAPTER.match(location):
            continue
        ids = [(n.get("type"), n.get("kind"), n.get("identifier", "")) for n in _nodes(mdast)]
        diagrams = {i for t, k, i in ids if t == "container" and k == "figure" and i.startswith("fig-diagram-")}
        exercises = {i for t, _, i in ids if t == "exercise"}
        counts[location] = (len(diagrams), len(exercises), sum("-predict-" in i for i in exercises))
    return counts


def apparatus_problems(site: Path) -> list[str]:
    """Main chapters short of diagrams, exercises or predict-then-run exercises, and a book short of diagrams."""
    counts, problems = apparatus(site), []
    for location, (diagrams, exercises, predict) in sorted(counts.items()):
        if diagrams < MIN_DIAGRAMS:
            problems.append(f"{location}: {diagrams} explanatory diagram(s) (fig-diagram-...), need {MIN_DIAGRAMS}")
        if exercises < MIN_EXERCISES or predict < MIN_PREDICT:
            problems.append(f"{location}: {exercises} exercises of which {predict} predict-then-run (-predict-), "
                            f"need {MIN_EXERCISES} and {MIN_PREDICT}")  # fmt: skip
    total = sum(d for d, _, _ in counts.values())
    if counts and total < MIN_ALL_DIAGRAMS:
        problems.append(f"the book has {total} explanatory diagrams, need {MIN_ALL_DIAGRAMS}")
    return problems


EXPLORER_PAGE = "/chapters/07_inside.md"


def page_data(site: Path, location: str) -> dict:
    """The built JSON of the page at `location` (such as "/chapters/07_inside.md"): frontmatter, mdast, ..."""
    for file in (site / "content").glob("*.json"):
        data = json.loads(file.read_text())
        if data.get("location") == location:
            return data
    raise FileNotFoundError(f"no page {location} under {site / 'content'}")


def _public(site: Path, url: str | None) -> Path | None:
    """The file a site-absolute URL of a copied asset points to, if it is there."""
    path = site / "public" / str(url or "").lstrip("/")
    return path if url and path.is_file() else None


def explorer_problems(site: Path, location: str = EXPLORER_PAGE) -> list[str]:
    """What is wrong with the live explorer on `location`'s page: no `{anywidget}` node, a missing module, bad data."""
    widgets = [n for n in _nodes(page_data(site, location)["mdast"]) if n.get("type") == "anywidget"]
    if len(widgets) != 1:
        return [f"{location}: {len(widgets)} anywidget nodes, expected the explorer (tools/explorer_page.py)"]
    node, problems = widgets[0], []
    esm, css = _public(site, node.get("esm")), _public(site, node.get("css"))
    if esm is None or (ROOT / "nanogpt_lib" / "static" / "explorer.js").read_bytes() != esm.read_bytes():
        problems.append(f"{location}: the explorer's ES module {node.get('esm')} is not the package's explorer.js")
    if css is None:
        problems.append(f"{location}: the explorer's CSS {node.get('css')} was not copied into the site")
    data = node.get("model", {}).get("data", {})
    T, L, H = len(data.get("tokens", [])), data.get("n_layer", 0), data.get("n_head", 0)
    runs = data.get("runs", [])
    if not (T and L and H and runs):
        return [*problems, f"{location}: the explorer's model has no tokens, shape or runs"]
    for run in runs:
        weights = run.get("weights", "")
        weights = "".join(weights) if isinstance(weights, list) else weights  # a static page's are in chunks
        if len(base64.b64decode(weights)) != 2 * L * H * T * (T + 1) // 2:
            problems.append(f"{location}: run {run.get('name')!r} does not hold {L}x{H} causal {T}x{T} weights")
    return problems


PLAYGROUND_PAGE = "/chapters/11_anywhere.md"


def playground_problems(site: Path, location: str = PLAYGROUND_PAGE) -> list[str]:
    """What is wrong with chapter 11's live playground: no `{anywidget}` node, a missing module, missing data."""
    widgets = [n for n in _nodes(page_data(site, location)["mdast"]) if n.get("type") == "anywidget"]
    if len(widgets) != 1:
        return [f"{location}: {len(widgets)} anywidget nodes, expected the playground (tools/playground_page.py)"]
    node, problems = widgets[0], []
    esm = _public(site, node.get("esm"))
    if esm is None or (ROOT / "nanogpt_lib" / "static" / "playground.js").read_bytes() != esm.read_bytes():
        problems.append(f"{location}: the playground's ES module {node.get('esm')} is not the package's playground.js")
    model = node.get("model", {})
    config, tokenizer = model.get("config", {}), model.get("tokenizer", {})
    if not all(config.get(k) for k in ("n_layer", "n_head", "head_dim", "block_size", "vocab_size")):
        problems.append(f"{location}: the playground's model has no complete config: {config}")
    merged = 256 + len(tokenizer.get("merges", [])) + len(tokenizer.get("special_tokens") or {})
    size = {"char": len(tokenizer.get("chars", "")), "bpe": merged}.get(tokenizer.get("type"), 0)
    if not 0 < size <= config.get("vocab_size", 0):  # a model may have more rows than its tokenizer uses
        problems.append(f"{location}: the playground's tokenizer does not match its vocabulary")
    for key in ("onnx_url", "ort_url", "ort_wasm_url"):
        if not str(model.get(key, "")).split("/")[-1]:
            problems.append(f"{location}: the playground names no {key}")
    return problems


# Chapters whose front matter does not name their notebook yet (they are being edited on other branches);
# they get the same three lines as the others when merged, and leave this set then.
AWAITING_DOWNLOADS: frozenset[str] = frozenset()


def download_problems(site: Path, awaiting: frozenset[str] = AWAITING_DOWNLOADS) -> list[str]:
    """Chapter pages that do not offer exactly their own notebook (`<stem>.ipynb`) as their download.

    A chapter in `awaiting` may offer no notebook yet, but never another chapter's.
    """
    problems = []
    for file in sorted((site / "content").glob("*.json")):
        data = json.loads(file.read_text())
        location = data.get("location", "")
        if not location.startswith("/chapters/"):
            continue
        stem = Path(location).stem
        downloads = data.get("frontmatter", {}).get("downloads", [])
        names = [Path(d.get("filename") or d.get("url", "")).name for d in downloads]
        own = any(n == f"{stem}.ipynb" for n in names) or (stem in awaiting and not downloads)
        if not own or any(n.endswith(".ipynb") and n != f"{stem}.ipynb" for n in names):
            problems.append(f"{location}: downloads {names}, expected its own {stem}.ipynb")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", type=Path, default=ROOT / "_build" / "site")
    parser.add_argument("--outputs", action="store_true", help="also require outputs on every page with code")
    args = parser.parse_args()
    problems = [f"broken link {link}" for link in broken_links(args.site)]
    problems += download_problems(args.site)
    problems += empty_cells(args.site)
    problems += [f"number used twice: {d}" for d in duplicate_numbers(args.site)]
    problems += apparatus_problems(args.site)
    if any(location == EXPLORER_PAGE for location, _ in _pages(args.site)):
        problems += explorer_problems(args.site)
    if any(location == PLAYGROUND_PAGE for location, _ in _pages(args.site)):
        problems += playground_problems(args.site)
    if args.outputs:
        problems += [f"no outputs on {page} (did the execution run?)" for page in pages_without_outputs(args.site)]
        problems += kernel_outputs(args.site)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    checked = ("links resolve, the explorer is live, each chapter offers its notebook, no empty code cells, "
               "numbers unique, every main chapter has its diagrams and predict-then-run exercises")
    checked += ", every page with code has outputs and none needs a kernel" if args.outputs else ""
    print(f"site content in {args.site}: {checked}")


if __name__ == "__main__":
    main()
