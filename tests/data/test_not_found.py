"""A shard path that does not exist is reported as "not found", naming it (issue 28, item 8).

Before: advice to write an index (a warning), then "cannot count the samples ...; is it missing, corrupt or
truncated?", which sends the user looking for damage in a file that is not there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from dltrain.data import StreamingDataset
from dltrain.errors import DataError
from tests.helpers.shards import make_shards


def test_missing_shard_is_not_found_and_named_without_index_advice(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nowhere" / "train-{000000..000002}.tar")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "write an index" advice for shards that are not there
        with pytest.raises(DataError) as info:
            StreamingDataset(pattern, batch_size=4).counts  # noqa: B018
    message = str(info.value)
    assert "not found" in message and str(tmp_path / "nowhere" / "train-000000.tar") in message, message
    assert "3 of 3" in message, message
    assert "corrupt" not in message and "truncated" not in message, message


def test_one_missing_shard_among_present_ones_is_named(tmp_path: Path) -> None:
    spec = make_shards(tmp_path, num_shards=3, min_size=2, max_size=4)
    (tmp_path / "train-000001.tar").unlink()
    for index in tmp_path.glob("*.index.json"):
        index.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"not found.*train-000001\.tar"):
            StreamingDataset(spec.pattern, batch_size=4).counts  # noqa: B018
