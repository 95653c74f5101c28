"""Randomized probes for tests/test_seeds.py, run in a pytest of their own (not collected by the suite: the name
does not start with ``test_``). They print their seeds, and fail when DLTRAIN_PROBE_FAIL=1."""

from __future__ import annotations

import os
import random

import pytest

from tests.helpers.seeds import seed_for

MODULE_SEED = seed_for(__name__)


def _finish(what: str, seed: int) -> None:
    print(f"probe {what} seed={seed} draw={random.Random(seed).random()!r}")
    assert os.environ.get("DLTRAIN_PROBE_FAIL") != "1", f"probe {what} failed on purpose"


def test_module_level_seed() -> None:
    _finish("module", MODULE_SEED)


@pytest.mark.parametrize("case", ["x", "y"])
def test_fixture_seed(random_seed: int, case: str) -> None:
    _finish(f"fixture-{case}", random_seed)
