"""The epoch plan: which samples each rank gets, in which order. Pure functions of plain (JSON-able) data.

Samples are numbered by their *position* in the epoch: shards in the epoch's shard order, then samples in shard
order. A *level* describes how positions are dealt to ranks:

- a root level (``base`` is None) splits ``range(num_samples)`` into contiguous per-rank ranges and shuffles
  each range in windows of ``window_size(shuffle_buffer, batch_size)`` positions;
- a re-split level (after a resume with another world size or batch size) takes what the ranks of the saved
  level had not consumed yet, concatenated rank by rank, and splits that the same way (no reshuffle).

Level dict keys: ``epoch, seed, shuffle, shuffle_buffer, training, batch_size, world_size, base``, where
``base`` is None or ``{"state": <saved level + "batches">, "offset": <batches before the re-split>}``.

What a dataset gives the plan is one protocol, `EpochPlan`: its root level for an epoch and a world size, how
many positions that epoch has, the *locator* that maps positions to (shard, sample in the shard), which source
each shard belongs to (whose decode and map its samples go through), and the check of a saved state.
`dltrain.data.StreamingDataset` (positions are its samples, in the epoch's shard order) and
`dltrain.data.Mixture` (positions are labelled with sources window by window, see `dltrain.data.mixture`)
implement it; `StreamingDataLoader` and the dataset's worker-side reading use nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = [
    "EpochPlan",
    "Locator",
    "SampleSource",
    "locate",
    "num_batches",
    "offset_of",
    "planned_positions",
    "rank_batches",
    "rank_positions",
    "root_level",
    "root_of",
    "shard_order",
    "shard_starts",
    "split_range",
    "window_size",
]

_MASK64 = (1 << 64) - 1
_TAG_SHARDS = 0x5A4D  # separates the random streams of shard order and window shuffles
_TAG_WINDOW = 0x3B1F


Locator = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Maps epoch positions (an int64 array) to (shard ids, sample indices in those shards), elementwise. A loader
calls it for a shuffle window's positions, then for each batch inside that window: a locator that computes
labels per window (a `Mixture`'s) keeps the window's."""


class SampleSource(Protocol):
    """Where a sample's decode and map come from (a `dltrain.data.StreamingDataset`).

    Example:
        >>> from dltrain.data import StreamingDataset
        >>> source = StreamingDataset("data/train-{000000..000006}.tar", batch_size=10).plan.sources[0]
        >>> source.map is None  # no map given: samples stay dicts
        True
    """

    @property
    def decoder(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """Decodes a raw sample's fields (``{"__key__", field: bytes}``)."""
        ...

    @property
    def map(self) -> Callable[[dict[str, Any]], Any] | None:
        """Applied to each decoded sample (``None``: none)."""
        ...


class EpochPlan(Protocol):
    """What a dataset tells the loader about its epochs (see the module docstring).

    Attributes:
        sources: the datasets whose decode and map apply, by source index (one for a plain dataset).
        shard_sources: the source index of each shard id (shard ids index the dataset's ``urls``).

    Example:
        >>> from dltrain.data import StreamingDataset
        >>> plan = StreamingDataset("data/train-{000000..000006}.tar", batch_size=10).plan
        >>> root = plan.root_level(epoch=0, world_size=2)
        >>> plan.num_positions(root)  # the epoch's 70 samples
        70
        >>> shards, indices = plan.locator(root)(np.arange(3))  # where the first 3 positions of the epoch are
        >>> len(shards), len(indices)
        (3, 3)
    """

    @property
    def sources(self) -> Sequence[SampleSource]:
        """The datasets whose decode and map apply, by source index."""
        ...

    @property
    def shard_sources(self) -> Sequence[int]:
        """The source index of each shard id."""
        ...

    def root_level(self, epoch: int, world_size: int) -> dict[str, Any]:
        """The root level of ``epoch`` with ``world_size`` ranks (JSON-able; saved in loader states)."""
        ...

    def num_positions(self, root: Mapping[str, Any]) -> int:
        """Positions in the epoch of this root level (all ranks)."""
        ...

    def locator(self, root: Mapping[str, Any]) -> Locator:
        """The position -> (shard, sample) map of the epoch of this root level."""
        ...

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Raise `dltrain.errors.DataError` if a saved loader state cannot be resumed on this dataset."""
        ...


def root_level(epoch: int, world_size: int, *, seed: int, shuffle: bool, shuffle_buffer: int, training: bool,
               batch_size: int) -> dict[str, Any]:
    """A root level (no ``base``) from the plan's parameters."""
    return {
        "epoch": int(epoch),
        "seed": int(seed),
        "shuffle": bool(shuffle),
        "shuffle_buffer": int(shuffle_buffer),
        "training": bool(training),
        "batch_size": int(batch_size),
        "world_size": int(world_size),
        "base": None,
    }


def rank_batches(plan: EpochPlan, level: Mapping[str, Any], rank: int) -> int:
    """Batches ``rank`` yields in this level's plan (not counting those before a re-split)."""
    n = len(rank_positions(level, rank, plan.num_positions(root_of(level))))
    return num_batches(n, int(level["batch_size"]), bool(level["training"]))


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) & _MASK64 for p in parts]))


def window_size(shuffle_buffer: int, batch_size: int) -> int:
    """Shuffle window in samples.

    ``shuffle_buffer`` rounded up to a multiple of ``batch_size`` (so a batch never straddles two windows).
    """
    batches = max(1, -(-max(1, shuffle_buffer) // batch_size))
    return batches * batch_size


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's shard order: a permutation seeded by (seed, epoch), or identity without shuffle."""
    if not shuffle:
        return np.arange(num_shards, dtype=np.int64)
    return _rng(seed, epoch, _TAG_SHARDS).permutation(num_shards).astype(np.int64)


def split_range(n: int, rank: int, world_size: int, batch_size: int, training: bool) -> tuple[int, int]:
    """Contiguous range of ``n`` positions for ``rank``.

    Training: every rank gets ``floor(n / (world_size * batch_size)) * batch_size`` (equal batch counts; the
    leftover at the end is dropped). Evaluation: an exact partition (every position once, sizes differ by <= 1).
    """
    if training:
        per_rank = (n // (world_size * batch_size)) * batch_size
        return rank * per_rank, (rank + 1) * per_rank
    return rank * n // world_size, (rank + 1) * n // world_size


def offset_of(level: Mapping[str, Any]) -> int:
    """Batches of the epoch yielded before this level's plan started (0 for a root level)."""
    base = level.get("base")
    return int(base["offset"]) if base else 0


def root_of(level: Mapping[str, Any]) -> Mapping[str, Any]:
    """The root level (whose seed and shuffle fix the epoch's shard order)."""
    while level.get("base"):
        level = level["base"]["state"]
    return level


def _window_shuffle(pos: np.ndarray, level: Mapping[str, Any], rank: int) -> np.ndarray:
    size = window_size(int(level["shuffle_buffer"]), int(level["batch_size"]))
    out = pos.copy()
    for w, start in enumerate(range(0, len(pos), size)):
        chunk = out[start : start + size]
        out[start : start + size] = chunk[_rng(level["seed"], level["epoch"], rank, w, _TAG_WINDOW).permutation(len(chunk))]
    return out


def rank_positions(level: Mapping[str, Any], rank: int, num_samples: int) -> np.ndarray:
    """Positions ``rank`` reads in this level's plan, in batch order (batch j = the j-th ``batch_size`` group).

    Example:
        >>> lvl = dict(epoch=0, seed=0, shuffle=False, shuffle_buffer=1, training=False, batch_size=2,
        ...            world_size=2, base=None)
        >>> rank_positions(lvl, 1, 5).tolist()
        [2, 3, 4]
    """
    batch_size, world = int(level["batch_size"]), int(level["world_size"])
    training = bool(level["training"])
    base = level.get("base")
    if not base:
        lo, hi = split_range(num_samples, rank, world, batch_size, training)
        pos = np.arange(lo, hi, dtype=np.int64)
        return _window_shuffle(pos, level, rank) if level["shuffle"] else pos
    old = base["state"]
    consumed = (int(old["batches"]) - offset_of(old)) * int(old["batch_size"])
    remaining = np.concatenate(
        [rank_positions(old, r, num_samples)[consumed:] for r in range(int(old["world_size"]))]
        or [np.zeros(0, dtype=np.int64)]
    )
    lo, hi = split_range(len(remaining), rank, world, batch_size, training)
    return remaining[lo:hi]


def planned_positions(level: Mapping[str, Any], num_samples: int) -> np.ndarray:
    """The positions the epoch's plan deals out over all ranks, sorted.

    What the ranks of earlier levels had consumed (before a resume with another world or batch size) and what
    this level deals. Training drops the leftover that does not fill a batch on every rank, so there can be
    fewer than ``num_samples``; evaluation deals every position.

    Example:
        >>> lvl = dict(epoch=0, seed=0, shuffle=False, shuffle_buffer=1, training=True, batch_size=2,
        ...            world_size=2, base=None)
        >>> planned_positions(lvl, 11).tolist()
        [0, 1, 2, 3, 4, 5, 6, 7]
    """
    parts = [rank_positions(level, r, num_samples) for r in range(int(level["world_size"]))]
    while level.get("base"):
        old = level["base"]["state"]
        consumed = (int(old["batches"]) - offset_of(old)) * int(old["batch_size"])
        parts += [rank_positions(old, r, num_samples)[:consumed] for r in range(int(old["world_size"]))]
        level = old
    return np.sort(np.concatenate(parts or [np.zeros(0, dtype=np.int64)]))


def num_batches(num_positions: int, batch_size: int, training: bool) -> int:
    """Batches made of ``num_positions`` (training ranges are whole batches; evaluation keeps a last partial)."""
    return num_positions // batch_size if training else -(-num_positions // batch_size)


def shard_starts(order: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """The epoch position of each shard's first sample, shards in ``order`` (and the epoch's length last)."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64)[order])])


def locate(positions: np.ndarray, order: np.ndarray, counts: Sequence[int],
           starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map epoch positions to (shard id, sample index in the shard); ``starts``: `shard_starts` if known."""
    if starts is None:
        starts = shard_starts(order, counts)
    k = np.searchsorted(starts, positions, side="right") - 1
    return order[k], positions - starts[k]
