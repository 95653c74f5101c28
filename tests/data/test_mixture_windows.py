"""Mixture labels and locator computed per window: equal to the former whole-epoch computation (kept here as the
reference) on random cases, and an epoch of 10^9 positions read from its middle in little time and memory.
Randomized: the seed is in every failure message (DLTRAIN_TEST_SEED replays it; the report prints the command)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from dltrain.data import plan as _plan
from dltrain.data.mixture import (
    _MASK64,
    _TAG_LABELS,
    mixture_counts,
    mixture_labels,
    mixture_locator,
    source_seed,
)
from dltrain.errors import ConfigurationError, DataError
from tests.helpers.seeds import seed_for

SEED = seed_for(__name__)  # DLTRAIN_TEST_SEED replays it (tests/helpers/seeds.py)


def _reference_labels(seed: int, epoch: int, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The whole-epoch computation `mixture_labels` had before it worked per window: every key, one sort."""
    keys, labels, occ = [], [], []
    for s, m in enumerate(int(c) for c in counts):
        if m <= 0:
            continue
        u = np.random.default_rng(np.random.SeedSequence([seed & _MASK64, epoch & _MASK64, s, _TAG_LABELS])).random()
        k = np.arange(m, dtype=np.int64)
        keys.append((k + u) / m)
        labels.append(np.full(m, s, dtype=np.int64))
        occ.append(k)
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    key, label = np.concatenate(keys), np.concatenate(labels)
    order = np.lexsort((label, key))
    return label[order], np.concatenate(occ)[order]


def _reference_locator(root: Mapping[str, Any], source_counts: Sequence[Sequence[int]]
                       ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The former `mixture_locator`: whole-epoch labels, one shard order per (source, source epoch)."""
    mix = root["mixture"]
    seed, shuffle = int(root["seed"]), bool(root["shuffle"])
    labels, occurrence = _reference_labels(seed, int(root["epoch"]), mix["counts"])
    start = np.asarray(mix["start"], dtype=np.int64)
    sizes = [int(sum(c)) for c in source_counts]
    first = np.cumsum([0] + [len(c) for c in source_counts])[:-1].tolist()

    def where(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        src = labels[positions]
        stream = start[src] + occurrence[positions]
        shards = np.empty(len(positions), dtype=np.int64)
        indices = np.empty(len(positions), dtype=np.int64)
        for s in np.unique(src).tolist():
            sel = np.flatnonzero(src == s)
            source_epoch, index = np.divmod(stream[sel], sizes[s])
            for q in np.unique(source_epoch).tolist():
                order = _plan.shard_order(len(source_counts[s]), source_seed(seed, s), q, shuffle)
                part = source_epoch == q
                local, indices[sel[part]] = _plan.locate(index[part], order, source_counts[s])
                shards[sel[part]] = local + first[s]
        return shards, indices

    return where


def _random_counts(rng: np.random.Generator) -> list[int]:
    num = int(rng.integers(1, 7))
    kind = rng.integers(3)
    if kind == 0:  # equal counts
        counts = np.full(num, rng.integers(1, 40))
    elif kind == 1:  # one source dominates
        counts = rng.integers(1, 4, num)
        counts[rng.integers(num)] = rng.integers(100, 400)
    else:
        counts = rng.integers(0, 80, num) * rng.integers(1, 4, num)
    if rng.random() < 0.3:
        counts[rng.integers(num)] = 0  # a source with no positions this epoch
    return counts.tolist()


def test_window_labels_equal_the_whole_epoch_computation() -> None:
    rng = np.random.default_rng(SEED)
    for case in range(400):
        counts = _random_counts(rng)
        seed, epoch = int(rng.integers(1 << 63)), int(rng.integers(1 << 20))
        ref_labels, ref_occ = _reference_labels(seed, epoch, counts)
        labels, occ = mixture_labels(seed, epoch, counts)
        msg = f"seed={SEED} case={case} counts={counts}"
        assert np.array_equal(labels, ref_labels) and np.array_equal(occ, ref_occ), msg
        total = len(ref_labels)
        for _ in range(3):
            a = int(rng.integers(total + 1))
            b = int(rng.integers(a, total + 1))
            labels, occ = mixture_labels(seed, epoch, counts, a, b)
            assert np.array_equal(labels, ref_labels[a:b]) and np.array_equal(occ, ref_occ[a:b]), f"{msg} [{a}, {b})"
    with pytest.raises(ConfigurationError, match=r"window \[5, 12\) is not inside the epoch's 10 positions"):
        mixture_labels(0, 0, [6, 4], 5, 12)


def _calls(rng: np.random.Generator, total: int) -> list[np.ndarray]:
    """Positions as a loader asks for them: a whole range, shuffle windows then their batches, scattered
    positions, and a batch made of two distant stretches (a re-split plan concatenates the ranges of old ranks)."""
    window = rng.permutation(np.arange(w0 := int(rng.integers(total)), min(total, w0 + 600)))
    return [
        rng.permutation(total),
        window,
        *np.array_split(window, 5),
        rng.integers(0, total, int(rng.integers(1, 60))),
        np.concatenate([np.arange(min(total, 7)), np.arange(max(0, total - 7), total)]),
    ]


def test_locator_equals_the_whole_epoch_locator() -> None:
    rng = np.random.default_rng(SEED + 1)
    for case in range(60):
        num = int(rng.integers(1, 5))
        source_counts = [(rng.integers(0, 30, int(rng.integers(1, 7))) + (rng.random() < 0.7)).tolist()
                         for _ in range(num)]
        for c in source_counts:
            c[0] += 1  # no empty source (a Mixture refuses one with weight > 0)
        sizes = [sum(c) for c in source_counts]
        weights = rng.random(num) + 0.05
        # Default epoch length (each source within two of its epochs: one table) or longer (sources cycle).
        cycling = bool(rng.random() < 0.4)
        total = int(min(n / w for n, w in zip(sizes, weights / weights.sum()))) * (int(rng.integers(2, 6)) if cycling
                                                                                   else 1)
        counts = mixture_counts(list(weights), max(total, 1))
        epoch = int(rng.integers(6))
        root = {"seed": int(rng.integers(1 << 40)), "epoch": epoch, "shuffle": bool(rng.random() < 0.8),
                "mixture": {"counts": counts, "start": [epoch * c for c in counts]}}
        new, ref = mixture_locator(root, source_counts), _reference_locator(root, source_counts)
        for n, positions in enumerate(_calls(rng, sum(counts))):
            got, want = new(positions), ref(positions)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (
                f"seed={SEED} case={case} call={n} source_counts={source_counts} counts={counts} epoch={epoch}")
    with pytest.raises(DataError, match="outside the epoch's"):
        new(np.array([sum(counts)]))


def test_a_billion_position_epoch_is_read_from_its_middle_in_little_time_and_memory() -> None:
    total = 10**9
    counts = mixture_counts([0.5, 0.3, 0.2], total)
    # 3 sources of 3*10^8..6*10^8 samples in 1000 shards each; epoch 3, so streams straddle two source epochs.
    source_counts = [[n // 1000] * 1000 for n in (6 * 10**8, 4 * 10**8, 3 * 10**8)]
    epoch = 3
    root = {"seed": SEED, "epoch": epoch, "shuffle": True,
            "mixture": {"counts": counts, "start": [epoch * c for c in counts]}}
    lo, hi = total // 2 - 4096, total // 2 + 4096
    tracemalloc.start()
    try:
        t = time.perf_counter()
        where = mixture_locator(root, source_counts)
        window = np.random.default_rng(SEED).permutation(np.arange(lo, hi))
        shards, indices = where(window)
        labels, occ = mixture_labels(SEED, epoch, counts, lo, hi)
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The whole-epoch computation needs 10^9 keys (8 GB) and a sort of them; a window is milliseconds and a few
    # hundred KB (bounds loose for a loaded machine).
    assert seconds < 5 and peak < 16 * 2**20, f"seed={SEED}: {seconds:.2f} s, peak {peak / 2**20:.1f} MiB"
    # Each source's occurrences in the window are consecutive, at its share of the window (within a few).
    for s, c in enumerate(counts):
        mine = occ[labels == s]
        assert np.array_equal(mine, np.arange(mine[0], mine[0] + len(mine))), f"seed={SEED} source {s}"
        assert abs(len(mine) - (hi - lo) * c / total) <= 6, f"seed={SEED} source {s}: {len(mine)}"
        assert abs(mine[0] - lo * c / total) <= 6, f"seed={SEED} source {s} starts at occurrence {mine[0]}"
    # Two halves computed apart give the window; the locator agrees with the labels.
    mid = lo + 3001
    halves = [mixture_labels(SEED, epoch, counts, a, b) for a, b in ((lo, mid), (mid, hi))]
    assert np.array_equal(np.concatenate([h[0] for h in halves]), labels), f"seed={SEED}"
    assert np.array_equal(np.concatenate([h[1] for h in halves]), occ), f"seed={SEED}"
    sizes = [sum(c) for c in source_counts]
    src = labels[window - lo]
    stream = np.asarray([epoch * c for c in counts])[src] + occ[window - lo]
    first = np.array([0, 1000, 2000])
    assert np.array_equal(shards // 1000, src) and np.all(shards - first[src] < 1000), f"seed={SEED}"
    # Every shard of a source holds the same number of samples: a sample's place in its source epoch's order is
    # (rank of its shard in that epoch's order) * per-shard + index.
    for s in range(3):
        sel = src == s
        q, index = np.divmod(stream[sel], sizes[s])
        for qq in np.unique(q).tolist():
            order = _plan.shard_order(1000, source_seed(SEED, s), qq, True)
            rank = np.argsort(order)[shards[sel][q == qq] - first[s]]
            per = source_counts[s][0]
            assert np.array_equal(rank * per + indices[sel][q == qq], index[q == qq]), f"seed={SEED} source {s}"
