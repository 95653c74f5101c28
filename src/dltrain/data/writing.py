"""Writing samples into tar shards, with the shard index next to them (`write_shards`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from webdataset.writer import ShardWriter

from dltrain._compat import tar_writer_offset
from dltrain.data.index import default_index_path, make_index, write_index
from dltrain.data.tar import scan_shard
from dltrain.data.urls import is_local, is_object_store, local_path, seekable
from dltrain.errors import DataError

__all__ = ["write_shards"]

_SHARD_MTIME = 1_700_000_000  # 2023-11-14, any whole number of seconds works


def write_shards(
    samples: Iterable[Mapping[str, Any]],
    pattern: str,
    *,
    max_count: int = 10_000,
    max_size: float = 1e9,
    index: bool = True,
) -> list[str]:
    """Write dict samples into tar shards (webdataset's `ShardWriter`) and the index next to them.

    Each sample has a ``__key__`` (no ``.`` in its last path component) and fields whose extension picks the
    encoding, as in webdataset: ``"cls": 3``, ``"txt": "hi"``, ``"json": {...}``, ``"npy": ndarray``,
    ``"png": bytes`` (bytes are stored as they are).

    Args:
        samples: the samples, in order.
        pattern: printf-style shard path, e.g. ``"out/train-%06d.tar"``.
        max_count: at most this many samples per shard.
        max_size: start a new shard once one reaches this many bytes.
        index: also write ``<stem>.index.json`` (see `dltrain.data.index`).

    Returns:
        The shard paths, in order.

    Example:
        >>> paths = write_shards(({"__key__": f"s{i}", "cls": i} for i in range(10)), "d/t-%03d.tar",
        ...                      max_count=4)
        >>> len(paths)
        3
    """
    if "%" not in pattern:
        raise DataError(f"shard pattern {pattern!r} needs a printf field for the shard number, e.g. 'train-%06d.tar'")
    if is_object_store(pattern):
        return _write_to_store(samples, pattern, max_count=max_count, max_size=max_size, index=index)
    directory = os.path.dirname(local_path(pattern)) if is_local(pattern) else ""
    if directory:
        os.makedirs(directory, exist_ok=True)
    paths: list[str] = []
    counts: list[int] = []
    offsets: list[list[int] | None] = []
    starts: list[int] = []  # offsets of the samples of the shard being written
    end = 0  # where the data of its last sample ends
    writer: ShardWriter | None = None

    def _post(fname: str) -> None:  # ShardWriter calls this before it resets its per-shard count
        assert writer is not None
        paths.append(fname)
        counts.append(int(writer.count))
        offsets.append([*starts, end] if track and len(starts) == writer.count else None)
        starts.clear()

    # A whole-second mtime: webdataset's default is time.time(), a float, which makes Python's tarfile write a PAX
    # header before every member (1 KiB more per sample, and about twice the parsing time when reading). A fixed
    # value also makes the shards byte-for-byte reproducible.
    writer = ShardWriter(pattern, maxcount=max_count, maxsize=max_size, post=_post, verbose=0, mtime=_SHARD_MTIME)
    # Offsets in a compressed stream are not file offsets: such shards are indexed without them.
    track = seekable(pattern) and tar_writer_offset(writer) is not None
    previous_key = None
    try:
        for sample in samples:
            key = sample.get("__key__")
            if not isinstance(key, str) or not key:
                raise DataError("every sample needs a non-empty string '__key__'", key=None)
            if "." in key.rsplit("/", 1)[-1]:
                # webdataset splits member names at the first dot of the file name: 'a.b.cls' would become key 'a'
                raise DataError("sample keys must not contain '.' (it separates key and field)", key=key)
            if key == previous_key:
                raise DataError("two consecutive samples have the same key; they would merge into one", key=key)
            previous_key = key
            if all(k.startswith("_") for k in sample):
                raise DataError("the sample has no field to write (only '__key__' and other '_' names)", key=key)
            before = tar_writer_offset(writer)
            try:
                writer.write(dict(sample))
            except (ValueError, TypeError) as exn:
                raise DataError(f"cannot encode sample: {exn}", key=key) from exn
            if track:
                # A sample that opened a new shard starts at 0: tarfile writes nothing before the first member.
                starts.append(0 if writer.count == 1 else int(before or 0))
                end = int(tar_writer_offset(writer) or 0)
    finally:
        writer.close()
    if index and paths:
        index_path = default_index_path(paths)
        # Where each sample's fields lie (index version 3): a walk of each local shard just written, as
        # `build_index` walks them (the same code, so the table is the one readers check against).
        tables = [scan_shard(path, members=True).table if offs is not None else None
                  for path, offs in zip(paths, offsets)]
        write_index(make_index(paths, counts, offsets, index_path, tables), index_path)
    return paths


def _write_to_store(samples: Iterable[Mapping[str, Any]], pattern: str, **kwargs: Any) -> list[str]:
    """`write_shards` to an object store.

    Each shard is written in a local scratch folder, then uploaded as one object (retried; visible only once
    complete), the index last, so that a reader that finds the index finds every shard it names. The scratch
    folder holds the shards until the upload (the system's temporary folder, ``TMPDIR``).
    """
    import posixpath
    import shutil
    import tempfile

    from dltrain import _storage

    folder, name = posixpath.split(pattern)
    scratch = tempfile.mkdtemp(prefix="dltrain-shards-")
    try:
        local = write_shards(samples, os.path.join(scratch, name), **kwargs)
        fs = _storage.filesystem(pattern)
        urls = [f"{folder}/{os.path.basename(path)}" for path in local]
        for path, url in zip(local, urls):
            def put(path: str = path, url: str = url) -> None:
                fs.put_file(path, url)

            _storage.retry(put, url)
        if kwargs.get("index", True) and local:
            # The index names shards relative to itself: the same file is right on the store.
            index_local, index_url = default_index_path(local), default_index_path(urls)
            with open(index_local, "rb") as f:
                _storage.write_bytes(index_url, f.read())
        return urls
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
