"""The repository's front pages stay one screen, and their links hold in the repository (issue 26, item 4).

README.md and BENCHMARKS.md are read on GitHub as well as on the site (where ``tests/docs/test_site.py`` checks the
rewritten links): a relative link must name a file of the repository, and an anchor a heading of that file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_LIMIT = 10_000  # characters: what it is, why, the two commands, one example, features, links
BENCHMARKS_LIMIT = 6_000  # the summary table, the plots and the links; the findings and archive live in docs/
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (MkDocs' anchors): lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+?)\s*$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    """The relative links of a Markdown file whose file or anchor does not exist."""
    bad = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            bad.append(f"{target}: no heading #{anchor} in {file}")
    return bad


def test_the_readme_fits_one_screen() -> None:
    size = len((REPO / "README.md").read_text(encoding="utf-8"))
    assert size <= README_LIMIT, f"README.md is {size} characters (limit {README_LIMIT}): move text to docs/"


def test_benchmarks_front_page_is_a_summary() -> None:
    text = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert len(text) <= BENCHMARKS_LIMIT, f"BENCHMARKS.md is {len(text)} characters: move runs to docs/benchmarks/"
    # Raw results are linked, not pasted.
    assert not re.search(r"^```json", text, re.M)
    # Every figure of the summary table says the command that measures it.
    rows = [line for line in text.splitlines() if re.match(r"\| \d\. ", line)]
    assert rows and all("`scripts/bench" in row or "python -m benchlib" in row for row in rows), rows


@pytest.mark.parametrize("name", ["README.md", "BENCHMARKS.md", "CONTRIBUTING.md"])
def test_front_page_links_hold_in_the_repository(name: str) -> None:
    bad = broken_links(REPO / name)
    assert not bad, "\n".join(bad)


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# Two words\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#two-words) [file](c.md) [anchor](b.md#three) [web](https://x.org/c.md) [self](#top)\n"
                    "# Top\n")
    assert [line.split(":")[0] for line in broken_links(page)] == ["c.md", "b.md#three"]
