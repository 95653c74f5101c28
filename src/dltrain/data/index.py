"""The shard index: its format, reading and writing it, where it lives, and building it from the shards.

A JSON file named ``<stem>.index.json`` in the directory of the first shard, where ``<stem>`` is the common
prefix of the shard file names without extensions, trailing digits and trailing ``-_.`` (``train-000000.tar``
.. ``train-000127.tar`` -> ``train.index.json``; ``shards.index.json`` when nothing is left)::

    {"format": "dltrain.shard-index", "version": 3, "total": 1234,
     "shards": [{"url": "train-000000.tar", "samples": 50, "offsets": [0, 3072, ..., 153600],
                 "keys": ["s0000", ...], "fields": [["cls", "png"]], "members": [1024, 1, 2048, 512, ...],
                 "check": [2831937219, ...]}, ...]}

Shards in the index's directory are named relative to it (the directory can be moved); others keep their full
URL.

``offsets`` (version 2 and later, uncompressed shards indexed or written locally) has ``samples + 1`` byte
offsets: where each sample's first tar member header starts, then where the last sample's data ends, so sample
``i`` is the members in ``[offsets[i], offsets[i + 1])``. Readers of local shards read there instead of parsing
every header before the sample; without offsets (version 1 indexes, compressed shards) they scan forward.

Version 3 adds where each sample's fields lie (`dltrain.data.tar.SampleTable`), so that a reader takes a sample
out of one read of its byte range without parsing a tar header: ``keys`` (each sample's key), ``fields`` (the
distinct field lists of the shard's samples, in tar order), ``layout`` (per sample, its list in ``fields``; absent
when there is one), ``members`` (per sample, per field: the data's offset from the sample's first byte, and its
size, flat) and ``check`` (per sample, the CRC-32 of its bytes outside the fields' data: tar headers and padding).
A read whose check differs parses the headers instead (the shard changed since it was indexed, or is damaged; the
errors are then those of a version 2 index). Shards whose samples repeat a field have no table. Older indexes
still read; ``dltrain shards index`` (`build_index`) rewrites one as version 3.

An index is written one shard per line, and read that way: the shards' names and sample counts at once, a
shard's offsets and table when a reader first needs that shard (so a first batch does not wait for every
sample's offsets to be parsed). An index laid out otherwise is parsed whole.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np

from dltrain import _storage
from dltrain.data.tar import REWRITE, SampleTable, ShardScan, scan_shard
from dltrain.data.urls import dirname, expand_urls, is_local, is_object_store, local_path, open_url
from dltrain.errors import DataError

__all__ = [
    "INDEX_FORMAT",
    "ShardLayout",
    "build_index",
    "default_index_path",
    "load_index",
    "shard_counts",
    "shard_layout",
    "write_index",
]

INDEX_FORMAT = "dltrain.shard-index"
INDEX_VERSION = 3
INDEX_SUFFIX = ".index.json"


class ShardLayout(NamedTuple):
    """What the index (or a scan) says about each shard of a URL list.

    Example:
        >>> layout = shard_layout(["data/train-000000.tar", "data/train-000001.tar"], "data/train.index.json")
        >>> layout.counts, len(layout.offsets[0])  # samples per shard; samples + 1 byte offsets
        ([10, 10], 11)
    """

    counts: list[int]
    """Samples per shard."""
    offsets: Sequence[np.ndarray | None]
    """Per shard, its ``samples + 1`` sample byte offsets (see the module docstring), ``None`` where unknown."""
    tables: Sequence[SampleTable | None]
    """Per shard, where each sample's fields lie (version 3 indexes), ``None`` where unknown."""


def _index_stem(urls: Sequence[str]) -> str:
    names = [posixpath.basename(local_path(u)).split(".", 1)[0] for u in urls]
    stem = os.path.commonprefix(names).rstrip("0123456789").rstrip("-_.")  # noqa: RUF071 (names, not paths)
    return stem or "shards"


def default_index_path(urls: str | Sequence[str]) -> str:
    """Where the index of these shards lives: ``<dir of first shard>/<stem>.index.json`` (see the module doc).

    Example:
        >>> default_index_path("data/train-{000000..000003}.tar")
        'data/train.index.json'
    """
    expanded = expand_urls(urls)
    directory = dirname(expanded[0])
    name = _index_stem(expanded) + INDEX_SUFFIX
    if is_local(expanded[0]):
        return os.path.join(directory, name)
    return f"{directory}/{name}" if directory else name


def _relative_name(url: str, index_path: str) -> str:
    if is_local(url) and is_local(index_path):
        shard_dir = os.path.abspath(os.path.dirname(local_path(url)))
        if shard_dir == os.path.abspath(os.path.dirname(local_path(index_path))):
            return os.path.basename(local_path(url))
        return url
    if posixpath.dirname(url) == posixpath.dirname(index_path):
        return posixpath.basename(url)
    return url


def make_index(
    urls: Sequence[str],
    counts: Sequence[int],
    offsets: Sequence[Sequence[int] | None],
    index_path: str,
    tables: Sequence[SampleTable | None] | None = None,
) -> dict[str, Any]:
    """The index dict of these shards (see the module docstring); ``tables``: their `SampleTable`s, if known."""
    shards: list[dict[str, Any]] = []
    for s, (url, count, offs) in enumerate(zip(urls, counts, offsets)):
        entry: dict[str, Any] = {"url": _relative_name(url, index_path), "samples": int(count)}
        if offs is not None:
            entry["offsets"] = [int(o) for o in offs]
            table = tables[s] if tables is not None else None
            if table is not None:
                entry["keys"] = list(table.keys)
                entry["fields"] = [list(f) for f in table.fields]
                if table.layout is not None:
                    entry["layout"] = list(table.layout)
                entry["members"] = list(table.members)
                entry["check"] = list(table.check)
        shards.append(entry)
    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "total": int(sum(counts)), "shards": shards}


def _table_of(entry: Mapping[str, Any], offsets: Sequence[int]) -> SampleTable | None:
    """The `SampleTable` of a version 3 index entry (None for older entries, or one that does not add up)."""
    if "keys" not in entry:
        return None
    try:
        table = SampleTable([str(k) for k in entry["keys"]], [tuple(str(f) for f in fs) for fs in entry["fields"]],
                            entry.get("layout"), list(entry["members"]), list(entry["check"]))
    except (KeyError, TypeError, ValueError):
        return None
    return table if table.valid(offsets) else None


def _index_text(index: Mapping[str, Any]) -> str:
    # One line per shard: with indent=1, json would put every offset on a line of its own.
    head = json.dumps({k: v for k, v in index.items() if k != "shards"})
    shards = ",\n  ".join(json.dumps(entry) for entry in index["shards"])
    return f'{head[:-1]},\n "shards": [\n  {shards}\n ]}}\n'


def write_index(index: Mapping[str, Any], path: str) -> None:
    """Write an index dict as JSON, atomically for local paths (readers never see half a file)."""
    text = _index_text(index)
    if is_local(path):
        local = local_path(path)
        tmp = f"{local}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, local)
    else:
        with open_url(path, "wb") as f:
            f.write(text.encode("utf-8"))


def load_index(path: str, text: str | None = None) -> dict[str, Any]:
    """Read and check an index file (local path or URL); raise `DataError` if it is not one.

    ``text``: the file's content, where the caller has read it already.
    """
    try:
        if text is None:
            with open_url(path, "rb") as f:
                text = f.read().decode("utf-8")
        index = json.loads(text)
    except (OSError, ValueError) as exn:
        raise _unreadable(path, exn) from exn
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or "shards" not in index:
        raise DataError(f"{path!r} is not a dltrain shard index; rebuild it with `dltrain shards index URLS...`")
    return index


def index_exists(path: str) -> bool:
    if is_local(path):
        return os.path.isfile(local_path(path))
    if is_object_store(path):  # a store that does not answer raises (StorageError naming the URL)
        return _storage.exists(path)
    if urlparse(path).scheme in ("http", "https"):
        try:
            with open_url(path, "rb") as f:
                f.read(1)
            return True
        except Exception:
            return False
    return False  # pipe: and friends: we cannot guess where an index lives, pass index= instead



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
        >>> build_index("data/train-{000000..000006}.tar")["total"]
        70
    """
    expanded = expand_urls(urls)
    path = path or default_index_path(expanded)
    scans: list[ShardScan] = []
    errors: list[DataError] = []
    for url in expanded:  # every shard, so that one error names all the bad ones
        try:
            scans.append(scan_shard(url, members=True))
        except DataError as exn:
            errors.append(exn)
    if len(errors) == 1:
        raise errors[0]  # an index never holds the counts of a damaged shard
    if errors:
        lines = "\n".join(f"  {exn}" for exn in errors)
        raise DataError(f"{len(errors)} of {len(expanded)} shards cannot be indexed; no index was written:\n{lines}",
                        url=errors[0].url)
    index = make_index(expanded, [c.samples for c in scans], [c.offsets for c in scans], path, [c.table for c in scans])
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
    """Samples per shard for ``urls``.

    From ``index`` (or the default index next to the shards if it exists), else by reading tar headers
    (slower; a warning says so). See `shard_layout` for the arguments.
    """
    return shard_layout(urls, index, missing_ok=missing_ok, warn=warn)[0]


def _refuse_missing(urls: Sequence[str], missing_ok: bool) -> None:
    """A DataError "not found" naming the local shards that do not exist.

    With ``missing_ok`` the scan warns about each one instead.
    """
    missing = [url for url in urls if is_local(url) and not os.path.exists(local_path(url))]
    remote = [url for url in urls if is_object_store(url)]
    if remote:  # one listing per folder of the store, not a request per shard
        found: set[str] = set()
        for folder in dict.fromkeys(posixpath.dirname(url) for url in remote):
            found.update(posixpath.basename(e["name"]) for e in _storage.listing(folder))
        missing += [url for url in remote if posixpath.basename(url) not in found]
    if not missing or missing_ok:
        return
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise DataError(f"{len(missing)} of {len(urls)} shards not found: {local_path(missing[0])!r}{more}; check the "
                    "path and the brace range of the URL pattern")


# The start of a shard's line as `_index_text` writes it: its name and sample count, read without parsing the rest.
_SHARD_HEAD = re.compile(r'\{"url": ("(?:[^"\\]|\\.)*"), "samples": (\d+)[,}]')


class _IndexEntries:
    """The shard entries of an index file: names and sample counts at once, the rest of an entry when asked for.

    Why: an index holds every sample's offsets and field table (1.2 MB for 24,000 samples), and parsing all of it
    took most of a first batch's time, though the first batch reads one or two shards. `_index_text` writes one
    shard per line, so an entry's line is parsed when a reader first needs that shard; an index laid out
    otherwise is parsed whole.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open_url(path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, ValueError) as exn:
            raise _unreadable(path, exn) from exn
        lines = text.split("\n")
        split = self._split(lines)
        if split is None:
            index = load_index(path, text)
            self.names = [str(e["url"]) for e in index["shards"]]
            self.counts = [int(e["samples"]) for e in index["shards"]]
            self._lines: list[str] = []
            self._parsed: list[Mapping[str, Any] | None] = list(index["shards"])
        else:
            self.names, self.counts, self._lines = split
            self._parsed = [None] * len(self._lines)

    def _split(self, lines: list[str]) -> tuple[list[str], list[int], list[str]] | None:
        if len(lines) < 5 or lines[1] != ' "shards": [' or lines[-2:] != [" ]}", ""]:
            return None
        try:
            head = json.loads(lines[0].removesuffix(",") + "}")
        except ValueError:
            return None
        if not isinstance(head, dict) or head.get("format") != INDEX_FORMAT:
            return None
        names, counts, raws = [], [], []
        for line in lines[2:-2]:
            raw = line.strip()
            raw = raw[:-1] if raw.endswith(",") else raw
            match = _SHARD_HEAD.match(raw)
            if match is None:
                return None
            names.append(json.loads(match.group(1)))
            counts.append(int(match.group(2)))
            raws.append(raw)
        return names, counts, raws

    def entry(self, j: int) -> Mapping[str, Any]:
        """Entry ``j`` of the index, parsed at the first call."""
        entry = self._parsed[j]
        if entry is None:
            try:
                entry = self._parsed[j] = json.loads(self._lines[j])
            except ValueError as exn:
                raise _unreadable(self.path, exn) from exn
        return entry


class _ShardDetails:
    """Per shard of a layout, its offsets and `SampleTable`.

    Known already (a scanned shard), or taken from the shard's index entry at first use (see `_IndexEntries`).
    """

    def __init__(self, path: str, urls: Sequence[str], entries: _IndexEntries | None,
                 slots: list[int | tuple[np.ndarray | None, SampleTable | None]]) -> None:
        self.path, self.urls, self.entries, self.slots = path, urls, entries, slots

    def get(self, s: int) -> tuple[np.ndarray | None, SampleTable | None]:
        slot = self.slots[s]
        if isinstance(slot, tuple):
            return slot
        assert self.entries is not None
        entry, count = self.entries.entry(slot), self.entries.counts[slot]
        offs = entry.get("offsets")
        if offs is None:
            found: tuple[np.ndarray | None, SampleTable | None] = (None, None)
        elif len(offs) != count + 1:
            raise DataError(
                f"the index {self.path!r} lists {len(offs)} offsets for {count} samples: it is damaged; rebuild it "
                "with `dltrain shards index URLS...`",
                url=self.urls[s],
            )
        else:
            found = (np.asarray(offs, dtype=np.int64), _table_of(entry, offs))
        self.slots[s] = found
        return found


class _Column(Sequence[Any]):
    """The offsets (part 0) or tables (part 1) of a `_ShardDetails`, as a read-only sequence."""

    def __init__(self, details: _ShardDetails, part: int) -> None:
        self._details, self._part = details, part

    def __len__(self) -> int:
        return len(self._details.slots)

    def __getitem__(self, s: Any) -> Any:
        if isinstance(s, slice):
            return [self[i] for i in range(len(self))[s]]
        return self._details.get(range(len(self))[s])[self._part]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))


def _unreadable(path: str, exn: Exception) -> DataError:
    return DataError(f"cannot read shard index {path!r} ({type(exn).__name__}: {exn}); rebuild it with "
                     "`dltrain shards index URLS...`")


def shard_layout(
    urls: Sequence[str],
    index: str | None = None,
    *,
    missing_ok: bool = False,
    warn: Callable[[str], None] | None = None,
) -> ShardLayout:
    """Samples per shard for ``urls`` and, where known, their byte offsets.

    Offsets are ``samples + 1`` per shard (see the module docstring). They come from ``index`` (or the default
    index next to the shards if it exists), else from reading tar headers (slower; a warning says so).

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
    by_name: dict[str, int] = {}  # -> entry number
    entries: _IndexEntries | None = None
    if index is not None or index_exists(path):
        entries = _IndexEntries(path)
        base = dirname(path)
        for j, name in enumerate(entries.names):
            by_name[name] = j
            full = os.path.join(base, name) if is_local(path) else f"{base}/{name}"
            by_name.setdefault(os.path.normpath(full) if is_local(path) else full, j)
    else:
        _refuse_missing(urls, missing_ok)  # before advice about an index for shards that are not there
        warn(
            f"no shard index at {path!r}: counting samples by reading the tar headers of {len(urls)} shards "
            "(slow for big datasets; write one with `dltrain shards index URLS...`)"
        )
    counts: list[int] = []
    slots: list[int | tuple[np.ndarray | None, SampleTable | None]] = []
    for url in urls:
        key = os.path.normpath(local_path(url)) if is_local(url) else url
        found = by_name.get(key, by_name.get(url))
        if found is None and by_name:
            found = by_name.get(posixpath.basename(local_path(url)))
            if found is None:
                warn(f"shard {url!r} is not in the index {path!r}; counting it by reading its headers")
        if found is not None and entries is not None:
            counts.append(entries.counts[found])
            slots.append(found)  # offsets and table: parsed when a reader first needs this shard
            continue
        else:
            try:
                count, offs, _ = scan_shard(url, skip_damaged=missing_ok, warn=warn, advice=(
                    f"{REWRITE}; on_error='skip' reads it up to the damage and skips and counts the samples after it"
                ))
            except DataError as exn:
                if not missing_ok:
                    raise
                warn(f"{exn}; counting it as 0 samples (on_error='skip')")
                count, offs = 0, None
        counts.append(count)
        slots.append((None if offs is None else np.asarray(offs, dtype=np.int64), None))
    details = _ShardDetails(path, list(urls), entries, slots)
    return ShardLayout(counts, _Column(details, 0), _Column(details, 1))


