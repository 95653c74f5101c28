"""Write small random shards for data tests: uneven shard sizes, known keys."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dltrain.data import write_shards


@dataclass
class ShardSet:
    """What `make_shards` wrote.

    Attributes:
        directory: where the shards are.
        pattern: brace pattern of all shards (what `StreamingDataset` takes).
        paths: shard paths in order.
        keys: keys per shard, in order.
        index_path: the index written next to the shards.
    """

    directory: Path
    pattern: str
    paths: list[str]
    keys: list[list[str]]
    index_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def all_keys(self) -> list[str]:
        return [k for ks in self.keys for k in ks]

    @property
    def counts(self) -> list[int]:
        return [len(ks) for ks in self.keys]


def sample_for(key: str, i: int) -> dict:
    """The sample written for key number ``i``: a class, a json record and a small array."""
    return {"__key__": key, "cls": i % 10, "json": {"i": i, "key": key}, "npy": np.full((3,), i, dtype=np.int64)}


def make_shards(directory: str | Path, *, num_shards: int = 7, min_size: int = 1, max_size: int = 50,
                seed: int = 1234, prefix: str = "train") -> ShardSet:
    """Write ``num_shards`` shards of ``min_size..max_size`` random samples each (keys ``s{shard}_{i}``).

    Example:
        >>> shards = make_shards(tmp_path)  # doctest: +SKIP
        >>> StreamingDataset(shards.pattern, batch_size=4)  # doctest: +SKIP
    """
    directory = Path(directory)
    rng = random.Random(seed)
    sizes = [rng.randint(min_size, max_size) for _ in range(num_shards)]
    keys = [[f"s{s}_{i:03d}" for i in range(n)] for s, n in enumerate(sizes)]
    paths: list[str] = []
    counter = 0
    for s, ks in enumerate(keys):
        # One call per shard: write_shards cuts by count, and we want uneven sizes.
        samples = []
        for k in ks:
            samples.append(sample_for(k, counter))
            counter += 1
        paths += write_shards(samples, str(directory / f"{prefix}-{s:06d}-%d.tar"), index=False)
    # Rename to a single numbered sequence so a brace pattern covers them.
    final = []
    for s, p in enumerate(paths):
        target = directory / f"{prefix}-{s:06d}.tar"
        Path(p).rename(target)
        final.append(str(target))
    from dltrain.data import build_index

    build_index(final)
    pattern = str(directory / f"{prefix}-{{{0:06d}..{num_shards - 1:06d}}}.tar")
    return ShardSet(directory, pattern, final, keys, Path(directory / f"{prefix}.index.json"))


def key_of(sample: dict) -> str:
    """A `map` that keeps only the sample key (module-level so workers can pickle it)."""
    return sample["__key__"]


def as_list(samples: list) -> list:
    """A `collate_fn` that keeps the batch as a plain list."""
    return list(samples)


def epoch_keys(loader, epoch: int | None = None) -> list[list[str]]:
    """All batches of one epoch as lists of keys (``None`` batches kept as ``[]``)."""
    if epoch is not None:
        loader.set_epoch(epoch)
    return [list(b) if b is not None else [] for b in loader]
