"""Bad data: corrupt, truncated and missing shards, missing fields, undecodable payloads, refused pickles.

``on_error="raise"`` raises `DataError` naming the shard and the sample; ``"skip"`` drops the bad samples, keeps
the number of batches, counts them in the main process and reports them at the end of the epoch.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest

from dltrain.data import DataSkipWarning, StreamingDataset, write_shards
from dltrain.errors import DataError
from tests.helpers.shards import epoch_keys

PER_SHARD = 6


def _needs_txt(sample: dict) -> str:
    return f"{sample['__key__']}:{sample['txt']}:{sample['json']['i']}"


def _sample(i: int, case: str) -> dict:
    s = {"__key__": f"k{i:03d}", "txt": f"t{i}", "json": {"i": i}}
    if i == 8:  # the bad sample (second shard) of the per-sample cases
        if case == "missing_field":
            del s["txt"]
        elif case == "undecodable":
            s["json"] = b"{not json"
        elif case == "pickle":
            s["pyd"] = pickle.dumps({"x": 1})
    return s


def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def _make(tmp: Path, case: str) -> tuple[str, str, int, str]:
    """Write 4 shards of 6 samples, damage them per ``case``; return (pattern, bad shard, skipped, key hint).

    A ``-scan`` case drops the sample offsets from the index (as version 1 wrote it): shards are read forward.
    """
    case, scan = case.removesuffix("-scan"), case.endswith("-scan")
    paths = write_shards((_sample(i, case) for i in range(4 * PER_SHARD)), str(tmp / "bad-%02d.tar"),
                         max_count=PER_SHARD)
    if scan:
        index = json.loads((tmp / "bad.index.json").read_text())
        for entry in index["shards"]:
            del entry["offsets"]
        (tmp / "bad.index.json").write_text(json.dumps(index))
    bad = Path(paths[1])
    if case == "corrupt":  # garbage over the header of sample 3 of the shard
        start, _ = _member_offsets(bad)["k009.json"]
        data = bytearray(bad.read_bytes())
        data[start : start + 512] = b"\xff" * 512
        bad.write_bytes(bytes(data))
        # Reading forward stops there, losing the rest of the shard and k008, whose members were being read (the bad
        # header may have been its last member's); seeking to indexed offsets loses only that sample.
        return str(tmp / "bad-{00..03}.tar"), str(bad), 4 if scan else 1, "k008"
    if case == "truncated":  # cut inside the payload of sample 3 of the shard
        _, data_at = _member_offsets(bad)["k009.json"]
        bad.write_bytes(bad.read_bytes()[: data_at + 3])
        return str(tmp / "bad-{00..03}.tar"), str(bad), 3, "k009"
    if case == "missing":
        bad.unlink()
        return str(tmp / "bad-{00..03}.tar"), str(bad), PER_SHARD, "#0"
    return str(tmp / "bad-{00..03}.tar"), str(bad), 1, "k008"


def _raised(loader) -> DataError:
    """The DataError of one epoch, without its traceback: a traceback would tie the loader (and its live
    persistent workers) into a reference cycle with the test frame, whose late collection stalls torch's
    worker shutdown for seconds."""
    try:
        epoch_keys(loader, 0)
    except DataError as exn:
        exn.__traceback__ = None
        return exn
    raise AssertionError("no DataError raised")


CASES = ["corrupt", "corrupt-scan", "truncated", "truncated-scan", "missing", "missing_field", "undecodable",
         "pickle"]
WHAT = {
    "corrupt": "the index does not match the shard",
    "corrupt-scan": "the shard is damaged at byte",
    "truncated": "the shard is damaged at byte",
    "truncated-scan": "the shard is damaged at byte",
    "missing": "cannot open the shard",
    "missing_field": "no field 'txt'",
    "undecodable": "cannot decode field 'json'",
    "pickle": "unsafe_decoders",
}


@pytest.mark.parametrize("case", CASES)
def test_bad_data_raises_or_is_skipped_and_counted(tmp_path: Path, case: str) -> None:
    pattern, bad_url, n_bad, key_hint = _make(tmp_path, case)

    def ds(on_error: str) -> StreamingDataset:
        return StreamingDataset(pattern, batch_size=5, map=_needs_txt, collate_fn=list, shuffle=False,
                                training=False, on_error=on_error)  # type: ignore[arg-type]

    # Raised in a worker process, arriving in the main process with shard and key intact.
    err = _raised(ds("raise").loader(num_workers=1))
    assert WHAT[case] in str(err)
    assert err.url == bad_url
    assert err.key is not None and key_hint in err.key
    assert bad_url in str(err)

    loader = ds("skip").loader(num_workers=2)
    with pytest.warns(DataSkipWarning, match=f"skipped {n_bad} bad samples"):
        batches = epoch_keys(loader, 0)
    assert len(batches) == len(loader) == -(-4 * PER_SHARD // 5)  # batch count unchanged
    good = [k for b in batches for k in b]
    assert len(good) == 4 * PER_SHARD - n_bad
    assert loader.skipped == n_bad
    report = loader.epoch_report()
    assert report["skipped"] == n_bad and report["errors"] and WHAT[case] in report["errors"][0]
    assert loader.state_dict()["skipped"] == n_bad
    # The next epoch starts a fresh count.
    with pytest.warns(DataSkipWarning):
        epoch_keys(loader, 1)
    assert loader.skipped == n_bad


def test_pickle_opt_in_decodes(tmp_path: Path) -> None:
    pattern, _, _, _ = _make(tmp_path, "pickle")
    ds = StreamingDataset(pattern, batch_size=24, map=lambda s: s.get("pyd"), collate_fn=list, shuffle=False,
                          unsafe_decoders=("pyd",))
    (batch,) = list(ds)
    assert batch.count({"x": 1}) == 1


@pytest.mark.filterwarnings("ignore:no shard index")
def test_missing_shard_without_index_skip_counts_zero(tmp_path: Path) -> None:
    pattern, _bad, _, _ = _make(tmp_path, "missing")
    (tmp_path / "bad.index.json").unlink()
    with pytest.warns(UserWarning, match="counting it as 0 samples"):
        ds = StreamingDataset(pattern, batch_size=6, map=_needs_txt, collate_fn=list, shuffle=False,
                              training=False, on_error="skip")
        assert ds.counts == [6, 0, 6, 6]
    with pytest.raises(DataError, match=r"1 of 4 shards not found: .*bad-01\.tar"):
        StreamingDataset(pattern, batch_size=6, on_error="raise").counts  # noqa: B018


def test_all_bad_batch_is_none_and_batch_count_kept(tmp_path: Path) -> None:
    pattern, _, _, _ = _make(tmp_path, "missing")
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
    ds = StreamingDataset(pattern, batch_size=PER_SHARD, map=_needs_txt, collate_fn=list, shuffle=False,
                          training=False, on_error="skip")
    with pytest.warns(DataSkipWarning):
        batches = list(ds.loader(num_workers=0))
    assert len(batches) == 4 and batches[1] is None
