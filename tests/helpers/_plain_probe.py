"""A test that draws nothing, for tests/test_seeds.py (not collected by the suite): its failure has no replay."""

from __future__ import annotations

import os


def test_not_randomized() -> None:
    assert os.environ.get("DLTRAIN_PROBE_FAIL") != "1", "a plain failure: no replay line"
