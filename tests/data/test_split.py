"""The data split of a StreamingDataLoader is explicit: given (constructor, `set_split`, or by the Trainer that
iterates it, with its data-parallel rank and size), else resolved from torch.distributed / env RANK, WORLD_SIZE.
No process-wide state: each loader keeps the split it was given, whatever other Trainers or loaders did."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import dltrain
from dltrain import _data_sources
from dltrain._sharded import Layout
from dltrain.data import CombinedLoader, StreamingDataLoader, StreamingDataset
from dltrain.errors import ConfigurationError
from dltrain.plugins.text.data import LengthBucketLoader
from tests.helpers.shards import ShardSet, as_list, epoch_keys, key_of


def _ds(shards: ShardSet, **kw) -> StreamingDataset:
    return StreamingDataset(shards.pattern, map=key_of, collate_fn=as_list, batch_size=4, shuffle_buffer=10,
                            seed=7, **kw)


def _env_keys(shards: ShardSet, monkeypatch: pytest.MonkeyPatch, rank: int, world: int, epoch: int = 0,
              **kw) -> list[list[str]]:
    """The batches of (rank, world) as a loader resolves them from env RANK/WORLD_SIZE (the reference)."""
    with monkeypatch.context() as m:
        m.setenv("RANK", str(rank))
        m.setenv("WORLD_SIZE", str(world))
        return epoch_keys(_ds(shards, **kw).loader(num_workers=0), epoch)


def _split(rank: int, size: int, tensor_parallel_size: int = 1, sampler: bool = True) -> tuple[Any, Layout]:
    """The settings and data-parallel layout `_data_sources.wrap` takes (a real Trainer in one process is always
    rank 0 of 1)."""
    return (SimpleNamespace(use_distributed_sampler=sampler, seed=0),
            Layout(rank, size, None, 0, tensor_parallel_size))


def test_a_given_split_is_used_instead_of_the_environment(shard_set: ShardSet,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    want = {(r, w): _env_keys(shard_set, monkeypatch, r, w) for r, w in [(1, 3), (0, 2), (0, 1)]}
    assert want[(1, 3)] != want[(0, 2)]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # what the loaders would resolve
    given = _ds(shard_set).loader(num_workers=0, rank=1, world_size=3)
    assert given.split == (1, 3)
    assert len(given) == len(want[(1, 3)]) and epoch_keys(given, 0) == want[(1, 3)]
    assert given.state_dict()["world_size"] == 3 and given.epoch_report()["rank"] == 1
    # set_split on a loader that already ran an epoch: len and the next epoch follow the new split.
    given.set_split(0, 1)
    assert len(given) == len(want[(0, 1)]) and epoch_keys(given, 0) == want[(0, 1)]
    resolved = _ds(shard_set).loader(num_workers=0)
    assert resolved.split is None and epoch_keys(resolved, 0) == want[(0, 2)]
    # Through workers too (they are told the split; torch.distributed is not initialised inside them).
    assert epoch_keys(_ds(shard_set).loader(num_workers=2, rank=1, world_size=3), 0) == want[(1, 3)]


def test_set_split_keeps_a_loaded_state_and_re_splits_it(shard_set: ShardSet,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The Trainer sets the split before it loads a checkpoint's loader state; and a state saved by another
    world size is re-split among the given one (as when resolved): every sample of the epoch once."""
    first = _ds(shard_set).loader(num_workers=0, rank=0, world_size=1)
    first.set_epoch(1)
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    rest = []
    for rank in (0, 1):
        loader = _ds(shard_set).loader(num_workers=0)
        loader.load_state_dict(state)
        loader.set_split(rank, 2)
        rest += [k for b in loader for k in b]
    whole = [k for b in _env_keys(shard_set, monkeypatch, 0, 1, epoch=1) for k in b]
    seen = [k for b in head for k in b] + rest
    assert len(seen) == len(set(seen)) and set(seen) <= set(whole)
    assert len(whole) - len(seen) < 2 * 4  # at most the leftover that does not fill a global batch


@pytest.mark.parametrize(("rank", "world", "what"), [(3, 3, "rank=3, world_size=3"), (-1, 2, "rank=-1"),
                                                     (True, 2, "rank=True"), (0, 0, "world_size=0"),
                                                     (0, 2.0, "world_size=2.0")])
def test_bad_split_is_refused_naming_it(shard_set: ShardSet, rank, world, what: str) -> None:
    loader = _ds(shard_set).loader(num_workers=0)
    with pytest.raises(ConfigurationError, match="0 <= rank < world_size") as err:
        loader.set_split(rank, world)
    assert what in str(err.value)
    with pytest.raises(ConfigurationError, match="give both"):
        _ds(shard_set).loader(num_workers=0, rank=1)


def test_each_trainer_gives_its_own_loaders_their_split(shard_set: ShardSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Trainers in one process (data-parallel rank 1 of 2 and 2 of 3) preparing their loaders: each loader
    reads its own Trainer's part, and a loader used afterwards without a Trainer resolves its own (env: all)."""
    want = {(r, w): _env_keys(shard_set, monkeypatch, r, w) for r, w in [(1, 2), (2, 3), (0, 1)]}
    a = _data_sources.wrap(_ds(shard_set), True, *_split(1, 2))  # a dataset: made a loader
    given = _ds(shard_set).loader(num_workers=0, rank=0, world_size=1)
    b = _data_sources.wrap(given, True, *_split(2, 3))  # a loader: its split replaced
    assert isinstance(a, StreamingDataLoader) and b is given
    assert (a.split, b.split) == ((1, 2), (2, 3))
    assert epoch_keys(b, 0) == want[(2, 3)] and epoch_keys(a, 0) == want[(1, 2)]
    assert epoch_keys(_ds(shard_set).loader(num_workers=0), 0) == want[(0, 1)]
    # Loaders inside a CombinedLoader and a LengthBucketLoader get it too.
    combined = _data_sources.wrap({"s": _ds(shard_set).loader(num_workers=0)}, True, *_split(1, 2))
    assert isinstance(combined, CombinedLoader) and combined.loaders[0].split == (1, 2)
    inner = _ds(shard_set).loader(num_workers=0)
    bucketed = _data_sources.wrap(LengthBucketLoader(inner, 2), True, *_split(2, 3))
    assert bucketed.split == inner.split == (2, 3)


def test_without_distributed_sampler_an_unsplit_stream_is_refused_only_under_tp(shard_set: ShardSet) -> None:
    tp = _split(1, 2, tensor_parallel_size=2, sampler=False)
    for unsplit in (_ds(shard_set), _ds(shard_set).loader(num_workers=0)):
        with pytest.raises(ConfigurationError, match="tensor-parallel peers would read different batches"):
            _data_sources.wrap(unsplit, True, *tp)
    own = _ds(shard_set).loader(num_workers=0, rank=0, world_size=3)
    assert _data_sources.wrap(own, True, *tp) is own and own.split == (0, 3)  # left as the user built it
    plain = _ds(shard_set).loader(num_workers=0)
    assert _data_sources.wrap(plain, True, *_split(0, 1, sampler=False)).split is None


class _KeyTask(dltrain.Task):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(list(batch))
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_trainer_replaces_a_loaders_split_with_its_own(shard_set: ShardSet, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """A loader built for rank 1 of 2, fitted by a one-process Trainer: it reads the Trainer's split (all)."""
    task = _KeyTask()
    loader = _ds(shard_set).loader(num_workers=0, rank=1, world_size=2)
    dltrain.Trainer(accelerator="cpu", max_epochs=1, default_root_dir=str(tmp_path), logger=False,
                    enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                    num_sanity_val_steps=0).fit(task, loader)
    assert loader.split == (0, 1)
    assert task.seen == _env_keys(shard_set, monkeypatch, 0, 1)
