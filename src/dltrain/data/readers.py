"""Readers of raw samples out of one shard.

`IndexedShardReader` (positioned reads at the index's offsets) and `ShardReader` (forward, for streams,
compressed shards and indexes without offsets). Both hand out ``{"__key__", "__url__", field: bytes, ...}``
and raise `DataError` naming the shard and the sample.
"""

from __future__ import annotations

import contextlib
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from dltrain._compat import tar_next_offset, tar_read_member_at, wds_split_name
from dltrain._storage import StorageError
from dltrain.data.tar import (
    Mismatch,
    SampleTable,
    TarDamage,
    TarWalker,
    cut_short,
    grouped,
    header_check,
    parse_sample,
)
from dltrain.data.urls import open_shard, read_at
from dltrain.errors import DataError

__all__ = ["IndexedShardReader", "ShardReader"]


class _StopShard(Exception):
    """Raised from the file selector once no wanted sample is left in the shard: stop reading it."""


class ShardReader:
    """Forward-only reader of chosen samples of one shard, by their position in the shard.

    Only members of wanted samples are extracted; everything else is skipped (seeked over in local files) without
    being kept or decoded. Reading stops at the header that follows the last wanted sample.

    The tar is walked strictly (`TarWalker`): damage (a header that does not parse, data cut short, a missing
    end-of-archive marker, a zero block before the end) raises for the sample being read and every later one; the
    sample being read when the damage comes is not returned, as its remaining members may be the ones destroyed.

    Args:
        url: shard URL (anything ``webdataset.gopen`` opens).
        wanted: positions (0-based, in the shard) of every sample that may be asked for, in any order.
        expected: samples the index says the shard has (for the truncation message).

    Example:
        >>> reader = ShardReader("data/train-000000.tar", wanted=[2, 5], expected=10)
        >>> reader.get(2)["__key__"], reader.get(5)["__key__"]  # forward only: 2, then 5
        ('s0002', 's0005')
    """

    def __init__(self, url: str, wanted: Iterable[int], expected: int) -> None:
        self.url = url
        self.expected = expected
        self._wanted = set(int(i) for i in wanted)
        self._max_wanted = max(self._wanted, default=-1)
        self._stream: Any = None
        self._files: Iterator[dict[str, Any]] | None = None
        self._idx = -1  # position of the sample whose member header was seen last
        self._key: str | None = None
        self._keys: dict[int, str] = {}
        self._target = -1
        self._pending: tuple[int, dict[str, Any]] | None = None
        self._failed: DataError | None = None
        self.next_index = 0  # samples before this one can no longer be read without reopening

    def _select(self, fname: str) -> bool:
        prefix, _ = wds_split_name(fname)
        if prefix is None:
            return False
        if prefix != self._key:
            self._key = prefix
            self._idx += 1
            self._keys[self._idx] = prefix
            if self._idx > self._max_wanted:
                raise _StopShard()
        return self._idx == self._target or self._idx in self._wanted

    def _open(self, index: int) -> None:
        try:
            walker, self._stream = TarWalker.open(self.url)
        except TarDamage:
            raise
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
        except Exception as exn:
            raise DataError(
                f"cannot open the shard ({type(exn).__name__}: {exn}); check that it exists and is readable, "
                "or leave it out of the URL list",
                url=self.url,
                key=self._where(index),
            ) from exn
        self._files = self._members(walker)

    def _members(self, walker: TarWalker) -> Iterator[dict[str, Any]]:
        for info in walker.members():
            if not grouped(info):
                continue
            try:
                wanted = self._select(info.name)
            except _StopShard:
                return
            if wanted:
                yield {"fname": info.name, "data": walker.read_data(info)}

    def _where(self, index: int) -> str:
        key = self._keys.get(index)
        if key is not None:
            return key
        last = self._keys.get(self._idx)
        return f"#{index} (after {last!r})" if last else f"#{index}"

    def get(self, index: int) -> dict[str, Any]:
        """The raw sample at ``index``: ``{"__key__", "__url__", ext: bytes, ...}``; raises `DataError`."""
        if self._failed is not None:
            raise DataError(self._failed.reason, url=self.url, key=self._where(index))
        if index < self.next_index:
            raise ValueError(f"ShardReader is forward-only: asked for {index} after {self.next_index - 1}")
        self._target = index
        self.next_index = index + 1
        try:
            if self._files is None:
                self._open(index)
            return self._read(index)
        except DataError as exn:
            self._failed = exn
            self.close()
            raise
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
        except Exception as exn:
            self._failed = self._read_error(exn, index)
            self.close()
            raise self._failed from exn

    def _read_error(self, exn: Exception, index: int) -> DataError:
        if isinstance(exn, TarDamage):
            return DataError(
                f"the shard is damaged {exn}; this sample and the rest of the shard cannot be read: rewrite the "
                "shard (and rebuild its index if it has one, `dltrain shards index URLS...`), or use "
                "on_error='skip' to skip and count them",
                url=self.url,
                key=self._where(index),
            )
        return DataError(
            f"cannot read the shard ({type(exn).__name__}: {exn}); it is corrupt or truncated: rewrite it, "
            "or use on_error='skip' to skip the rest of it",
            url=self.url,
            key=self._where(index),
        )

    def _read(self, index: int) -> dict[str, Any]:
        sample: dict[str, Any] = {}
        if self._pending is not None:
            idx, f = self._pending
            if idx == index:
                self._pending = None
                self._add(sample, f)
            elif idx < index:
                self._pending = None
            else:
                raise ValueError(f"sample {index} of {self.url} was not in the wanted set")
        assert self._files is not None
        try:
            for f in self._files:
                idx = self._idx
                if idx == index:
                    self._add(sample, f)
                elif idx > index:
                    self._pending = (idx, f)
                    break
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
        except Exception as exn:
            if not sample or self._idx <= index:
                raise
            # The damage is in a later sample (seen while looking for the end of this one): this one is whole.
            self._failed = self._read_error(exn, self._idx)
            self.close()
        if sample:
            sample["__key__"] = self._keys[index]
            sample["__url__"] = self.url
            return sample
        return self._read_missing(index)

    def _read_missing(self, index: int) -> dict[str, Any]:
        raise DataError(
            f"the shard ended after {self._idx + 1} samples but the index says it has {self.expected}: it is "
            "truncated or corrupt, or the index is stale; rewrite the shard or rebuild the index with "
            "`dltrain shards index URLS...` (or use on_error='skip')",
            url=self.url,
            key=self._where(index),
        )

    def _add(self, sample: dict[str, Any], f: dict[str, Any]) -> None:
        _, suffix = wds_split_name(f["fname"])
        suffix = suffix.lower()
        if suffix in sample:
            raise DataError(f"duplicate field {suffix!r} in one sample", url=self.url, key=self._keys.get(self._idx))
        sample[suffix] = f["data"]

    def close(self) -> None:
        """Close the underlying stream (safe to call twice)."""
        files, self._files = self._files, None
        if files is not None and hasattr(files, "close"):
            with contextlib.suppress(Exception):
                files.close()
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()



# `IndexedShardReader.get_many` reads samples whose byte ranges are at most this far apart with one read (the bytes
# between are read and dropped: cheaper than a system call each, for small samples), up to a run of this size.
_GAP = 1 << 16
_RUN = 1 << 23


def _runs(indices: Sequence[int], offsets: Sequence[int]) -> list[tuple[int, int]]:
    """``[first, last)`` slices of ``indices`` whose samples are read with one read each.

    Ascending indices whose byte ranges are at most `_GAP` apart, at most `_RUN` bytes in all (a sample larger
    than that alone).
    """
    runs: list[tuple[int, int]] = []
    first = 0
    for k in range(1, len(indices)):
        i, prev = indices[k], indices[k - 1]
        if i < prev or offsets[i] - offsets[prev + 1] > _GAP or offsets[i + 1] - offsets[indices[first]] > _RUN:
            runs.append((first, k))
            first = k
    if indices:
        runs.append((first, len(indices)))
    return runs


class IndexedShardReader:
    """Random-access reader of one local, uncompressed shard whose index has sample offsets.

    Sample ``i`` is the tar members in ``[offsets[i], offsets[i + 1])``, read with one positioned read, so a
    loader worker touches only the samples it reads (the forward `ShardReader` parses every header before them).
    With a `SampleTable` (index version 3) the fields are cut out of that read where the table says they are,
    once the CRC of the bytes around them (headers, padding) matches the table's: no header is parsed. Without
    one, or when the check differs, the headers in the range are parsed (`parse_sample`, else `tarfile`); the
    range is then also a check that the index still fits the shard: its first header must parse, its members
    must share one key and end exactly at the next offset.

    Args:
        url: local shard path or ``file:`` URL (see `seekable`).
        offsets: the shard's ``samples + 1`` offsets from the index.
        expected: samples the index says the shard has.
        table: where each sample's fields lie (from a version 3 index).

    Example:
        >>> from dltrain.data.index import shard_layout
        >>> layout = shard_layout(["data/train-000000.tar"], "data/train.index.json")
        >>> reader = IndexedShardReader("data/train-000000.tar", layout.offsets[0], layout.counts[0], layout.tables[0])
        >>> reader.get(7)["__key__"], reader.get(3)["__key__"]  # any order, one read each
        ('s0007', 's0003')
    """

    def __init__(self, url: str, offsets: Sequence[int] | np.ndarray, expected: int,
                 table: SampleTable | None = None) -> None:
        self.url = url
        self.expected = expected
        self._offsets: list[int] = offsets.tolist() if isinstance(offsets, np.ndarray) else [int(o) for o in offsets]
        self._table = table if table is not None and len(table) == expected else None
        self._file: Any = None
        self._tar: tarfile.TarFile | None = None
        self._size = 0
        self._failed: DataError | None = None  # the shard could not be opened: every sample fails the same way
        self.next_index = 0  # any sample can be read, in any order (same attribute as `ShardReader`)
        self.fast_reads = 0  # samples parsed by `parse_sample` (the rest went through tarfile or the table)
        self.table_reads = 0  # samples cut out where the table says, no header parsed

    def _open(self, index: int) -> tarfile.TarFile:
        try:
            self._file, size = open_shard(self.url, positioned=True)
        except StorageError:  # a store that did not answer: not a missing shard, never skipped
            raise
        except OSError as exn:
            raise DataError(
                f"cannot open the shard ({type(exn).__name__}: {exn}); check that it exists and is readable, "
                "or leave it out of the URL list",
                url=self.url,
                key=f"#{index}",
            ) from exn
        try:
            self._size = int(size or 0)
            return tarfile.TarFile(fileobj=self._file, mode="r")  # parses the first header: a non-tar fails here
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
        except Exception as exn:
            self.close()
            raise self._read_error(exn, f"#{index}") from exn

    def get_many(self, indices: Sequence[int]) -> list[dict[str, Any] | DataError]:
        """The raw samples at ``indices`` (see `get`), a `DataError` in place of each sample that cannot be read.

        With a table, one loop over the samples: one positioned read per run of neighbouring samples (`_runs`),
        the check, the fields cut out; a sample whose check differs, or that the file no longer holds, goes
        through `get`. (A memory map of the samples' span, made per call, cost 4x the reads here; one kept open
        would die with SIGBUS if the shard shrank under it.)
        """
        table = self._table
        if table is not None and self._tar is None and self._failed is None:
            try:
                self._tar = self._open(indices[0] if len(indices) else 0)
            except DataError as exn:
                self._failed = exn
        if table is None or self._failed is not None:
            return [self._get_or_error(i) for i in indices]
        out: list[dict[str, Any] | DataError] = []
        offsets, keys, check, members, url, expected = (self._offsets, table.keys, table.check, table.members,
                                                        self.url, self.expected)
        one = table.fields[0] if table.layout is None else None
        stride = 2 * len(one) if one is not None else 0
        crc32 = zlib.crc32
        wrong = next((i for i in indices if not 0 <= i < expected), None)
        if wrong is not None:
            raise ValueError(f"sample {wrong} of {self.url} is out of range (the index says {self.expected})")
        for first, last in _runs(indices, offsets):
            # One read for a run of neighbouring samples (indices ascending within a run), then each sample cut out.
            base = offsets[indices[first]]
            span = read_at(self._file, base, offsets[indices[last - 1] + 1] - base)
            for i in indices[first:last]:
                start = offsets[i] - base
                stop = offsets[i + 1] - base
                if one is not None:
                    fields, at = one, stride * i
                else:
                    fields, at = table.sample(i)
                sample: dict[str, Any] = {"__key__": keys[i], "__url__": url}
                crc, pos = 0, start
                for field in fields:
                    a, n = start + members[at], members[at + 1]
                    crc = crc32(span[pos:a], crc)  # headers: a copy of a block or two, cheaper than a memoryview
                    pos = a + n
                    sample[field] = span[a:pos]
                    at += 2
                if stop <= len(span) and crc32(span[pos:stop], crc) == check[i]:
                    out.append(sample)
                    self.table_reads += 1
                else:
                    out.append(self._get_or_error(i))
        return out

    def _get_or_error(self, index: int) -> dict[str, Any] | DataError:
        try:
            return self.get(index)
        except DataError as exn:
            return exn

    def get(self, index: int) -> dict[str, Any]:
        """The raw sample at ``index``: ``{"__key__", "__url__", ext: bytes, ...}``; raises `DataError`."""
        if self._failed is not None:
            raise DataError(self._failed.reason, url=self.url, key=f"#{index}")
        if not 0 <= index < self.expected:
            raise ValueError(f"sample {index} of {self.url} is out of range (the index says {self.expected})")
        if self._tar is None:
            try:
                self._tar = self._open(index)
            except DataError as exn:
                self._failed = exn
                raise
        start, stop = self._offsets[index], self._offsets[index + 1]
        if start >= self._size:
            raise DataError(
                f"the shard has {self._size} bytes but the index puts sample #{index} at byte {start}: it is "
                "truncated, or the index is stale; rewrite the shard or rebuild the index with "
                "`dltrain shards index URLS...` (or use on_error='skip')",
                url=self.url,
                key=self._where(index),
            )
        if self._table is not None:
            cut = self._read_table(index, start, stop)
            if cut is not None:
                self.table_reads += 1
                return cut
        fast = self._read_fast(start, stop)
        if fast is not None:
            self.fast_reads += 1
            fast["__url__"] = self.url
            return fast
        sample: dict[str, Any] = {}
        try:
            self._read(self._tar, start, stop, sample)
        except DataError:
            raise
        except TarDamage as exn:
            raise DataError(
                f"the shard is damaged {exn}; rewrite the shard (and rebuild the index if the shard was rewritten "
                "after indexing, `dltrain shards index URLS...`), or use on_error='skip' to skip the samples that "
                "cannot be read",
                url=self.url,
                key=sample.get("__key__") or self._where(index),
            ) from exn
        except Mismatch as exn:
            raise DataError(
                f"the index does not match the shard: sample #{index} should be the tar members at bytes "
                f"{start}..{stop}, but {exn}; the shard changed after it was indexed (rebuild the index with "
                "`dltrain shards index URLS...`) or it is corrupt (rewrite it; on_error='skip' skips the sample)",
                url=self.url,
                key=sample.get("__key__") or self._where(index),
            ) from exn
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
        except Exception as exn:
            raise self._read_error(exn, sample.get("__key__") or self._where(index)) from exn
        sample["__url__"] = self.url
        return sample

    def _read_table(self, index: int, start: int, stop: int) -> dict[str, Any] | None:
        """The sample cut out of one read where the table says its fields are.

        ``None`` if the read is short or the bytes around the fields are not the ones indexed (then the
        headers are parsed).
        """
        assert self._table is not None
        buf = read_at(self._file, start, stop - start)
        if len(buf) != stop - start:
            return None
        fields, at = self._table.sample(index)
        members = self._table.members
        pairs = members[at : at + 2 * len(fields)]
        if header_check(lambda a, b: buf[a:b], len(buf), pairs) != self._table.check[index]:
            return None
        sample: dict[str, Any] = {"__key__": self._table.keys[index], "__url__": self.url}
        for j, field in enumerate(fields):
            a, n = pairs[2 * j], pairs[2 * j + 1]
            sample[field] = buf[a : a + n]
        return sample

    def _read_fast(self, start: int, stop: int) -> dict[str, Any] | None:
        """The sample in bytes ``[start, stop)`` from one read, its headers parsed by `parse_sample`.

        ``None`` where that declines (`_read` then parses it with `tarfile`, its checks and messages).
        """
        buf = read_at(self._file, start, stop - start)
        if len(buf) != stop - start:
            return None
        return parse_sample(buf)

    def _read(self, tar: tarfile.TarFile, start: int, stop: int, sample: dict[str, Any]) -> None:
        pos = start
        while pos < stop:
            try:
                info = tar_read_member_at(tar, pos)  # one member, with its PAX/GNU extension headers
            except tarfile.HeaderError as exn:
                if pos + tarfile.BLOCKSIZE > self._size:
                    raise TarDamage(pos, "the data ends inside this tar header: the shard was cut short") from exn
                raise Mismatch(f"byte {pos} holds no tar header ({exn})") from exn
            pos = tar_next_offset(tar)  # where the next header starts
            if not grouped(info):
                continue
            prefix, suffix = wds_split_name(info.name)
            if prefix is None:
                continue
            key = sample.setdefault("__key__", prefix)
            if prefix != key:
                raise Mismatch(f"they hold members of two samples ({key!r} and {prefix!r})")
            suffix = suffix.lower()
            if suffix in sample:
                raise DataError(f"duplicate field {suffix!r} in one sample", url=self.url, key=key)
            if info.offset_data + info.size > self._size:
                raise cut_short(info, self._size)
            file = tar.extractfile(info)
            assert file is not None  # a regular member
            sample[suffix] = file.read()
        if pos != stop or "__key__" not in sample:
            raise Mismatch(f"its members end at byte {pos}")

    def _where(self, index: int) -> str:
        # Only on errors: name the sample before this one, as the forward reader does, if it can be read.
        previous = None
        if index > 0 and self._tar is not None:
            with contextlib.suppress(Exception):
                previous = wds_split_name(tar_read_member_at(self._tar, self._offsets[index - 1]).name)[0]
        return f"#{index} (after {previous!r})" if previous else f"#{index}"

    def _read_error(self, exn: Exception, key: str) -> DataError:
        return DataError(
            f"cannot read the shard ({type(exn).__name__}: {exn}); it is corrupt or truncated: rewrite it, "
            "or use on_error='skip' to skip the samples that cannot be read",
            url=self.url,
            key=key,
        )

    def close(self) -> None:
        """Close the shard file (safe to call twice)."""
        tar, self._tar = self._tar, None
        file, self._file = self._file, None
        for closing in (tar, file):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing.close()
