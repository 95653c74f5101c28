"""`StreamingDataset` and `StreamingDataLoader`: deterministic, resumable, distributed streaming of tar shards.

How an epoch is planned (see `dltrain.data.plan`):

1. the shard order is a permutation seeded by (seed, epoch) (identity with ``shuffle=False``);
2. the samples, in that order, are split into contiguous per-rank ranges. Training: every rank gets the same
   whole number of batches and the leftover at the end is dropped (it changes every epoch with the shard order).
   Evaluation (``training=False``): an exact partition, every sample once, ranks may differ by one batch;
3. each rank's range is shuffled in windows of ``shuffle_buffer`` samples (rounded up to a multiple of
   ``batch_size``); batch j of the rank is the j-th group of ``batch_size`` samples.

The plan depends only on (seed, epoch, rank, world size, batch size). Loader worker w of K produces the rank's
batches j = w, w+K, w+2K, ... which is exactly the round-robin order in which `torch.utils.data.DataLoader`
collects them, so the number of workers never changes what a rank sees. A worker reads only the shards holding
its samples, keeps raw bytes only of the samples it needs, and decodes only those. Where the index has sample
offsets (local, uncompressed shards; see `dltrain.data.index`) it reads its samples of each shuffle window with
positioned reads, neighbouring samples with one read; otherwise (``pipe:``/``http(s):`` URLs, compressed shards,
version 1 indexes) it scans each shard forward and reads a shuffle window at a time.

Bad data (``on_error``): ``"raise"`` raises `DataError` naming the shard, the sample key and what to do;
``"skip"`` drops the bad samples (the batch gets smaller, or is ``None`` if every sample of it was bad; the
number of batches never changes, so DDP ranks stay in step). The loader counts skipped samples in the main
process: read ``loader.skipped`` or ``loader.epoch_report()`` at the end of an epoch; a `DataSkipWarning` is
also emitted when an epoch ends with skipped samples.
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, default_convert, get_worker_info

from dltrain._compat import check_loader_worker_sockets, shutdown_loader_workers
from dltrain.data import plan as _plan
from dltrain.data.decoders import Decoder, SampleDecoder
from dltrain.data.domain import DataPlugin, check_stage
from dltrain.data.index import ShardLayout, shard_layout
from dltrain.data.readers import IndexedShardReader, ShardReader
from dltrain.data.urls import expand_urls, seekable
from dltrain.errors import ConfigurationError, DataError

__all__ = ["BatchSamples", "DataSkipWarning", "StreamingDataLoader", "StreamingDataset", "resolve_rank"]

STATE_VERSION = 1
_SPEC_BYTES = 1 << 16
_PR_SET_PDEATHSIG = 1  # prctl(2)
_MAX_REPORTED_ERRORS = 20
_STATE_ONLY = ("version", "batches", "skipped", "num_samples", "num_shards")  # loader state keys outside the level


class BatchSamples:
    """The samples a batch holds, in batch order (bad samples skipped with ``on_error="skip"`` left out).

    ``shards[i]`` indexes the dataset's ``urls``, ``indices[i]`` is the sample's place in that shard (what a
    `dltrain.callbacks.SampleLedger` records), ``keys[i]`` its ``__key__``.

    Made in the loader worker as one JSON text (``json``), which is all that travels to the training process and
    all a ledger writes: the training process decodes the fields only when they are read. (Encoding there and
    pickling arrays and key lists cost the training process ~25 µs a batch.)

    Example:
        >>> loader = StreamingDataset("data/train-{000000..000006}.tar", batch_size=4, shuffle=False).loader()
        >>> loader.record_samples = True  # what SampleLedger turns on
        >>> batch = next(iter(loader))
        >>> held = loader.last_batch_samples
        >>> held.shards.tolist(), held.indices.tolist(), held.keys
        ([0, 0, 0, 0], [0, 1, 2, 3], ['s0000', 's0001', 's0002', 's0003'])
    """

    __slots__ = ("_fields", "json")

    def __init__(self, shards: np.ndarray, indices: np.ndarray, keys: list[str]) -> None:
        self.json = json.dumps({"shards": shards.tolist(), "indices": indices.tolist(), "keys": keys},
                               separators=(",", ":"))
        self._fields: tuple[np.ndarray, np.ndarray, list[str]] | None = (shards, indices, keys)

    @classmethod
    def _from_json(cls, text: str) -> BatchSamples:
        held = cls.__new__(cls)
        held.json, held._fields = text, None
        return held

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return BatchSamples._from_json, (self.json,)

    def _decoded(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if self._fields is None:
            d = json.loads(self.json)
            self._fields = (np.asarray(d["shards"], dtype=np.int64), np.asarray(d["indices"], dtype=np.int64),
                            list(d["keys"]))
        return self._fields

    @property
    def shards(self) -> np.ndarray:
        """Each sample's shard id (an index of the dataset's ``urls``)."""
        return self._decoded()[0]

    @property
    def indices(self) -> np.ndarray:
        """Each sample's index in its shard."""
        return self._decoded()[1]

    @property
    def keys(self) -> list[str]:
        """Each sample's ``__key__``."""
        return self._decoded()[2]

    def __repr__(self) -> str:
        return f"BatchSamples({self.json})"


class _PreRead:
    """A window read ahead for the next epoch: the plan it was read for, the samples, the open readers."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.need: np.ndarray | None = None
        self.raw: dict[int, Any] = {}
        self.readers: dict[int, ShardReader | IndexedShardReader] = {}
        self.thread: threading.Thread | None = None

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.readers = {}


def _wanted_per_shard(positions: np.ndarray, batches: np.ndarray, batch_size: int,
                      where: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Callable[[int], np.ndarray]:
    """Shard id -> the indices in that shard of every sample of ``batches`` (what a forward reader extracts).

    Built on the first call: seekable shards never call it, and locating every sample of the worker's epoch up
    front costs time before the first batch (a `Mixture` labels each of those positions).
    """
    table: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (sorted shard ids, indices, their order)

    def wanted(shard: int) -> np.ndarray:
        if not table:
            flat = (batches[:, None] * batch_size + np.arange(batch_size)[None, :]).ravel()
            shard_ids, locals_ = where(positions[flat[flat < len(positions)]])
            by_shard = np.argsort(shard_ids, kind="stable")
            table.append((shard_ids[by_shard], locals_, by_shard))
        sorted_ids, locals_, by_shard = table[0]
        lo, hi = np.searchsorted(sorted_ids, [shard, shard + 1])
        return locals_[by_shard[lo:hi]]

    return wanted


def _preread_key(level: Mapping[str, Any], rank: int, start: int, worker: int, num_workers: int) -> str:
    return json.dumps([level, rank, start, worker, num_workers], sort_keys=True, default=str)


class DataSkipWarning(UserWarning):
    """Emitted at the end of an epoch in which ``on_error="skip"`` dropped bad samples."""


def resolve_rank() -> tuple[int, int]:
    """(rank, world size) of a split nobody gave.

    From `torch.distributed` when initialised, else env ``RANK``/``WORLD_SIZE``, else (0, 1). These are the
    global ones; under tensor parallelism the Trainer gives its loaders their data-parallel split instead
    (`StreamingDataLoader.set_split`).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class _SharedSpec:
    """A JSON document in shared memory.

    Loader workers hold a copy of the dataset made when they started (persistent workers live across epochs),
    so attribute changes made later in the main process never reach them; this buffer does. It is a torch
    tensor in shared memory: inherited through fork, passed by handle through torch's multiprocessing pickler.
    """

    def __init__(self) -> None:
        self._buf = torch.zeros(_SPEC_BYTES, dtype=torch.uint8).share_memory_()

    def write(self, doc: Mapping[str, Any]) -> None:
        data = json.dumps(doc).encode("utf-8")
        if len(data) + 8 > _SPEC_BYTES:
            raise DataError(f"loader state too large to share with workers ({len(data)} bytes)")
        payload = np.frombuffer(len(data).to_bytes(8, "little") + data, dtype=np.uint8)
        self._buf[: len(payload)] = torch.from_numpy(payload.copy())

    def read(self) -> dict[str, Any] | None:
        raw = self._buf.numpy()
        n = int.from_bytes(raw[:8].tobytes(), "little")
        return json.loads(raw[8 : 8 + n].tobytes().decode("utf-8")) if n else None


class StreamingDataset(IterableDataset):
    """An iterable of collated batches streamed from tar shards; see the module docstring for the plan.

    Args:
        urls: shard URLs (local paths, ``file:``, ``pipe:``, ``http(s):``), brace patterns, or a list of them.
        batch_size: samples per batch.
        decode: extra decoders by field extension, ``{"png": decode_png}`` (bytes -> value); run in workers.
        map: per-sample function ``decoded sample dict -> value``, run in workers after decoding.
        collate_fn: list of mapped samples -> batch (default `torch.utils.data.default_collate`).
        shuffle: shuffle shard order and samples within windows.
        shuffle_buffer: window size in samples (rounded up to a multiple of ``batch_size``).
        seed: plan seed; the plan is a pure function of (seed, epoch, rank, world size, batch size).
        training: equal batch counts on every rank (drops the leftover); ``False``: every sample exactly once.
        on_error: ``"raise"`` or ``"skip"`` bad samples (see module docstring).
        unsafe_decoders: pickle-based extensions to decode anyway (``"pyd"``, ``"pickle"``, ``"pth"``, ``"pt"``):
            they unpickle (``pickle.loads``; ``torch.load(weights_only=False)`` for ``pth``/``pt``), which runs
            code from the shard: only for shards you trust.
        index: path of the shard index; default: ``<stem>.index.json`` next to the shards if it exists, else
            counts are read from the tar headers (slower, with a warning).
        plugin: a domain plugin (`dltrain.data.domain.DataPlugin`) or its registry name (``"vision"``, resolved
            with ``dltrain.plugins.get``): its
            decoders (under ``decode``), its ``transform(stage, **options)`` as ``map`` and its ``collate`` (unless
            ``collate_fn`` is given) build decode -> transform -> collate.
        stage: with ``plugin``: ``"train"``, ``"val"``, ``"test"`` or ``"predict"``; it also sets the defaults of
            ``training`` and ``shuffle`` (on for ``"train"`` only).
        options: keyword arguments of the plugin's ``transform`` (sizes, lengths, ...).

    Example:
        >>> ds = StreamingDataset("data/train-{000000..000006}.tar", batch_size=32,
        ...                       map=lambda s: (s["npy"], s["cls"]))
        >>> loader = ds.loader(num_workers=2)
        >>> for epoch in range(3):
        ...     loader.set_epoch(epoch)
        ...     for x, y in loader: ...
        >>> x.shape, y.shape
        (torch.Size([32, 8]), torch.Size([32]))
        >>> import dltrain.plugins
        >>> val = StreamingDataset("data/images-{000000..000001}.tar", batch_size=8,
        ...                        plugin=dltrain.plugins.get("vision"), stage="val", options={"size": 32})
        >>> images, labels = next(iter(val.loader()))
        >>> images.shape
        torch.Size([8, 3, 32, 32])
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        batch_size: int,
        decode: Mapping[str, Decoder] | None = None,
        map: Callable[[dict[str, Any]], Any] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        shuffle: bool | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        training: bool | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        unsafe_decoders: Sequence[str] = (),
        index: str | None = None,
        plugin: DataPlugin | str | None = None,
        stage: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(plugin, str):
            # By name, through the registry; imported here so that the core never imports it (nor a plugin) itself.
            from dltrain.plugins import get as _get_plugin

            plugin = _get_plugin(plugin)
        if plugin is not None:
            if stage is None:
                raise ConfigurationError(f"StreamingDataset(plugin={plugin.name!r}) needs a stage= "
                                         "('train', 'val', 'test' or 'predict')")
            if map is not None:
                raise ConfigurationError("give either map= or plugin= (the plugin's transform is the map)")
            decode = {**plugin.decoders, **(decode or {})}
            map = plugin.transform(check_stage(stage), **(options or {}))
            collate_fn = collate_fn if collate_fn is not None else plugin.collate
        elif stage is not None or options is not None:
            raise ConfigurationError("stage= and options= are for a plugin's transform; pass plugin= too")
        if training is None:
            training = stage in (None, "train")
        if shuffle is None:
            shuffle = stage in (None, "train")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        if on_error not in ("raise", "skip"):
            raise ConfigurationError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if shuffle_buffer < 1:
            raise ConfigurationError(f"shuffle_buffer must be >= 1, got {shuffle_buffer!r}")
        self.urls = expand_urls(urls)
        self.batch_size = batch_size
        self.decoder = SampleDecoder(decode, unsafe_decoders)
        self.map = map
        self.collate_fn = collate_fn or default_collate
        self.shuffle = bool(shuffle)
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.training = bool(training)
        self.on_error = on_error
        self.index = index
        self._layout: ShardLayout | None = None  # samples and byte offsets per shard, from the index
        self._spec = _SharedSpec()  # the epoch of the next direct iteration (`set_epoch`)
        self.skipped = 0  # samples skipped by direct iteration in this process (loaders keep their own count)
        self.last_batch_samples: BatchSamples | None = None  # of the batch yielded last by direct iteration
        # Whether batches carry their BatchSamples (a SampleLedger turns it on; off, nothing is computed or sent).
        self.record_samples = False
        self._record = False
        self._preread: _PreRead | None = None  # the next epoch's first window, read ahead in a persistent worker
        self._read_ahead = False  # whether to read it (the loader says so for persistent workers)
        self.prereads_used = 0  # how many epochs started from a pre-read window (in this process)

    # ----------------------------------------------------------------------------------------- layout, plan

    @property
    def layout(self) -> ShardLayout:
        """Samples and sample byte offsets per shard (from the index, or a scan; loaded on first use)."""
        if self._layout is None:
            self._layout = shard_layout(self.urls, self.index, missing_ok=self.on_error == "skip")
        return self._layout

    @property
    def counts(self) -> list[int]:
        """Samples per shard (from the index; loaded on first use)."""
        return self.layout.counts

    @property
    def num_samples(self) -> int:
        """Samples in the dataset (all shards, all ranks)."""
        return int(sum(self.counts))

    @property
    def plan(self) -> _plan.EpochPlan:
        """This dataset's epochs (`dltrain.data.plan.EpochPlan`).

        Positions are its samples in the epoch's shard order.
        """
        return ShardsPlan(self)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by the next direct iteration (loaders set their own through `StreamingDataLoader.set_epoch`)."""
        self._spec.write({"epoch": int(epoch), "start": 0, "rank": None, "world_size": None, "level": None})

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        rank, world = resolve_rank()
        plan = self.plan
        return _plan.rank_batches(plan, plan.root_level(0, world), rank)

    def loader(
        self,
        num_workers: int = 2,
        *,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        prefetch_factor: int = 2,
        **kwargs: Any,
    ) -> StreamingDataLoader:
        """A `StreamingDataLoader` over this dataset (see there for the arguments)."""
        return StreamingDataLoader(
            self,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            prefetch_factor=prefetch_factor,
            **kwargs,
        )

    # ----------------------------------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[Any]:
        # Read the spec now, not lazily in the generator (see `worker_batches`).
        return self._batches(self._spec.read() or {}, tagged=False)

    def worker_batches(self, spec: Mapping[str, Any]) -> Iterator[Any]:
        """What a `StreamingDataLoader` iterates in this loader worker (or in the process without workers).

        The epoch described by ``spec`` (epoch, start batch, rank, world size, plan level, whether to record
        sample ids and to read the next epoch ahead), as ``("batch", batch, number of skipped samples, their
        first errors, BatchSamples or None)`` items, or one ``("error", DataError)`` item that ends it.

        Call it when ``iter()`` is called: a persistent worker iterates at the start of every epoch, after the
        training process wrote that epoch's spec.
        """
        return self._batches(spec, tagged=True)

    def _batches(self, spec: Mapping[str, Any], tagged: bool) -> Iterator[Any]:
        rank, world = spec.get("rank"), spec.get("world_size")
        if rank is None or world is None:
            rank, world = resolve_rank()
        level = spec.get("level") or self.plan.root_level(int(spec.get("epoch", 0)), world)
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self._record = bool(spec.get("record", self.record_samples))
        self._read_ahead = bool(spec.get("read_ahead", False))
        return self._generate(level, int(rank), int(spec.get("start", 0)), worker, num_workers, tagged=tagged)

    def _generate(self, level: Mapping[str, Any], rank: int, start: int, worker: int, num_workers: int, *,
                  tagged: bool = False) -> Iterator[Any]:
        counts = self.counts
        plan = self.plan
        root = _plan.root_of(level)
        positions = _plan.rank_positions(level, rank, plan.num_positions(root))
        batch_size, training = int(level["batch_size"]), bool(level["training"])
        total = _plan.num_batches(len(positions), batch_size, training)
        first = start - _plan.offset_of(level)  # plan-relative batch index
        mine = list(range(max(first, 0) + worker, total, num_workers))
        if not mine:
            return
        where = plan.locator(root)

        wanted = _wanted_per_shard(positions, np.asarray(mine, dtype=np.int64), batch_size, where)
        group_batches = _plan.window_size(int(level["shuffle_buffer"]), batch_size) // batch_size
        readers: dict[int, ShardReader | IndexedShardReader] = {}
        pre = self._take_preread(_preread_key(level, rank, start, worker, num_workers))
        if pre is not None:
            readers = pre.readers
        try:
            for _, group in itertools.groupby(mine, key=lambda j: j // group_batches):
                batches = list(group)
                # The group's positions batch after batch, located with one call (a Mixture labels the window).
                pos = np.concatenate([positions[j * batch_size : (j + 1) * batch_size] for j in batches])
                loc = where(pos)
                bounds = np.cumsum([0] + [min(batch_size, len(positions) - j * batch_size) for j in batches]).tolist()
                # The whole group is read before its first batch: forward readers need the window's samples in shard
                # order, and positioned reads take neighbouring samples with one read (the window's samples of a
                # shard are mostly neighbours). With an index of version 3 that costs a few µs per sample.
                shards = set(np.unique(loc[0]).tolist())
                for s in [s for s in readers if s not in shards]:
                    readers.pop(s).close()
                for unit in [list(range(len(batches)))]:
                    a, b = bounds[unit[0]], bounds[unit[-1] + 1]
                    order = np.argsort(pos[a:b], kind="stable") + a
                    need = pos[order]
                    if pre is not None and pre.need is not None and np.array_equal(need, pre.need):
                        raw, pre = pre.raw, None
                        self.prereads_used += 1
                    else:
                        raw = self._read_raw(need, (loc[0][order], loc[1][order]), counts, readers, wanted)
                    for k in unit:
                        a, b = bounds[k], bounds[k + 1]
                        yield self._make_batch(plan, pos[a:b], raw, (loc[0][a:b], loc[1][a:b]), tagged)
            if self._read_ahead:
                self._start_preread(level, rank, worker, num_workers)
        except DataError as exn:
            if not tagged:
                raise
            # DataLoader re-raises worker exceptions from their formatted text, which loses url/key: send the
            # error itself (DataError pickles with them) and let the main process raise it.
            yield ("error", exn)
        finally:
            for reader in readers.values():
                reader.close()

    def _seekable(self, shard: int) -> bool:
        """Whether the shard's samples can be read by seeking to their indexed offsets."""
        return self.layout.offsets[shard] is not None and seekable(self.urls[shard])

    # A persistent worker that reads shards forward (pipe:, http, compressed) must read a whole shuffle window
    # before the first batch of an epoch. The next epoch's plan is a pure function, so when the worker has produced
    # its last batch it reads that window in a thread, while the training process finishes the epoch; the next
    # generator takes it if the plan the training process sends is the one predicted (not after a resume).

    def _start_preread(self, level: Mapping[str, Any], rank: int, worker: int, num_workers: int) -> None:
        if _plan.offset_of(level) != 0 or level.get("base"):
            return  # after a resume the next epoch is planned afresh; keep it simple: predict only plain epochs
        nxt = self.plan.root_level(int(level["epoch"]) + 1, int(level["world_size"]))
        pre = _PreRead(_preread_key(nxt, rank, 0, worker, num_workers))
        self._preread = pre

        def read() -> None:
            try:
                first = self._first_window(nxt, rank, worker, num_workers)
                if first is not None:
                    pre.need, where, wanted = first
                    pre.raw = self._read_raw(pre.need, where(pre.need), self.counts, pre.readers, wanted)
            except Exception:  # the epoch then reads the window itself, and reports any error with its context
                pre.close()
                pre.need = None

        pre.thread = threading.Thread(target=read, name="dltrain-preread", daemon=True)
        pre.thread.start()

    def _first_window(self, level: Mapping[str, Any], rank: int, worker: int, num_workers: int) -> tuple[
            np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], Callable[[int], np.ndarray]] | None:
        """The positions, locator and per-shard wanted samples of this worker's first window of ``level``.

        Computed as `_generate` does, for a level that is read forward.
        """
        plan = self.plan
        root = _plan.root_of(level)
        positions = _plan.rank_positions(level, rank, plan.num_positions(root))
        batch_size = int(level["batch_size"])
        total = _plan.num_batches(len(positions), batch_size, bool(level["training"]))
        mine = np.arange(worker, total, num_workers, dtype=np.int64)
        group_batches = _plan.window_size(int(level["shuffle_buffer"]), batch_size) // batch_size
        first = mine[mine // group_batches == mine[0] // group_batches] if len(mine) else mine
        if not len(first):
            return None
        where = plan.locator(root)
        need = np.unique(np.concatenate([positions[j * batch_size : (j + 1) * batch_size] for j in first.tolist()]))
        if all(self._seekable(s) for s in set(where(need)[0].tolist())):
            return None  # positioned reads of a window take milliseconds: nothing worth reading ahead
        return need, where, _wanted_per_shard(positions, mine, batch_size, where)

    def _take_preread(self, key: str) -> _PreRead | None:
        pre, self._preread = self._preread, None
        if pre is None:
            return None
        if pre.thread is not None:
            pre.thread.join()
        if pre.key != key or pre.need is None:
            pre.close()
            return None
        return pre

    def _read_raw(
        self,
        need: np.ndarray,
        located: tuple[np.ndarray, np.ndarray],
        counts: Sequence[int],
        readers: dict[int, ShardReader | IndexedShardReader],
        wanted: Callable[[int], np.ndarray],
    ) -> dict[int, Any]:
        """Raw samples, or the `DataError` of each bad one, at the sorted positions ``need``.

        ``located`` holds their (shard ids, indices in shard).

        Samples of seekable shards are read shard by shard, all of a shard's in one `IndexedShardReader.get_many`
        call; forward readers go through the positions in order (one open stream at a time). A forward reader
        stops at its first bad sample with ``on_error="raise"``: the positions after it get that sample's error.
        Errors are raised (``"raise"``) or counted (``"skip"``) by the batch that holds the sample (`_make_batch`),
        not here: a window is read before its first batch, and under loader workers an error raised here came out
        of its worker ahead of the batches before it, so the error the user saw was not the first bad sample's.
        """
        raw: dict[int, Any] = {}
        stopped_at: DataError | None = None  # a forward reader's first bad sample (on_error="raise")
        shard_ids, locals_ = located
        layout = self.layout
        seek: dict[int, tuple[list[int], list[int]]] = {}  # shard -> (positions, indices), for positioned reads
        present = np.unique(shard_ids).tolist()
        if all(self._seekable(s) for s in present):  # the common case: group by shard without a Python loop
            by_shard = np.argsort(shard_ids, kind="stable")
            cuts = np.searchsorted(shard_ids[by_shard], present[1:]).tolist()
            for s, part in zip(present, np.split(by_shard, cuts)):
                seek[s] = (need[part].tolist(), locals_[part].tolist())
        forward = need[:0] if seek else need  # all seekable: nothing left for forward readers
        for p, s, i in zip(forward.tolist(), shard_ids.tolist(), locals_.tolist()):
            group = seek.get(s)
            if group is not None:
                group[0].append(p)
                group[1].append(i)
                continue
            reader = readers.get(s)
            if isinstance(reader, IndexedShardReader) or (reader is None and self._seekable(s)):
                seek[s] = ([p], [i])
                continue
            # Keep a forward reader when the next sample lies further along its shard: no re-reading.
            if reader is None or i < reader.next_index:
                reader = ShardReader(self.urls[s], wanted(s).tolist(), counts[s])
                # Forward readers stream their shard (maybe a pipe): one open at a time, as the sorted positions
                # go shard by shard.
                for t in [t for t, r in readers.items() if isinstance(r, ShardReader)]:
                    readers.pop(t).close()
                readers[s] = reader
            try:
                raw[p] = reader.get(i)
            except DataError as exn:
                raw[p] = exn
                if self.on_error == "raise":
                    stopped_at = exn
                    break
        for s, (positions, indices) in seek.items():
            reader = readers.get(s)
            if not isinstance(reader, IndexedShardReader):
                offsets = layout.offsets[s]
                assert offsets is not None
                reader = readers[s] = IndexedShardReader(self.urls[s], offsets, counts[s], layout.tables[s])
            raw.update(zip(positions, reader.get_many(indices)))
        if stopped_at is not None:
            for p in need.tolist():
                raw.setdefault(p, stopped_at)
        return raw

    def _make_batch(self, plan: _plan.EpochPlan, positions: np.ndarray, raw: dict[int, Any],
                    where: tuple[np.ndarray, np.ndarray], tagged: bool) -> Any:
        """Decode, map and collate the samples at ``positions``.

        ``where`` is their (shard ids, indices in shard), sent with the batch as its `BatchSamples` when
        sample ids are recorded (``record_samples``).
        """
        items = [raw.pop(p) for p in positions.tolist()]
        if self.on_error == "raise":
            failed = [(p, item) for p, item in zip(positions.tolist(), items) if isinstance(item, DataError)]
            if failed:  # the first bad sample in position order, as reading one by one would raise
                raise min(failed, key=lambda pair: pair[0])[1]
        ok = [n for n, item in enumerate(items) if not isinstance(item, DataError)]
        bad: list[DataError] = [items[n] for n in range(len(items)) if isinstance(items[n], DataError)] if len(
            ok) < len(items) else []
        sources, shard_sources = plan.sources, plan.shard_sources
        results: list[Any]
        if len(sources) == 1:
            results = prepare_samples(sources[0], [items[n] for n in ok])
        else:  # a Mixture: each source decodes and maps its own samples
            source_of = [shard_sources[s] for s in where[0].tolist()]
            results = [None] * len(ok)
            for src in sorted({source_of[n] for n in ok}):
                mine = [k for k, n in enumerate(ok) if source_of[n] == src]
                for k, result in zip(mine, prepare_samples(sources[src], [items[ok[k]] for k in mine])):
                    results[k] = result
        samples: list[Any] = []
        good: list[int] = []
        for n, result in zip(ok, results):
            if isinstance(result, DataError):
                if self.on_error == "raise":
                    raise result
                bad.append(result)
                continue
            samples.append(result)
            good.append(n)
        batch = None
        if samples:
            try:
                batch = self.collate_fn(samples)
            except DataError:
                raise
            except Exception as exn:
                keys = [str(items[n].get("__key__")) for n in good]
                raise DataError(
                    f"collate_fn failed on samples {keys[:8]}{'...' if len(keys) > 8 else ''} "
                    f"({type(exn).__name__}: {exn}); make map return samples of one structure and shape"
                ) from exn
        held = None
        if self._record:
            held = BatchSamples(where[0][good], where[1][good], [str(items[n].get("__key__")) for n in good])
        if tagged:
            return ("batch", batch, len(bad), [str(e) for e in bad[:_MAX_REPORTED_ERRORS]], held)
        if bad:
            self.skipped += len(bad)
        self.last_batch_samples = held
        return batch


def prepare_samples(source: _plan.SampleSource, raws: list[dict[str, Any]]) -> list[Any]:
    """Decode and map raw samples with their source's ``decoder`` and ``map``.

    A sample that fails gives a `DataError` naming the shard and the key in its place. One ``try`` for the
    whole list while nothing fails.
    """
    decoder, fn = source.decoder, source.map
    # The raw dicts are the readers' (nobody else holds them): a SampleDecoder decodes them in place.
    decode = decoder.decode_in_place if isinstance(decoder, SampleDecoder) else decoder
    out: list[Any] = []
    while len(out) < len(raws):
        try:
            if fn is None:
                for raw in raws[len(out):]:
                    out.append(decode(raw))
            else:
                for raw in raws[len(out):]:
                    out.append(fn(decode(raw)))
        except Exception as exn:
            out.append(_sample_error(exn, raws[len(out)]))
    return out


def prepare_sample(source: _plan.SampleSource, raw: dict[str, Any]) -> Any:
    """Decode and map one raw sample with its source's ``decoder`` and ``map``.

    Errors become `DataError`s that name the shard and the key.
    """
    result = prepare_samples(source, [raw])[0]
    if isinstance(result, DataError):
        raise result
    return result


def _sample_error(exn: Exception, raw: dict[str, Any]) -> DataError:
    """The `DataError` of a decode or map that raised ``exn`` on ``raw`` (with the shard and the key)."""
    url, key = raw.get("__url__"), raw.get("__key__")
    if isinstance(exn, DataError):
        if exn.url is not None and exn.key is not None:
            return exn
        # A plugin's decoder or map raised a DataError without knowing where the sample came from.
        out = DataError(exn.reason, url=exn.url or url, key=exn.key or key)
    elif isinstance(exn, KeyError):
        fields = sorted(k for k in raw if not k.startswith("__"))
        out = DataError(f"the sample has no field {exn.args[0]!r} that map needs (it has {fields}); fix the shard "
                        "or the map, or use on_error='skip'", url=url, key=key)
    else:
        out = DataError(f"map raised {type(exn).__name__}: {exn}; fix the map or the sample, or use on_error='skip'",
                        url=url, key=key)
    out.__cause__ = exn
    return out


class ShardsPlan:
    """The `dltrain.data.plan.EpochPlan` of one `StreamingDataset`.

    Positions are its samples, shards in the epoch's shard order (seeded by (seed, epoch)), samples in shard
    order. Made from the dataset's settings when asked for (``dataset.plan``).
    """

    def __init__(self, dataset: StreamingDataset) -> None:
        self.dataset = dataset
        self.counts = dataset.counts
        self.sources: Sequence[_plan.SampleSource] = (dataset,)
        self.shard_sources: Sequence[int] = [0] * len(self.counts)

    def root_level(self, epoch: int, world_size: int) -> dict[str, Any]:
        ds = self.dataset
        return _plan.root_level(epoch, world_size, seed=ds.seed, shuffle=ds.shuffle, shuffle_buffer=ds.shuffle_buffer,
                                training=ds.training, batch_size=ds.batch_size)

    def num_positions(self, root: Mapping[str, Any]) -> int:
        return int(sum(self.counts))

    def locator(self, root: Mapping[str, Any]) -> _plan.Locator:
        counts = self.counts
        order = _plan.shard_order(len(counts), int(root["seed"]), int(root["epoch"]), bool(root["shuffle"]))
        starts = _plan.shard_starts(order, counts)  # once per epoch, not per call
        return lambda positions: _plan.locate(positions, order, counts, starts)

    def check_state(self, state: Mapping[str, Any]) -> None:
        if "mixture" in state:
            raise DataError("the saved loader state is of a dltrain.data.Mixture: resume it with the same Mixture, "
                            "not a single StreamingDataset")
        n, shards = int(sum(self.counts)), len(self.counts)
        if int(state["num_samples"]) != n or int(state["num_shards"]) != shards:
            raise DataError(
                f"the saved loader state is for {state['num_samples']} samples in {state['num_shards']} shards, "
                f"but this dataset has {n} samples in {shards} shards: "
                "resume with the same shards (and index), or start the epoch over without the loader state"
            )


class _ConvertBatch:
    """What `DataLoader` does to each item when ``batch_size=None`` (torch's ``default_convert``.

    Numpy arrays into tensors), done to the batch inside the loader's ``("batch", batch, ...)`` item only, and
    not at all after `default_collate`, whose batches hold no numpy array (the walk cost ~1 µs per sample of
    small ones).
    """

    def __init__(self, convert: bool) -> None:
        self.convert = convert

    def __call__(self, item: Any) -> Any:
        if self.convert and item[0] == "batch":
            return (item[0], default_convert(item[1]), *item[2:])
        return item


class _WorkerView(IterableDataset):
    """What a `StreamingDataLoader` hands to torch's `DataLoader`: a copy of the dataset and the loader's spec.

    Loader workers hold a copy of it made when they started (persistent workers live across epochs), so changes
    made later in the main process never reach them; the spec, in shared memory, does.
    """

    def __init__(self, dataset: StreamingDataset, spec: _SharedSpec) -> None:
        super().__init__()
        self.dataset = dataset
        self.spec = spec
        self._tied_to_parent = False  # set in each worker's own copy, at its first epoch

    def __iter__(self) -> Iterator[Any]:
        spec = self.spec.read() or {}
        if not self._tied_to_parent and get_worker_info() is not None:
            self._tied_to_parent = True
            if spec.get("die_with_parent"):
                _die_with_parent(int(spec["parent"]))
        return self.dataset.worker_batches(spec)


def _die_with_parent(parent: int) -> None:
    """Have Linux kill this worker when the process that started it dies, even by SIGKILL.

    Why: torch's worker looks for a dead parent only between two batches; one killed inside a slow read or ``map``
    would run on as an orphan, holding memory and the launcher's output pipe. The signal is tied to the thread that
    forked the worker, so the loader asks for it only when its main thread started the workers. No-op elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made: nobody will send the signal
        os._exit(1)


class StreamingDataLoader(DataLoader):
    """A `torch.utils.data.DataLoader` (``batch_size=None``) over a `StreamingDataset`.

    It has the Trainer's loader protocol (``len()``, `set_epoch`, `state_dict`, `load_state_dict`) and reports
    skipped samples (`skipped`, `epoch_report`).

    Args:
        dataset: the `StreamingDataset` (the loader iterates a shallow copy of it; the original is ``.stream``).
        num_workers: worker processes that read, decode, map and collate. The order of batches does not depend
            on it.
        pin_memory: default: True when CUDA is available.
        persistent_workers: default: ``num_workers > 0``.
        prefetch_factor: batches prefetched per worker.
        read_ahead: persistent workers read the next epoch's first shuffle window of shards that are read forward
            (``pipe:``, http, compressed) while the epoch ends; ``False`` saves that window's memory.
        rank: this process's part of the data, with ``world_size`` (both or neither; see `set_split`). Default:
            resolved at each ``iter()`` from `torch.distributed`, else env ``RANK``/``WORLD_SIZE``.
        world_size: how many parts the data is split into.
        **kwargs: other `DataLoader` arguments (``timeout``, ``multiprocessing_context``, ...).

    Example:
        >>> loader = StreamingDataset("data/train-{000000..000006}.tar", batch_size=8).loader(num_workers=2)
        >>> loader.set_epoch(0); batches = list(loader)
        >>> state = loader.state_dict()
        >>> state["epoch"], state["batches"], len(batches)
        (0, 8, 8)
    """

    def __init__(
        self,
        dataset: StreamingDataset,
        *,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        prefetch_factor: int = 2,
        read_ahead: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if (rank is None) != (world_size is None):
            raise ConfigurationError(
                f"StreamingDataLoader(rank={rank!r}, world_size={world_size!r}): give both (this process's part of "
                "the data and how many parts) or neither (resolved from torch.distributed or env RANK/WORLD_SIZE)"
            )
        if not isinstance(dataset, StreamingDataset):
            raise ConfigurationError(f"StreamingDataLoader needs a StreamingDataset, got {type(dataset).__name__}")
        _ = dataset.counts  # read the index once here, before workers copy the dataset
        self._worker_spec = _SharedSpec()  # what the workers read at each iter() (see `worker_batches`)
        view = _WorkerView(copy.copy(dataset), self._worker_spec)  # the copy shares the counts
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        if persistent_workers is None:
            persistent_workers = num_workers > 0
        if "collate_fn" not in kwargs:
            kwargs["collate_fn"] = _ConvertBatch(dataset.collate_fn is not default_collate)
        super().__init__(
            view,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            **kwargs,
        )
        self.stream = dataset
        self._epoch = 0
        self._batches = 0  # batches handed out in this epoch (counted here, not what workers prefetched)
        self._level: dict[str, Any] | None = None  # plan of the epoch being iterated, None before the first iter()
        self._pending: dict[str, Any] | None = None  # a loaded state, applied at the next iter()
        self._rank = 0
        self.skipped = 0
        self._errors: list[str] = []
        self.last_batch_samples: BatchSamples | None = None  # of the batch yielded last (see BatchSamples)
        self.record_samples = False  # whether workers send each batch's BatchSamples (SampleLedger sets it)
        self.read_ahead = read_ahead
        self._split: tuple[int, int] | None = None
        if rank is not None and world_size is not None:
            self.set_split(rank, world_size)

    # ------------------------------------------------------------------------------------------- protocol

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s plan from the next ``iter()`` on; a loaded state for another epoch is dropped."""
        epoch = int(epoch)
        if self._pending is not None and int(self._pending["epoch"]) != epoch:
            self._pending = None
        if epoch != self._epoch:
            self._level = None
            self._batches = 0
        self._epoch = epoch

    def set_split(self, rank: int, world_size: int) -> None:
        """Read part ``rank`` of ``world_size`` from the next ``iter()`` on.

        Without it the split is resolved from `torch.distributed` or the environment (the global rank). The
        Trainer calls it with its data-parallel rank and size on the loaders it iterates: under tensor
        parallelism the peers of a group must read the same batches.

        Like `set_epoch`, a different split drops the position in an epoch in progress; a loaded state is kept
        (it is re-split on the next ``iter()`` if the world size differs).

        Raises:
            ConfigurationError: ``rank`` is not in ``[0, world_size)`` or either is not an int.
        """
        if isinstance(rank, bool) or isinstance(world_size, bool) or not (
                isinstance(rank, int) and isinstance(world_size, int)) or not 0 <= rank < world_size:
            raise ConfigurationError(
                f"StreamingDataLoader split rank={rank!r}, world_size={world_size!r}: need ints with "
                "0 <= rank < world_size (this process's part of the data and how many parts)"
            )
        self._split = (int(rank), int(world_size))
        if self._level is not None and self._split != (self._rank, int(self._level["world_size"])):
            self._level = None
            self._batches = 0

    @property
    def split(self) -> tuple[int, int] | None:
        """(rank, world size) given by `set_split` or the constructor; ``None``: resolved at each ``iter()``."""
        return self._split

    def _same_plan(self, state: Mapping[str, Any], world: int) -> bool:
        ds = self.stream
        return (
            int(state["world_size"]) == world
            and int(state["batch_size"]) == ds.batch_size
            and int(state["seed"]) == ds.seed
            and bool(state["shuffle"]) == ds.shuffle
            and int(state["shuffle_buffer"]) == ds.shuffle_buffer
            and bool(state["training"]) == ds.training
        )

    def _next_plan(self) -> tuple[dict[str, Any], int, int, int]:
        """(level, start batch, rank, world) for the next iter(), without changing any state."""
        rank, world = self._split if self._split is not None else resolve_rank()
        state = self._pending
        if state is None:
            return self.stream.plan.root_level(self._epoch, world), 0, rank, world
        # The saved level as it was (a Mixture's root level also holds the epoch's weights).
        level = {k: v for k, v in state.items() if k not in _STATE_ONLY}
        batches = int(state["batches"])
        if self._same_plan(state, world):
            return level, batches, rank, world
        # Another world/batch size: re-split what the saved ranks had not consumed yet among the current ranks.
        new = self.stream.plan.root_level(int(state["epoch"]), world)
        new["base"] = {"state": {**level, "batches": batches}, "offset": batches}
        return new, batches, rank, world

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (counting those before a resume)."""
        if self._pending is None and self._level is not None:
            level, rank = self._level, self._rank
        else:
            level, _, rank, _ = self._next_plan()
        return _plan.offset_of(level) + _plan.rank_batches(self.stream.plan, level, rank)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        level, start, rank, world = self._next_plan()
        if self._pending is not None:
            self._epoch = int(self._pending["epoch"])
            self.skipped = int(self._pending.get("skipped", 0))
        else:
            self.skipped = 0
        self._errors = []
        self._pending = None
        self._level, self._batches, self._rank = level, start, rank
        if self.stream.training and start == 0 and _plan.rank_batches(self.stream.plan, level, rank) == 0:
            warnings.warn(
                f"dltrain.data: {self.stream.num_samples} samples do not fill one batch of {self.stream.batch_size} "
                f"on each of {world} ranks: this training epoch is empty (lower batch_size or add data)",
                stacklevel=2,
            )
        check_loader_worker_sockets(self.num_workers)
        # Workers resolve nothing themselves: torch.distributed is not initialised inside them.
        self._worker_spec.write({"epoch": self._epoch, "start": start, "rank": rank, "world_size": world,
                                 "level": level, "record": self.record_samples,
                                 "read_ahead": bool(self.read_ahead and self.persistent_workers and self.num_workers > 0),
                                 # Workers started by this iter() read this first (see `_die_with_parent`).
                                 "parent": os.getpid(),
                                 "die_with_parent": threading.current_thread() is threading.main_thread()})
        return self._count(super().__iter__())

    def _count(self, items: Iterator[Any]) -> Iterator[Any]:
        try:
            for item in items:
                if item[0] == "error":
                    raise item[1]
                _, batch, n_bad, errors, held = item
                if n_bad:
                    self.skipped += int(n_bad)
                    room = _MAX_REPORTED_ERRORS - len(self._errors)
                    self._errors.extend(list(errors)[: max(room, 0)])
                self._batches += 1  # before yielding: a checkpoint taken during this step counts this batch as done
                self.last_batch_samples = held
                yield batch
        except Exception:
            self._stop_workers(items)
            raise
        except GeneratorExit:  # the loop closed the epoch early; persistent workers are stopped at the stage's end
            if not self.persistent_workers:
                shutdown_loader_workers(items)
            raise
        if self.skipped:
            warnings.warn(
                f"dltrain.data: skipped {self.skipped} bad samples in epoch {self._epoch} on rank {self._rank} "
                f"(on_error='skip'); first: {self._errors[:3]}",
                DataSkipWarning,
                stacklevel=2,
            )

    def _stop_workers(self, items: Iterator[Any]) -> None:
        # The epoch cannot go on. Stop the workers now: left to the cycle collector (the traceback references
        # this loader), a worker iterator shuts down in an arbitrary order and waits 5 s per worker.
        shutdown_loader_workers(items)
        self._iterator = None  # persistent workers are started afresh by the next iter()

    def state_dict(self) -> dict[str, Any]:
        """The position in the epoch: epoch, batches handed out so far, and the plan parameters.

        Example:
            >>> loader = StreamingDataset("data/train-{000000..000006}.tar", batch_size=8).loader()
            >>> it = iter(loader); first = [next(it) for _ in range(3)]
            >>> loader.state_dict()["batches"]
            3
        """
        if self._pending is not None:
            return copy.deepcopy(self._pending)
        level = self._level if self._level is not None else self._next_plan()[0]
        return {
            "version": STATE_VERSION,
            **copy.deepcopy(level),
            "epoch": self._epoch,
            "batches": self._batches,
            "skipped": self.skipped,
            "num_samples": int(sum(self.stream.counts)),
            "num_shards": len(self.stream.urls),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next ``iter()`` yields exactly the batches the uninterrupted run would have yielded next.

        If the world size or batch size changed, what the saved ranks had not consumed is re-split among the
        current ranks (nothing repeated or skipped, except the final leftover that does not fill a global batch
        in training).
        """
        if int(state.get("version", -1)) != STATE_VERSION:
            raise DataError(f"unsupported loader state version {state.get('version')!r} (expected {STATE_VERSION})")
        self.stream.plan.check_state(state)
        self._pending = copy.deepcopy(dict(state))
        self._epoch = int(state["epoch"])
        self._level = None

    def epoch_report(self) -> dict[str, Any]:
        """What happened in the current (or last finished) epoch on this rank.

        Returns:
            ``{"epoch", "rank", "batches", "skipped", "errors"}``; ``errors`` holds the first messages.
        """
        return {
            "epoch": self._epoch,
            "rank": self._rank,
            "batches": self._batches,
            "skipped": self.skipped,
            "errors": list(self._errors),
        }
