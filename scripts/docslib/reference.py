"""Which API reference pages the site has, worked out from the source (no list kept by hand).

A *public module* is a module of ``src/dltrain`` whose dotted path has no component starting with ``_``. Every
public package gets a page that documents its ``__all__`` (the names users import from it: ``dltrain.Trainer``,
``dltrain.callbacks.ModelCheckpoint``). A public module inside a package gets a page of its own for the public
names that no enclosing package exports (``dltrain.callbacks.throughput.device_peak_flops``) and for the names its
``__all__`` re-exports that no other page documents; a module whose every public name is exported by a package
is documented on that package's page. So a new public module or name is on
the site without anyone editing a list, and ``tests/docs/test_reference.py`` fails when a public module or name
is on no page.

The analysis is static (griffe, as mkdocstrings reads the code): nothing of dltrain is imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = "dltrain"


@dataclass
class Page:
    """One reference page: a module and the names it documents."""

    module: str
    names: list[str]
    is_package: bool
    summary: str = ""
    covered_elsewhere: list[str] = field(default_factory=list)  # public names documented on a package's page

    @property
    def path(self) -> str:
        """The page's path under docs/reference/: a package's is its section's index (``dltrain.data/index.md``),
        a module's sits beside it under its dotted name (``dltrain.data/dltrain.data.index.md``), so the two never
        meet (a module may be called ``index``)."""
        if self.is_package:
            return f"{self.module}/index.md"
        return f"{self.module.rsplit('.', 1)[0]}/{self.module}.md"


def public_modules(src: Path = SRC) -> list[str]:
    """Every public module of the package, from the files (a module that fails to parse is still listed)."""
    found = []
    for file in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(file.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        found.append(".".join(parts))
    return found


def _walk(module) -> Iterator:
    yield module
    for sub in module.modules.values():
        if sub.is_alias:  # `from x import y as z` of a module
            continue
        yield from _walk(sub)


def _first_line(obj) -> str:
    doc = obj.docstring.value.strip() if obj.docstring else ""
    return doc.splitlines()[0] if doc else ""


def plan(src: Path = SRC) -> dict[str, Page]:
    """The reference pages by module name, packages first in each package's order."""
    import griffe

    root = griffe.load(PACKAGE, search_paths=[str(src)], resolve_aliases=False)
    modules = {m.path: m for m in _walk(root) if not any(p.startswith("_") for p in m.path.split("."))}
    # What each public package exports, as canonical object paths: those names are documented on its page.
    exported: set[str] = set()
    pages: dict[str, Page] = {}
    for path, module in modules.items():
        if not module.is_init_module:
            continue
        names = [str(n) for n in module.exports] if module.exports is not None else [
            n for n, o in module.members.items() if o.is_public and not o.is_module]
        for name in names:
            member = module.members.get(name)
            if member is not None:
                exported.add(member.target_path if member.is_alias else member.path)
        pages[path] = Page(path, names, True, _first_line(module))
    for path, module in modules.items():
        if module.is_init_module:
            continue
        own = [n for n, o in module.members.items()
               if not o.is_alias and not o.is_module and o.is_public and not n.startswith("_")]
        rest = [n for n in own if f"{path}.{n}" not in exported]
        if rest:
            pages[path] = Page(path, rest, False, _first_line(module), [n for n in own if n not in rest])
    # A module may re-export names in its __all__ (dltrain.data.shards keeps the imports of before a split): a
    # re-exported object that no page documents yet is documented on that module's page.
    documented = exported | {f"{page.module}.{n}" for page in pages.values() if not page.is_package for n in page.names}
    for path, module in modules.items():
        if module.is_init_module or module.exports is None:
            continue
        aliases = [str(n) for n in module.exports if str(n) in module.members and module.members[str(n)].is_alias]
        extra = [n for n in aliases if module.members[n].target_path not in documented]
        if extra:
            page = pages.setdefault(path, Page(path, [], False, _first_line(module)))
            page.names += extra
            documented |= {module.members[n].target_path for n in extra}
    # Each package, then the modules that have pages of their own (the navigation nests them under it).
    def order(page: Page) -> tuple[list[str], bool, str]:
        group = page.module if page.is_package else page.module.rsplit(".", 1)[0]
        return group.split("."), not page.is_package, page.module

    return {page.module: page for page in sorted(pages.values(), key=order)}


def page_markdown(page: Page) -> str:
    """The Markdown of a page: mkdocstrings renders the module's docstring and the page's names."""
    members = "\n".join(f"        - {n}" for n in page.names)
    lines = [f"# `{page.module}`", "", f"::: {page.module}", "    options:", "      show_root_heading: false",
             "      members:", members, ""]
    if page.covered_elsewhere:
        package = page.module.rsplit(".", 1)[0]
        lines += ["", f"Also defined here and documented with their package, [`{package}`][{package}]: "
                  + ", ".join(f"[`{n}`][{package}.{n}]" for n in page.covered_elsewhere) + ".", ""]
    return "\n".join(lines)


def summary_markdown(pages: dict[str, Page]) -> str:
    """The Reference section's navigation (literate-nav): one entry per page, nested like the modules."""
    lines = ["* [Overview](index.md)"]
    for page in pages.values():
        indent = "" if page.is_package else "    "
        lines.append(indent + f"* [{page.module}]({page.path})")
    lines.append("* [Command line](cli.md)")
    return "\n".join(lines) + "\n"


def index_markdown(pages: dict[str, Page]) -> str:
    """The Reference section's front page: every module with its one-line summary."""
    lines = ["# API reference", "",
             "Generated from the docstrings of the code. Each public package has a page with the names it exports "
             "(what you import: `dltrain.Trainer`, `dltrain.callbacks.ModelCheckpoint`); a module has a page of its "
             "own for the public names that no package exports. The [command line](cli.md) page is generated from "
             "the `dltrain` command's parsers.", "", "| module | what |", "| --- | --- |"]
    for page in pages.values():
        what = page.summary.replace("|", "\\|")
        lines.append(f"| [`{page.module}`]({page.path}) | {what} |")
    return "\n".join(lines) + "\n"
