"""Links of the repository-root Markdown files (README.md, BENCHMARKS.md) rewritten for the site.

They are written for the repository (``docs/DESIGN.md``); on the site that page is ``DESIGN.md``, and a link to a
file that is not on the site (``examples/...``) keeps its text only.
"""

from __future__ import annotations

import posixpath
import re

from docslib import reference

ROOT = reference.ROOT
# Repository files that are pages of the site, and where.
SITE_PAGES = {"README.md": "index.md", "BENCHMARKS.md": "benchmarks/index.md"}
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def site_target(repo_path: str) -> str | None:
    """Where a repository file is on the site (a path under docs/), or None when it is not."""
    if repo_path in SITE_PAGES:
        return SITE_PAGES[repo_path]
    if repo_path.startswith("docs/"):
        return repo_path[len("docs/"):]
    return None


def rewrite_links(text: str, page: str) -> str:
    """The links of a repository-root Markdown file, for the site page ``page`` (a path under docs/)."""

    def fix(match: re.Match[str]) -> str:
        bang, label, target = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        where = site_target(posixpath.normpath(path))
        if where is None:
            return label if not bang else ""
        rel = posixpath.relpath(where, posixpath.dirname(page) or ".")
        return f"{bang}[{label}]({rel}{'#' + anchor if anchor else ''})"

    return _LINK.sub(fix, text)
