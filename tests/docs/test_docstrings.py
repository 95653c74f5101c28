"""The docstrings of the public API are complete (issue 26, item 2), beyond what ruff's pydocstyle rules check.

ruff (``D``, Google convention, in ``scripts/test``'s lint) fails on a missing or malformed docstring; these tests
check what it cannot: every public class shows how it is used (an ``Example:`` section, run by
``test_doctests.py``).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from docslib import reference  # noqa: E402

_EXAMPLE = re.compile(r"^\s*Examples?:\s*$", re.M)

# Public classes still without an example (issue 26 item 2, to do): this list only shrinks. An exception class
# needs none (the function that raises it shows it), nor a Lightning name that dltrain refuses (dltrain._refusals:
# building one raises an error that says what to use instead).
WITHOUT_EXAMPLE_YET = {
    "dltrain.batch_path.BatchPath", "dltrain.distributed.Watchdog", "dltrain.loop.FitLoop",
}


def public_classes() -> dict[str, type]:
    """Every class on a page of the API reference, by the dotted path of its definition."""
    found: dict[str, type] = {}
    for page in reference.plan().values():
        module = importlib.import_module(page.module)
        for name in page.names:
            obj = getattr(module, name, None)
            if inspect.isclass(obj) and obj.__module__.startswith("dltrain"):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return found


def test_every_public_class_has_an_example() -> None:
    classes = public_classes()
    assert len(classes) > 80, f"only {len(classes)} public classes: is the reference plan broken?"
    missing = {path for path, cls in classes.items()
               if not issubclass(cls, BaseException) and cls.__module__ != "dltrain._refusals"
               and not _EXAMPLE.search(cls.__doc__ or "")}
    new = sorted(missing - WITHOUT_EXAMPLE_YET)
    assert not new, "public classes without an 'Example:' section in their docstring:\n" + "\n".join(new)
    done = sorted(WITHOUT_EXAMPLE_YET - missing)
    assert not done, "these have an example now (or are gone): remove them from WITHOUT_EXAMPLE_YET:\n" + "\n".join(done)


@pytest.mark.parametrize("doc, has", [("Sum.\n\n    Example:\n        >>> 1\n", True),
                                      ("Sum.\n\n    Examples:\n        >>> 1\n", True),
                                      ("Sum; for example: 1 + 1.\n", False)])
def test_the_example_section_is_recognised(doc: str, has: bool) -> None:
    assert bool(_EXAMPLE.search(doc)) is has
