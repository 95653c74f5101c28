"""`Mixture`: a weighted mixture of `StreamingDataset` sources with the same exact, elastic resume.

A mixture epoch is a sequence of M *mixture positions*. The epoch plan of `dltrain.data.plan` (split per rank,
window shuffle, re-split after a world-size change) deals these positions exactly as it deals a single dataset's
samples; only the mapping of a position to a sample differs:

1. **Labels.** Source s gets ``m_s`` of the M positions (largest-remainder rounding of ``w_s * M``). Its k-th
   occurrence sits at the rank of ``(k + u_s) / m_s`` among all sources' occurrences, ``u_s`` drawn from
   (seed, epoch, s): every prefix of the epoch holds each source in proportion, within about one sample, so every
   shuffle window and every batch is mixed in proportion too. `mixture_labels` is a pure function.

   **Computed per window, never for the whole epoch** (an LLM mixture has billions of positions per epoch). The
   position of occurrence (s, k) is its rank when all occurrences are sorted by key, ties by source:
   ``r(s, k) = k + sum_{t != s} #{j : key_t(j) < key_s(k)}`` (``<=`` for t < s). Keys of one source increase with
   j, so each count is ``ceil(key * m_t - u_t)`` corrected by a step or two against the exact float keys, and
   ``r`` is exact. The occurrences of s before position a, ``c_s(a) = #{k : r(s, k) < a}``, lie within about S + 2
   of ``a * m_s / M`` (S sources; the prefix bound above), so a binary search over that bracket (widened if the
   exact ranks refute it) finds it in a few steps. Window [a, b) is then the occurrences ``c_s(a) <= k < c_s(b)``
   of every source, sorted by (key, source): time and memory grow with ``b - a`` and S, not with M, and the
   result is bit for bit the old whole-epoch sort (tests compare them). `mixture_locator` labels the spans of
   the positions a call asks for (runs of sorted positions with gaps up to 256) and keeps the last few spans, so
   the per-batch calls inside a shuffle window cost an index lookup; each source's shard orders of the (at most
   two) source epochs its stretch of the mixture epoch touches form one table, so a call is one searchsorted.
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
from dltrain.data.index import ShardLayout
from dltrain.data.streaming import StreamingDataset
from dltrain.errors import ConfigurationError, DataError

__all__ = [
    "Mixture",
    "MixturePlan",
    "default_epoch_length",
    "mixture_counts",
    "mixture_labels",
    "mixture_locator",
    "source_seed",
]

_MASK64 = (1 << 64) - 1
_TAG_LABELS = 0x6D1C  # separates the label stream from the plan's random streams
_TAG_SOURCE = 0x50C3
_GAP = 256  # positions further apart than this are labelled as separate spans
_CACHE_SPAN = 1 << 18  # spans up to this many positions are kept for later calls ...
_CACHE_ENTRIES = 4  # ... the last few of them
_CACHE_ORDERS = 64  # (source, source epoch) shard orders kept per locator


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


class _EpochLabels:
    """(source, occurrence) of the positions of one mixture epoch, computed window by window.

    Source s's k-th occurrence has the key ``(k + u_s) / m_s`` (float64, exactly as written); position p holds
    the item of rank p when all items are sorted by (key, source). Nothing of size M is built: the rank of an
    item is a sum of per-source counts (keys of one source are increasing, so each count is a ceil plus an exact
    float correction), the number of occurrences of s before position a is a binary search over k for that rank
    (within a few of ``a * m_s / M``), and a window [a, b) is the items with occurrence counts between those at a
    and at b, sorted.
    """

    def __init__(self, seed: int, epoch: int, counts: Sequence[int]) -> None:
        counts = [int(c) for c in counts]
        self.sources = np.array([s for s, c in enumerate(counts) if c > 0], dtype=np.int64)  # sources present
        self.m = np.array([counts[s] for s in self.sources.tolist()], dtype=np.int64)
        self.u = np.array([np.random.default_rng(np.random.SeedSequence(
            [seed & _MASK64, epoch & _MASK64, s, _TAG_LABELS])).random() for s in self.sources.tolist()])
        self.total = int(self.m.sum())

    def _key(self, s: np.ndarray, k: np.ndarray) -> np.ndarray:
        # int64 + float64, then / float64: the same roundings as ``(np.arange(m) + u) / m``.
        return (k + self.u[s]) / self.m[s]

    def _count_below(self, t: np.ndarray, x: np.ndarray, inclusive: np.ndarray) -> np.ndarray:
        """#{j in [0, m_t): key_t(j) < x} (``<= x`` where ``inclusive``), elementwise."""
        m, u = self.m[t], self.u[t]
        j = np.clip(np.ceil(x * m - u), 0, m).astype(np.int64)

        def before(jj: np.ndarray) -> np.ndarray:
            key = (jj + u) / m
            return np.where(inclusive, key <= x, key < x)

        # The float estimate can be off by one either way; keys are monotone in j, so step until exact.
        while True:
            down = (j > 0) & ~before(j - 1)
            up = (j < m) & before(j)
            if not (down.any() or up.any()):
                return j
            j = j - down + up

    def _rank(self, s: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Position of source s's k-th occurrence: items sorted by key, ties by source (as a stable lexsort)."""
        x = self._key(s, k)[:, None]
        t = np.arange(len(self.m))[None, :]
        before = self._count_below(np.broadcast_to(t, (len(s), len(self.m))), x, t < s[:, None])
        return np.where(t == s[:, None], k[:, None], before).sum(axis=1)

    def counts_before(self, a: np.ndarray) -> np.ndarray:
        """``out[i, s]``: occurrences of (present) source s at positions < ``a[i]``."""
        n, num = len(a), len(self.m)
        s = np.tile(np.arange(num), n)
        target = np.repeat(a, num)
        m = self.m[s]
        # Every prefix holds each source within about one sample per source of its share (module docstring):
        # bracket the answer there, and widen a bracket that the exact ranks refute.
        est = np.floor(target * (m / max(self.total, 1))).astype(np.int64)
        spread = num + 2
        lo, hi = np.clip(est - spread, 0, m), np.clip(est + spread + 1, 0, m)
        check = np.flatnonzero(lo > 0)
        lo[check[self._rank(s[check], lo[check] - 1) >= target[check]]] = 0
        check = np.flatnonzero(hi < m)
        wrong = check[self._rank(s[check], hi[check]) < target[check]]
        hi[wrong] = m[wrong]
        while True:
            act = np.flatnonzero(lo < hi)
            if not len(act):
                return lo.reshape(n, num)
            mid = (lo[act] + hi[act]) // 2
            low = self._rank(s[act], mid) < target[act]
            lo[act] = np.where(low, mid + 1, lo[act])
            hi[act] = np.where(low, hi[act], mid)

    def spans(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, occurrence) of positions ``[lo[r], hi[r])`` for each run r, concatenated in run order."""
        runs, num = len(lo), len(self.m)
        bounds = self.counts_before(np.concatenate([lo, hi]).astype(np.int64))
        first, length = bounds[:runs].ravel(), (bounds[runs:] - bounds[:runs]).ravel()
        run = np.repeat(np.repeat(np.arange(runs), num), length)
        s = np.repeat(np.tile(np.arange(num), runs), length)
        k = np.repeat(first - (np.cumsum(length) - length), length) + np.arange(int(length.sum()))
        order = np.lexsort((s, self._key(s, k), run))  # per run, by key, ties by source
        return self.sources[s[order]], k[order]


def mixture_labels(seed: int, epoch: int, counts: Sequence[int], start: int = 0,
                   stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(source, occurrence) of the mixture positions ``[start, stop)`` of the epoch (default: all of it).

    Source s's k-th occurrence is placed by the key ``(k + u_s) / counts[s]``, ``u_s`` uniform from
    (seed, epoch, s): every prefix holds each source in proportion to ``counts`` within about one sample. Time and
    memory grow with ``stop - start`` (and the number of sources), not with the epoch.

    Example:
        >>> labels, occ = mixture_labels(0, 0, [2, 1])
        >>> sorted(zip(labels.tolist(), occ.tolist()))
        [(0, 0), (0, 1), (1, 0)]
    """
    table = _EpochLabels(seed, epoch, counts)
    stop = table.total if stop is None else int(stop)
    if not 0 <= start <= stop <= table.total:
        raise ConfigurationError(f"mixture_labels: window [{start}, {stop}) is not inside the epoch's "
                                 f"{table.total} positions")
    if start == stop:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return table.spans(np.array([start]), np.array([stop]))


def source_seed(seed: int, source: int) -> int:
    """Seed of source ``source``'s shard orders (one per source epoch) in a mixture seeded by ``seed``."""
    state = np.random.SeedSequence([seed & _MASK64, source, _TAG_SOURCE]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


class _LabelCache:
    """Labels of arbitrary positions of one epoch.

    Sorted positions are cut into runs (gaps of at most ``_GAP``), each run's span is computed with
    `_EpochLabels.spans` or read from the few spans computed last. A loader asks for a shuffle window's
    positions, then batch by batch for positions inside it: those hit the cache.
    """

    def __init__(self, table: _EpochLabels) -> None:
        self.table = table
        self.recent: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (lo, hi, labels, occurrences)

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(positions):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if self.recent:  # the common call: a batch inside the window asked for last
            a, b, labels, occ = self.recent[0]
            if a <= positions.min() and positions.max() < b:
                return labels[positions - a], occ[positions - a]
        ordered = np.sort(positions)
        if ordered[0] < 0 or ordered[-1] >= self.table.total:
            raise DataError(f"mixture positions {ordered[0]}..{ordered[-1]} are outside the epoch's "
                            f"{self.table.total} positions: the plan level does not belong to this Mixture")
        cut = np.flatnonzero(np.diff(ordered) > _GAP) + 1
        lo = ordered[np.concatenate([[0], cut])]
        hi = ordered[np.concatenate([cut - 1, [len(ordered) - 1]])] + 1
        spans = [(int(a), int(b)) for a, b in zip(lo.tolist(), hi.tolist())]
        hits = [next((e for e in self.recent if e[0] <= a and b <= e[1]), None) for a, b in spans]
        missing = [r for r, hit in enumerate(hits) if hit is None]
        computed: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        if missing:
            labels, occ = self.table.spans(lo[missing], hi[missing])
            at = 0
            for r in missing:
                a, b = spans[r]
                computed[r] = (a, labels[at : at + b - a], occ[at : at + b - a])
                if b - a <= _CACHE_SPAN:
                    self.recent = [(a, b, *computed[r][1:]), *self.recent[: _CACHE_ENTRIES - 1]]
                at += b - a
        pieces = [computed[r] if hit is None else (a, hit[2][a - hit[0] : b - hit[0]], hit[3][a - hit[0] : b - hit[0]])
                  for r, (hit, (a, b)) in enumerate(zip(hits, spans))]
        if len(pieces) == 1:
            base, labels, occ = pieces[0]
            return labels[positions - base], occ[positions - base]
        # Several runs: one flat array of their spans, each position indexed into its run's span.
        run = np.searchsorted(lo, positions, side="right") - 1
        sizes = np.array([len(p[1]) for p in pieces], dtype=np.int64)
        flat = (np.cumsum(sizes) - sizes)[run] + positions - np.array([p[0] for p in pieces], dtype=np.int64)[run]
        return np.concatenate([p[1] for p in pieces])[flat], np.concatenate([p[2] for p in pieces])[flat]


def mixture_locator(
    root: Mapping[str, Any], source_counts: Sequence[Sequence[int]]
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Maps mixture positions of the epoch of the root level ``root`` to (shard id, sample index in the shard).

    Shard ids count the sources' shards concatenated in source order (``source_counts``: samples per shard of
    each source). Labels are computed for the spans asked for (memory grows with the positions of a call, not
    with the epoch); call the result for many positions.
    """
    mix = root["mixture"]
    seed, shuffle = int(root["seed"]), bool(root["shuffle"])
    labels_of = _LabelCache(_EpochLabels(seed, int(root["epoch"]), mix["counts"]))
    start = np.asarray(mix["start"], dtype=np.int64)
    sizes = np.array([sum(int(n) for n in c) for c in source_counts], dtype=np.int64)
    first = np.cumsum([0] + [len(c) for c in source_counts])[:-1].tolist()
    orders: dict[tuple[int, int], np.ndarray] = {}  # (source, source epoch) -> shard order; the latest few

    def order(s: int, q: int) -> np.ndarray:
        if (s, q) not in orders:
            if len(orders) >= _CACHE_ORDERS:
                del orders[next(iter(orders))]
            orders[s, q] = _plan.shard_order(len(source_counts[s]), source_seed(seed, s), q, shuffle)
        return orders[s, q]

    # Source s's stretch of the epoch, stream positions [start_s, start_s + m_s), lies in its source epochs q_s
    # and q_s + 1 (q_s = start_s // n_s) unless the source cycles (m_s > n_s). One table of both epochs' shards of
    # every source answers a call with one searchsorted: entry points ``base_s + (q - q_s) * n_s + first sample``.
    q0 = np.where(sizes > 0, start // np.maximum(sizes, 1), 0)
    phase = start - q0 * sizes  # stream offset of the epoch's first occurrence inside source epoch q_s
    base = np.cumsum(np.concatenate([[0], 2 * sizes]))[:-1]
    entry, shard_of = [], []
    for s, counts in enumerate(source_counts):
        for step in (0, 1):
            o = order(s, int(q0[s]) + step)
            entry.append(base[s] + step * sizes[s] + np.cumsum(np.concatenate([[0], np.asarray(counts, np.int64)[o]]))[:-1])
            shard_of.append(o + first[s])
    entries = np.concatenate(entry or [np.zeros(0, np.int64)]).astype(np.int64)
    shard_ids = np.concatenate(shard_of or [np.zeros(0, np.int64)]).astype(np.int64)

    def where(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        src, occurrence = labels_of(positions)
        rel = phase[src] + occurrence
        if len(rel) and (rel >= 2 * sizes[src]).any():
            return slow(src, start[src] + occurrence)
        key = base[src] + rel
        k = np.searchsorted(entries, key, side="right") - 1
        return shard_ids[k], key - entries[k]

    def slow(src: np.ndarray, stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A source that cycles within the mixture epoch: its shard orders source epoch by source epoch.
        shards = np.empty(len(src), dtype=np.int64)
        indices = np.empty(len(src), dtype=np.int64)
        source_epoch, index = np.divmod(stream, sizes[src])
        for s, q in set(zip(src.tolist(), source_epoch.tolist())):
            part = np.flatnonzero((src == s) & (source_epoch == q))
            o = order(s, q)
            starts = np.cumsum(np.concatenate([[0], np.asarray(source_counts[s], np.int64)[o]]))
            k = np.searchsorted(starts, index[part], side="right") - 1
            shards[part] = o[k] + first[s]
            indices[part] = index[part] - starts[k]
        return shards, indices

    return where



class _Chain(Sequence[Any]):
    """Several sequences read as one, without copying them (a `Mixture`'s layout: its sources' layouts in order)."""

    def __init__(self, parts: Sequence[Sequence[Any]]) -> None:
        self._parts = list(parts)
        self._starts = np.cumsum([0] + [len(p) for p in self._parts]).tolist()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        i = range(len(self))[i]
        part = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._parts[part][i - self._starts[part]]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

class Mixture(StreamingDataset):
    """A weighted mixture of `StreamingDataset` sources.

    Usable wherever a `StreamingDataset` is (``.loader()``, `dltrain.Trainer.fit`). See the module docstring
    for the epoch, the source streams and changing weights.

    Batches mix the sources in proportion; each source decodes and maps its own samples with its own ``decode``
    and ``map`` (or plugin), then the mixture collates them together. ``last_batch_samples`` and ``urls`` index the
    sources' shards concatenated in source order.

    Args:
        sources: the datasets to mix (their shards, index, decoders and map are used; their seeds are not).
        weights: one weight >= 0 per source (normalised to sum to 1).
        seed: fixes labels, source shard orders and the window shuffle.
        samples_per_epoch: mixture positions per epoch; default: until the first source would need a second pass.
        batch_size: samples per batch; default: the sources' common value (an error if they differ), as for the
            next four.
        shuffle: shuffle the epoch (`StreamingDataset`'s).
        shuffle_buffer: samples per shuffle window (`StreamingDataset`'s).
        training: every rank gets the same number of full batches (`StreamingDataset`'s).
        on_error: ``"raise"`` or ``"skip"`` a bad sample (`StreamingDataset`'s).
        collate_fn: collates samples of every source; default: the sources' common ``collate_fn``.

    Example:
        >>> from dltrain.data import StreamingDataset
        >>> web = StreamingDataset("data/train-{000000..000003}.tar", batch_size=10)
        >>> code = StreamingDataset("data/train-{000004..000006}.tar", batch_size=10)
        >>> mix = Mixture([web, code], weights=[0.7, 0.3], seed=0)
        >>> loader = mix.loader(num_workers=2)
        >>> len(loader)  # until the first source would need a second pass
        5
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
        self._first_shard = np.cumsum([0] + [len(src.urls) for src in sources])[:-1].tolist()  # each source's first

    # ----------------------------------------------------------------------------------------- layout

    @property
    def layout(self) -> ShardLayout:
        """Samples and sample byte offsets per shard, the sources' shards concatenated in source order."""
        if self._layout is None:
            layouts = [src.layout for src in self.sources]
            self._layout = ShardLayout([c for lay in layouts for c in lay.counts],
                                       _Chain([lay.offsets for lay in layouts]),  # each parsed at first use
                                       _Chain([lay.tables for lay in layouts]))
        return self._layout

    @property
    def sizes(self) -> list[int]:
        """Samples per source."""
        return [int(sum(src.counts)) for src in self.sources]

    @property
    def num_samples(self) -> int:
        """Mixture positions per epoch with the current weights (samples of one epoch, all ranks)."""
        if self.samples_per_epoch is not None:
            return self.samples_per_epoch
        return default_epoch_length(self.checked_sizes(self.weights), self.weights)

    def checked_sizes(self, weights: Sequence[float]) -> list[int]:
        """Samples per source; raises `DataError` if a source with a weight > 0 has none."""
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

    @property
    def plan(self) -> _plan.EpochPlan:
        """This mixture's epochs (`dltrain.data.plan.EpochPlan`).

        Mixture positions, labelled with their sources window by window (see the module docstring).
        """
        return MixturePlan(self)


class MixturePlan:
    """The `dltrain.data.plan.EpochPlan` of a `Mixture` (``mixture.plan``).

    Made from the mixture's current sources and weights when asked for. The epoch's weights, counts and stream
    starts live in the root level, so that an epoch resumed with other weights finishes with the ones it started
    with.

    Example:
        >>> a = StreamingDataset("data/train-{000000..000003}.tar", batch_size=10)
        >>> b = StreamingDataset("data/train-{000004..000006}.tar", batch_size=10)
        >>> plan = Mixture([a, b], weights=[0.5, 0.5], seed=0, samples_per_epoch=40).plan
        >>> plan.num_positions(plan.root_level(epoch=0, world_size=1)), list(plan.shard_sources)
        (40, [0, 0, 0, 0, 1, 1, 1])
    """

    def __init__(self, mixture: Mixture) -> None:
        self.mixture = mixture
        self.sources: Sequence[_plan.SampleSource] = list(mixture.sources)
        self.shard_sources: Sequence[int] = [s for s, src in enumerate(mixture.sources) for _ in src.urls]

    def root_level(self, epoch: int, world_size: int) -> dict[str, Any]:
        """The mixture's root level of ``epoch`` (`dltrain.data.plan.EpochPlan.root_level`)."""
        mix = self.mixture
        level = _plan.root_level(epoch, world_size, seed=mix.seed, shuffle=mix.shuffle,
                                 shuffle_buffer=mix.shuffle_buffer, training=mix.training, batch_size=mix.batch_size)
        m = mixture_counts(mix.weights, mix.num_samples)
        level["mixture"] = {"weights": list(mix.weights), "counts": m, "start": [int(epoch) * c for c in m],
                            "sizes": mix.checked_sizes(mix.weights),
                            "shards": [len(src.urls) for src in mix.sources]}
        return level

    def num_positions(self, root: Mapping[str, Any]) -> int:
        """Positions in the epoch of ``root``: the sum of the sources' counts."""
        return int(sum(root["mixture"]["counts"]))

    def locator(self, root: Mapping[str, Any]) -> _plan.Locator:
        """Maps the epoch's positions to (shard id, index in shard), labelled by source."""
        return mixture_locator(root, [src.counts for src in self.mixture.sources])

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Raise `DataError` unless ``state`` is a loader state of this mixture."""
        mix = state.get("mixture")
        if mix is None:
            raise DataError("the saved loader state is of a single StreamingDataset, not a Mixture: resume it with "
                            "that dataset, or start the epoch over without the loader state")
        now = {"sizes": self.mixture.sizes, "shards": [len(src.urls) for src in self.mixture.sources]}
        saved = {"sizes": list(mix["sizes"]), "shards": list(mix["shards"])}
        if saved != now:
            raise DataError(f"the saved loader state is for a Mixture of sources with {saved['sizes']} samples in "
                            f"{saved['shards']} shards, but this Mixture's sources have {now['sizes']} samples in "
                            f"{now['shards']} shards: resume with the same sources in the same order (weights may "
                            "change), or start the epoch over without the loader state")
