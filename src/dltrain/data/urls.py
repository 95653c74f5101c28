"""Shard URLs: expanding brace patterns, telling local files from streams, and opening a shard.

Opening is webdataset's (``webdataset.gopen``) for streams: local paths, ``file:``, ``pipe:`` and ``http(s):``
URLs all work. `open_shard` is the one place a shard is opened, for reading forward (``positioned=False``: tar
walkers, forward readers) or for positioned reads (``positioned=True``: readers that fetch a sample's byte range
from the index); `seekable` says which URLs can be opened for positioned reads.

Object stores (``s3://``, ``gs://``, ``az://``, any fsspec URL but http(s)) are opened through fsspec with the
environment's credentials (see ``dltrain._storage``) as an `ObjectFile`: ranged GETs, each retried on transient
errors, through a read-ahead buffer (``READ_AHEAD`` for positioned reads, ``STREAM_CHUNK`` when streaming a shard
forward), one connection pool of ``DLTRAIN_STORAGE_CONNECTIONS`` per process (a loader worker is one).
"""

from __future__ import annotations

import io
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import IO, Any
from urllib.parse import urlparse

import braceexpand
from webdataset.gopen import gopen as wds_open

from dltrain import _storage
from dltrain.errors import DataError

__all__ = ["ObjectFile", "expand_urls", "is_object_store", "open_shard", "open_url", "seekable"]

COMPRESSED = ("gz", "bz2", "xz")
# Object stores answer a GET after tens of milliseconds whatever its size: positioned reads fetch at least this
# much from the offset asked (the next samples of a shard come with it), forward streaming this much per GET.
READ_AHEAD = int(os.environ.get("DLTRAIN_STORAGE_READ_AHEAD", str(1 << 20)))
STREAM_CHUNK = int(os.environ.get("DLTRAIN_STORAGE_STREAM_CHUNK", str(8 << 20)))


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand brace patterns into a flat list of shard URLs.

    Args:
        urls: one pattern (``"data/train-{000000..000006}.tar"``), or a list of URLs/patterns.

    Example:
        >>> expand_urls("d/s-{0..2}.tar")
        ['d/s-0.tar', 'd/s-1.tar', 'd/s-2.tar']
    """
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        out.extend(braceexpand.braceexpand(str(item)))
    if not out:
        raise DataError("no shard URLs given: pass a path, a brace pattern or a list of URLs")
    return out


def is_local(url: str) -> bool:
    """Whether ``url`` is a path of this machine (no scheme, ``file:``, or a Windows drive letter)."""
    scheme = urlparse(url).scheme
    return scheme == "" or scheme == "file" or (len(scheme) == 1 and os.name == "nt")


def local_path(url: str) -> str:
    """The file path of a local URL (``file:`` stripped)."""
    return re.sub(r"^file://?", "/", url) if url.startswith("file:") else url


def is_object_store(url: str) -> bool:
    """Whether ``url`` names an object on a store that dltrain opens through fsspec.

    ``s3://``, ``gs://``, ...; not http(s), which webdataset streams.
    """
    return _storage.protocol_of(url) not in (None, "http", "https")


def seekable(url: str) -> bool:
    """Whether samples of this shard can be read by positioned reads at their offsets.

    Local or on an object store, uncompressed.
    """
    return (is_local(url) or is_object_store(url)) and not local_path(url).endswith(COMPRESSED)


def dirname(url: str) -> str:
    """The directory part of a URL or path."""
    return os.path.dirname(local_path(url)) if is_local(url) else posixpath.dirname(url)


def open_url(url: str, mode: str = "rb", storage_options: Mapping[str, Any] | None = None) -> IO[bytes]:
    """Open any URL (a shard, an index) as a binary stream.

    Local files directly, object stores through fsspec (``"wb"``: the object is written, in one retried PUT, when
    the stream is closed), others through ``webdataset.gopen``. Raises `OSError` (or what the transport raises)
    if it cannot be opened.
    """
    if is_local(url):
        return open(local_path(url), mode)
    if is_object_store(url):
        if "w" in mode:
            return _Upload(url, storage_options)
        return ObjectFile.open(url, STREAM_CHUNK, storage_options)  # type: ignore[return-value]
    return wds_open(url, mode)  # type: ignore[no-any-return]


def open_shard(url: str, *, positioned: bool = False) -> tuple[Any, int | None]:
    """Open the shard at ``url``: ``(file, size)``.

    ``positioned=True`` (only where `seekable`): a seekable binary file and its size in bytes, for `read_at` and
    for walking headers by seeking. ``positioned=False``: a forward-only binary stream and ``None`` (its size is
    not known); compressed shards are returned as stored (the tar walker decompresses them).
    """
    if is_object_store(url):
        # One HEAD for the size (a missing object: FileNotFoundError), then ranged GETs.
        file_ = ObjectFile.open(url, READ_AHEAD if positioned else STREAM_CHUNK)
        return file_, (file_.size if positioned else None)
    if positioned:
        if not seekable(url):
            raise ValueError(f"{url!r} cannot be read at positions (not a local uncompressed file)")
        file = open(local_path(url), "rb")  # noqa: SIM115 (the caller closes it)
        try:
            return file, os.fstat(file.fileno()).st_size
        except BaseException:
            file.close()
            raise
    return wds_open(url, "rb"), None


def read_at(file: Any, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` (fewer where the file ends) of a file from ``open_shard(..., positioned=True)``.

    One ``pread`` where the file has a descriptor (no shared file position to move).
    """
    if isinstance(file, ObjectFile):
        return file.read_at(offset, size)
    fileno = getattr(file, "fileno", None)
    if fileno is not None:
        return os.pread(fileno(), size, offset)
    file.seek(offset)
    return bytes(file.read(size))


class ObjectFile(io.RawIOBase):
    """An object of a store as a seekable binary file, for `tarfile` and `read_at`.

    Read through ranged GETs (each retried, see ``dltrain._storage.retry``) and a read-ahead buffer.

    Args:
        url: the object's URL.
        size: its size in bytes.
        read_ahead: a GET fetches at least this many bytes from where a read starts.

    Example:
        >>> import fsspec
        >>> fsspec.filesystem("memory").pipe_file("memory://bucket/shard.tar", b"0123456789")
        >>> f = ObjectFile.open("memory://bucket/shard.tar", read_ahead=4)
        >>> f.read_at(2, 3), f.requests  # one ranged GET of bytes 2..5
        (b'234', 1)
        >>> f.read_at(4, 1), f.requests  # in the read-ahead buffer: no request
        (b'4', 1)
    """

    # No descriptor: readers that pread a local file's descriptor read through `read_at` instead.
    fileno = None  # type: ignore[assignment]

    def __init__(self, url: str, size: int, read_ahead: int, fs: Any) -> None:
        super().__init__()
        self.url, self.size, self.read_ahead = url, size, max(1, read_ahead)
        self._fs = fs
        self._pos = 0
        self._buffer, self._buffer_start = b"", 0
        self.requests = 0  # GETs made (for tests and benchmarks)

    @classmethod
    def open(cls, url: str, read_ahead: int, storage_options: Mapping[str, Any] | None = None) -> ObjectFile:
        """Open the object ``url`` (its size read first).

        Raises:
            FileNotFoundError: a missing object.
            dltrain._storage.StorageError: a store that does not answer after the retries.
        """
        fs = _storage.filesystem(url, storage_options)

        def info() -> dict[str, Any]:
            fs.invalidate_cache(_storage.parent(url))  # the object may have been rewritten since a listing
            return dict(fs.info(url))

        found = _storage.retry(info, url)
        if found.get("type") == "directory":
            raise IsADirectoryError(f"{_storage.redact(url)} is a prefix (a folder), not an object")
        return cls(url, int(found["size"]), read_ahead, fs)

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer where the object ends), from the buffer when it holds them."""
        stop = min(offset + max(size, 0), self.size)
        if offset >= stop:
            return b""
        start = offset - self._buffer_start
        if start >= 0 and offset + (stop - offset) <= self._buffer_start + len(self._buffer):
            return self._buffer[start:start + stop - offset]
        end = min(self.size, offset + max(stop - offset, self.read_ahead))
        self.requests += 1
        data = _storage.retry(lambda: self._fs.cat_file(self.url, start=offset, end=end), self.url)
        if len(data) != end - offset:  # the object changed (shorter) since it was opened
            raise _storage.StorageError(f"{_storage.redact(self.url)}: asked bytes {offset}..{end}, got "
                                        f"{len(data)}: the object changed while it was read")
        self._buffer, self._buffer_start = bytes(data), offset
        return self._buffer[: stop - offset]

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes from the current position (all that is left: ``-1`` or None)."""
        if size is None or size < 0:
            size = self.size - self._pos
        data = self.read_at(self._pos, size)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the current position; the number of bytes read."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position (no request is made)."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def readable(self) -> bool:
        """True: an object is read."""
        return True

    def seekable(self) -> bool:
        """True: any position is one ranged GET away."""
        return True

    def close(self) -> None:
        """Drop the read-ahead buffer."""
        self._buffer = b""
        super().close()


class _Upload(io.BytesIO):
    """A write stream for an object: the bytes are PUT (retried, one object, visible only once complete) on close."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None) -> None:
        super().__init__()
        self._url, self._options = url, storage_options

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            super().close()
            _storage.write_bytes(self._url, data, self._options)

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:  # the writer failed: nothing is uploaded (no half-written object)
            super().close()
            return
        self.close()
