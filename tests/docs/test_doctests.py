"""Every ``>>>`` example in src/dltrain runs, one test per module, each in a fresh temporary folder.

The examples may use the names and files of ``_doctest_namespace`` (a small task, its loaders, small shards).
Output is checked where an example shows it; an example that shows none may print (a fit prints its model
summary), as in xdoctest. An example that cannot run here is marked ``# doctest: +SKIP`` and preceded by a line
``>>> # not run: <why>`` (e.g. it needs several GPUs); a SKIP without that line fails
`test_every_skipped_example_says_why`.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

from tests.docs import _doctest_namespace

SRC = Path(__file__).resolve().parents[2] / "src"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    """Every module of src/dltrain whose text holds an example (found without importing anything)."""
    found = []
    for file in sorted((SRC / "dltrain").rglob("*.py")):
        if ">>>" in file.read_text(encoding="utf-8"):
            parts = list(file.relative_to(SRC).with_suffix("").parts)
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = _modules()


class _ShownOutputChecker(doctest.OutputChecker):
    """Checks the output an example shows; an example that shows none may print anything."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return not want or super().check_output(want, got, optionflags)


def _doctests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, name) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tests = _doctests(name)
    assert tests, f"{name} has '>>>' in its text but no example doctest finds (in a string that is no docstring?)"
    monkeypatch.chdir(tmp_path)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    _doctest_namespace.write_files(tmp_path, "\n".join(e.source for t in tests for e in t.examples))
    extra = _doctest_namespace.namespace()
    runner = doctest.DocTestRunner(checker=_ShownOutputChecker(), optionflags=FLAGS)
    report: list[str] = []
    for test in tests:
        test.globs.update(extra)
        runner.run(test, out=report.append, clear_globs=True)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed:\n" + "".join(report)


def test_every_skipped_example_says_why() -> None:
    """``# doctest: +SKIP`` only under a ``>>> # not run: <reason>`` line (a run of SKIP lines shares one)."""
    bad = []
    for file in sorted((SRC / "dltrain").rglob("*.py")):
        lines = file.read_text(encoding="utf-8").splitlines()
        reason = False
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if re.match(r">>> # not run: \S.{8,}", text):
                reason = True
            elif "doctest: +SKIP" in text:
                if not reason:
                    bad.append(f"{file.relative_to(SRC)}:{number}: {text}")
            elif text.startswith(">>>"):
                reason = False  # a run example ends the reason's reach
    assert not bad, "examples skipped without a '>>> # not run: <why>' line above them:\n" + "\n".join(bad)


def test_the_examples_are_found() -> None:
    """A guard against collecting nothing: the modules with examples are many, and each has some."""
    assert len(MODULES) >= 40, MODULES
