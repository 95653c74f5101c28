"""Pages the site generates at build time (run by mkdocs-gen-files from mkdocs.yml).

- ``index.md``: the README, so the site's home page and the repository's front page are one text;
- ``benchmarks/index.md``: BENCHMARKS.md (the summary and its plots);
- ``reference/``: one page per public module (``scripts/docslib/reference.py`` decides which), its navigation and
  front page;
- ``reference/cli.md``: the ``dltrain`` command's reference, from its argparse parsers.

Links in the README and BENCHMARKS.md are rewritten for the site (``docslib.links``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docslib import cli_ref, links, reference


def main() -> None:
    import mkdocs_gen_files

    for source, page in links.SITE_PAGES.items():
        with mkdocs_gen_files.open(page, "w") as f:
            f.write(links.rewrite_links((reference.ROOT / source).read_text(encoding="utf-8"), page))
    pages = reference.plan()
    for page in pages.values():
        with mkdocs_gen_files.open(f"reference/{page.path}", "w") as f:
            f.write(reference.page_markdown(page))
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as f:
        f.write(reference.summary_markdown(pages))
    with mkdocs_gen_files.open("reference/index.md", "w") as f:
        f.write(reference.index_markdown(pages))
    with mkdocs_gen_files.open("reference/cli.md", "w") as f:
        f.write(cli_ref.cli_markdown())


main()
