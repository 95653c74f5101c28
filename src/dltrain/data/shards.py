"""Shard files, by concern; this module keeps the names that were imported from here before the split.

- `dltrain.data.urls`: expanding URL patterns, opening a shard for streaming or positioned reads;
- `dltrain.data.index`: the shard index (format, reading, writing, where it lives, building it);
- `dltrain.data.writing`: `write_shards`;
- `dltrain.data.tar`: the strict tar walker, damage detection, counting samples;
- `dltrain.data.readers`: `IndexedShardReader` and `ShardReader`.
"""

from __future__ import annotations

from dltrain.data.index import (
    INDEX_FORMAT,
    INDEX_SUFFIX,
    INDEX_VERSION,
    ShardLayout,
    build_index,
    default_index_path,
    load_index,
    shard_counts,
    shard_layout,
    write_index,
)
from dltrain.data.readers import IndexedShardReader, ShardReader
from dltrain.data.tar import count_samples
from dltrain.data.urls import expand_urls, seekable
from dltrain.data.writing import write_shards

__all__ = [
    "INDEX_FORMAT",
    "INDEX_SUFFIX",
    "INDEX_VERSION",
    "IndexedShardReader",
    "ShardLayout",
    "ShardReader",
    "build_index",
    "count_samples",
    "default_index_path",
    "expand_urls",
    "load_index",
    "seekable",
    "shard_counts",
    "shard_layout",
    "write_index",
    "write_shards",
]
