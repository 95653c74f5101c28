"""Every public module and name of dltrain is on a page of the API reference, and the pages are generated right.

The reference is generated (scripts/docslib/reference.py), so a new public module gets its page by itself; these
tests fail when one would not (a module that griffe cannot read, a name documented nowhere), and check the
generated Markdown and the link rewriting of the README and BENCHMARKS.md. That the pages render and list their
names in the built site is checked by test_site.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import griffe
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from docslib import links, reference  # noqa: E402


@pytest.fixture(scope="module")
def plan() -> dict[str, reference.Page]:
    return reference.plan()


@pytest.fixture(scope="module")
def package() -> griffe.Module:
    return griffe.load("dltrain", search_paths=[str(REPO / "src")], resolve_aliases=False)


def _module(package: griffe.Module, name: str) -> griffe.Module:
    return package if name == "dltrain" else package[name.removeprefix("dltrain.")]


def test_every_public_module_is_on_a_page(plan: dict[str, reference.Page], package: griffe.Module) -> None:
    """A module has a page of its own, or every public name it defines or re-exports is on another page."""
    documented = set()  # what the pages document, by the object each name stands for
    for page in plan.values():
        module = _module(package, page.module)
        for name in page.names:
            member = module.members[name]
            documented.add(member.target_path if member.is_alias else member.path)
    missing = []
    for name in reference.public_modules():
        if name in plan:
            continue
        module = _module(package, name)
        # What the module offers: the public names it defines, and the names its __all__ re-exports (a module
        # kept for old imports, like dltrain.data.shards), each by the object it stands for.
        public = [f"{name}.{n}" for n, o in module.members.items()
                  if not o.is_alias and not o.is_module and o.is_public and not n.startswith("_")]
        public += [module.members[str(n)].target_path for n in (module.exports or ())
                   if str(n) in module.members and module.members[str(n)].is_alias]
        missing += [p for p in public if p not in documented]
        if not public:
            missing.append(f"{name} (a public module with no public name: make it private, or give it one)")
    assert not missing, "public names on no reference page:\n" + "\n".join(missing)


def test_the_core_packages_have_pages(plan: dict[str, reference.Page]) -> None:
    for name in ("dltrain", "dltrain.callbacks", "dltrain.loggers", "dltrain.data", "dltrain.plugins",
                 "dltrain.plugins.vision", "dltrain.plugins.text", "dltrain.plugins.audio", "dltrain.checkpoint"):
        assert name in plan, name
    assert {"Trainer", "Task", "Callback", "seed_everything"} <= set(plan["dltrain"].names)
    assert "ModelCheckpoint" in plan["dltrain.callbacks"].names


def test_a_new_public_module_gets_a_page_and_a_private_one_does_not(tmp_path: Path) -> None:
    src = tmp_path / "src"
    pkg = src / "dltrain"
    (pkg / "tuner").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Top."""\nfrom dltrain.task import Task\n__all__ = ["Task"]\n')
    (pkg / "task.py").write_text('"""Tasks."""\n__all__ = ["Task"]\nclass Task:\n    """A task."""\n')
    (pkg / "tuner" / "__init__.py").write_text('"""Tuning."""\nfrom dltrain.tuner.lr import find_lr\n'
                                               '__all__ = ["find_lr"]\n')
    (pkg / "tuner" / "lr.py").write_text('"""LR finder."""\ndef find_lr():\n    """Find it."""\n'
                                         'def plot():\n    """Plot it."""\n')
    (pkg / "_private.py").write_text("def helper():\n    pass\n")
    plan = reference.plan(src)
    assert list(plan) == ["dltrain", "dltrain.tuner", "dltrain.tuner.lr"]
    assert plan["dltrain.tuner"].names == ["find_lr"] and plan["dltrain.tuner"].path == "dltrain.tuner/index.md"
    assert plan["dltrain.tuner.lr"].names == ["plot"] and plan["dltrain.tuner.lr"].covered_elsewhere == ["find_lr"]
    assert "dltrain.task" not in plan and "dltrain._private" not in plan  # Task is on the package's page
    summary = reference.summary_markdown(plan)
    assert "* [dltrain.tuner](dltrain.tuner/index.md)\n    * [dltrain.tuner.lr](dltrain.tuner/dltrain.tuner.lr.md)" in summary
    page = reference.page_markdown(plan["dltrain.tuner.lr"])
    assert "::: dltrain.tuner.lr" in page and "        - plot" in page and "[`find_lr`][dltrain.tuner.find_lr]" in page


def test_repository_links_are_rewritten_for_the_site() -> None:
    text = ("[design](docs/DESIGN.md#plugins), [bench](BENCHMARKS.md), ![plot](docs/bench/ratio.png), "
            "[example](examples/vision/README.md), [web](https://example.org/x.md), [here](#two-commands)")
    assert links.rewrite_links(text, "index.md") == (
        "[design](DESIGN.md#plugins), [bench](benchmarks/index.md), ![plot](bench/ratio.png), example, "
        "[web](https://example.org/x.md), [here](#two-commands)")
    assert links.rewrite_links("![plot](docs/bench/ratio.png) [r](README.md)", "benchmarks/index.md") == (
        "![plot](../bench/ratio.png) [r](../index.md)")


def test_the_cli_page_has_every_command_and_flag_of_the_parsers() -> None:
    from docslib import cli_ref

    from dltrain import cli

    page = cli_ref.cli_markdown()
    for path, parser in _walk_parsers(["dltrain"], cli._parser()):
        assert f"`{' '.join(path)}`" in page, path
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page, (path, flag)
    assert "&lt;stem&gt;.index.json" in page  # parser text is escaped, not read as HTML


def _walk_parsers(path: list[str], parser):  # the same private argparse walk the page generator does
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk_parsers([*path, name], sub)
