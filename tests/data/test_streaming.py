"""StreamingDataset/StreamingDataLoader in one process: order, plans per rank, resume, re-split, no decoding of
skipped samples. Ranks are simulated with RANK/WORLD_SIZE (resolved when iterating, in the main process)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from dltrain.data import StreamingDataset
from dltrain.data import plan as _plan
from tests.helpers.shards import ShardSet, as_list, epoch_keys, key_of


def _ds(shards: ShardSet, **kw) -> StreamingDataset:
    kw.setdefault("batch_size", 4)
    kw.setdefault("shuffle_buffer", 10)
    return StreamingDataset(shards.pattern, map=key_of, collate_fn=as_list, **kw)


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_same_order_whatever_the_number_of_workers(shard_set: ShardSet) -> None:
    runs = {}
    for workers in (0, 1, 2):
        loader = _ds(shard_set, seed=3).loader(num_workers=workers)
        # Two epochs through the same (persistent) workers: set_epoch must reach them.
        runs[workers] = [epoch_keys(loader, 0), epoch_keys(loader, 1)]
        assert len(loader) == len(runs[workers][0])
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][0] != runs[0][1]  # the epoch changes the order
    n = sum(shard_set.counts)
    assert len(runs[0][0]) == n // 4 and all(len(b) == 4 for b in runs[0][0])


def test_eval_partitions_exactly_and_training_is_even(shard_set: ShardSet, monkeypatch: pytest.MonkeyPatch) -> None:
    everything = sorted(shard_set.all_keys)
    world, bs = 3, 4
    eval_keys: list[str] = []
    train: dict[int, list[list[list[str]]]] = {}
    for rank in range(world):
        _as_rank(monkeypatch, rank, world)
        ev = _ds(shard_set, batch_size=bs, training=False, shuffle=False).loader(num_workers=0)
        batches = epoch_keys(ev)
        assert len(ev) == len(batches)
        eval_keys += [k for b in batches for k in b]
        tr = _ds(shard_set, batch_size=bs).loader(num_workers=2)
        train[rank] = [epoch_keys(tr, e) for e in range(3)]
        assert len(tr) == len(train[rank][0])
    assert sorted(eval_keys) == everything  # every sample exactly once over the ranks
    per_rank = len(everything) // (world * bs)
    leftovers = []
    for epoch in range(3):
        seen = [k for r in range(world) for b in train[r][epoch] for k in b]
        assert all(len(train[r][epoch]) == per_rank for r in range(world))
        assert all(len(b) == bs for r in range(world) for b in train[r][epoch])
        assert len(seen) == len(set(seen)) == per_rank * world * bs
        leftovers.append(frozenset(everything) - set(seen))
    assert len(set(leftovers)) > 1  # the dropped leftover changes with the epoch


def test_resume_same_world_gives_the_uninterrupted_sequence(shard_set: ShardSet, tmp_path: Path) -> None:
    full = epoch_keys(_ds(shard_set, seed=5).loader(num_workers=2), 2)
    for stop in (5, len(full) - 1, len(full)):
        loader = _ds(shard_set, seed=5).loader(num_workers=2)
        loader.set_epoch(2)
        it = iter(loader)
        head = [next(it) for _ in range(stop)]
        state = loader.state_dict()
        assert state["epoch"] == 2 and state["batches"] == stop
        del it
        resumed = _ds(shard_set, seed=5).loader(num_workers=2)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)
        assert len(resumed) == len(full)
        assert head + epoch_keys(resumed) == full
        # The next epoch is a normal one.
        assert epoch_keys(resumed, 3) == epoch_keys(_ds(shard_set, seed=5).loader(num_workers=0), 3)


def _old_plan_remaining(shards: ShardSet, world: int, bs: int, epoch: int, consumed: int, seed: int) -> list[str]:
    """Keys the ranks of the saved run had not consumed (plan computed independently of the loader)."""
    level = dict(epoch=epoch, seed=seed, shuffle=True, shuffle_buffer=10, training=True, batch_size=bs,
                 world_size=world, base=None)
    order = _plan.shard_order(len(shards.keys), seed, epoch, True)
    out = []
    for r in range(world):
        pos = _plan.rank_positions(level, r, sum(shards.counts))[consumed * bs :]
        sid, loc = _plan.locate(pos, order, shards.counts)
        out += [shards.keys[s][i] for s, i in zip(sid.tolist(), loc.tolist())]
    return out


@pytest.mark.parametrize(("new_world", "new_bs"), [(1, 4), (1, 3), (3, 4)])
def test_resume_with_another_world_or_batch_size(shard_set: ShardSet, monkeypatch: pytest.MonkeyPatch,
                                                 new_world: int, new_bs: int) -> None:
    consumed, seed, epoch = 3, 9, 1
    heads = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        loader = _ds(shard_set, seed=seed).loader(num_workers=0)
        loader.set_epoch(epoch)
        it = iter(loader)
        heads += [k for _ in range(consumed) for k in next(it)]
        state = loader.state_dict()
    remaining = _old_plan_remaining(shard_set, 2, 4, epoch, consumed, seed)
    assert not set(remaining) & set(heads)
    resumed_keys = []
    for rank in range(new_world):
        _as_rank(monkeypatch, rank, new_world)
        resumed = _ds(shard_set, seed=seed, batch_size=new_bs).loader(num_workers=2)
        resumed.load_state_dict(state)
        batches = epoch_keys(resumed)
        assert len(resumed) == consumed + len(batches)
        assert all(len(b) == new_bs for b in batches)
        resumed_keys += [k for b in batches for k in b]
        assert resumed.state_dict()["batches"] == consumed + len(batches)
    assert len(resumed_keys) == len(set(resumed_keys))
    assert set(resumed_keys) <= set(remaining)  # nothing repeated from what the old ranks had consumed
    assert len(remaining) - len(resumed_keys) < new_world * new_bs  # only the final leftover is dropped
    # After the resumed epoch the next one is normal (and independent of the resume).
    _as_rank(monkeypatch, 0, new_world)
    fresh = _ds(shard_set, seed=seed, batch_size=new_bs).loader(num_workers=0)
    assert epoch_keys(resumed, epoch + 1) == epoch_keys(fresh, epoch + 1)


def _logging_decoder(path: str):
    def decode(data: bytes) -> int:
        with open(path, "a") as f:  # O_APPEND: safe from several worker processes
            f.write("x\n")
        return int(data)

    return decode


def test_resume_skips_shards_and_never_decodes_skipped_samples(shard_set: ShardSet, tmp_path: Path) -> None:
    full = epoch_keys(_ds(shard_set, seed=1).loader(num_workers=0), 0)
    stop = len(full) - 6
    opened = tmp_path / "opened.log"
    decoded = tmp_path / "decoded.log"
    # pipe: URLs log every shard the loader opens.
    urls = [f"pipe:echo {i} >> {opened}; cat {p}" for i, p in enumerate(shard_set.paths)]
    ds = StreamingDataset(urls, batch_size=4, shuffle_buffer=10, seed=1, map=key_of, collate_fn=as_list,
                          index=str(shard_set.index_path), decode={"cls": _logging_decoder(str(decoded))})
    # Without persistent workers: persistent ones read the next epoch's first window ahead (test_read_ahead.py),
    # which opens shards of epoch 1 that this test does not iterate.
    loader = ds.loader(num_workers=2, persistent_workers=False)
    loader.load_state_dict({**loader.state_dict(), "epoch": 0, "batches": stop})
    loader.set_epoch(0)
    rest = epoch_keys(loader)
    assert rest == full[stop:]
    assert len(decoded.read_text().splitlines()) == 6 * 4  # only the samples that were yielded
    shard_of = {k: s for s, ks in enumerate(shard_set.keys) for k in ks}
    opens = Counter(int(x) for x in opened.read_text().split())
    assert set(opens) == {shard_of[k] for b in rest for k in b}  # no shard opened without a sample needed
    assert max(opens.values()) <= 2  # at most once per worker: no re-reading
    assert len(opens) < len(shard_set.paths)


def test_state_dict_counts_handed_out_batches_not_prefetched(shard_set: ShardSet) -> None:
    loader = _ds(shard_set).loader(num_workers=2, prefetch_factor=4)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)
    next(it)
    assert loader.state_dict()["batches"] == 2
    report = loader.epoch_report()
    assert report["batches"] == 2 and report["skipped"] == 0 and report["epoch"] == 0


def test_len_and_direct_iteration(shard_set: ShardSet) -> None:
    ds = _ds(shard_set, training=False, shuffle=False, batch_size=7)
    n = sum(shard_set.counts)
    assert len(ds) == -(-n // 7)
    batches = list(ds)
    assert [k for b in batches for k in b] == shard_set.all_keys
    assert ds.loader(num_workers=0).pin_memory == torch.cuda.is_available()
    assert np.sum([len(b) for b in batches]) == n
