"""Shards on the S3 test server: write_shards and `dltrain shards index` write there (index at its default place),
StreamingDataset/Mixture read brace patterns of s3:// URLs with ranged GETs (index) or streaming (no index), the
same batches as on local disk, exact resume; transient faults retried without a lost or repeated sample; missing
or damaged shards and a store that stays down are clear errors naming the URL."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from dltrain import _storage
from dltrain.data import Mixture, StreamingDataset, write_shards
from dltrain.data.urls import ObjectFile
from dltrain.errors import DataError
from tests.helpers.s3 import SECRET, S3Bucket
from tests.helpers.shards import ShardSet, as_list, epoch_keys, key_of, make_shards


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory: pytest.TempPathFactory) -> ShardSet:
    return make_shards(tmp_path_factory.mktemp("remote-data"), num_shards=5, min_size=9, max_size=30)


def _upload(local: ShardSet, bucket: S3Bucket, prefix: str = "data", index: bool = True) -> str:
    fs = bucket.fs
    for path in local.paths:
        fs.put_file(path, f"{bucket.name}/{prefix}/{Path(path).name}")
    if index:
        fs.put_file(str(local.index_path), f"{bucket.name}/{prefix}/{local.index_path.name}")
    return bucket.url(f"{prefix}/train-{{000000..{len(local.paths) - 1:06d}}}.tar")


def _ds(pattern: str, **kw) -> StreamingDataset:
    kw.setdefault("batch_size", 4)
    kw.setdefault("shuffle_buffer", 10)
    return StreamingDataset(pattern, map=key_of, collate_fn=as_list, seed=5, **kw)


def _epochs(pattern: str, workers: int, epochs: int = 2, **kw) -> list[list[list[str]]]:
    loader = _ds(pattern, **kw).loader(num_workers=workers)
    return [epoch_keys(loader, e) for e in range(epochs)]


def test_same_batches_as_local_disk_with_and_without_index(s3, local_shards):
    remote = _upload(local_shards, s3)
    unindexed = _upload(local_shards, s3, prefix="noindex", index=False)
    want = _epochs(local_shards.pattern, 0)
    for workers in (0, 2):
        assert _epochs(remote, workers) == want, workers
    assert _epochs(unindexed, 2) == want  # streamed (no index: counted from the tar headers, read forward)
    ds = _ds(remote)
    assert ds.layout.offsets[0] is not None  # the index with offsets was found on the store: ranged reads
    everything = [k for batch in want[0] for k in batch]
    assert len(everything) == len(set(everything)) == sum(local_shards.counts) // 4 * 4


def test_resume_mid_epoch_from_the_store_is_exact(s3, local_shards):
    remote = _upload(local_shards, s3)
    for workers in (0, 2):
        loader = _ds(remote).loader(num_workers=workers)
        loader.set_epoch(1)
        it = iter(loader)
        head = [list(next(it)) for _ in range(7)]
        state = loader.state_dict()
        rest = [list(b) for b in it]
        fresh = _ds(remote).loader(num_workers=workers)
        fresh.load_state_dict(state)
        fresh.set_epoch(1)
        assert [list(b) for b in fresh] == rest, workers
        assert head + rest == _epochs(local_shards.pattern, 0)[1]  # the uninterrupted epoch, from local disk


def test_write_shards_and_shards_index_on_the_store(s3, capsys):
    from dltrain.cli import main as cli_main
    from tests.helpers.shards import sample_for

    pattern = s3.url("w/train-%06d.tar")
    urls = write_shards((sample_for(f"k{i:03d}", i) for i in range(23)), pattern, max_count=5)
    assert urls == [s3.url(f"w/train-{i:06d}.tar") for i in range(5)]
    assert sorted(s3.objects("w")) == [*(f"w/train-{i:06d}.tar" for i in range(5)), "w/train.index.json"]
    index_before = s3.read("w/train.index.json")
    s3.fs.rm(f"{s3.name}/w/train.index.json")
    brace = s3.url("w/train-{000000..000004}.tar")
    assert cli_main(["shards", "index", brace]) == 0
    assert f"wrote {s3.url('w/train.index.json')}: 5 shards, 23 samples, with sample offsets" in \
        capsys.readouterr().out
    assert s3.read("w/train.index.json") == index_before  # the same index, built from the headers over ranged GETs
    keys = [k for batch in _epochs(brace, 0, epochs=1, batch_size=1)[0] for k in batch]
    assert sorted(keys) == [f"k{i:03d}" for i in range(23)]


def test_mixture_of_store_and_local_sources(s3, local_shards, tmp_path):
    remote = _upload(local_shards, s3)
    other = make_shards(tmp_path / "b", num_shards=2, min_size=5, max_size=9, prefix="b")
    mixed = Mixture([_ds(remote), _ds(other.pattern)], weights=[0.5, 0.5], seed=2)
    same = Mixture([_ds(local_shards.pattern), _ds(other.pattern)], weights=[0.5, 0.5], seed=2)
    assert epoch_keys(mixed.loader(num_workers=2), 0) == epoch_keys(same.loader(num_workers=0), 0)


def test_ranged_reads_fetch_only_what_a_sample_needs(s3, local_shards):
    remote = _upload(local_shards, s3)
    url = remote.replace("{000000..000004}", "000001")
    file = ObjectFile.open(url, read_ahead=1)
    size = file.size
    assert file.read_at(512, 100) == Path(local_shards.paths[1]).read_bytes()[512:612]
    assert file.requests == 1 and len(file._buffer) == 100  # one GET of exactly the bytes asked
    assert Path(local_shards.paths[1]).stat().st_size == size


def test_transient_faults_are_retried_without_a_lost_or_repeated_sample(s3_faults, local_shards, caplog):
    bucket, proxy = s3_faults
    remote = _upload(local_shards, bucket)
    want = _epochs(local_shards.pattern, 0)
    # GETs of shards fail now and then: 503 SlowDown, 500, or the connection closed halfway through the body.
    proxy.fail(4, 503, method="GET", contains=".tar", every=3)
    proxy.cut(4, method="GET", contains=".tar", every=4)
    proxy.fail(3, 500, method="GET", contains=".tar", every=5)
    with caplog.at_level(logging.WARNING, logger="dltrain.storage"):
        got = _epochs(remote, 0)
    assert got == want
    retries = [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]
    assert proxy.hits["status"] >= 2 and proxy.hits["cut"] >= 1, proxy.hits
    assert len(retries) == proxy.hits["status"] + proxy.hits["cut"], retries  # each fault: one retry, logged
    assert all(".tar" in m and SECRET not in m for m in retries)
    proxy.clear()
    before = dict(proxy.hits)
    proxy.fail(6, 503, method="GET", contains=".tar", every=2)
    proxy.cut(6, method="GET", contains=".tar", every=3)
    assert _epochs(remote, 2) == want  # in loader workers too
    assert proxy.hits["status"] > before["status"] and proxy.hits["cut"] > before["cut"], proxy.hits


def test_missing_and_damaged_shards_are_data_errors_naming_url_and_key(s3, local_shards, tmp_path):
    remote = _upload(local_shards, s3)
    s3.fs.rm(f"{s3.name}/data/train-000003.tar")
    with pytest.raises(DataError, match=r"cannot open the shard \(FileNotFoundError.*shard 's3://.*/data/"
                                        r"train-000003.tar', sample '#\d+'"):
        _epochs(remote, 0, epochs=1)  # the index names it: found missing when read
    s3.fs.rm(f"{s3.name}/data/train.index.json")
    with pytest.raises(DataError, match=r"1 of 5 shards not found: 's3://.*/data/train-000003.tar'"):
        _ds(remote).layout  # noqa: B018 (computed on first use)
    broken = tmp_path / "broken"
    shutil.copytree(local_shards.directory, broken)
    data = (broken / "train-000002.tar").read_bytes()
    (broken / "train-000002.tar").write_bytes(data[: len(data) // 2])  # cut short: the index still says all
    for name in ("train-000002.tar", "train-000003.tar"):
        s3.fs.put_file(str(broken / name), f"{s3.name}/data/{name}")
    with pytest.raises(DataError) as info:
        _epochs(remote, 0, epochs=1)
    text = str(info.value)
    assert "train-000002.tar" in text and "s3://" in text and "sample" in text, text


def test_a_store_that_stays_down_fails_naming_the_url(s3_faults, local_shards):
    bucket, proxy = s3_faults
    remote = _upload(local_shards, bucket)
    ds = _ds(remote)
    assert ds.layout.counts == local_shards.counts  # the index read while the store was up
    proxy.down(503)
    for workers in (0, 2):
        with pytest.raises(_storage.StorageError) as info:
            epoch_keys(ds.loader(num_workers=workers), 0)
        text = str(info.value)
        assert "kept failing" in text and f"s3://{bucket.name}/data/train-0000" in text and SECRET not in text
    with pytest.raises(_storage.StorageError, match=r"train.index.json: the store kept failing"):
        _ds(remote).layout  # noqa: B018
