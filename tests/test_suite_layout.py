"""How scripts/test runs the suite in xdist workers: the groups in tests/conftest.py name files that exist, and no
test relies on xdist's group marker, which does nothing with pytest 9 (conftest's `_GROUPS` does it)."""

from __future__ import annotations

from pathlib import Path

from tests import conftest

REPO = Path(__file__).resolve().parents[1]


def test_every_group_names_a_test_file_and_no_test_uses_the_xdist_marker() -> None:
    missing = [path for path in conftest._GROUPS if not (REPO / path).is_file()]
    assert not missing, f"tests/conftest.py _GROUPS names files that do not exist (renamed?): {missing}"
    marker = "xdist_" + "group"  # spelt in two parts, so that this file does not find itself
    users = [str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("*.py") if marker in p.read_text()]
    assert users == ["tests/conftest.py"], f"{users}: add the file to _GROUPS in tests/conftest.py instead"
