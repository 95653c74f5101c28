"""Map-style DataLoaders made distributed and resumable, keeping the loader's own settings.

The Trainer rebuilds a user's ``DataLoader`` around :class:`EpochSampler`: the order of an epoch is a pure
function of (seed, epoch) — shuffled only if the user's loader shuffled — and each rank takes every
``world_size``-th sample of it, as ``DistributedSampler`` does. In training the epoch is cut to a multiple of the
world size so every rank runs the same number of batches with no sample repeated; in evaluation nothing is cut
or padded, so every sample is evaluated exactly once.

The position inside an epoch is one number, the samples consumed over all ranks. A resumed epoch continues with
the rest of the same order, re-split among the ranks there are now, which is what makes resuming with another
world size possible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from dltrain._compat import (
    check_loader_worker_sockets,
    random_sampler_draws_fixed_count,
    release_loader_iterator,
    shutdown_loader_workers,
)
from dltrain.errors import ConfigurationError


class EpochSampler(Sampler[int]):
    """Indices of one rank for one epoch; see the module docstring."""

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int, world_size: int, training: bool) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.training = training
        self.epoch = 0
        self.start = 0  # samples of this epoch already consumed, over all ranks

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        if self.training:
            order = order[: self.size - self.size % self.world_size]
        order = order[self.start :]
        if self.training:
            # After a resume with another world size the rest may not split evenly any more.
            order = order[: len(order) - len(order) % self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        n = self.size - self.size % self.world_size if self.training else self.size
        n = max(n - self.start, 0)
        if self.training:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))


class _SkipBatches(Sampler[list[int]]):
    """A user's batch sampler with the first ``skip`` batches of the epoch left out (no data is loaded for them)."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        it = iter(self.batch_sampler)
        for _ in range(self.skip):
            next(it, None)
        self.skip = 0
        return it

    def __len__(self) -> int:
        return len(self.batch_sampler) - self.skip


_LOADER_ARGS = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "persistent_workers",
    "pin_memory_device",
)


def in_order(loader: Any) -> Any:
    """``loader`` reading its dataset in order: a shuffled map-style ``DataLoader`` rebuilt, others as they are.

    The rebuilt loader has a ``SequentialSampler`` and the same batch size and ``drop_last``.
    """
    if (not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset)
            or isinstance(loader.sampler, SequentialSampler) or loader.batch_size is None):
        return loader
    return _rebuild(loader, BatchSampler(SequentialSampler(loader.dataset),  # type: ignore[arg-type]
                                         loader.batch_size, loader.drop_last))


def _rebuild(loader: DataLoader, batch_sampler: Any) -> DataLoader:
    kwargs = {name: getattr(loader, name) for name in _LOADER_ARGS if hasattr(loader, name)}
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    return DataLoader(loader.dataset, batch_sampler=batch_sampler, **kwargs)


class ResumableLoader:
    """Wraps a map-style ``DataLoader``: distributed sampling, ``set_epoch``, and a resumable position.

    Implements the Trainer's loader protocol (``__len__``, ``set_epoch``, ``state_dict``, ``load_state_dict``).
    """

    def __init__(self, loader: DataLoader, *, rank: int, world_size: int, seed: int, training: bool) -> None:
        self.loader = loader
        self.world_size = world_size
        self.training = training
        self.batch_size = loader.batch_size
        self._consumed = 0  # batches handed out in the current epoch (main process count, not prefetch)
        self._restored_batches = 0  # of those, the ones counted in sampler.start (restored from a checkpoint)
        self._epoch = 0
        sampler = loader.sampler
        self.sampler: EpochSampler | None = None
        self._skipper: _SkipBatches | None = None
        standard = type(sampler) in (RandomSampler, SequentialSampler) and loader.batch_size is not None
        if standard and not (isinstance(sampler, RandomSampler) and (sampler.replacement or random_sampler_draws_fixed_count(sampler))):
            self.sampler = EpochSampler(
                len(loader.dataset),  # type: ignore[arg-type]
                shuffle=isinstance(sampler, RandomSampler),
                seed=seed,
                rank=rank,
                world_size=world_size,
                training=training,
            )
            batch_size = int(loader.batch_size)  # type: ignore[arg-type]  # checked by `standard`
            self._loader = _rebuild(loader, BatchSampler(self.sampler, batch_size, loader.drop_last))
        elif world_size > 1 and not isinstance(sampler, DistributedSampler) and not isinstance(
            getattr(loader.batch_sampler, "sampler", None), DistributedSampler
        ):
            raise ConfigurationError(
                f"the DataLoader uses a custom sampler ({type(sampler).__name__}) and the job has {world_size} ranks: "
                "dltrain distributes only the standard samplers (shuffle=True/False). Make the sampler split the "
                "data by rank (e.g. wrap it in torch.utils.data.DistributedSampler) or use a plain DataLoader."
            )
        else:
            # A custom sampler is kept as it is; resuming skips whole index batches, so it must be deterministic.
            self._skipper = _SkipBatches(loader.batch_sampler)
            self._loader = _rebuild(loader, self._skipper)

    def __len__(self) -> int:
        # In training, batches already consumed count: after a resume the epoch keeps its batch numbering.
        return (self._consumed if self.training else 0) + len(self._loader)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._epoch = epoch
            self._consumed = 0
            self._restored_batches = 0
            if self.sampler is not None:
                self.sampler.start = 0
        if self.sampler is not None:
            self.sampler.epoch = epoch
        for obj in (self.loader.sampler, getattr(self.loader.batch_sampler, "sampler", None)):
            if obj is not None and obj is not self.sampler and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        if not self.training:
            self._consumed = 0  # an evaluation loader starts over at every run (it has no epochs to count)
        check_loader_worker_sockets(self._loader.num_workers)
        # Create the DataLoader iterator now, not at the first next(): it draws its seed from the global RNG,
        # and the Trainer restores a checkpoint's RNG state right after calling iter().
        return self._count(iter(self._loader))

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        try:
            for batch in iterator:
                self._consumed += 1
                yield batch
        except GeneratorExit:
            # The loop closed the epoch early (an error, a stop): workers of a one-epoch iterator are of no
            # further use; stop them now rather than when garbage collection finds them (see `release_workers`).
            if not self.persistent_workers:
                shutdown_loader_workers(iterator)
            raise
        # The epoch is over: a checkpoint taken now resumes at the start of the next one.
        self._restored_batches = self._consumed
        if self.sampler is not None:
            self.sampler.start = 0

    @property
    def dataset(self) -> Any:
        """The wrapped loader's dataset."""
        return self.loader.dataset

    def index_batches(self) -> list[list[int]] | None:
        """The dataset indices of each batch this rank reads in an evaluation or prediction run, in order.

        ``BasePredictionWriter``'s ``batch_indices``; ``None`` for training loaders and custom samplers.
        """
        if self.training or self.sampler is None:
            return None
        return [list(b) for b in self._loader.batch_sampler]  # type: ignore[union-attr]

    @property
    def persistent_workers(self) -> bool:
        """Whether worker processes live across epochs (then only the first ``iter()`` draws a worker seed)."""
        return bool(self._loader.persistent_workers and self._loader.num_workers > 0)

    def release_workers(self) -> None:
        """Stop the workers of the DataLoader's kept iterator (persistent workers): see `release_workers`."""
        release_loader_iterator(self._loader)

    def state_dict(self) -> dict[str, Any]:
        # Samples consumed over all ranks: those before this run's restore point (``sampler.start``, already
        # counted in the restored state) plus the batches handed out since then.
        consumed_samples = 0
        if self.sampler is not None and self.batch_size is not None:
            since_restore = self._consumed - self._restored_batches
            consumed_samples = self.sampler.start + since_restore * self.batch_size * self.world_size
        return {
            "epoch": self._epoch,
            "batches": self._consumed,
            "samples": consumed_samples,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch = state["epoch"]
        self._consumed = state["batches"]
        if self.sampler is not None:
            self.sampler.epoch = self._epoch
            self.sampler.start = state["samples"]
            # len() counts consumed batches plus what remains, so the epoch keeps its batch numbering.
            if state["world_size"] != self.world_size and self.batch_size is not None:
                self._consumed = state["samples"] // (self.batch_size * self.world_size)
        elif self._skipper is not None:
            self._skipper.skip = self._consumed
        self._restored_batches = self._consumed


def release_workers(loaders: Iterable[Any]) -> None:
    """Stop, now, the worker processes that `loaders` (what a stage iterated) keep between epochs.

    Why: a stage is over when this is called; left to the cycle collector, a DataLoader iterator with workers is
    finalized after its queues and waits 5 s per worker before killing them (and the workers hold their copies
    of the dataset until then). The next ``iter()`` starts workers afresh.
    """
    for loader in loaders:
        inner = getattr(loader, "loaders", None)  # a CombinedLoader: its children
        if isinstance(inner, list):
            release_workers(inner)
        elif isinstance(loader, ResumableLoader):
            loader.release_workers()
        elif isinstance(loader, DataLoader):
            release_loader_iterator(loader)


def wrap_loader(loader: Any, *, rank: int, world_size: int, seed: int, training: bool) -> Any:
    """What the Trainer iterates for ``loader``.

    Map-style DataLoaders get `ResumableLoader`, a dataset that knows how to make its own loader
    (``dltrain.data.StreamingDataset``) gets that loader, others are used as they are.
    """
    make_loader = getattr(loader, "loader", None)
    if isinstance(loader, IterableDataset) and callable(make_loader):
        return make_loader()
    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        if hasattr(loader, "state_dict"):  # a stateful loader (e.g. torchdata's) manages its own position
            return loader
        return ResumableLoader(loader, rank=rank, world_size=world_size, seed=seed, training=training)
    return loader
