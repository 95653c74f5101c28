"""Shard URLs: expanding brace patterns, telling local files from streams, and opening a shard.

Opening is webdataset's (``webdataset.gopen``) for streams: local paths, ``file:``, ``pipe:`` and ``http(s):``
URLs all work. `open_shard` is the one place a shard is opened, for reading forward (``positioned=False``: tar
walkers, forward readers) or for positioned reads (``positioned=True``: readers that fetch a sample's byte range
from the index); `seekable` says which URLs can be opened for positioned reads. A new kind of storage (object
stores) plugs in here.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from typing import IO, Any
from urllib.parse import urlparse

import braceexpand
from webdataset.gopen import gopen as wds_open

from dltrain.errors import DataError

__all__ = ["expand_urls", "open_shard", "open_url", "seekable"]

COMPRESSED = ("gz", "bz2", "xz")


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


def seekable(url: str) -> bool:
    """Whether samples of this shard can be read by positioned reads at their offsets (local, uncompressed)."""
    return is_local(url) and not local_path(url).endswith(COMPRESSED)


def dirname(url: str) -> str:
    """The directory part of a URL or path."""
    return os.path.dirname(local_path(url)) if is_local(url) else posixpath.dirname(url)


def open_url(url: str, mode: str = "rb") -> IO[bytes]:
    """Open any URL (a shard, an index) as a binary stream.

    Local files directly, others through ``webdataset.gopen``. Raises `OSError` (or what the transport raises)
    if it cannot be opened.
    """
    if is_local(url):
        return open(local_path(url), mode)
    return wds_open(url, mode)  # type: ignore[no-any-return]


def open_shard(url: str, *, positioned: bool = False) -> tuple[Any, int | None]:
    """Open the shard at ``url``: ``(file, size)``.

    ``positioned=True`` (only where `seekable`): a seekable binary file and its size in bytes, for `read_at` and
    for walking headers by seeking. ``positioned=False``: a forward-only binary stream and ``None`` (its size is
    not known); compressed shards are returned as stored (the tar walker decompresses them).
    """
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
    fileno = getattr(file, "fileno", None)
    if fileno is not None:
        return os.pread(fileno(), size, offset)
    file.seek(offset)
    return bytes(file.read(size))
