"""Sharded data for dltrain: writing shards with their index, and deterministic, resumable streaming.

Example:
    >>> from dltrain.data import StreamingDataset, write_shards
    >>> paths = write_shards(({"__key__": f"s{i:05d}", "cls": i % 10} for i in range(1000)),
    ...                      "data/train-%06d.tar", max_count=100)
    >>> loader = StreamingDataset("data/train-{000000..000009}.tar", batch_size=32).loader()
    >>> len(paths), len(loader)
    (10, 31)

Modules, by concern: `urls` (opening shards), `index` (the shard index), `writing`, `tar` (the tar walker and
damage detection), `readers`, `plan` (the epoch plan and its protocol), `streaming` (`StreamingDataset`, the
loader, resume and bad-data handling), `mixture`.
"""

from dltrain.data.combined import CombinedLoader
from dltrain.data.decoders import SAFE_DECODERS, UNSAFE_DECODERS, SampleDecoder
from dltrain.data.domain import STAGES, DataPlugin, SampleTransform
from dltrain.data.index import build_index, default_index_path, load_index
from dltrain.data.mixture import Mixture
from dltrain.data.streaming import (
    BatchSamples,
    DataSkipWarning,
    StreamingDataLoader,
    StreamingDataset,
    resolve_rank,
)
from dltrain.data.tar import count_samples
from dltrain.data.urls import expand_urls
from dltrain.data.writing import write_shards

__all__ = [
    "SAFE_DECODERS",
    "STAGES",
    "UNSAFE_DECODERS",
    "BatchSamples",
    "CombinedLoader",
    "DataPlugin",
    "DataSkipWarning",
    "Mixture",
    "SampleDecoder",
    "SampleTransform",
    "StreamingDataLoader",
    "StreamingDataset",
    "build_index",
    "count_samples",
    "default_index_path",
    "expand_urls",
    "load_index",
    "resolve_rank",
    "write_shards",
]
