"""Shard files: writing them, the sample-count index next to them, and reading samples out of them.

URL opening is webdataset's (``webdataset.gopen``): local paths, ``file:``, ``pipe:`` and ``http(s):`` URLs all
work, and brace patterns (``data/train-{000000..000127}.tar``) are expanded with ``braceexpand``. Samples are
grouped from tar members as webdataset groups them; tar headers are parsed by Python's `tarfile`.

The index
---------
A JSON file named ``<stem>.index.json`` in the directory of the first shard, where ``<stem>`` is the common
prefix of the shard file names without extensions, trailing digits and trailing ``-_.`` (``train-000000.tar``
.. ``train-000127.tar`` -> ``train.index.json``; ``shards.index.json`` when nothing is left)::

    {"format": "dltrain.shard-index", "version": 2, "total": 1234,
     "shards": [{"url": "train-000000.tar", "samples": 50, "offsets": [0, 3072, ..., 153600]}, ...]}

Shards in the index's directory are named relative to it (the directory can be moved); others keep their full
URL.

``offsets`` (version 2, uncompressed shards indexed or written locally) has ``samples + 1`` byte offsets: where
each sample's first tar member header starts, then where the last sample's data ends, so sample ``i`` is the
members in ``[offsets[i], offsets[i + 1])``. Readers of local shards seek there instead of parsing every header
before the sample; without offsets (version 1 indexes, compressed shards) they scan forward.

Damaged shards
--------------
Python's `tarfile` iteration (and webdataset's, built on it) ends quietly at a header that does not parse, at a
zero block and wherever the file ends, so a damaged shard would read as a shorter one. Every walk over tar headers
here (counting, `build_index`, forward readers) is strict instead: a tar ends with a zero block followed by nothing
but zeros (the end-of-archive marker and the padding to a record), and anything else is damage, reported with the
shard, the byte offset and the last sample key read before it: a header that does not parse (bad checksum), a
member whose data runs past the end of the file, a file cut at a member boundary (no end-of-archive marker), a zero
block with more data after it.

- `build_index` (``dltrain shards index``) and `count_samples` raise `DataError`: an index never holds the counts of
  a damaged shard.
- Without an index, ``on_error="raise"`` raises when the samples are counted; ``"skip"`` warns, counts the samples it
  can find (past a corrupt header or a stray zero block it searches for the next valid header) and reads the shard
  forward: the sample being read when the damage comes (its remaining members may be the destroyed ones) and the
  rest of the shard are skipped and counted like any bad sample. After a cut, the samples cut off cannot be known:
  the sample being read counts as the one lost.
- With offsets in the index, a sample whose byte range holds damage fails alone (a cut: every sample after it);
  forward readers with an index lose the sample being read and the rest of the shard, as above.

Local uncompressed shards are walked by seeking from header to header (payloads are not read); the end check
reads only what follows the last member (about 10 KiB).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import os
import posixpath
import re
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import braceexpand
import numpy as np
from webdataset import tariterators
from webdataset.gopen import gopen as wds_open
from webdataset.writer import ShardWriter

from dltrain._compat import tar_writer_offset
from dltrain.errors import DataError

__all__ = [
    "INDEX_FORMAT",
    "build_index",
    "default_index_path",
    "expand_urls",
    "load_index",
    "seekable",
    "shard_counts",
    "shard_layout",
    "write_index",
    "write_shards",
]

INDEX_FORMAT = "dltrain.shard-index"
INDEX_VERSION = 2
INDEX_SUFFIX = ".index.json"

# webdataset drops these files when it groups tar members into samples; counting must drop the same ones.
_SKIP_META = re.compile(r"__[^/]*__($|/)")
_COMPRESSED = ("gz", "bz2", "xz")


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


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme == "" or scheme == "file" or (len(scheme) == 1 and os.name == "nt")


def _local_path(url: str) -> str:
    return re.sub(r"^file://?", "/", url) if url.startswith("file:") else url


def seekable(url: str) -> bool:
    """Whether samples of this shard can be read by seeking to their indexed offsets (local, uncompressed)."""
    return _is_local(url) and not _local_path(url).endswith(_COMPRESSED)


def _dirname(url: str) -> str:
    return os.path.dirname(_local_path(url)) if _is_local(url) else posixpath.dirname(url)


def _index_stem(urls: Sequence[str]) -> str:
    names = [posixpath.basename(_local_path(u)).split(".", 1)[0] for u in urls]
    stem = os.path.commonprefix(names).rstrip("0123456789").rstrip("-_.")  # noqa: RUF071 (names, not paths)
    return stem or "shards"


def default_index_path(urls: str | Sequence[str]) -> str:
    """Where the index of these shards lives: ``<dir of first shard>/<stem>.index.json`` (see module doc).

    Example:
        >>> default_index_path("data/train-{000000..000003}.tar")
        'data/train.index.json'
    """
    expanded = expand_urls(urls)
    directory = _dirname(expanded[0])
    name = _index_stem(expanded) + INDEX_SUFFIX
    if _is_local(expanded[0]):
        return os.path.join(directory, name)
    return f"{directory}/{name}" if directory else name


def _relative_name(url: str, index_path: str) -> str:
    if _is_local(url) and _is_local(index_path):
        shard_dir = os.path.abspath(os.path.dirname(_local_path(url)))
        if shard_dir == os.path.abspath(os.path.dirname(_local_path(index_path))):
            return os.path.basename(_local_path(url))
        return url
    if posixpath.dirname(url) == posixpath.dirname(index_path):
        return posixpath.basename(url)
    return url


def _make_index(
    urls: Sequence[str], counts: Sequence[int], offsets: Sequence[Sequence[int] | None], index_path: str
) -> dict[str, Any]:
    shards: list[dict[str, Any]] = []
    for url, count, offs in zip(urls, counts, offsets):
        entry: dict[str, Any] = {"url": _relative_name(url, index_path), "samples": int(count)}
        if offs is not None:
            entry["offsets"] = [int(o) for o in offs]
        shards.append(entry)
    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "total": int(sum(counts)), "shards": shards}


def _index_text(index: Mapping[str, Any]) -> str:
    # One line per shard: with indent=1, json would put every offset on a line of its own.
    head = json.dumps({k: v for k, v in index.items() if k != "shards"})
    shards = ",\n  ".join(json.dumps(entry) for entry in index["shards"])
    return f'{head[:-1]},\n "shards": [\n  {shards}\n ]}}\n'


def write_index(index: Mapping[str, Any], path: str) -> None:
    """Write an index dict as JSON, atomically for local paths (readers never see half a file)."""
    text = _index_text(index)
    if _is_local(path):
        local = _local_path(path)
        tmp = f"{local}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, local)
    else:
        with wds_open(path, "wb") as f:
            f.write(text.encode("utf-8"))


def load_index(path: str) -> dict[str, Any]:
    """Read and check an index file (local path or URL); raise `DataError` if it is not one."""
    try:
        with wds_open(path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as exn:
        raise DataError(
            f"cannot read shard index {path!r} ({type(exn).__name__}: {exn}); rebuild it with "
            "`dltrain shards index URLS...`"
        ) from exn
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or "shards" not in index:
        raise DataError(f"{path!r} is not a dltrain shard index; rebuild it with `dltrain shards index URLS...`")
    return index


def _index_exists(path: str) -> bool:
    if _is_local(path):
        return os.path.isfile(_local_path(path))
    if urlparse(path).scheme in ("http", "https"):
        try:
            with wds_open(path, "rb") as f:
                f.read(1)
            return True
        except Exception:
            return False
    return False  # pipe: and friends: we cannot guess where an index lives, pass index= instead


# --------------------------------------------------------------------------------------------------- writing


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
        index: also write ``<stem>.index.json`` (see the module docstring).

    Returns:
        The shard paths, in order.

    Example:
        >>> paths = write_shards(({"__key__": f"s{i}", "cls": i} for i in range(10)), "/tmp/d/t-%03d.tar",
        ...                      max_count=4)  # doctest: +SKIP
        >>> len(paths)  # doctest: +SKIP
        3
    """
    if "%" not in pattern:
        raise DataError(f"shard pattern {pattern!r} needs a printf field for the shard number, e.g. 'train-%06d.tar'")
    directory = os.path.dirname(_local_path(pattern)) if _is_local(pattern) else ""
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
        write_index(_make_index(paths, counts, offsets, index_path), index_path)
    return paths


# --------------------------------------------------------------------------------------------------- tar walking


class _TarDamage(Exception):
    """The tar data of a shard is damaged at byte ``offset`` (of the uncompressed tar).

    Attributes:
        offset: where the damage is: the header that does not parse, the member whose data is cut short, the
            misplaced zero block, or where the file ends without its end-of-archive marker.
        what: what is wrong there.
        resume: where the next valid header may be searched for (None: the data ends at the damage).
    """

    def __init__(self, offset: int, what: str, resume: int | None = None) -> None:
        super().__init__(f"at byte {offset}: {what}")
        self.offset = offset
        self.what = what
        self.resume = resume


def _cut_short(info: tarfile.TarInfo, end: int) -> _TarDamage:
    return _TarDamage(
        info.offset,
        f"the data of member {info.name!r} ({info.size} bytes from byte {info.offset_data}) runs past the end of "
        f"the data at byte {end}: the shard was cut short",
    )


class _Blocks:
    """A forward-only byte stream (a pipe, an http response, a decompressor) for the tar walker.

    It counts its position, seeks forward by reading and dropping, and can go back over the bytes of its last read
    (to parse a header found while resynchronising after damage). ``prefix``: bytes already read from ``raw``.
    """

    def __init__(self, raw: Any, prefix: bytes = b"") -> None:
        self.raw = raw
        self.pos = 0
        self._back = prefix  # handed out again before reading raw
        self.last = b""  # the bytes just before pos, as last read

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        parts = [self._back[:n] if n >= 0 else self._back]
        self._back = self._back[len(parts[0]) :]
        got = len(parts[0])
        while n < 0 or got < n:
            chunk = self.raw.read(n - got if n >= 0 else 1 << 20)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        self.pos += len(data)
        self.last = data
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise OSError("_Blocks seeks to absolute positions only")
        if pos < self.pos:
            back = self.pos - pos
            if back > len(self.last):
                raise OSError(f"cannot seek back from byte {self.pos} to {pos} in a stream")
            self._back = self.last[len(self.last) - back :] + self._back
            self.last = b""
            self.pos = pos
        while self.pos < pos and self.read(min(pos - self.pos, 1 << 20)):
            pass
        return self.pos


def _decompressed(raw: Any) -> _Blocks:
    """``raw`` (read forward) as the bytes of its tar: gzip, bzip2 and xz are recognised by their magic bytes."""
    head = _Blocks(raw).read(6)
    source: Any = _Blocks(raw, prefix=head)  # what the decompressors read (typed for real files)
    if head.startswith(b"\x1f\x8b"):
        return _Blocks(gzip.GzipFile(fileobj=source, mode="rb"))
    if head.startswith(b"BZh"):
        return _Blocks(bz2.BZ2File(source))
    if head.startswith(b"\xfd7zXZ\x00"):
        return _Blocks(lzma.LZMAFile(source))
    return source


class _TarWalker:
    """A strict walk over the members of one tar file: it ends at a proper end of archive, or raises `_TarDamage`.

    Python's `tarfile` iteration (and webdataset's, built on it) ends quietly at a header that does not parse, at a
    zero block anywhere and wherever the file ends, so a damaged shard reads as a shorter one. Here the archive
    ends only at a zero block followed by nothing but zeros to the end of the file (the second zero block of the
    end-of-archive marker and the padding to a record; a lone zero block is accepted, as tar does). Damage is: a
    header that does not parse (bad checksum, garbage), a member whose data runs past the end of the file (a short
    read), a file that ends at or inside a header without the end marker (cut at a member boundary), a zero block
    with data after it.

    Args:
        fileobj: the open shard: a local uncompressed file with ``size`` (only headers are read, payloads are
            skipped by seeking), or anything readable forward with ``size=None`` (pipes, http, compressed files:
            gzip, bzip2 and xz are decompressed).
        size: the file size, for local files.
    """

    def __init__(self, fileobj: Any, size: int | None) -> None:
        self.size = size
        file: Any = fileobj if size is not None else _decompressed(fileobj)
        self.file = file
        try:  # TarFile parses the first header here
            self.tar = tarfile.TarFile(fileobj=file, mode="r")
        except Exception as exn:
            raise _TarDamage(0, f"no tar header at the start of the file ({type(exn).__name__}: {exn})") from exn
        self._first = True
        self._last: tarfile.TarInfo | None = None  # the last member parsed

    @classmethod
    def open(cls, url: str) -> tuple[_TarWalker, Any]:
        """A walker over the shard at ``url`` and the stream to close after it (OSError if it cannot be opened)."""
        if seekable(url):
            stream: Any = open(_local_path(url), "rb")  # noqa: SIM115 (closed by the caller)
            size: int | None = os.fstat(stream.fileno()).st_size
        else:
            stream, size = wds_open(url, "rb"), None
        try:
            return cls(stream, size), stream
        except BaseException:
            with contextlib.suppress(Exception):
                stream.close()
            raise

    def members(self, start: int = 0) -> Iterator[tarfile.TarInfo]:
        """Every member from the header at byte ``start`` on, then a check of the end of the archive."""
        pos = start
        while True:
            info = self._header(pos)
            if info is None:
                self._check_end(pos)
                return
            pos = self.tar.offset  # where the next header starts (set by the parse)
            yield info

    def read_data(self, info: tarfile.TarInfo) -> bytes:
        """The payload of the member just yielded by `members`."""
        try:
            file = self.tar.extractfile(info)
            assert file is not None  # a regular member
            return file.read()
        except tarfile.ReadError as exn:
            if "unexpected end of data" in str(exn):
                raise _cut_short(info, self.file.tell()) from exn
            raise _TarDamage(info.offset, f"cannot read the data of member {info.name!r} ({exn})") from exn
        except Exception as exn:
            raise _TarDamage(info.offset, f"cannot read the data of member {info.name!r} ({type(exn).__name__}: "
                             f"{exn})") from exn

    def _goto(self, pos: int) -> int:
        """Move to ``pos``; returns the position reached (less where the data ends before)."""
        if self.size is not None:
            self.file.seek(min(pos, self.size))
            return min(pos, self.size)
        return int(self.file.seek(pos))

    def _header(self, pos: int) -> tarfile.TarInfo | None:
        """The member whose header starts at ``pos`` (None: a zero block there); raises `_TarDamage`."""
        try:
            if self._first and pos == 0:
                self._first = False
                info = self.tar.next()  # parsed by the constructor; None: a zero block
                if info is None:
                    self._goto(tarfile.BLOCKSIZE)
                    return None
            else:
                reached = self._goto(pos)
                if reached < pos:  # the data (or the padding) of the previous member is cut short
                    last = self._last
                    if last is not None and reached < last.offset_data + last.size:
                        raise _cut_short(last, reached)
                    raise _TarDamage(pos, f"the data ends at byte {reached}, before this header and without the "
                                          "end-of-archive marker (two zero blocks): the shard was cut short")
                info = self.tar.tarinfo.fromtarfile(self.tar)
        except _TarDamage:
            raise
        except tarfile.HeaderError as exn:
            block = self._block_at(pos)
            if block is not None and len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0"):
                return None  # a zero block
            if block == b"":
                raise _TarDamage(pos, "the data ends here, without the end-of-archive marker (two zero blocks): "
                                      "the shard was cut short") from exn
            if block is not None and len(block) < tarfile.BLOCKSIZE:
                raise _TarDamage(pos, "the data ends inside this tar header: the shard was cut short") from exn
            raise _TarDamage(pos, f"no valid tar header here ({exn})", resume=pos + tarfile.BLOCKSIZE) from exn
        except Exception as exn:  # a header extension that does not parse, a decompression error
            raise _TarDamage(pos, f"cannot read a tar header here ({type(exn).__name__}: {exn})",
                             resume=pos + tarfile.BLOCKSIZE) from exn
        # A member whose data is cut short is still handed out: its header was read, its sample has begun (the data
        # fails in `read_data`, or when the walk moves on to the next header).
        self._last = info
        return info

    def _block_at(self, pos: int) -> bytes | None:
        """The (up to) 512 bytes at ``pos`` after a header there failed to parse; None if a stream cannot tell."""
        if self.size is not None:
            self.file.seek(pos)
            return bytes(self.file.read(tarfile.BLOCKSIZE))
        last = self.file.last
        return last if self.file.pos - len(last) == pos and len(last) <= tarfile.BLOCKSIZE else None

    def _check_end(self, pos: int) -> None:
        """A zero block is at ``pos``: the rest of the file must be zeros too."""
        at = self._goto(pos + tarfile.BLOCKSIZE)
        try:
            while chunk := self.file.read(1 << 16):
                rest = chunk.lstrip(b"\0")
                if rest:
                    more = at + len(chunk) - len(rest)
                    raise _TarDamage(pos, f"a zero block (the end-of-archive marker) before the end of the data: "
                                          f"more data follows at byte {more}", resume=more - more % tarfile.BLOCKSIZE)
                at += len(chunk)
        except _TarDamage:
            raise
        except Exception as exn:
            raise _TarDamage(at, f"cannot read the data here ({type(exn).__name__}: {exn})") from exn

    def resync(self, start: int) -> int | None:
        """The offset of the first block at or after ``start`` that holds a valid tar header; None: none is left.

        Random bytes pass the header checksum with a negligible chance; a payload that is itself a tar file would.
        """
        pos = start
        if self.size is None and pos < self.file.pos - len(self.file.last):  # a stream goes back one read at most
            pos = -(-self.file.pos // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        with contextlib.suppress(Exception):  # a read error: nothing more can be found
            if self._goto(pos) < pos:
                return None
            while len(block := self.file.read(tarfile.BLOCKSIZE)) == tarfile.BLOCKSIZE:
                if block.count(0) != tarfile.BLOCKSIZE:
                    try:
                        tarfile.TarInfo.frombuf(block, self.tar.encoding, self.tar.errors)
                        return pos
                    except tarfile.HeaderError:
                        pass
                pos += tarfile.BLOCKSIZE
        return None


# --------------------------------------------------------------------------------------------------- counting


class _KeyCounter:
    """Counts samples the way webdataset's ``group_by_keys`` forms them: a new sample at each key change."""

    def __init__(self) -> None:
        self.count = 0
        self.key: str | None = None

    def feed(self, fname: str) -> bool:
        """Count ``fname``'s member; True when it starts a new sample."""
        prefix, _ = tariterators.base_plus_ext(fname)
        if prefix is not None and prefix != self.key:
            self.key = prefix
            self.count += 1
            return True
        return False


def _grouped(info: tarfile.TarInfo) -> bool:
    """Whether webdataset's tar iteration hands this member on to sample grouping (a regular, non-meta file)."""
    return info.isreg() and _grouped_name(info.name)


def _grouped_name(name: str) -> bool:
    """`_grouped` for a regular file of this name."""
    if _SKIP_META.match(name):
        return False
    return not ("/" not in name and name.startswith(tariterators.meta_prefix) and name.endswith(tariterators.meta_suffix))


class _Scan:
    """What one walk over a shard's headers found: samples, their offsets, the first damage."""

    def __init__(self) -> None:
        self.counter = _KeyCounter()
        self.offsets: list[int] = []
        self.end = 0  # where the data of the last sample ends
        self.damage: _TarDamage | None = None
        self.last_key: str | None = None  # the last sample key read before the damage
        self.before = 0  # samples seen before the damage (the last of them may be incomplete)

    def run(self, walker: _TarWalker, *, resync: bool) -> _Scan:
        """Count; at damage stop, or (``resync``) count on from the next valid header to know what is lost."""
        start = 0
        while True:
            try:
                for info in walker.members(start):
                    if not _grouped(info) or tariterators.base_plus_ext(info.name)[0] is None:
                        continue
                    if self.counter.feed(info.name):
                        self.offsets.append(info.offset)
                    self.end = walker.tar.offset  # past this member's data
                return self
            except _TarDamage as exn:
                if self.damage is None:
                    # A copy without the traceback: kept, that would hold every frame up to the caller's (a loader's).
                    self.damage = _TarDamage(exn.offset, exn.what, exn.resume)
                    self.last_key, self.before = self.counter.key, self.counter.count
                found = walker.resync(exn.resume) if resync and exn.resume is not None else None
                if found is None:
                    return self
                start = found


def _damage_message(damage: _TarDamage, last_key: str | None) -> str:
    after = f"after sample {last_key!r}" if last_key is not None else "before its first sample"
    return f"the shard is damaged at byte {damage.offset}, {after}: {damage.what}"


_REWRITE = "Rewrite the shard (from its source), or leave it out of the URL list"


def _scan(
    url: str,
    *,
    skip_damaged: bool = False,
    warn: Callable[[str], None] | None = None,
    advice: str = _REWRITE,
) -> tuple[int, list[int] | None]:
    """(samples, sample offsets) of one shard from its tar headers; offsets only where `seekable`.

    A damaged shard raises `DataError` (its message ends with ``advice``), or with ``skip_damaged`` warns and
    counts every sample it can find, with no offsets: readers then read it forward up to the damage and count the
    rest as skipped.
    """
    scan = _Scan()
    try:
        walker, stream = _TarWalker.open(url)
    except _TarDamage as exn:  # the first header
        scan.damage = _TarDamage(exn.offset, exn.what)
    except FileNotFoundError as exn:
        raise DataError("shard not found; check the path and the brace range of the URL pattern", url=url) from exn
    except Exception as exn:
        raise DataError(
            f"cannot count the samples of the shard ({type(exn).__name__}: {exn}); is it missing, corrupt or "
            "truncated? Rewrite the shard or leave it out",
            url=url,
        ) from exn
    else:
        try:
            scan.run(walker, resync=skip_damaged)
        except Exception as exn:
            raise DataError(
                f"cannot count the samples of the shard ({type(exn).__name__}: {exn}); rewrite the shard or leave "
                "it out",
                url=url,
            ) from exn
        finally:
            with contextlib.suppress(Exception):
                stream.close()
    if scan.damage is None:
        return scan.counter.count, [*scan.offsets, scan.end] if seekable(url) else None
    message = _damage_message(scan.damage, scan.last_key)
    if not skip_damaged:
        raise DataError(f"{message}. {advice}", url=url)
    # At least one: a shard damaged before its first sample still shows up as one skipped sample.
    count = max(scan.counter.count, 1)
    lost = count - max(scan.before - 1, 0)
    unknown = "" if scan.damage.resume is not None else " (and those cut off, which cannot be counted without an index)"
    (warn or warnings.warn)(
        f"{message} (shard {url!r}); it will be read up to the damage, and {lost} of the {count} samples found"
        f"{unknown} will be skipped and counted (on_error='skip'); rewrite the shard"
    )
    return count, None


def count_samples(url: str) -> int:
    """Number of samples in one shard, from its tar headers (payloads are not decoded or kept).

    Raises:
        DataError: the shard is missing, or damaged (see `build_index`).
    """
    return _scan(url)[0]


def build_index(urls: str | Sequence[str], *, path: str | None = None, write: bool = True) -> dict[str, Any]:
    """Build the index of existing shards from their tar headers, and write it next to them.

    Args:
        urls: shard URLs or brace patterns.
        path: where to write the index; default `default_index_path(urls)`.
        write: write the file (else only return the dict).

    Returns:
        The index dict (same content as `write_shards` writes).

    Raises:
        DataError: a shard is missing or damaged (a header that does not parse, data cut short, no end-of-archive
            marker, a zero block before the end): the error names the shard, the byte and the last sample key read
            before the damage. No index is written.

    Example:
        >>> build_index("data/train-{000000..000006}.tar")["total"]  # doctest: +SKIP
        180
    """
    expanded = expand_urls(urls)
    path = path or default_index_path(expanded)
    scans: list[tuple[int, list[int] | None]] = []
    errors: list[DataError] = []
    for url in expanded:  # every shard, so that one error names all the bad ones
        try:
            scans.append(_scan(url))
        except DataError as exn:
            errors.append(exn)
    if len(errors) == 1:
        raise errors[0]  # an index never holds the counts of a damaged shard
    if errors:
        lines = "\n".join(f"  {exn}" for exn in errors)
        raise DataError(f"{len(errors)} of {len(expanded)} shards cannot be indexed; no index was written:\n{lines}",
                        url=errors[0].url)
    index = _make_index(expanded, [c for c, _ in scans], [o for _, o in scans], path)
    if write:
        write_index(index, path)
    return index


def shard_counts(
    urls: Sequence[str],
    index: str | None = None,
    *,
    missing_ok: bool = False,
    warn: Callable[[str], None] | None = None,
) -> list[int]:
    """Samples per shard for ``urls``: from ``index`` (or the default index next to the shards if it exists),
    else by reading tar headers (slower; a warning says so). See `shard_layout` for the arguments."""
    return shard_layout(urls, index, missing_ok=missing_ok, warn=warn)[0]


def _refuse_missing(urls: Sequence[str], missing_ok: bool) -> None:
    """A DataError "not found" naming the local shards that do not exist (with ``missing_ok``, the scan warns
    about each one instead)."""
    missing = [url for url in urls if _is_local(url) and not os.path.exists(_local_path(url))]
    if not missing or missing_ok:
        return
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise DataError(f"{len(missing)} of {len(urls)} shards not found: {_local_path(missing[0])!r}{more}; check the "
                    "path and the brace range of the URL pattern")


def shard_layout(
    urls: Sequence[str],
    index: str | None = None,
    *,
    missing_ok: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[int], list[np.ndarray | None]]:
    """Samples per shard for ``urls`` and, where known, their byte offsets (``samples + 1`` each, see the module
    docstring): from ``index`` (or the default index next to the shards if it exists), else by reading tar
    headers (slower; a warning says so).

    Args:
        urls: expanded shard URLs.
        index: explicit index path.
        missing_ok: a shard that cannot be opened counts 0 samples, and a damaged one the samples its headers
            show (see "Damaged shards" in the module docstring), with a warning instead of an error
            (``on_error="skip"``).
        warn: where warnings go (default `warnings.warn`).
    """
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    path = index if index is not None else default_index_path(urls)
    by_name: dict[str, Mapping[str, Any]] = {}
    if index is not None or _index_exists(path):
        data = load_index(path)
        base = _dirname(path)
        for entry in data["shards"]:
            name = str(entry["url"])
            by_name[name] = entry
            full = os.path.join(base, name) if _is_local(path) else f"{base}/{name}"
            by_name.setdefault(os.path.normpath(full) if _is_local(path) else full, entry)
    else:
        _refuse_missing(urls, missing_ok)  # before advice about an index for shards that are not there
        warn(
            f"no shard index at {path!r}: counting samples by reading the tar headers of {len(urls)} shards "
            "(slow for big datasets; write one with `dltrain shards index URLS...`)"
        )
    counts: list[int] = []
    offsets: list[np.ndarray | None] = []
    for url in urls:
        key = os.path.normpath(_local_path(url)) if _is_local(url) else url
        found = by_name.get(key, by_name.get(url))
        if found is None and by_name:
            found = by_name.get(posixpath.basename(_local_path(url)))
            if found is None:
                warn(f"shard {url!r} is not in the index {path!r}; counting it by reading its headers")
        if found is not None:
            count, offs = int(found["samples"]), found.get("offsets")
            if offs is not None and len(offs) != count + 1:
                raise DataError(
                    f"the index {path!r} lists {len(offs)} offsets for {count} samples: it is damaged; rebuild it "
                    "with `dltrain shards index URLS...`",
                    url=url,
                )
        else:
            try:
                count, offs = _scan(url, skip_damaged=missing_ok, warn=warn, advice=(
                    f"{_REWRITE}; on_error='skip' reads it up to the damage and skips and counts the samples after it"
                ))
            except DataError as exn:
                if not missing_ok:
                    raise
                warn(f"{exn}; counting it as 0 samples (on_error='skip')")
                count, offs = 0, None
        counts.append(count)
        offsets.append(None if offs is None else np.asarray(offs, dtype=np.int64))
    return counts, offsets


# --------------------------------------------------------------------------------------------------- reading


class _StopShard(Exception):
    """Raised from the file selector once no wanted sample is left in the shard: stop reading it."""


class ShardReader:
    """Forward-only reader of chosen samples of one shard, by their position in the shard.

    Only members of wanted samples are extracted; everything else is skipped (seeked over in local files) without
    being kept or decoded. Reading stops at the header that follows the last wanted sample.

    The tar is walked strictly (`_TarWalker`): damage (a header that does not parse, data cut short, a missing
    end-of-archive marker, a zero block before the end) raises for the sample being read and every later one; the
    sample being read when the damage comes is not returned, as its remaining members may be the ones destroyed.

    Args:
        url: shard URL (anything ``webdataset.gopen`` opens).
        wanted: positions (0-based, in the shard) of every sample that may be asked for, in any order.
        expected: samples the index says the shard has (for the truncation message).
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
        prefix, _ = tariterators.base_plus_ext(fname)
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
            walker, self._stream = _TarWalker.open(self.url)
        except _TarDamage:
            raise
        except Exception as exn:
            raise DataError(
                f"cannot open the shard ({type(exn).__name__}: {exn}); check that it exists and is readable, "
                "or leave it out of the URL list",
                url=self.url,
                key=self._where(index),
            ) from exn
        self._files = self._members(walker)

    def _members(self, walker: _TarWalker) -> Iterator[dict[str, Any]]:
        for info in walker.members():
            if not _grouped(info):
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
        except Exception as exn:
            self._failed = self._read_error(exn, index)
            self.close()
            raise self._failed from exn

    def _read_error(self, exn: Exception, index: int) -> DataError:
        if isinstance(exn, _TarDamage):
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
        _, suffix = tariterators.base_plus_ext(f["fname"])
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


class _Mismatch(Exception):
    """The tar members at a sample's indexed offsets are not one whole sample."""


def _nts(field: bytes) -> str:
    """A NUL-terminated tar header string (UTF-8, as tarfile reads names by default)."""
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8")


def _octal(field: bytes, base: int = 8) -> int | None:
    """A tar header number (octal, NUL/space padded) or a PAX decimal; ``None`` for base-256 or garbage."""
    if field[:1] in (b"\x80", b"\xff"):
        return None
    end = field.find(b"\0")
    text = (field if end < 0 else field[:end]).strip()
    try:
        return int(text, base) if text else 0
    except ValueError:
        return None


def _checksum_ok(header: bytes) -> bool:
    """tarfile's (unsigned) header checksum: the sum of the header's bytes, the checksum field counted as spaces.

    The sum comes from adler32, whose low half is ``(1 + sum of bytes) mod 65521``: one C call instead of a
    Python loop over 512 bytes. Mod 65521 it misses only changes to the sum by a multiple of 65521, which takes
    at least 257 changed bytes; any `_read_fast` declines goes through tarfile's own check anyway.
    """
    stored = _octal(header[148:156])
    if stored is None:
        return False
    field = sum(header[148:156])
    return (1 + stored - 256 + field) % 65521 == zlib.adler32(header) & 0xFFFF


# PAX records `_read_fast` leaves to tarfile: other charsets, sparse files.
_PAX_DEFER = (b"hdrcharset", b"GNU.sparse")


def _pax_records(data: bytes) -> dict[bytes, bytes] | None:
    """The ``"LEN key=value\n"`` records of a PAX header; ``None`` if malformed or holding a deferred key."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            return None
        length = _octal(data[pos:space], base=10)
        if not length or pos + length > len(data) or data[pos + length - 1 : pos + length] != b"\n":
            return None
        key, eq, value = data[space + 1 : pos + length - 1].partition(b"=")
        if not eq or key.startswith(_PAX_DEFER):
            return None
        records[key] = value
        pos += length
    return records


class IndexedShardReader:
    """Random-access reader of one local, uncompressed shard whose index has sample offsets.

    Sample ``i`` is the tar members in ``[offsets[i], offsets[i + 1])``: the reader seeks there and lets
    `tarfile` parse just those headers, so a loader worker touches only the samples it reads (the forward
    `ShardReader` parses every header before them). The range is also a cheap check that the index still fits
    the shard: its first header must parse, its members must share one key and end exactly at the next offset.

    Args:
        url: local shard path or ``file:`` URL (see `seekable`).
        offsets: the shard's ``samples + 1`` offsets from the index.
        expected: samples the index says the shard has.
    """

    def __init__(self, url: str, offsets: Sequence[int] | np.ndarray, expected: int) -> None:
        self.url = url
        self.expected = expected
        self._offsets = offsets
        self._file: Any = None
        self._tar: tarfile.TarFile | None = None
        self._size = 0
        self._failed: DataError | None = None  # the shard could not be opened: every sample fails the same way
        self.next_index = 0  # any sample can be read, in any order (same attribute as `ShardReader`)
        self.fast_reads = 0  # samples parsed by `_read_fast` (the rest went through tarfile)

    def _open(self, index: int) -> tarfile.TarFile:
        try:
            self._file = open(_local_path(self.url), "rb")  # noqa: SIM115 (closed by close())
        except OSError as exn:
            raise DataError(
                f"cannot open the shard ({type(exn).__name__}: {exn}); check that it exists and is readable, "
                "or leave it out of the URL list",
                url=self.url,
                key=f"#{index}",
            ) from exn
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            return tarfile.TarFile(fileobj=self._file, mode="r")  # parses the first header: a non-tar fails here
        except Exception as exn:
            self.close()
            raise self._read_error(exn, f"#{index}") from exn

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
        start, stop = int(self._offsets[index]), int(self._offsets[index + 1])
        if start >= self._size:
            raise DataError(
                f"the shard has {self._size} bytes but the index puts sample #{index} at byte {start}: it is "
                "truncated, or the index is stale; rewrite the shard or rebuild the index with "
                "`dltrain shards index URLS...` (or use on_error='skip')",
                url=self.url,
                key=self._where(index),
            )
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
        except _TarDamage as exn:
            raise DataError(
                f"the shard is damaged {exn}; rewrite the shard (and rebuild the index if the shard was rewritten "
                "after indexing, `dltrain shards index URLS...`), or use on_error='skip' to skip the samples that "
                "cannot be read",
                url=self.url,
                key=sample.get("__key__") or self._where(index),
            ) from exn
        except _Mismatch as exn:
            raise DataError(
                f"the index does not match the shard: sample #{index} should be the tar members at bytes "
                f"{start}..{stop}, but {exn}; the shard changed after it was indexed (rebuild the index with "
                "`dltrain shards index URLS...`) or it is corrupt (rewrite it; on_error='skip' skips the sample)",
                url=self.url,
                key=sample.get("__key__") or self._where(index),
            ) from exn
        except Exception as exn:
            raise self._read_error(exn, sample.get("__key__") or self._where(index)) from exn
        sample["__url__"] = self.url
        return sample

    def _read_fast(self, start: int, stop: int) -> dict[str, Any] | None:
        """The sample in bytes ``[start, stop)`` from one read, parsing the headers here; ``None`` for anything
        but plain members, directories and PAX headers with ordinary records, or any doubt (a bad checksum, a
        range that does not end on a member): `_read` then parses it with `tarfile`, its checks and messages.

        Why: `tarfile` parses each header in Python objects with several reads; on 32x32 PNG samples (two
        members, each behind a PAX header) that was ~100 µs per sample, as much as the PNG decode.
        """
        buf = os.pread(self._file.fileno(), stop - start, start)
        if len(buf) != stop - start or len(buf) % tarfile.BLOCKSIZE:
            return None
        sample: dict[str, Any] = {}
        headers: list[int] = []  # block numbers of the headers read, checksummed at the end
        pax: dict[bytes, bytes] | None = None  # the records of a PAX header, for the member after it
        pos = 0
        while pos < len(buf):
            header = buf[pos : pos + tarfile.BLOCKSIZE]
            size = _octal(header[124:136])
            if size is None:
                return None
            headers.append(pos // tarfile.BLOCKSIZE)
            kind = header[156:157]
            if pax is not None and b"size" in pax:
                size = _octal(pax[b"size"], base=10)
                if size is None:
                    return None
            data = pos + tarfile.BLOCKSIZE
            pos = data + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if pos > len(buf):
                return None
            if kind == tarfile.XHDTYPE:
                if pax is not None:
                    return None
                pax = _pax_records(buf[data : data + size])
                if pax is None:
                    return None
                continue
            try:
                name = _nts(header[:100])
                prefix = _nts(header[345:500])
                if pax is not None and b"path" in pax:
                    name, prefix = pax[b"path"].decode("utf-8"), ""
            except UnicodeDecodeError:
                return None
            pax = None
            if prefix:
                name = prefix + "/" + name
            if kind == tarfile.AREGTYPE and name.endswith("/"):
                continue  # an old-style directory
            if kind not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                            tarfile.FIFOTYPE):
                    continue  # not grouped into samples, as in `_read`
                return None  # GNU long names, sparse files, global PAX headers: tarfile's job
            if not _grouped_name(name):
                continue
            base, suffix = tariterators.base_plus_ext(name)
            if base is None:
                continue
            if sample.setdefault("__key__", base) != base:
                return None
            suffix = suffix.lower()
            if suffix in sample:
                return None
            sample[suffix] = buf[data : data + size]
        if pax is not None or "__key__" not in sample:
            return None
        for block in headers:
            header = buf[block * tarfile.BLOCKSIZE : (block + 1) * tarfile.BLOCKSIZE]
            if not _checksum_ok(header):
                return None
        return sample

    def _read(self, tar: tarfile.TarFile, start: int, stop: int, sample: dict[str, Any]) -> None:
        pos = start
        while pos < stop:
            tar.fileobj.seek(pos)  # type: ignore[union-attr]
            try:
                info = tar.tarinfo.fromtarfile(tar)  # one member, with its PAX/GNU extension headers
            except tarfile.HeaderError as exn:
                if pos + tarfile.BLOCKSIZE > self._size:
                    raise _TarDamage(pos, "the data ends inside this tar header: the shard was cut short") from exn
                raise _Mismatch(f"byte {pos} holds no tar header ({exn})") from exn
            pos = tar.offset  # where the next header starts
            if not _grouped(info):
                continue
            prefix, suffix = tariterators.base_plus_ext(info.name)
            if prefix is None:
                continue
            key = sample.setdefault("__key__", prefix)
            if prefix != key:
                raise _Mismatch(f"they hold members of two samples ({key!r} and {prefix!r})")
            suffix = suffix.lower()
            if suffix in sample:
                raise DataError(f"duplicate field {suffix!r} in one sample", url=self.url, key=key)
            if info.offset_data + info.size > self._size:
                raise _cut_short(info, self._size)
            file = tar.extractfile(info)
            assert file is not None  # a regular member
            sample[suffix] = file.read()
        if pos != stop or "__key__" not in sample:
            raise _Mismatch(f"its members end at byte {pos}")

    def _where(self, index: int) -> str:
        # Only on errors: name the sample before this one, as the forward reader does, if it can be read.
        previous = None
        if index > 0 and self._tar is not None:
            with contextlib.suppress(Exception):
                self._tar.fileobj.seek(int(self._offsets[index - 1]))  # type: ignore[union-attr]
                previous = tariterators.base_plus_ext(self._tar.tarinfo.fromtarfile(self._tar).name)[0]
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

