"""Mixture: proportions per epoch and per shuffle window, no repeat within a source epoch, the plan dealt exactly
over ranks, exact resume at a random batch (same and other world size, other weights), worker-count determinism,
cycling. Ranks are simulated in one process with RANK/WORLD_SIZE. Randomized: the seed is in every failure
message (DLTRAIN_TEST_SEED replays it; the report prints the command)."""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dltrain.data import Mixture, StreamingDataset
from dltrain.data import plan as _plan
from dltrain.data.mixture import default_epoch_length, mixture_counts, mixture_labels
from dltrain.errors import ConfigurationError, DataError
from tests.helpers.seeds import seed_for
from tests.helpers.shards import ShardSet, as_list, make_shards

SEED = seed_for(__name__)  # DLTRAIN_TEST_SEED replays it (tests/helpers/seeds.py)
WEIGHTS = [0.5, 0.3, 0.2]
NAMES = ["a", "b", "c"]
BS = 4
BUFFER = 12
# Every prefix of a label sequence holds source s within PREFIX_TOL of its share (see mixture_labels); a window
# (a difference of two prefixes, permuted) within twice that.
PREFIX_TOL = 2.0


def _tag(name: str, sample: dict) -> str:
    return f"{name}/{sample['__key__']}"  # a string: the loader turns tuples into lists


def _source(item: str) -> str:
    return item.split("/")[0]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[ShardSet]:
    root = tmp_path_factory.mktemp("mix")
    shape = [(4, 10, 40), (3, 5, 30), (2, 5, 20)]  # uneven: shards and samples differ per source
    return [make_shards(root / n, num_shards=k, min_size=lo, max_size=hi, seed=SEED + i, prefix=n)
            for i, (n, (k, lo, hi)) in enumerate(zip(NAMES, shape))]


def _mix(sources: list[ShardSet], weights=WEIGHTS, **kw) -> Mixture:
    training = kw.pop("training", True)
    ds = [StreamingDataset(s.pattern, batch_size=BS, map=functools.partial(_tag, n), collate_fn=as_list,
                           training=training, shuffle_buffer=BUFFER) for s, n in zip(sources, NAMES)]
    return Mixture(ds, weights=weights, seed=kw.pop("seed", SEED), **kw)


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def _epoch(loader, epoch: int | None = None) -> list[list[str]]:
    if epoch is not None:
        loader.set_epoch(epoch)
    return [list(b) for b in loader]


def _keys_at(mix: Mixture, sources: list[ShardSet], level: dict, positions: np.ndarray) -> list[str]:
    """Samples at plan positions, through the global shard ids (independent of the loader's reading)."""
    keys = [(n, k) for s, n in zip(sources, NAMES) for k in s.keys]
    shards, idx = mix.plan.locator(_plan.root_of(level))(positions)
    return [f"{keys[s][0]}/{keys[s][1][i]}" for s, i in zip(shards.tolist(), idx.tolist())]


def test_counts_and_labels_are_proportional_in_every_prefix() -> None:
    rng = np.random.default_rng(SEED)
    for _ in range(20):
        w = rng.random(int(rng.integers(1, 5))) + 0.01
        m_total = int(rng.integers(1, 500))
        counts = mixture_counts(list(w), m_total)
        share = w / w.sum() * m_total
        assert sum(counts) == m_total and np.all(np.abs(np.array(counts) - share) < 1), f"seed={SEED}"
        labels, occ = mixture_labels(int(rng.integers(1 << 30)), int(rng.integers(100)), counts)
        onehot = labels[:, None] == np.arange(len(counts))[None, :]
        prefix = np.cumsum(onehot, axis=0)
        expected = np.arange(1, m_total + 1)[:, None] * np.array(counts)[None, :] / m_total
        assert np.abs(prefix - expected).max() <= PREFIX_TOL, f"seed={SEED}"
        for s, c in enumerate(counts):  # occurrences of each source in order 0..c-1
            assert occ[labels == s].tolist() == list(range(c)), f"seed={SEED}"
    sizes = [37, 20, 9]
    m = default_epoch_length(sizes, WEIGHTS)
    assert all(c <= n for c, n in zip(mixture_counts(WEIGHTS, m), sizes))
    # The definition: until the first source would need a second pass, min_s floor(n_s / w_s), in exact arithmetic.
    assert m == min(math.floor(n / Fraction(w).limit_denominator(100)) for n, w in zip(sizes, WEIGHTS))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_deal_the_plan_in_proportion(sources: list[ShardSet], monkeypatch: pytest.MonkeyPatch,
                                           world: int, workers: int) -> None:
    mix = _mix(sources)
    m_total = mix.num_samples
    m = mixture_counts(WEIGHTS, m_total)
    window_batches = _plan.window_size(BUFFER, BS) // BS
    for epoch in (0, 1):
        union: list[str] = []
        for rank in range(world):
            _as_rank(monkeypatch, rank, world)
            loader = _mix(sources).loader(num_workers=workers)
            batches = _epoch(loader, epoch)
            assert len(batches) == len(loader) == m_total // (world * BS), f"seed={SEED}"
            for w0 in range(0, len(batches), window_batches):
                window = [x for b in batches[w0 : w0 + window_batches] for x in b]
                got = Counter(_source(x) for x in window)
                for s, name in enumerate(NAMES):
                    assert abs(got[name] - len(window) * m[s] / m_total) <= 2 * PREFIX_TOL, \
                        f"seed={SEED} world={world} rank={rank} epoch={epoch} window@{w0}: {got} of {len(window)}"
            union += [x for b in batches for x in b]
        level = mix.plan.root_level(epoch, world)
        planned = _keys_at(mix, sources, level, _plan.planned_positions(level, m_total))
        assert Counter(union) == Counter(planned), f"seed={SEED} world={world} epoch={epoch}"
        got = Counter(_source(x) for x in union)
        dropped = m_total - len(union)  # training drops the leftover that does not fill a batch on every rank
        assert 0 <= dropped < world * BS, f"seed={SEED}"
        for s, name in enumerate(NAMES):
            assert m[s] - dropped <= got[name] <= m[s], f"seed={SEED} world={world} epoch={epoch}: {got} vs {m}"
            # Epoch 0 reads each source's stream [0, m_s) within its first source epoch: no sample twice.
            # (Later epochs may straddle two source epochs; see the cycling test.)
            keys = [x for x in union if _source(x) == name]
            assert epoch > 0 or len(keys) == len(set(keys)), f"seed={SEED} world={world} source={name}"


@pytest.mark.parametrize("factor", [1, 3])
def test_sources_cycle_through_their_own_epochs_without_repeats(sources: list[ShardSet], factor: int) -> None:
    base = _mix(sources).num_samples
    mix = _mix(sources, training=False, samples_per_epoch=factor * base + 5)
    loader = mix.loader(num_workers=0)
    m = mixture_counts(WEIGHTS, mix.num_samples)
    seen: dict[str, Counter] = {n: Counter() for n in NAMES}
    for epoch in range(4):
        for b in _epoch(loader, epoch):
            for x in b:
                name, key = x.split("/")
                seen[name][key] += 1
        # After e+1 epochs source s has read stream positions [0, (e+1) m_s): q whole source epochs (every sample
        # q times) and a part of the next one (those samples once more, none twice).
        for s, (src, name) in enumerate(zip(sources, NAMES)):
            read, n = (epoch + 1) * m[s], len(src.all_keys)
            q, extra = divmod(read, n)
            counts = Counter(seen[name][k] for k in src.all_keys)
            assert set(counts) <= {q, q + 1} and counts.get(q + 1, 0) == extra, \
                f"seed={SEED} factor={factor} epoch={epoch} source={name}: {counts} (read {read} of {n})"


def test_same_batches_whatever_the_number_of_workers(sources: list[ShardSet]) -> None:
    runs = [[_epoch(_mix(sources).loader(num_workers=w), e) for e in (0, 1)] for w in (0, 1, 2)]
    assert runs[0] == runs[1] == runs[2], f"seed={SEED}"
    assert runs[0][0] != runs[0][1], f"seed={SEED}"


@pytest.mark.parametrize(("old_world", "new_world"), [(2, 2), (2, 3), (3, 1)])
def test_resume_at_a_random_batch_gives_exactly_the_remaining_samples(
    sources: list[ShardSet], monkeypatch: pytest.MonkeyPatch, old_world: int, new_world: int
) -> None:
    rng = random.Random(SEED + old_world * 10 + new_world)
    epoch = rng.randrange(3)
    mix = _mix(sources)
    per_rank = mix.num_samples // (old_world * BS)
    stop = rng.randrange(1, per_rank)
    msg = f"seed={SEED} epoch={epoch} stop={stop} world {old_world}->{new_world}"
    heads, fulls, state = [], [], {}
    for rank in range(old_world):
        _as_rank(monkeypatch, rank, old_world)
        fulls.append(_epoch(_mix(sources).loader(num_workers=2), epoch))
        loader = _mix(sources).loader(num_workers=2)
        loader.set_epoch(epoch)
        it = iter(loader)
        head = [next(it) for _ in range(stop)]
        assert head == fulls[rank][:stop], msg
        heads += [x for b in head for x in b]
        state = loader.state_dict()
        del it
    resumed: list[str] = []
    for rank in range(new_world):
        _as_rank(monkeypatch, rank, new_world)
        loader = _mix(sources).loader(num_workers=2)
        loader.load_state_dict(state)
        rest = _epoch(loader, epoch)
        assert len(loader) == stop + len(rest) and all(len(b) == BS for b in rest), msg
        if new_world == old_world:  # same plan: exactly the uninterrupted batches
            assert rest == fulls[rank][stop:], msg
        resumed += [x for b in rest for x in b]
    old_level = mix.plan.root_level(epoch, old_world)
    remaining = _keys_at(mix, sources, old_level, np.concatenate(
        [_plan.rank_positions(old_level, r, mix.num_samples)[stop * BS :] for r in range(old_world)]))
    assert not Counter(resumed) - Counter(remaining), msg  # nothing repeated, nothing from outside the plan
    assert len(remaining) - len(resumed) < new_world * BS, msg  # only the final leftover is dropped
    dealt = _keys_at(mix, sources, old_level, _plan.planned_positions(old_level, mix.num_samples))
    assert not (Counter(heads) + Counter(resumed)) - Counter(dealt), msg  # no sample more often than planned


def test_new_weights_apply_from_the_next_epoch(sources: list[ShardSet]) -> None:
    loader = _mix(sources).loader(num_workers=0)
    full = _epoch(loader, 1)
    loader.set_epoch(1)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    state = loader.state_dict()
    del it
    new_w = [0.2, 0.2, 0.6]
    resumed = _mix(sources, weights=new_w).loader(num_workers=2)
    resumed.load_state_dict(state)
    assert head + _epoch(resumed, 1) == full, f"seed={SEED}"  # the epoch finishes with the weights it began with
    nxt = [x for b in _epoch(resumed, 2) for x in b]
    assert nxt == [x for b in _epoch(_mix(sources, weights=new_w).loader(num_workers=0), 2) for x in b]
    m_total = _mix(sources, weights=new_w).num_samples
    got = Counter(_source(x) for x in nxt)
    expected = mixture_counts(new_w, m_total)
    assert all(abs(got[n] - e) < BS for n, e in zip(NAMES, expected)), f"seed={SEED}: {got} vs {expected}"


def test_set_weights_mid_epoch_keeps_the_epoch_and_changes_the_next(sources: list[ShardSet]) -> None:
    full = [_epoch(_mix(sources).loader(num_workers=0), e) for e in (0, 1)]
    mix = _mix(sources)
    loader = mix.loader(num_workers=2)
    loader.set_epoch(0)
    it = iter(loader)
    head = [next(it) for _ in range(2)]
    new_w = [0.1, 0.1, 0.8]
    mix.set_weights(new_w)
    assert head + list(it) == full[0], f"seed={SEED}"
    nxt = [x for b in _epoch(loader, 1) for x in b]
    assert nxt != [x for b in full[1] for x in b], f"seed={SEED}"
    expected = mixture_counts(new_w, mix.num_samples)
    got = Counter(_source(x) for x in nxt)
    assert all(abs(got[n] - e) < BS for n, e in zip(NAMES, expected)), f"seed={SEED}: {got} vs {expected}"
    with pytest.raises(ConfigurationError, match="3 sources but got 2 weights"):
        mix.set_weights([1, 1])


def test_last_batch_samples_name_global_shards(sources: list[ShardSet]) -> None:
    loader = _mix(sources).loader(num_workers=2)
    loader.set_epoch(0)
    next(iter(loader))
    assert loader.last_batch_samples is None  # sample ids are sent only when asked for (a SampleLedger asks)
    loader.record_samples = True
    keys = [(n, ks) for s, n in zip(sources, NAMES) for ks in s.keys]
    for batch in loader:
        held = loader.last_batch_samples
        assert held is not None
        assert [f"{keys[s][0]}/{keys[s][1][i]}" for s, i in zip(held.shards.tolist(), held.indices.tolist())] == batch
        assert held.keys == [x.split("/")[1] for x in batch]


def test_bad_configurations_and_states_are_refused(sources: list[ShardSet], tmp_path: Path) -> None:
    a = StreamingDataset(sources[0].pattern, batch_size=4)
    b = StreamingDataset(sources[1].pattern, batch_size=8)
    with pytest.raises(ConfigurationError, match="batch_size="):
        Mixture([a, b], weights=[1, 1])
    assert Mixture([a, b], weights=[1, 1], batch_size=2).batch_size == 2
    with pytest.raises(ConfigurationError, match="one weight per source"):
        Mixture([a, b], weights=[1], batch_size=2)
    with pytest.raises(ConfigurationError, match="finite, >= 0"):
        Mixture([a, b], weights=[1, -1], batch_size=2)
    with pytest.raises(ConfigurationError, match="samples_per_epoch"):
        Mixture([a, b], weights=[1, 1], batch_size=2, samples_per_epoch=0)
    with pytest.raises(ConfigurationError, match="StreamingDatasets"):
        Mixture([a, Mixture([a], weights=[1])], weights=[1, 1], batch_size=4)
    mix_state = _mix(sources).loader(num_workers=0).state_dict()
    with pytest.raises(DataError, match="Mixture"):
        StreamingDataset(sources[0].pattern, batch_size=BS).loader(num_workers=0).load_state_dict(mix_state)
    with pytest.raises(DataError, match="single StreamingDataset"):
        _mix(sources).loader(num_workers=0).load_state_dict(a.loader(num_workers=0).state_dict())
    swapped = _mix(sources[::-1]).loader(num_workers=0)
    with pytest.raises(DataError, match="same sources in the same order"):
        swapped.load_state_dict(mix_state)
