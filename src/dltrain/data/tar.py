"""The tar walker and damage detection: strict walks over a shard's tar headers, counting its samples.

Samples are grouped from tar members as webdataset groups them (a new sample at each change of the name's part
before the first dot of its file name; webdataset's meta files are dropped); tar headers are parsed by Python's
`tarfile`, or by `parse_sample` where a sample's byte range is known.

Damaged shards
--------------
Python's `tarfile` iteration (and webdataset's, built on it) ends quietly at a header that does not parse, at a
zero block and wherever the file ends, so a damaged shard would read as a shorter one. Every walk over tar headers
here (counting, `dltrain.data.index.build_index`, forward readers) is strict instead: a tar ends with a zero block
followed by nothing but zeros (the end-of-archive marker and the padding to a record), and anything else is damage,
reported with the shard, the byte offset and the last sample key read before it: a header that does not parse (bad
checksum), a member whose data runs past the end of the file, a file cut at a member boundary (no end-of-archive
marker), a zero block with more data after it.

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
import lzma
import re
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from dltrain._compat import tar_next_offset, tar_read_member_at, wds_drops_meta_member, wds_split_name
from dltrain._storage import StorageError
from dltrain.data.urls import open_shard, read_at, seekable
from dltrain.errors import DataError

__all__ = ["count_samples"]

# webdataset drops these files when it groups tar members into samples; counting must drop the same ones.
_SKIP_META = re.compile(r"__[^/]*__($|/)")


class TarDamage(Exception):
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


def cut_short(info: tarfile.TarInfo, end: int) -> TarDamage:
    return TarDamage(
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


class TarWalker:
    """A strict walk over the members of one tar file: it ends at a proper end of archive, or raises `TarDamage`.

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
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
        except Exception as exn:
            raise TarDamage(0, f"no tar header at the start of the file ({type(exn).__name__}: {exn})") from exn
        self._first = True
        self._last: tarfile.TarInfo | None = None  # the last member parsed

    @classmethod
    def open(cls, url: str) -> tuple[TarWalker, Any]:
        """A walker over the shard at ``url`` and the stream to close after it (OSError if it cannot be opened)."""
        stream, size = open_shard(url, positioned=seekable(url))
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
            pos = tar_next_offset(self.tar)  # where the next header starts (set by the parse)
            yield info

    def read_data(self, info: tarfile.TarInfo) -> bytes:
        """The payload of the member just yielded by `members`."""
        try:
            file = self.tar.extractfile(info)
            assert file is not None  # a regular member
            return file.read()
        except tarfile.ReadError as exn:
            if "unexpected end of data" in str(exn):
                raise cut_short(info, self.file.tell()) from exn
            raise TarDamage(info.offset, f"cannot read the data of member {info.name!r} ({exn})") from exn
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
        except Exception as exn:
            raise TarDamage(info.offset, f"cannot read the data of member {info.name!r} ({type(exn).__name__}: "
                             f"{exn})") from exn

    def _goto(self, pos: int) -> int:
        """Move to ``pos``; returns the position reached (less where the data ends before)."""
        if self.size is not None:
            self.file.seek(min(pos, self.size))
            return min(pos, self.size)
        return int(self.file.seek(pos))

    def _header(self, pos: int) -> tarfile.TarInfo | None:
        """The member whose header starts at ``pos`` (None: a zero block there); raises `TarDamage`."""
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
                        raise cut_short(last, reached)
                    raise TarDamage(pos, f"the data ends at byte {reached}, before this header and without the "
                                          "end-of-archive marker (two zero blocks): the shard was cut short")
                info = tar_read_member_at(self.tar, None)
        except TarDamage:
            raise
        except tarfile.HeaderError as exn:
            block = self._block_at(pos)
            if block is not None and len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0"):
                return None  # a zero block
            if block == b"":
                raise TarDamage(pos, "the data ends here, without the end-of-archive marker (two zero blocks): "
                                      "the shard was cut short") from exn
            if block is not None and len(block) < tarfile.BLOCKSIZE:
                raise TarDamage(pos, "the data ends inside this tar header: the shard was cut short") from exn
            raise TarDamage(pos, f"no valid tar header here ({exn})", resume=pos + tarfile.BLOCKSIZE) from exn
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
        except Exception as exn:  # a header extension that does not parse, a decompression error
            raise TarDamage(pos, f"cannot read a tar header here ({type(exn).__name__}: {exn})",
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
                    raise TarDamage(pos, f"a zero block (the end-of-archive marker) before the end of the data: "
                                          f"more data follows at byte {more}", resume=more - more % tarfile.BLOCKSIZE)
                at += len(chunk)
        except TarDamage:
            raise
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
        except Exception as exn:
            raise TarDamage(at, f"cannot read the data here ({type(exn).__name__}: {exn})") from exn

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

    def feed(self, prefix: str | None) -> bool:
        """Count a member of sample key ``prefix``; True when it starts a new sample."""
        if prefix is not None and prefix != self.key:
            self.key = prefix
            self.count += 1
            return True
        return False


def grouped(info: tarfile.TarInfo) -> bool:
    """Whether webdataset's tar iteration hands this member on to sample grouping (a regular, non-meta file)."""
    return info.isreg() and grouped_name(info.name)


def grouped_name(name: str) -> bool:
    """`grouped` for a regular file of this name."""
    if _SKIP_META.match(name):
        return False
    return not wds_drops_meta_member(name)


class _Scan:
    """What one walk over a shard's headers found.

    Samples, their offsets, the first damage, and (``members``) each sample's key and grouped members
    ``(field, data offset, size)``.
    """

    def __init__(self, members: bool = False) -> None:
        self.counter = _KeyCounter()
        self.offsets: list[int] = []
        self.end = 0  # where the data of the last sample ends
        self.damage: TarDamage | None = None
        self.last_key: str | None = None  # the last sample key read before the damage
        self.before = 0  # samples seen before the damage (the last of them may be incomplete)
        self.collect = members  # cleared when a sample cannot be described (a field twice)
        self.keys: list[str] = []
        self.members: list[list[tuple[str, int, int]]] = []

    def run(self, walker: TarWalker, *, resync: bool) -> _Scan:
        """Count; at damage stop, or (``resync``) count on from the next valid header to know what is lost."""
        start = 0
        while True:
            try:
                for info in walker.members(start):
                    if not grouped(info):
                        continue
                    key, field = wds_split_name(info.name)
                    if key is None:
                        continue
                    if self.counter.feed(key):
                        self.offsets.append(info.offset)
                        if self.collect:
                            self.keys.append(key)
                            self.members.append([])
                    if self.collect:
                        field = field.lower()
                        sample = self.members[-1]
                        if any(f == field for f, _, _ in sample):
                            self.collect = False  # readers parse it, and say what is wrong
                        sample.append((field, info.offset_data, info.size))
                    self.end = tar_next_offset(walker.tar)  # past this member's data
                return self
            except TarDamage as exn:
                if self.damage is None:
                    # A copy without the traceback: kept, that would hold every frame up to the caller's (a loader's).
                    self.damage = TarDamage(exn.offset, exn.what, exn.resume)
                    self.last_key, self.before = self.counter.key, self.counter.count
                found = walker.resync(exn.resume) if resync and exn.resume is not None else None
                if found is None:
                    return self
                start = found


class SampleTable:
    """Where each sample's fields lie in one shard: a sample is read with one positioned read, no header parsed.

    These are the index's ``keys``, ``fields``, ``layout``, ``members`` and ``check`` (see `dltrain.data.index`).

    Attributes:
        keys: each sample's ``__key__``.
        fields: the distinct field tuples of the shard's samples.
        layout: per sample, its field tuple in ``fields`` (``None``: every sample has ``fields[0]``).
        members: per sample, per field: the data's offset from the sample's first byte, and its size, flat.
        check: per sample, the CRC-32 of its bytes outside its fields' data (tar headers, PAX records, padding,
            members not grouped into samples): a read whose check differs does not trust the table (the shard
            changed or is damaged) and parses the headers instead, with their errors.
    """

    __slots__ = ("check", "fields", "keys", "layout", "members", "starts")

    def __init__(self, keys: list[str], fields: list[tuple[str, ...]], layout: list[int] | None,
                 members: list[int], check: list[int]) -> None:
        self.keys, self.fields, self.layout, self.members, self.check = keys, fields, layout, members, check
        # Where each sample's pairs start in ``members`` (a constant stride when there is one layout).
        self.starts: list[int] | None = None
        if layout is not None:
            sizes = [2 * len(fields[k]) for k in layout]
            self.starts = [0]
            for n in sizes:
                self.starts.append(self.starts[-1] + n)

    def __len__(self) -> int:
        return len(self.keys)

    def sample(self, i: int) -> tuple[tuple[str, ...], int]:
        """(fields of sample ``i``, where its (offset, size) pairs start in ``members``)."""
        if self.layout is None:
            fields = self.fields[0]
            return fields, 2 * len(fields) * i
        assert self.starts is not None
        return self.fields[self.layout[i]], self.starts[i]

    def valid(self, offsets: Sequence[int]) -> bool:
        """Whether the table is whole for these sample offsets (the index could be edited by hand)."""
        n = len(self.keys)
        if len(offsets) != n + 1 or len(self.check) != n:
            return False
        if self.layout is None:
            return len(self.fields) == 1 and len(self.members) == 2 * len(self.fields[0]) * n
        return len(self.layout) == n and all(0 <= k < len(self.fields) for k in self.layout) and (
            self.starts is not None and self.starts[-1] == len(self.members))


def header_check(read: Callable[[int, int], bytes], stop: int, pairs: Sequence[int]) -> int:
    """CRC-32 of the bytes ``[0, stop)`` of a sample outside its fields' data, ``pairs`` = (offset, size), ...

    relative to the sample's start, in order; ``read(a, b)`` gives bytes ``[a, b)``.
    """
    crc, pos = 0, 0
    for j in range(0, len(pairs), 2):
        crc = zlib.crc32(read(pos, pairs[j]), crc)
        pos = pairs[j] + pairs[j + 1]
    return zlib.crc32(read(pos, stop), crc)


def _table(scan: _Scan, file: Any) -> SampleTable | None:
    """The `SampleTable` of a scan of a local shard open as ``file`` (reads only the bytes outside the data)."""
    if not scan.collect or not scan.keys:
        return None
    bounds = [*scan.offsets, scan.end]
    fields: dict[tuple[str, ...], int] = {}
    layout: list[int] = []
    members: list[int] = []
    check: list[int] = []
    for i, sample in enumerate(scan.members):
        start, stop = bounds[i], bounds[i + 1]
        layout.append(fields.setdefault(tuple(f for f, _, _ in sample), len(fields)))
        pairs = [x for _, offset, size in sample for x in (offset - start, size)]
        members += pairs

        def read(a: int, b: int, start: int = start) -> bytes:
            return read_at(file, start + a, b - a)

        check.append(header_check(read, stop - start, pairs))
    return SampleTable(scan.keys, list(fields), None if len(fields) == 1 else layout, members, check)


class ShardScan(NamedTuple):
    """What `scan_shard` found in one shard."""

    samples: int
    offsets: list[int] | None
    """``count + 1`` sample byte offsets (local uncompressed shards without damage), else None."""
    table: SampleTable | None
    """Where each sample's fields lie (asked for with ``members=True``, where there are offsets)."""


def _damage_message(damage: TarDamage, last_key: str | None) -> str:
    after = f"after sample {last_key!r}" if last_key is not None else "before its first sample"
    return f"the shard is damaged at byte {damage.offset}, {after}: {damage.what}"


REWRITE = "Rewrite the shard (from its source), or leave it out of the URL list"


def scan_shard(
    url: str,
    *,
    skip_damaged: bool = False,
    warn: Callable[[str], None] | None = None,
    advice: str = REWRITE,
    members: bool = False,
) -> ShardScan:
    """Samples, sample offsets and (``members``) the `SampleTable` of one shard from its tar headers.

    Offsets and table only where `seekable`.

    A damaged shard raises `DataError` (its message ends with ``advice``), or with ``skip_damaged`` warns and
    counts every sample it can find, with no offsets: readers then read it forward up to the damage and count the
    rest as skipped.
    """
    scan = _Scan(members=members and seekable(url))
    table = None
    try:
        walker, stream = TarWalker.open(url)
    except TarDamage as exn:  # the first header
        scan.damage = TarDamage(exn.offset, exn.what)
    except FileNotFoundError as exn:
        raise DataError("shard not found; check the path and the brace range of the URL pattern", url=url) from exn
    except StorageError:  # a store that did not answer: not damage, never skipped
        raise
    except Exception as exn:
        raise DataError(
            f"cannot count the samples of the shard ({type(exn).__name__}: {exn}); is it missing, corrupt or "
            "truncated? Rewrite the shard or leave it out",
            url=url,
        ) from exn
    else:
        try:
            scan.run(walker, resync=skip_damaged)
            if scan.damage is None:
                table = _table(scan, stream)
        except StorageError:  # a store that did not answer: not damage, never skipped
            raise
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
        return ShardScan(scan.counter.count, [*scan.offsets, scan.end] if seekable(url) else None, table)
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
    return ShardScan(count, None, None)


def count_samples(url: str) -> int:
    """Number of samples in one shard, from its tar headers (payloads are not decoded or kept).

    Raises:
        DataError: the shard is missing, or damaged (see `dltrain.data.index.build_index`).
    """
    return scan_shard(url).samples


class Mismatch(Exception):
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
    """Tarfile's (unsigned) header checksum: the sum of the header's bytes, the checksum field counted as spaces.

    The sum comes from adler32, whose low half is ``(1 + sum of bytes) mod 65521``: one C call instead of a
    Python loop over 512 bytes. Mod 65521 it misses only changes to the sum by a multiple of 65521, which takes
    at least 257 changed bytes; any `parse_sample` declines goes through tarfile's own check anyway.
    """
    stored = _octal(header[148:156])
    if stored is None:
        return False
    field = sum(header[148:156])
    return (1 + stored - 256 + field) % 65521 == zlib.adler32(header) & 0xFFFF


# PAX records `parse_sample` leaves to tarfile: other charsets, sparse files.
_PAX_DEFER = (b"hdrcharset", b"GNU.sparse")


def _pax_records(data: bytes) -> dict[bytes, bytes] | None:
    r"""The ``"LEN key=value\n"`` records of a PAX header; ``None`` if malformed or holding a deferred key."""
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



def parse_sample(buf: bytes) -> dict[str, Any] | None:
    """The sample ``{"__key__", field: bytes, ...}`` whose tar members are exactly ``buf``, headers parsed here.

    ``buf`` is one read of the sample's indexed byte range. ``None`` for anything but plain members, directories
    and PAX headers with ordinary records, or any doubt (a bad checksum, a range that does not end on a member):
    the caller then parses it with `tarfile`, its checks and messages.

    Why: `tarfile` parses each header in Python objects with several reads; on 32x32 PNG samples (two members,
    each behind a PAX header) that was ~100 µs per sample, as much as the PNG decode.
    """
    if len(buf) % tarfile.BLOCKSIZE:
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
                continue  # not grouped into samples, as tarfile's path does
            return None  # GNU long names, sparse files, global PAX headers: tarfile's job
        if not grouped_name(name):
            continue
        base, suffix = wds_split_name(name)
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
