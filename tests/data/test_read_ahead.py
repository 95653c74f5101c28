"""Read-ahead of the next epoch's first window for shards read forward (pipe:), in persistent workers."""

from __future__ import annotations

import random

import pytest

from dltrain.data import Mixture, StreamingDataset
from dltrain.data import plan as _plan
from tests.helpers.seeds import seed_for
from tests.helpers.shards import as_list, epoch_keys, key_of, make_shards

SEED = seed_for(__name__)  # DLTRAIN_TEST_SEED replays it (tests/helpers/seeds.py)


def piped(shards, **kwargs) -> StreamingDataset:
    return StreamingDataset([f"pipe:cat {p}" for p in shards.paths], map=key_of, collate_fn=as_list,
                            index=str(shards.index_path), **kwargs)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("ahead"), num_shards=5, min_size=3, max_size=30, seed=SEED)


def test_the_next_epoch_starts_from_the_window_read_ahead(shards):
    """The generator of a worker, run as a persistent worker runs it: after its last batch it reads the next
    epoch's first window; the next epoch takes it and yields exactly what a fresh read gives."""
    rng = random.Random(SEED)
    kwargs = dict(batch_size=rng.randint(2, 5), shuffle=True, shuffle_buffer=rng.randint(4, 20), seed=rng.randint(0, 99))
    where = f"seed {SEED}, {kwargs}, shards {shards.counts}"
    ds = piped(shards, **kwargs)
    ds._read_ahead = True
    for epoch in range(3):
        level = ds.plan.root_level(epoch, 2)
        got = list(ds._generate(level, 1, 0, 0, 1))
        fresh = list(piped(shards, **kwargs)._generate(level, 1, 0, 0, 1))
        assert got == fresh, where
    assert ds.prereads_used == 2, where  # epochs 1 and 2 began from their read-ahead window


def test_a_plan_other_than_the_predicted_one_reads_afresh(shards):
    ds = piped(shards, batch_size=3, shuffle=True, shuffle_buffer=6, seed=1)
    ds._read_ahead = True
    list(ds._generate(ds.plan.root_level(0, 1), 0, 0, 0, 1))
    # Not epoch 1 of the same world: a resume at another position or world size is planned by the loader.
    level = ds.plan.root_level(1, 2)
    assert list(ds._generate(level, 0, 0, 0, 1)) == list(piped(shards, batch_size=3, shuffle=True, shuffle_buffer=6,
                                                                   seed=1)._generate(level, 0, 0, 0, 1))
    assert ds.prereads_used == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_persistent_workers_give_the_same_epochs_and_resume(shards, workers):
    """Through the loader (persistent workers, so read-ahead on): every epoch equals the one read without it, and a
    resume in the middle of an epoch (a plan the workers could not predict) is still exact."""
    rng = random.Random(SEED + workers)
    kwargs = dict(batch_size=rng.randint(2, 4), shuffle=True, shuffle_buffer=rng.randint(4, 12), seed=3)
    where = f"seed {SEED}, {kwargs}, workers {workers}"
    ahead = piped(shards, **kwargs).loader(num_workers=workers)
    plain = piped(shards, **kwargs).loader(num_workers=workers, persistent_workers=False)
    for epoch in range(3):
        assert epoch_keys(ahead, epoch) == epoch_keys(plain, epoch), where
    # Resume epoch 3 after k batches in a fresh loader, then run epoch 4.
    reference = epoch_keys(plain, 3)
    k = rng.randrange(1, len(reference))
    first = piped(shards, **kwargs).loader(num_workers=workers)
    first.set_epoch(3)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    state = first.state_dict()
    resumed = piped(shards, **kwargs).loader(num_workers=workers)
    resumed.load_state_dict(state)
    assert head + epoch_keys(resumed) == reference, where
    assert epoch_keys(resumed, 4) == epoch_keys(plain, 4), where


def test_a_mixture_of_piped_sources_reads_ahead_too(shards, tmp_path):
    other = make_shards(tmp_path, num_shards=3, min_size=4, max_size=12, seed=SEED + 1)
    mix = Mixture([piped(shards, batch_size=4), piped(other, batch_size=4)], weights=[0.7, 0.3], seed=2,
                  shuffle=True, shuffle_buffer=8)
    ref = Mixture([piped(shards, batch_size=4), piped(other, batch_size=4)], weights=[0.7, 0.3], seed=2,
                  shuffle=True, shuffle_buffer=8)
    mix._read_ahead = True
    for epoch in range(3):
        level = mix.plan.root_level(epoch, 1)
        assert list(mix._generate(level, 0, 0, 0, 1)) == list(ref._generate(level, 0, 0, 0, 1)), f"seed {SEED}"
    assert mix.prereads_used == 2


def test_plan_helpers_used_by_the_read_ahead_are_pure(shards):
    """The predicted level is the loader's: a fresh epoch's level equals the root level of that epoch."""
    ds = piped(shards, batch_size=3, shuffle=True, shuffle_buffer=6, seed=1)
    loader = ds.loader(num_workers=0)
    loader.set_epoch(2)
    assert _plan.offset_of(loader.state_dict()) == 0
    assert {k: v for k, v in loader.state_dict().items() if k in ds.plan.root_level(2, 1)} == ds.plan.root_level(2, 1)


def test_read_ahead_is_on_for_persistent_workers_unless_turned_off(shards):
    def sent(**kwargs) -> bool:
        loader = piped(shards, batch_size=3).loader(**kwargs)
        loader.set_epoch(0)
        iter(loader)
        return loader._worker_spec.read()["read_ahead"]

    assert sent(num_workers=1) is True
    assert sent(num_workers=1, read_ahead=False) is False
    assert sent(num_workers=1, persistent_workers=False) is False  # a worker that ends with the epoch reads nothing
    assert sent(num_workers=0) is False
