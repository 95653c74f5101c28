"""Sharded data for dltrain: writing shards with their index, and deterministic, resumable streaming.

Example:
    >>> from dltrain.data import StreamingDataset, write_shards  # doctest: +SKIP
    >>> write_shards(({"__key__": f"s{i:05d}", "cls": i % 10} for i in range(1000)),
    ...              "data/train-%06d.tar", max_count=100)  # doctest: +SKIP
    >>> loader = StreamingDataset("data/train-{000000..000009}.tar", batch_size=32).loader()  # doctest: +SKIP

See `dltrain.data.shards` for the index format and `dltrain.data.streaming` for the epoch plan, resume and
bad-data handling.
"""

from dltrain.data.combined import CombinedLoader
from dltrain.data.decoders import SAFE_DECODERS, UNSAFE_DECODERS, SampleDecoder
from dltrain.data.domain import STAGES, DataPlugin, SampleTransform
from dltrain.data.mixture import Mixture
from dltrain.data.shards import (
    build_index,
    count_samples,
    default_index_path,
    expand_urls,
    load_index,
    write_shards,
)
from dltrain.data.streaming import (
    BatchSamples,
    DataSkipWarning,
    StreamingDataLoader,
    StreamingDataset,
    resolve_rank,
)

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
