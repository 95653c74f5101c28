"""Fixtures for the dltrain.data tests: one set of small uneven shards shared by the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `tests.helpers` is imported as a package from the repository root
    sys.path.insert(0, str(REPO))

from tests.helpers.shards import ShardSet, make_shards  # noqa: E402


@pytest.fixture(scope="session")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> ShardSet:
    """7 shards of 1..50 samples (read-only: tests that damage shards make their own)."""
    return make_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stray RANK/WORLD_SIZE from the environment would change every plan.
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
