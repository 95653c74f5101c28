"""Damaged tar shards: nothing lost silently, with or without an index.

Damage kinds, each at a random place of a random shard of a random set of shards: a truncation at a sample
boundary (the end-of-archive marker included, when the cut is after the last sample), a truncation inside a sample
(inside a member header or its data), a corrupt member header mid-shard (garbage or zeros), zero blocks inserted
mid-shard (one, or a whole end-of-archive marker).

Read four ways: without an index (the tar headers are scanned), with an index (version 3: every sample is read by
one positioned read of its byte range, its fields cut out where the index says, once the bytes around them check),
with a version 2 index (offsets only: the headers in the range are parsed) and with a version 1 index (no offsets:
shards are read forward), with 0 and 2 loader workers; and through `build_index` and ``dltrain shards index``.

- ``on_error="raise"``: a `DataError` naming the shard, the byte offset of the damage and the key of the last sample
  read before it.
- ``on_error="skip"``: every intact sample is read exactly once, and the skipped count equals the samples lost.
  What is lost: reading by offsets loses the samples whose byte range holds damage (a cut loses every sample after
  it). Reading forward loses the sample whose members were being read when the damage came (its remaining members
  may be the ones destroyed) and the rest of the shard. A scan counts the samples after a corrupt header or a zero
  block by finding the next valid header; after a cut there is nothing to count: the sample being read counts as
  the one lost (how many more were cut off cannot be known without an index).

Seeds: each test draws its shards and damage from a seed derived from ``DLTRAIN_TEST_SEED`` (drawn unless set,
tests/helpers/seeds.py) and names of its own; every assertion message prints it, and a failure's report prints
the command that replays it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import gzip
import io
import json
import random
import subprocess
import sys
import tarfile
import warnings
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from dltrain.cli import main
from dltrain.data import DataSkipWarning, StreamingDataset, build_index, count_samples, write_shards
from dltrain.errors import DataError
from tests.helpers.seeds import base_seed, seed_for
from tests.helpers.shards import ShardSet, as_list, epoch_keys, key_of, make_shards

pytestmark = pytest.mark.randomized  # every test draws from _seed(...)
KINDS = ["cut-boundary", "cut-inside", "corrupt-header", "zero-block"]
MODES = ["scan", "index", "index-v2", "index-v1"]
REPO = Path(__file__).resolve().parents[2]


def _seed(*parts: object) -> int:
    return seed_for(__name__, *parts)


def _replay(seed: int) -> str:
    return f"[seed {seed}; replay with DLTRAIN_TEST_SEED={base_seed()}]"


@dataclass
class Member:
    name: str
    key: str
    sample: int  # position of its sample in the shard
    offset: int  # header
    data: int  # first data byte
    size: int


@dataclass
class Damage:
    """One damaged shard and what each way of reading it must give."""

    kind: str
    shard: int
    path: str
    keys: list[str]  # the shard's sample keys, in order
    at: int  # byte offset the error names
    in_progress: int  # the sample whose members were being read when the damage came (its header was read)
    seek_lost: set[int]  # samples lost when read by offsets
    scan_count: int  # samples a scan counts (with on_error="skip")
    what: str

    @property
    def last_key(self) -> str:
        return self.keys[self.in_progress]

    def lost(self, mode: str) -> set[int]:
        if mode in ("index", "index-v2"):
            return self.seek_lost
        count = len(self.keys) if mode == "index-v1" else self.scan_count
        return set(range(self.in_progress, count))

    def count(self, mode: str) -> int:
        return self.scan_count if mode == "scan" else len(self.keys)

    def expected(self, shards: ShardSet, mode: str) -> Counter[str]:
        """The keys read, each once: a scan after a cut does not know the samples cut off (they are not read or
        counted: its message says so)."""
        return Counter(k for s, ks in enumerate(shards.keys) for i, k in enumerate(ks)
                       if s != self.shard or (i < self.count(mode) and i not in self.lost(mode)))


def _members(path: str) -> list[Member]:
    out: list[Member] = []
    with tarfile.open(path) as tar:
        for info in tar.getmembers():
            key = info.name.split(".", 1)[0]
            sample = out[-1].sample + (key != out[-1].key) if out else 0
            out.append(Member(info.name, key, sample, info.offset, info.offset_data, info.size))
    return out


def _damage(shards: ShardSet, kind: str, rng: random.Random) -> Damage:
    """Damage one random shard (with at least 2 samples) in place, at a random place."""
    shard = rng.choice([s for s, ks in enumerate(shards.keys) if len(ks) >= 2])
    path, keys = shards.paths[shard], shards.keys[shard]
    members = _members(path)
    n = len(keys)
    starts = [next(m.offset for m in members if m.sample == i) for i in range(n)]
    data = Path(path).read_bytes()
    end = members[-1].data + -(-members[-1].size // 512) * 512  # where the end-of-archive marker starts
    ranges = [(starts[i], starts[i + 1] if i + 1 < n else end) for i in range(n)]
    if kind == "cut-boundary":
        i = rng.randint(1, n)  # n: only the end-of-archive marker is cut off
        cut = ranges[i][0] if i < n else end
        Path(path).write_bytes(data[:cut])
        at, limit, what = cut, cut, f"cut at the start of sample {i} of {n} (byte {cut})"
        seek_lost = set(range(i, n))
    elif kind == "cut-inside":
        m = rng.choice([m for m in members if m.sample >= 1])
        cut = rng.randint(m.offset + 1, m.data + m.size - 1)  # inside its header or its data, not the padding
        Path(path).write_bytes(data[:cut])
        at, limit, what = m.offset, cut, f"cut inside member {m.name} at byte {cut}"
        seek_lost = set(range(m.sample, n))
    elif kind == "corrupt-header":
        m = rng.choice(members[1:])
        junk = bytes(512) if rng.random() < 0.3 else rng.randbytes(512)
        Path(path).write_bytes(data[: m.offset] + junk + data[m.offset + 512 :])
        at, limit, what = m.offset, m.offset, f"header of {m.name} at byte {m.offset} overwritten"
        seek_lost = {m.sample}
    else:
        m = rng.choice(members[1:])
        blocks = rng.choice([1, 2])
        Path(path).write_bytes(data[: m.offset] + bytes(512 * blocks) + data[m.offset :])
        at, limit, what = m.offset, m.offset, f"{blocks} zero blocks inserted before {m.name} at byte {m.offset}"
        seek_lost = set(range(m.sample, n))
    in_progress = [mm for mm in members if mm.offset + 512 <= limit][-1].sample
    scan_count = in_progress + 1 if kind.startswith("cut") else n
    return Damage(kind, shard, path, keys, at, in_progress, seek_lost, scan_count, what)


def _setup(tmp_path: Path, kind: str, mode: str, seed: int) -> tuple[ShardSet, Damage]:
    rng = random.Random(seed)
    shards = make_shards(tmp_path, num_shards=rng.randint(2, 4), min_size=2, max_size=14, seed=rng.randrange(10**6))
    damage = _damage(shards, kind, rng)
    if mode == "scan":
        shards.index_path.unlink()
    elif mode in ("index-v1", "index-v2"):
        index = json.loads(shards.index_path.read_text())
        index["version"] = int(mode[-1])
        for entry in index["shards"]:
            for name in ("keys", "fields", "layout", "members", "check") + (("offsets",) if mode == "index-v1" else ()):
                entry.pop(name, None)
        shards.index_path.write_text(json.dumps(index))
    return shards, damage


def _dataset(shards: ShardSet, on_error: str, seed: int, shuffle: bool) -> StreamingDataset:
    return StreamingDataset(shards.pattern, batch_size=random.Random(seed).randint(2, 7), map=key_of,
                            collate_fn=as_list, shuffle=shuffle, shuffle_buffer=8, seed=seed, training=False,
                            on_error=on_error)  # type: ignore[arg-type]


def _raised(run: Callable[[], object]) -> DataError | None:
    """The DataError of ``run()``, without its traceback (see tests/data/test_bad_data.py: a traceback keeps a
    loader's persistent workers alive in a reference cycle); None if nothing was raised."""
    try:
        run()
    except DataError as exn:
        exn.__traceback__ = None
        return exn
    return None


@pytest.mark.filterwarnings("ignore:no shard index")
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_damage_raises_or_is_skipped_and_counted(tmp_path: Path, kind: str, mode: str, workers: int) -> None:
    _check_damage(tmp_path, kind, mode, workers, _seed(kind, mode, workers))


# Draws that failed once, replayed in every run. 1597378642: a zero block inside sample 0 of a shard read by
# offsets (index v2) under 2 workers; the worker whose window held sample 1 (misread after the shifted bytes) sent
# its error ahead of the batch with sample 0, so the error named byte 3072 instead of the damage at byte 1024.
PINNED = [("zero-block", "index-v2", 2, 1597378642)]


@pytest.mark.filterwarnings("ignore:no shard index")
@pytest.mark.parametrize(("kind", "mode", "workers", "seed"), PINNED)
def test_damage_draws_that_failed_once(tmp_path: Path, kind: str, mode: str, workers: int, seed: int) -> None:
    _check_damage(tmp_path, kind, mode, workers, seed)


def _check_damage(tmp_path: Path, kind: str, mode: str, workers: int, seed: int) -> None:
    shards, damage = _setup(tmp_path, kind, mode, seed)
    lost = damage.lost(mode)
    where = f"{_replay(seed)} {damage.what}, shard {damage.shard} ({len(damage.keys)} samples), {mode}, {workers} workers"

    # on_error="raise": the error names the shard, the byte and the last key read (in order: the first bad sample).
    err = _raised(lambda: epoch_keys(_dataset(shards, "raise", seed, shuffle=False).loader(num_workers=workers), 0))
    if not lost:  # only the end-of-archive marker was cut off, and the samples were read by offsets: none is lost
        assert err is None, f"{where}: {err}"
    else:
        assert err is not None, f"{where}: no DataError"
        assert err.url == damage.path and damage.path in str(err), f"{where}: {err}"
        assert f"byte {damage.at}" in str(err), f"{where}: {err}"
        assert repr(damage.last_key) in str(err), f"{where}: {err}"

    # on_error="skip": every intact sample exactly once, the lost ones counted.
    # A scan finds the damage before the epoch: it says so, and what it will skip.
    with pytest.warns(UserWarning, match=f"byte {damage.at}") if mode == "scan" else contextlib.nullcontext():
        ds = _dataset(shards, "skip", seed, shuffle=True)
        assert ds.counts[damage.shard] == damage.count(mode), where
    loader = ds.loader(num_workers=workers)
    if lost:
        with pytest.warns(DataSkipWarning, match=f"skipped {len(lost)} bad samples"):
            batches = epoch_keys(loader, 0)
    else:
        batches = epoch_keys(loader, 0)
    read = Counter(k for b in batches for k in b)
    expected = damage.expected(shards, mode)
    assert read == expected, f"{where}: lost {sorted(set(expected) - set(read))}, extra {sorted(set(read) - set(expected))}"
    assert loader.skipped == len(lost) == loader.epoch_report()["skipped"], f"{where}: skipped {loader.skipped}"
    if lost:
        assert any(f"byte {damage.at}" in e for e in loader.epoch_report()["errors"]), f"{where}: {loader.epoch_report()}"


@pytest.mark.parametrize("kind", KINDS)
def test_build_index_and_cli_refuse_a_damaged_shard(tmp_path: Path, kind: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    seed = _seed(kind, "build_index")
    shards, damage = _setup(tmp_path, kind, "scan", seed)
    where = f"{_replay(seed)} {damage.what}, shard {damage.shard} ({len(damage.keys)} samples)"
    with pytest.raises(DataError) as info:
        build_index(shards.pattern)
    err = info.value
    assert err.url == damage.path, f"{where}: {err}"
    for part in (f"byte {damage.at}", repr(damage.last_key), "rewrite the shard"):
        assert part.lower() in str(err).lower(), f"{where}: {part!r} not in {err}"
    assert not shards.index_path.exists(), f"{where}: an index was written"
    # The same through the CLI, and through a pipe: URL (the forward scan).
    assert main(["shards", "index", shards.pattern]) == 1, where
    msg = capsys.readouterr().err
    assert damage.path in msg and f"byte {damage.at}" in msg and repr(damage.last_key) in msg, f"{where}: {msg}"
    assert not shards.index_path.exists(), f"{where}: an index was written"


def test_build_index_names_every_damaged_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = _seed("several")
    rng = random.Random(seed)
    shards = make_shards(tmp_path, num_shards=4, min_size=2, max_size=9, seed=seed)
    bad = sorted(rng.sample(range(4), 2))
    for s in bad:  # cut before the end of the last member's data (a cut in the zeros after it loses nothing)
        last = _members(shards.paths[s])[-1]
        path = Path(shards.paths[s])
        path.write_bytes(path.read_bytes()[: rng.randrange(1, last.data + last.size)])
    shards.index_path.unlink()
    assert main(["shards", "index", shards.pattern]) == 1
    msg = capsys.readouterr().err
    assert "2 of 4 shards cannot be indexed" in msg, f"{_replay(seed)}: {msg}"
    assert [p for p in shards.paths if p in msg] == [shards.paths[s] for s in bad], f"{_replay(seed)}: {msg}"
    assert not shards.index_path.exists()


@pytest.mark.filterwarnings("ignore:no shard index")
@pytest.mark.parametrize("kind", KINDS)
def test_streamed_and_compressed_shards_find_the_same_damage(tmp_path: Path, kind: str) -> None:
    # pipe: URLs and compressed shards are walked forward (payloads read, not seeked over), with the same checks.
    seed = _seed(kind, "stream")
    shards, damage = _setup(tmp_path, kind, "scan", seed)
    where = f"{_replay(seed)} {damage.what}, shard {damage.shard} ({len(damage.keys)} samples)"
    gz = Path(damage.path + ".gz")
    gz.write_bytes(gzip.compress(Path(damage.path).read_bytes()))
    for url in (f"pipe:cat {damage.path}", str(gz)):
        with pytest.raises(DataError) as info:
            count_samples(url)
        for part in (f"byte {damage.at}", repr(damage.last_key), url):
            assert part in str(info.value), f"{where}: {part!r} not in {info.value}"
    # Skipped and counted as for a local file read without an index (a scan counts on past a corrupt header).
    urls = [f"pipe:cat {p}" for p in shards.paths]
    with pytest.warns(UserWarning, match=f"byte {damage.at}"):
        ds = StreamingDataset(urls, batch_size=3, map=key_of, collate_fn=as_list, seed=seed, training=False,
                              on_error="skip")
        assert ds.counts[damage.shard] == damage.count("scan"), where
    loader = ds.loader(num_workers=0)
    lost = damage.lost("scan")
    with pytest.warns(DataSkipWarning, match=f"skipped {len(lost)} bad samples"):
        read = Counter(k for b in epoch_keys(loader, 0) for k in b)
    assert read == damage.expected(shards, "scan"), where


def test_compressed_shard_cut_or_corrupt_is_damage(tmp_path: Path) -> None:
    rng = random.Random(_seed("gzip"))
    (path,) = write_shards(({"__key__": f"g{i}", "bin": rng.randbytes(rng.randrange(3000))} for i in range(20)),
                           str(tmp_path / "g-%d.tar"), index=False)
    data = gzip.compress(Path(path).read_bytes())
    cut = rng.randrange(20, len(data) - 20)
    for name, damaged in (("cut", data[:cut]), ("flipped", data[:cut] + bytes([data[cut] ^ 0xFF]) + data[cut + 1 :])):
        url = tmp_path / f"{name}.tar.gz"
        url.write_bytes(damaged)
        with pytest.raises(DataError, match="the shard is damaged at byte") as info:
            count_samples(str(url))
        assert info.value.url == str(url), f"{_replay(_seed('gzip'))} {name} at {cut}: {info.value}"


def test_a_damage_error_keeps_no_reference_cycle(tmp_path: Path) -> None:
    # The error must not keep the frames above it (a loader, with its worker processes) alive until a garbage
    # collection: collected late, a DataLoader iterator stalls its workers' shutdown for seconds.
    shards, _ = _setup(tmp_path, "corrupt-header", "scan", _seed("cycle"))
    gc.disable()
    try:
        for on_error in ("raise", "skip"):
            ds = _dataset(shards, on_error, 0, shuffle=False)
            ref = weakref.ref(ds)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _raised(functools.partial(getattr, ds, "counts"))
            del ds
            assert ref() is None, f"on_error={on_error!r}: the dataset is still referenced"
    finally:
        gc.enable()


def test_cli_as_a_command_refuses_a_truncated_shard(tmp_path: Path) -> None:
    seed = _seed("cli-command")
    shards, damage = _setup(tmp_path, "cut-boundary", "scan", seed)
    proc = subprocess.run([sys.executable, "-m", "dltrain.cli", "shards", "index", shards.pattern],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    where = f"{_replay(seed)} {damage.what}: rc {proc.returncode}, {proc.stderr}"
    assert proc.returncode == 1 and damage.path in proc.stderr and f"byte {damage.at}" in proc.stderr, where
    assert not shards.index_path.exists(), where


def _tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT,
         mode: Literal["w", "w:gz"] = "w") -> None:
    with tarfile.open(path, mode, format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5 if fmt == tarfile.PAX_FORMAT else 1
            tar.addfile(info, io.BytesIO(data))


def test_intact_shards_of_other_writers_are_not_damage(tmp_path: Path) -> None:
    # No false alarms: Python's tarfile (GNU and PAX headers, gzip), GNU tar, a lone zero block for an end marker,
    # an empty payload, payloads of exactly one block, and webdataset's writer (write_shards).
    rng = random.Random(_seed("intact"))
    members = [(f"a{i:02d}.{ext}", rng.randbytes(rng.choice([0, 1, 511, 512, 513, 2000])))
               for i in range(7) for ext in ("bin", "dat")]
    _tar(tmp_path / "gnu.tar", members)
    _tar(tmp_path / "pax.tar", members, tarfile.PAX_FORMAT)
    _tar(tmp_path / "gz.tar.gz", members, mode="w:gz")
    last = _members(str(tmp_path / "gnu.tar"))[-1]
    lone = tmp_path / "lone.tar"  # the last member's data block, then a single zero block
    lone.write_bytes((tmp_path / "gnu.tar").read_bytes()[: last.data + -(-last.size // 512) * 512 + 512])
    urls = [str(tmp_path / n) for n in ("gnu.tar", "pax.tar", "gz.tar.gz", "lone.tar")]
    src = tmp_path / "src"
    src.mkdir()
    for name, data in members:
        (src / name).write_bytes(data)
    if subprocess.run(["tar", "--version"], capture_output=True).returncode == 0:
        subprocess.run(["tar", "cf", str(tmp_path / "gnutar.tar"), *sorted(n for n, _ in members)], cwd=src,
                       check=True)
        urls.append(str(tmp_path / "gnutar.tar"))
    urls += write_shards(({"__key__": f"w{i}", "bin": data} for i, (_, data) in enumerate(members)),
                         str(tmp_path / "w-%d.tar"), max_count=5, index=False)
    index = build_index(urls, path=str(tmp_path / "all.index.json"))
    assert [s["samples"] for s in index["shards"]][:5] == [7] * 5
    for url in urls:
        assert count_samples(f"pipe:cat {url}") == count_samples(url)
    ds = StreamingDataset(urls, batch_size=4, collate_fn=as_list, map=key_of, shuffle=False, training=False,
                          index=str(tmp_path / "all.index.json"))
    assert sum(len(b) for b in ds) == index["total"]
