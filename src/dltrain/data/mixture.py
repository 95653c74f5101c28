"""`Mixture`: a weighted mixture of `StreamingDataset` sources with the same exact, elastic resume.

A mixture epoch is a sequence of M *mixture positions*. The epoch plan of `dltrain.data.plan` (split per rank,
window shuffle, re-split after a world-size change) deals these positions exactly as it deals a single dataset's
samples; only the mapping of a position to a sample differs:

1. **Labels.** Source s gets ``m_s`` of the M positions (largest-remainder rounding of ``w_s * M``). Its k-th
   occurrence sits at the rank of ``(k + u_s) / m_s`` among all sources' occurrences, ``u_s`` drawn from
   (seed, epoch, s): every prefix of the epoch holds each source in proportion, within about one sample, so every
   shuffle window and every batch is mixed in proportion too. `mixture_labels` is a pure function.
2. **Source streams.** Source s reads its samples as one endless stream of its own epochs: sample
   ``g % n_s`` of source epoch ``g // n_s`` for stream position g, where a source epoch's order is the source's
   shards in a permutation seeded by (seed, s, source epoch), each shard's samples in order (forward reading; the
   mixture's window shuffle mixes them). The k-th occurrence of s in mixture epoch e is stream position
   ``start_s + k`` with ``start_s = e * m_s``: consecutive mixture epochs continue the stream, so within a source
   epoch no sample repeats, and a small source cycles through its epochs faster than a large one.

**Epoch length.** By default ``M = min_s floor(n_s / w_s)``: the epoch ends where the first source would need
a second pass, so no source reads more than one source epoch's worth per mixture epoch (that stretch of its
stream may still straddle two of its source epochs, so a sample can come once from each). ``samples_per_epoch=M``
sets it; larger, sources cycle within the mixture epoch (each still never repeats within its own epoch).

**Changing weights (curriculum).** The epoch's weights, counts and stream starts live in the plan's root level
(and so in the loader state). A resume mid-epoch finishes that epoch with the weights it started with, whatever
the new `Mixture` was given; new weights (`Mixture.set_weights` or a `Mixture` built with other weights) apply
from the next epoch that starts. Then ``start_s = e * m_s`` with the new ``m_s``: each source jumps to that point
of its stream, so in the source epoch in progress at the change some samples may be seen twice or not at all
(constant weights never do that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from dltrain.data import plan as _plan
from dltrain.data.streaming import StreamingDataset
from dltrain.errors import ConfigurationError, DataError

__all__ = ["Mixture", "default_epoch_length", "mixture_counts", "mixture_labels", "mixture_locator", "source_seed"]

_MASK64 = (1 << 64) - 1
_TAG_LABELS = 0x6D1C  # separates the label stream from the plan's random streams
_TAG_SOURCE = 0x50C3


def _normalize_weights(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum to 1; raises `ConfigurationError` for negative, non-finite or all-zero weights."""
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError) as exn:
        raise ConfigurationError(f"Mixture weights must be numbers, got {weights!r}") from exn
    if not values or any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise ConfigurationError(f"Mixture weights must be finite, >= 0 and not all 0, got {list(weights)!r}")
    total = sum(values)
    return [w / total for w in values]


def mixture_counts(weights: Sequence[float], num_positions: int) -> list[int]:
    """Positions per source in an epoch of ``num_positions``: largest-remainder rounding of ``w_s * M``.

    Example:
        >>> mixture_counts([0.5, 0.3, 0.2], 11)
        [6, 3, 2]
    """
    w = _normalize_weights(weights)
    exact = [x * num_positions for x in w]
    counts = [math.floor(x) for x in exact]
    # Ties go to the earlier source, so the result is a pure function of the arguments.
    by_remainder = sorted(range(len(w)), key=lambda s: (-(exact[s] - counts[s]), s))
    for s in by_remainder[: num_positions - sum(counts)]:
        counts[s] += 1
    return counts


def default_epoch_length(sizes: Sequence[int], weights: Sequence[float]) -> int:
    """The largest M for which no source with weight > 0 needs more than its ``sizes[s]`` samples."""
    w = _normalize_weights(weights)
    if len(sizes) != len(w):
        raise ConfigurationError(f"{len(sizes)} sources but {len(w)} weights: give one weight per source")
    m = min(math.floor(n / x) for n, x in zip(sizes, w) if x > 0)
    # Float rounding of n / w can overshoot by one; step back until every source fits.
    while m > 0 and any(c > n for c, n in zip(mixture_counts(w, m), sizes)):
        m -= 1
    return m


def mixture_labels(seed: int, epoch: int, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(source, occurrence) of each mixture position of the epoch.

    Source s's k-th occurrence is placed by the key ``(k + u_s) / counts[s]``, ``u_s`` uniform from
    (seed, epoch, s): every prefix holds each source in proportion to ``counts`` within about one sample.

    Example:
        >>> labels, occ = mixture_labels(0, 0, [2, 1])
        >>> sorted(zip(labels.tolist(), occ.tolist()))
        [(0, 0), (0, 1), (1, 0)]
    """
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
    order = np.lexsort((label, key))  # by key, ties by source
    return label[order], np.concatenate(occ)[order]


def source_seed(seed: int, source: int) -> int:
    """Seed of source ``source``'s shard orders (one per source epoch) in a mixture seeded by ``seed``."""
    state = np.random.SeedSequence([seed & _MASK64, source, _TAG_SOURCE]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def mixture_locator(
    root: Mapping[str, Any], source_counts: Sequence[Sequence[int]]
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Maps mixture positions of the epoch of the root level ``root`` to (shard id, sample index in the shard),
    shard ids counting the sources' shards concatenated in source order (``source_counts``: samples per shard of
    each source). The labels are computed once here; call the result for many positions."""
    mix = root["mixture"]
    seed, shuffle = int(root["seed"]), bool(root["shuffle"])
    labels, occurrence = mixture_labels(seed, int(root["epoch"]), mix["counts"])
    start = np.asarray(mix["start"], dtype=np.int64)
    sizes = [int(sum(c)) for c in source_counts]
    first = np.cumsum([0] + [len(c) for c in source_counts])[:-1].tolist()
    orders: dict[tuple[int, int], np.ndarray] = {}  # (source, source epoch) -> its shard order

    def where(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        src = labels[positions]
        stream = start[src] + occurrence[positions]
        shards = np.empty(len(positions), dtype=np.int64)
        indices = np.empty(len(positions), dtype=np.int64)
        for s in np.unique(src).tolist():
            counts = source_counts[s]
            sel = np.flatnonzero(src == s)
            source_epoch, index = np.divmod(stream[sel], sizes[s])
            for q in np.unique(source_epoch).tolist():
                if (s, q) not in orders:
                    orders[s, q] = _plan.shard_order(len(counts), source_seed(seed, s), q, shuffle)
                part = source_epoch == q
                local, indices[sel[part]] = _plan.locate(index[part], orders[s, q], counts)
                shards[sel[part]] = local + first[s]
        return shards, indices

    return where


class Mixture(StreamingDataset):
    """A weighted mixture of `StreamingDataset` sources; usable wherever a `StreamingDataset` is (``.loader()``,
    `dltrain.Trainer.fit`). See the module docstring for the epoch, the source streams and changing weights.

    Batches mix the sources in proportion; each source decodes and maps its own samples with its own ``decode``
    and ``map`` (or plugin), then the mixture collates them together. ``last_batch_samples`` and ``urls`` index the
    sources' shards concatenated in source order.

    Args:
        sources: the datasets to mix (their shards, index, decoders and map are used; their seeds are not).
        weights: one weight >= 0 per source (normalised to sum to 1).
        seed: fixes labels, source shard orders and the window shuffle.
        samples_per_epoch: mixture positions per epoch; default: until the first source would need a second pass.
        batch_size, shuffle, shuffle_buffer, training, on_error: default: the sources' common value (an error if
            they differ).
        collate_fn: collates samples of every source; default: the sources' common ``collate_fn``.

    Example:
        >>> mix = Mixture([web, code, books], weights=[0.5, 0.3, 0.2], seed=0)  # doctest: +SKIP
        >>> loader = mix.loader(num_workers=2)  # doctest: +SKIP
    """

    def __init__(
        self,
        sources: Sequence[StreamingDataset],
        weights: Sequence[float],
        *,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        batch_size: int | None = None,
        shuffle: bool | None = None,
        shuffle_buffer: int | None = None,
        training: bool | None = None,
        on_error: Literal["raise", "skip"] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        sources = list(sources)
        if not sources:
            raise ConfigurationError("Mixture needs at least one source StreamingDataset")
        for i, src in enumerate(sources):
            if isinstance(src, Mixture) or not isinstance(src, StreamingDataset):
                raise ConfigurationError(f"Mixture source {i} is a {type(src).__name__}: sources must be "
                                         "StreamingDatasets (to nest mixtures, mix their sources with combined weights)")
        if len(weights) != len(sources):
            raise ConfigurationError(f"Mixture got {len(sources)} sources but {len(weights)} weights: give one "
                                     "weight per source")
        if samples_per_epoch is not None and (not isinstance(samples_per_epoch, int) or samples_per_epoch < 1):
            raise ConfigurationError(f"samples_per_epoch must be a positive int or None, got {samples_per_epoch!r}")

        def common(name: str, given: Any) -> Any:
            if given is not None:
                return given
            values = [getattr(src, name) for src in sources]
            if any(v != values[0] for v in values[1:]):
                raise ConfigurationError(f"Mixture sources differ in {name} ({values}): pass {name}= to Mixture "
                                         "(it applies to the whole mixture) or build the sources alike")
            return values[0]

        super().__init__(
            "mixture",  # placeholder: the sources' URLs are already expanded and must not be expanded again
            batch_size=common("batch_size", batch_size),
            collate_fn=common("collate_fn", collate_fn),
            shuffle=common("shuffle", shuffle),
            shuffle_buffer=common("shuffle_buffer", shuffle_buffer),
            seed=seed,
            training=common("training", training),
            on_error=common("on_error", on_error),
        )
        self.urls = [url for src in sources for url in src.urls]
        self.sources = sources
        self.weights = _normalize_weights(weights)
        self.samples_per_epoch = samples_per_epoch
        bounds = np.cumsum([0] + [len(src.urls) for src in sources])
        self._first_shard = bounds[:-1].tolist()  # global id of each source's first shard
        self._source_of = np.repeat(np.arange(len(sources)), np.diff(bounds))

    # ----------------------------------------------------------------------------------------- layout

    @property
    def counts(self) -> list[int]:
        """Samples per shard, the sources' shards concatenated in source order."""
        if self._counts is None:
            counts: list[int] = []
            offsets: list[np.ndarray | None] = []
            for src in self.sources:
                counts += src.counts
                offsets += src._offsets
            self._counts, self._offsets = counts, offsets
        return self._counts

    @property
    def sizes(self) -> list[int]:
        """Samples per source."""
        return [int(sum(src.counts)) for src in self.sources]

    @property
    def num_samples(self) -> int:
        """Mixture positions per epoch with the current weights (samples of one epoch, all ranks)."""
        if self.samples_per_epoch is not None:
            return self.samples_per_epoch
        return default_epoch_length(self._checked_sizes(self.weights), self.weights)

    def _checked_sizes(self, weights: Sequence[float]) -> list[int]:
        sizes = self.sizes
        for s, (n, w) in enumerate(zip(sizes, weights)):
            if n == 0 and w > 0:
                raise DataError(f"Mixture source {s} ({self.sources[s].urls[0]}, ...) has no samples but weight "
                                f"{w:g}: give it weight 0 or check its shards and index")
        return sizes

    def set_weights(self, weights: Sequence[float]) -> None:
        """New weights, used from the next epoch that starts (an epoch in progress keeps its weights)."""
        if len(weights) != len(self.sources):
            raise ConfigurationError(f"Mixture has {len(self.sources)} sources but got {len(weights)} weights")
        self.weights = _normalize_weights(weights)

    # ----------------------------------------------------------------------------------------- plan

    def _root_level(self, epoch: int, world_size: int) -> dict[str, Any]:
        level = super()._root_level(epoch, world_size)
        m = mixture_counts(self.weights, self.num_samples)
        level["mixture"] = {"weights": list(self.weights), "counts": m, "start": [int(epoch) * c for c in m],
                            "sizes": self._checked_sizes(self.weights),
                            "shards": [len(src.urls) for src in self.sources]}
        return level

    def _epoch_positions(self, root: Mapping[str, Any]) -> int:
        return int(sum(root["mixture"]["counts"]))

    def _locator(self, root: Mapping[str, Any]) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return mixture_locator(root, [src.counts for src in self.sources])

    def _check_state(self, state: Mapping[str, Any]) -> None:
        mix = state.get("mixture")
        if mix is None:
            raise DataError("the saved loader state is of a single StreamingDataset, not a Mixture: resume it with "
                            "that dataset, or start the epoch over without the loader state")
        now = {"sizes": self.sizes, "shards": [len(src.urls) for src in self.sources]}
        saved = {"sizes": list(mix["sizes"]), "shards": list(mix["shards"])}
        if saved != now:
            raise DataError(f"the saved loader state is for a Mixture of sources with {saved['sizes']} samples in "
                            f"{saved['shards']} shards, but this Mixture's sources have {now['sizes']} samples in "
                            f"{now['shards']} shards: resume with the same sources in the same order (weights may "
                            "change), or start the epoch over without the loader state")

    def _prepare(self, raw: dict[str, Any], shard: int) -> Any:
        s = int(self._source_of[shard])
        return self.sources[s]._prepare(raw, shard - self._first_shard[s])
