"""Writing shards, the index next to them, `build_index` and the `dltrain shards index` CLI, decoders."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from dltrain.cli import main
from dltrain.data import (
    SampleDecoder,
    StreamingDataset,
    build_index,
    default_index_path,
    expand_urls,
    load_index,
    write_shards,
)
from dltrain.errors import ConfigurationError, DataError
from tests.helpers.shards import as_list, key_of


def _samples(n: int):
    for i in range(n):
        yield {"__key__": f"k{i:04d}", "cls": i, "txt": f"t{i}", "json": {"i": i}, "npy": np.arange(i % 4)}


def test_write_shards_index_build_index_and_cli_agree(tmp_path: Path) -> None:
    paths = write_shards(_samples(23), str(tmp_path / "train-%06d.tar"), max_count=5)
    assert [os.path.basename(p) for p in paths] == [f"train-{i:06d}.tar" for i in range(5)]
    index_path = tmp_path / "train.index.json"
    written = json.loads(index_path.read_text())
    assert written["format"] == "dltrain.shard-index" and written["version"] == 3
    assert written["total"] == 23
    assert [s["samples"] for s in written["shards"]] == [5, 5, 5, 5, 3]
    assert [s["url"] for s in written["shards"]] == [os.path.basename(p) for p in paths]
    pattern = str(tmp_path / "train-{000000..000004}.tar")
    assert default_index_path(pattern) == str(index_path)

    assert build_index(pattern, write=False) == written
    index_path.unlink()
    assert main(["shards", "index", pattern]) == 0
    assert json.loads(index_path.read_text()) == written
    # Explicit shard paths instead of a pattern give the same file.
    index_path.unlink()
    assert main(["shards", "index", *paths]) == 0
    assert load_index(str(index_path)) == written
    # --output elsewhere keeps full shard paths.
    other = tmp_path / "sub" / "x.index.json"
    other.parent.mkdir()
    assert main(["shards", "index", pattern, "-o", str(other)]) == 0
    assert [s["url"] for s in json.loads(other.read_text())["shards"]] == paths


def test_cli_reports_missing_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shards", "index", str(tmp_path / "nope-{0..1}.tar")]) == 1
    err = capsys.readouterr().err
    assert "nope-0.tar" in err and "missing" in err


def test_expand_urls_and_bad_keys(tmp_path: Path) -> None:
    assert expand_urls(["a-{0..1}.tar", "b.tar"]) == ["a-0.tar", "a-1.tar", "b.tar"]
    assert len(expand_urls("d/train-{000000..000127}.tar")) == 128
    with pytest.raises(DataError, match=r"must not contain '\.'"):
        write_shards([{"__key__": "a.b", "cls": 1}], str(tmp_path / "x-%d.tar"))
    with pytest.raises(DataError, match="printf"):
        write_shards([{"__key__": "a", "cls": 1}], str(tmp_path / "x.tar"))


def test_loading_without_index_counts_headers_and_explicit_index(tmp_path: Path) -> None:
    paths = write_shards(_samples(12), str(tmp_path / "d-%03d.tar"), max_count=5)
    moved = tmp_path / "elsewhere.json"
    shutil.move(str(tmp_path / "d.index.json"), moved)
    with pytest.warns(UserWarning, match="no shard index"):
        ds = StreamingDataset(paths, batch_size=2, map=key_of, collate_fn=as_list, shuffle=False, training=False)
        assert ds.counts == [5, 5, 2]
    ds2 = StreamingDataset(paths, batch_size=2, map=key_of, collate_fn=as_list, shuffle=False, training=False,
                           index=str(moved))
    assert ds2.counts == [5, 5, 2]
    assert [k for b in ds2 for k in b] == [f"k{i:04d}" for i in range(12)]
    # pipe: URLs (webdataset's opener) work with an explicit index.
    ds3 = StreamingDataset([f"pipe:cat {p}" for p in paths], batch_size=5, map=key_of, collate_fn=as_list,
                           shuffle=False, training=False, index=str(moved))
    assert [k for b in ds3 for k in b] == [f"k{i:04d}" for i in range(12)]


def test_safe_decoders_and_opt_in(tmp_path: Path) -> None:
    dec = SampleDecoder()
    raw = {"__key__": "a", "cls": b"3", "txt": b"hi", "json": b'{"x": 1}', "bin": b"\x00\x01",
           "seg.cls": b"7"}
    out = dec(raw)
    assert out == {"__key__": "a", "cls": 3, "txt": "hi", "json": {"x": 1}, "bin": b"\x00\x01", "seg.cls": 7}
    with pytest.raises(DataError, match=r"unsafe_decoders=\('pyd',\)") as info:
        dec({"__key__": "b", "__url__": "u.tar", "pyd": pickle.dumps({"a": 1})})
    assert info.value.key == "b" and info.value.url == "u.tar"
    assert SampleDecoder(unsafe_decoders=("pyd",))({"pyd": pickle.dumps({"a": 1})}) == {"pyd": {"a": 1}}
    assert SampleDecoder(decode={"bin": len})({"bin": b"abc"}) == {"bin": 3}
    with pytest.raises(ConfigurationError):
        SampleDecoder(unsafe_decoders=("png",))
    # npy never unpickles object arrays.
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot decode field 'npy'"):
        dec({"__key__": "c", "npy": buf.getvalue()})
