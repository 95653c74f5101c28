"""Sample byte offsets in the index (version 2): written by `write_shards`, rebuilt by `build_index`, used by
`IndexedShardReader` to seek to a sample instead of parsing every tar header before it."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dltrain.data import DataSkipWarning, StreamingDataset, build_index, load_index, write_shards
from dltrain.data.shards import IndexedShardReader, ShardReader, write_index
from dltrain.errors import DataError
from tests.helpers.shards import ShardSet, as_list, epoch_keys, key_of


def _samples(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        # Uneven payloads (some over one 512-byte block), a varying set of fields, one nested key.
        sample = {"__key__": f"k{i:04d}" if i != 5 else "sub/k0005", "cls": i, "bin": bytes(rng.randrange(1500))}
        if i % 3:
            sample["json"] = {"i": i}
        yield sample


def _without_offsets(index_path: Path) -> None:
    """Rewrite an index as version 1 wrote it: no offsets."""
    index = json.loads(index_path.read_text())
    index["version"] = 1
    for entry in index["shards"]:
        entry.pop("offsets")
    index_path.write_text(json.dumps(index, indent=1) + "\n")


def _scan_all(url: str, n: int) -> list[dict]:
    reader = ShardReader(url, range(n), n)
    try:
        return [reader.get(i) for i in range(n)]
    finally:
        reader.close()


def test_write_shards_offsets_equal_build_index(tmp_path: Path) -> None:
    paths = write_shards(_samples(40), str(tmp_path / "o-%03d.tar"), max_count=9, max_size=5_000)
    written = load_index(str(tmp_path / "o.index.json"))
    assert written["version"] == 3 and len(paths) > 5  # max_size cut some shards before max_count
    for entry in written["shards"]:
        assert len(entry["offsets"]) == entry["samples"] + 1 and entry["offsets"][0] == 0
    assert build_index(paths, write=False) == written


def test_seeking_reader_gives_the_scanned_samples_in_any_order(tmp_path: Path) -> None:
    paths = write_shards(_samples(30), str(tmp_path / "s-%03d.tar"), max_count=12)
    index = load_index(str(tmp_path / "s.index.json"))
    for path, entry in zip(paths, index["shards"]):
        n = entry["samples"]
        scanned = _scan_all(path, n)
        order = list(range(n))
        random.Random(1).shuffle(order)
        reader = IndexedShardReader(path, np.asarray(entry["offsets"]), n)
        try:
            seeked = {i: reader.get(i) for i in order}
        finally:
            reader.close()
        assert [seeked[i] for i in range(n)] == scanned
        assert reader.fast_reads == n  # write_shards' members: all parsed without tarfile


def test_pax_headers_and_skipped_members_keep_offsets_exact(tmp_path: Path) -> None:
    # A float mtime makes tarfile write a PAX header before each member; directories and __meta__ files are
    # members that webdataset skips. Offsets must point at the PAX header, ranges must step over skipped members.
    path = tmp_path / "pax-000.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5
            tar.addfile(info, io.BytesIO(data))

        for i in range(6):
            if i == 3:
                d = tarfile.TarInfo("somedir")
                d.type = tarfile.DIRTYPE
                tar.addfile(d)
                add("__meta__", b"{}")
                add("__info__/a.json", b"{}")
            add(f"p{i}.cls", str(i).encode())
            add(f"p{i}.txt", b"x" * (i * 300))
        add("__tail__", b"{}")
    index = build_index([str(path)], write=False)
    entry = index["shards"][0]
    assert entry["samples"] == 6
    reader = IndexedShardReader(str(path), np.asarray(entry["offsets"]), 6)
    try:
        assert [reader.get(i) for i in reversed(range(6))][::-1] == _scan_all(str(path), 6)
    finally:
        reader.close()
    assert reader.fast_reads == 6


@pytest.mark.parametrize(
    ("fmt", "fast"),
    [(tarfile.PAX_FORMAT, True), (tarfile.USTAR_FORMAT, True), (tarfile.GNU_FORMAT, False)],
    ids=["pax-path-records", "ustar-prefix", "gnu-longname"],
)
def test_long_names_read_like_tarfile_with_or_without_the_fast_path(tmp_path: Path, fmt: int, fast: bool) -> None:
    # Names over 100 bytes: PAX writes a `path` record (here also a non-ASCII one), ustar splits them into the
    # prefix field, GNU writes an 'L' member the fast path leaves to tarfile. Same samples either way.
    path = tmp_path / "long-000.tar"
    folder = "d" * 60 + "/" + "e" * 60
    with tarfile.open(path, "w", format=fmt) as tar:
        for i in range(5):
            for ext, data in (("cls", str(i).encode()), ("txt", b"y" * (i * 700))):
                name = f"{folder}/s{i}-{'é' if fmt == tarfile.PAX_FORMAT else 'e'}{'x' * 20}.{ext}"
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    entry = build_index([str(path)], write=False)["shards"][0]
    assert entry["samples"] == 5
    reader = IndexedShardReader(str(path), np.asarray(entry["offsets"]), 5)
    try:
        got = [reader.get(i) for i in (3, 0, 4, 1, 2)]
    finally:
        reader.close()
    assert sorted(got, key=lambda s: s["__key__"]) == _scan_all(str(path), 5)
    assert got[0]["__key__"].startswith(folder) and got[0]["txt"] == b"y" * 2100
    assert reader.fast_reads == (5 if fast else 0)


def test_a_damaged_header_is_left_to_tarfile_and_reported(tmp_path: Path) -> None:
    # One flipped byte in a member name: the checksum no longer matches, the fast path declines and the tarfile
    # path reports the damage (rather than the fast path handing on a sample under a corrupted key).
    paths = write_shards(_samples(6), str(tmp_path / "c-%03d.tar"), max_count=6)
    entry = load_index(str(tmp_path / "c.index.json"))["shards"][0]
    raw = bytearray(Path(paths[0]).read_bytes())
    start = entry["offsets"][2]
    name_at = start + (512 + 512 if raw[start + 156 : start + 157] == b"x" else 0)  # past a PAX header
    raw[name_at] ^= 0x01
    Path(paths[0]).write_bytes(bytes(raw))
    reader = IndexedShardReader(paths[0], np.asarray(entry["offsets"]), 6)
    try:
        assert reader.get(1)["__key__"] == "k0001"
        with pytest.raises(DataError, match=r"index does not match the shard: sample #2 "):
            reader.get(2)
    finally:
        reader.close()
    assert reader.fast_reads == 1


def test_old_index_without_offsets_reads_the_same_batches(shard_set: ShardSet, tmp_path: Path) -> None:
    def ds(index: str | None = None) -> StreamingDataset:
        return StreamingDataset(shard_set.pattern, batch_size=4, shuffle_buffer=10, seed=2, map=key_of,
                                collate_fn=as_list, index=index)

    new = ds()
    assert new.counts == shard_set.counts and all(o is not None for o in new.layout.offsets)
    expected = [epoch_keys(new.loader(num_workers=0), e) for e in (0, 1)]
    old_index = tmp_path / "old.index.json"
    old_index.write_text(shard_set.index_path.read_text())
    _without_offsets(old_index)
    old = ds(str(old_index))
    assert old.counts == shard_set.counts and all(o is None for o in old.layout.offsets)
    for workers in (0, 2):
        loader = old.loader(num_workers=workers)
        assert [epoch_keys(loader, e) for e in (0, 1)] == expected


def test_stale_offsets_raise_a_clear_error_or_are_skipped(tmp_path: Path) -> None:
    def samples(scale: int):
        for i in range(24):
            yield {"__key__": f"k{i:03d}", "txt": "t" * (scale * (i + 1)), "cls": i}

    paths = write_shards(samples(10), str(tmp_path / "st-%02d.tar"), max_count=6)
    # The second shard is rewritten after indexing: same keys, bigger payloads.
    newer = write_shards(samples(70), str(tmp_path / "new" / "st-%02d.tar"), max_count=6)
    Path(newer[1]).replace(paths[1])

    def ds(on_error: str) -> StreamingDataset:
        return StreamingDataset(str(tmp_path / "st-{00..03}.tar"), batch_size=6, map=key_of, collate_fn=as_list,
                                shuffle=False, training=False, on_error=on_error)  # type: ignore[arg-type]

    with pytest.raises(DataError, match="dltrain shards index") as info:
        list(ds("raise"))
    err = info.value
    assert err.url == paths[1] and paths[1] in str(err) and "does not match" in str(err)
    # k006 kept its byte layout (its payload still fits one block) and reads; k007 grew: its range no longer fits.
    assert err.key == "k007"
    loader = ds("skip").loader(num_workers=2)
    with pytest.warns(DataSkipWarning):
        keys = [k for b in epoch_keys(loader, 0) for k in b]
    assert loader.skipped == 5 and keys == [f"k{i:03d}" for i in range(24) if not 7 <= i < 12]


def test_truncated_index_offsets_are_refused(tmp_path: Path) -> None:
    write_shards(_samples(8), str(tmp_path / "t-%03d.tar"), max_count=8)
    index_path = tmp_path / "t.index.json"
    index = load_index(str(index_path))
    index["shards"][0]["offsets"].pop()
    write_index(index, str(index_path))
    # A shard's offsets are parsed when it is first read (an index is read lazily, one shard's line at a time):
    # the refusal comes then, before any sample of it, naming the shard.
    ds = StreamingDataset(str(tmp_path / "t-000.tar"), batch_size=2)
    assert ds.counts == [8]
    with pytest.raises(DataError, match=r"offsets for 8 samples.*dltrain shards index") as err:
        next(iter(ds))
    assert err.value.url.endswith("t-000.tar")


def test_cli_index_reports_offsets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dltrain.cli import main

    write_shards(_samples(6), str(tmp_path / "c-%03d.tar"), max_count=4, index=False)
    assert main(["shards", "index", str(tmp_path / "c-{000..001}.tar")]) == 0
    assert "2 shards, 6 samples, with sample offsets" in capsys.readouterr().out
    assert all(len(s["offsets"]) == s["samples"] + 1 for s in load_index(str(tmp_path / "c.index.json"))["shards"])


def test_an_index_is_parsed_one_shard_at_a_time_and_any_json_layout_reads(tmp_path: Path) -> None:
    """A shard's index line is parsed when that shard is first read (the first batch of a big dataset reads one
    or two shards; parsing every sample's offsets took most of its time): a line that no longer parses fails
    only the read of its own shard, naming the index. An index laid out otherwise (a tool's ``indent=2``) is
    parsed whole and reads the same."""
    write_shards(_samples(24), str(tmp_path / "t-%03d.tar"), max_count=8)
    index_path = tmp_path / "t.index.json"
    pattern = str(tmp_path / "t-{000..002}.tar")
    whole = [k for b in StreamingDataset(pattern, batch_size=4, shuffle=False, map=key_of, collate_fn=as_list) for k in b]
    lines = index_path.read_text().split("\n")
    shard2 = next(i for i, line in enumerate(lines) if '"url": "t-002.tar"' in line)
    lines[shard2] = lines[shard2].replace('"offsets": [', '"offsets": [oops')
    index_path.write_text("\n".join(lines))
    ds = StreamingDataset(str(tmp_path / "t-{000..001}.tar"), batch_size=4, shuffle=False, index=str(index_path),
                          map=key_of, collate_fn=as_list)
    assert [k for b in ds for k in b] == whole[:16]  # shard 2's broken line is never parsed
    with pytest.raises(DataError, match=r"cannot read shard index .*t\.index\.json.*dltrain shards index"):
        list(StreamingDataset(pattern, batch_size=4, shuffle=False, map=key_of, collate_fn=as_list))
    build_index(pattern)
    index_path.write_text(json.dumps(json.loads(index_path.read_text()), indent=2))
    ds = StreamingDataset(pattern, batch_size=4, shuffle=False, map=key_of, collate_fn=as_list)
    assert [k for b in ds for k in b] == whole and ds.layout.offsets[2] is not None
