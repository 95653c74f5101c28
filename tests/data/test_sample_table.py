"""Index version 3: where each sample's fields lie (`SampleTable`), so that a reader cuts a sample out of one
positioned read without parsing a tar header; written by `write_shards`, rebuilt by `build_index` (which upgrades
older indexes), and distrusted (the headers parsed instead, with their errors) wherever the bytes around the
fields are not the ones indexed."""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dltrain.cli import main
from dltrain.data import StreamingDataset, build_index, load_index, write_shards
from dltrain.data.index import shard_layout
from dltrain.data.shards import IndexedShardReader, ShardReader
from dltrain.errors import DataError
from tests.helpers.shards import as_list, epoch_keys, key_of

TABLE_KEYS = ("keys", "fields", "layout", "members", "check")


def _samples(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        # Uneven payloads (some over one 512-byte block, one empty), fields varying between samples, a nested key.
        sample = {"__key__": f"k{i:04d}" if i != 5 else "sub/k0005", "cls": i,
                  "bin": bytes(rng.randrange(1500)) if i != 3 else b""}
        if i % 3:
            sample["json"] = {"i": i}
        yield sample


def _read_all(reader: IndexedShardReader | ShardReader, n: int) -> list[dict]:
    try:
        return [reader.get(i) for i in range(n)]
    finally:
        reader.close()


def _as_v2(index_path: Path) -> None:
    index = json.loads(index_path.read_text())
    index["version"] = 2
    for entry in index["shards"]:
        for name in TABLE_KEYS:
            entry.pop(name, None)
    index_path.write_text(json.dumps(index))


def test_written_and_built_tables_agree_and_reads_parse_no_header(tmp_path: Path) -> None:
    paths = write_shards(_samples(30), str(tmp_path / "t-%03d.tar"), max_count=12)
    written = load_index(str(tmp_path / "t.index.json"))
    assert written["version"] == 3 and all(set(TABLE_KEYS) - {"layout"} <= set(e) for e in written["shards"])
    assert "layout" in written["shards"][0]  # samples with and without "json": two field lists
    assert build_index(paths, write=False) == written
    layout = shard_layout(paths)
    for s, path in enumerate(paths):
        n = layout.counts[s]
        table = layout.tables[s]
        assert table is not None and len(table) == n
        reader = IndexedShardReader(path, layout.offsets[s], n, table)
        expected = _read_all(ShardReader(path, range(n), n), n)
        assert _read_all(reader, n) == expected
        assert (reader.table_reads, reader.fast_reads) == (n, 0)  # no header parsed
        many = IndexedShardReader(path, layout.offsets[s], n, table)
        order = random.Random(s).sample(range(n), n)
        assert many.get_many(order) == [expected[i] for i in order] and many.table_reads == n
        many.close()


def test_an_older_index_reads_the_same_and_the_cli_upgrades_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    write_shards(_samples(40, seed=1), str(tmp_path / "u-%03d.tar"), max_count=9)
    index_path = tmp_path / "u.index.json"
    new = load_index(str(index_path))

    def batches() -> list:
        ds = StreamingDataset(str(tmp_path / "u-{000..004}.tar"), batch_size=4, shuffle_buffer=10, seed=3,
                              map=key_of, collate_fn=as_list)
        return [epoch_keys(ds.loader(num_workers=0), e) for e in (0, 1)]

    expected = batches()
    _as_v2(index_path)
    assert all(t is None for t in shard_layout([str(tmp_path / f"u-{i:03d}.tar") for i in range(5)]).tables)
    assert batches() == expected
    assert main(["shards", "index", str(tmp_path / "u-{000..004}.tar")]) == 0
    capsys.readouterr()
    assert load_index(str(index_path)) == new


def test_a_changed_header_is_not_trusted_and_a_changed_payload_is_read_where_it_is(tmp_path: Path) -> None:
    paths = write_shards(({"__key__": f"k{i:02d}", "txt": "x" * 100, "cls": i} for i in range(6)),
                         str(tmp_path / "c-%03d.tar"), max_count=6)
    layout = shard_layout(paths)
    raw = bytearray(Path(paths[0]).read_bytes())
    with tarfile.open(paths[0]) as tar:
        members = tar.getmembers()
    # Sample 1: its payload rewritten in place (same size): the table cuts out the new bytes, as tarfile would.
    payload = next(m for m in members if m.name == "k01.txt")
    raw[payload.offset_data : payload.offset_data + 100] = b"y" * 100
    # Sample 2: its member renamed in the header (one byte of the name, checksum fixed as a writer would):
    # the key in the table is stale; the headers are parsed and give the real one.
    renamed = next(m for m in members if m.name == "k02.txt")
    header = bytearray(raw[renamed.offset : renamed.offset + 512])
    header[2] = ord("9")  # k02 -> k09
    header[148:156] = b" " * 8
    header[148:155] = f"{sum(header):06o}\0".encode()
    raw[renamed.offset : renamed.offset + 512] = header
    # Sample 4: its header garbled: a clear error naming the byte, as a version 2 index gives.
    broken = next(m for m in members if m.name == "k04.cls")
    raw[broken.offset : broken.offset + 512] = bytes(random.Random(0).randbytes(512))
    Path(paths[0]).write_bytes(bytes(raw))

    reader = IndexedShardReader(paths[0], layout.offsets[0], 6, layout.tables[0])
    try:
        assert reader.get(1)["txt"] == b"y" * 100
        assert reader.table_reads == 1
        with pytest.raises(DataError):  # k02's members are now of two keys: the index does not fit
            reader.get(2)
        got = reader.get_many([0, 3, 4, 5])
        assert [g["__key__"] for g in (got[0], got[1], got[3])] == ["k00", "k03", "k05"]
        assert isinstance(got[2], DataError) and f"byte {broken.offset}" in str(got[2]), got[2]
        assert got[2].url == paths[0]
    finally:
        reader.close()


def test_a_truncated_shard_fails_from_the_cut_on(tmp_path: Path) -> None:
    paths = write_shards(({"__key__": f"k{i:02d}", "bin": bytes(700), "cls": i} for i in range(8)),
                         str(tmp_path / "x-%03d.tar"), max_count=8)
    layout = shard_layout(paths)
    cut = int(layout.offsets[0][5]) + 100
    Path(paths[0]).write_bytes(Path(paths[0]).read_bytes()[:cut])
    reader = IndexedShardReader(paths[0], layout.offsets[0], 8, layout.tables[0])
    got = reader.get_many(list(range(8)))
    reader.close()
    assert [isinstance(g, DataError) for g in got] == [False] * 5 + [True] * 3
    assert all(g.url == paths[0] for g in got[5:]) and "cut short" in str(got[5]), got[5]


def test_a_table_that_does_not_add_up_is_ignored_and_a_repeated_field_has_none(tmp_path: Path) -> None:
    paths = write_shards(_samples(10, seed=2), str(tmp_path / "h-%03d.tar"), max_count=10)
    index_path = tmp_path / "h.index.json"
    index = json.loads(index_path.read_text())
    index["shards"][0]["members"].pop()  # edited by hand
    index_path.write_text(json.dumps(index))
    layout = shard_layout(paths)
    assert layout.tables == [None] and layout.offsets[0] is not None
    reader = IndexedShardReader(paths[0], layout.offsets[0], 10, layout.tables[0])
    assert [s["__key__"] for s in _read_all(reader, 10)] == [s["__key__"] for s in _samples(10, seed=2)]

    # A sample with one field twice (another writer): no table for its shard; readers say what is wrong.
    dup = tmp_path / "d-000.tar"
    with tarfile.open(dup, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("a.txt", "a.cls", "b.txt", "b.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, __import__("io").BytesIO(b"1"))
    built = build_index([str(dup)], write=False)["shards"][0]
    assert "offsets" in built and "keys" not in built
    reader = IndexedShardReader(str(dup), np.asarray(built["offsets"]), 2)
    with pytest.raises(DataError, match="duplicate field 'txt'"):
        reader.get(1)
    reader.close()
