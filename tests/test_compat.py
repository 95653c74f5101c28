"""Each private API of another library that dltrain uses (all in ``dltrain._compat``), against the installed version.

A failure here means a new torch, torchmetrics, webdataset or Lightning changed something dltrain reads: fix
``dltrain/_compat.py`` before anything else.
"""

from __future__ import annotations

import io
import tarfile
import time

import pytest
import torch
import torchmetrics
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from dltrain import _compat


def test_random_sampler_fixed_count_is_detected():
    data = TensorDataset(torch.arange(10))
    assert _compat.random_sampler_draws_fixed_count(RandomSampler(data, num_samples=4))
    assert not _compat.random_sampler_draws_fixed_count(RandomSampler(data))


def test_metric_forward_value_is_the_last_batch_value():
    metric = torchmetrics.MeanMetric()
    assert _compat.metric_forward_value(metric) is None
    metric(torch.tensor([1.0, 3.0]))
    metric(torch.tensor([5.0]))
    assert float(_compat.metric_forward_value(metric)) == 5.0  # the batch value, not the running mean (3.0)


def test_lightning_combined_loader_mode_is_read_from_lightnings_object_only():
    from lightning.pytorch.utilities import CombinedLoader as LightningCombined

    from dltrain.data import CombinedLoader

    loaders = [[1, 2], [3]]
    for mode in ("min_size", "max_size_cycle", "max_size", "sequential"):
        assert _compat.lightning_combined_loader_mode(LightningCombined(loaders, mode)) == mode
    assert _compat.lightning_combined_loader_mode(CombinedLoader(loaders)) is None
    assert _compat.lightning_combined_loader_mode(loaders) is None


def test_tar_writer_offset_follows_what_is_written(tmp_path):
    from webdataset.writer import ShardWriter

    with ShardWriter(str(tmp_path / "s-%06d.tar"), maxcount=100, verbose=0) as writer:
        before = _compat.tar_writer_offset(writer)
        writer.write({"__key__": "a", "txt": "x" * 1000})
        after = _compat.tar_writer_offset(writer)
    assert before == 0 and after is not None and after >= 1024  # one header block + the padded payload
    with tarfile.open(tmp_path / "s-000000.tar") as tar:
        assert tar.getmembers()[0].offset == before


def test_tar_member_parsing_at_an_offset(tmp_path):
    """`tar_read_member_at` parses the member at a given header offset (PAX headers included) and
    `tar_next_offset` then says where the next header starts; both as tarfile's own iteration reports them."""
    path = tmp_path / "m.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, size in [("a.txt", 10), ("b" * 120 + ".bin", 700), ("c.cls", 1)]:  # the second needs PAX
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers()]
    with open(path, "rb") as f, tarfile.TarFile(fileobj=f, mode="r") as tar:
        for (name, offset, data, size), following in zip(expected, [e[1] for e in expected[1:]] + [None]):
            info = _compat.tar_read_member_at(tar, offset)
            assert (info.name, info.offset, info.offset_data, info.size) == (name, offset, data, size)
            if following is not None:
                assert _compat.tar_next_offset(tar) == following
        f.seek(expected[1][1])
        assert _compat.tar_read_member_at(tar, None).name == expected[1][0]  # None: from where the file is


def test_webdataset_name_splitting_and_meta_members():
    assert _compat.wds_split_name("dir/k001.seg.png") == ("dir/k001", "seg.png")
    assert _compat.wds_split_name("k002.cls") == ("k002", "cls")
    assert _compat.wds_split_name("nodot")[0] is None
    assert _compat.wds_drops_meta_member("__meta__")
    assert not _compat.wds_drops_meta_member("k003.txt")
    assert not _compat.wds_drops_meta_member("d/__meta__")  # only at the top level


def test_shutdown_loader_workers_stops_worker_processes():
    loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=2, num_workers=2)
    iterator = iter(loader)
    next(iterator)
    workers = list(iterator._workers)  # type: ignore[attr-defined]
    assert all(w.is_alive() for w in workers)
    _compat.shutdown_loader_workers(iterator)
    assert not any(w.is_alive() for w in workers)
    _compat.shutdown_loader_workers(iter(DataLoader(TensorDataset(torch.arange(4)))))  # no workers: a no-op


def test_default_store_is_the_process_group_store(tmp_path):
    import torch.distributed as dist

    assert _compat.default_store() is None
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        store = _compat.default_store()
        store.set("dltrain/compat", "ok")
        assert store.get("dltrain/compat") == b"ok"
    finally:
        dist.destroy_process_group()


def test_strategy_wraps_module_tells_wrapped_from_plain():
    from lightning.fabric import Fabric

    plain = Fabric(accelerator="cpu", devices=1)
    assert not _compat.strategy_wraps_module(plain.setup_module(torch.nn.Linear(2, 2)))
    ddp = Fabric(accelerator="cpu", devices=1, strategy="ddp")  # a one-process DDP job
    ddp.launch()
    try:
        assert _compat.strategy_wraps_module(ddp.setup_module(torch.nn.Linear(2, 2)))
    finally:
        torch.distributed.destroy_process_group()


def test_dcp_storage_files_names_the_shard_files(tmp_path):
    """A checkpoint written without a process group has one shard file; the function names exactly it."""
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.arange(6.0), "b": torch.ones(2)}, checkpoint_id=str(tmp_path))
    files = _compat.dcp_storage_files(dcp.FileSystemReader(str(tmp_path)).read_metadata())
    assert files == {p.name for p in tmp_path.glob("*.distcp")}
    assert len(files) == 1


def test_compiled_module_helpers():
    net = torch.nn.Linear(3, 2)
    assert not _compat.is_compiled(net)
    opt = torch.compile(net, backend="eager")
    assert _compat.is_compiled(opt)
    inner = _compat.compiled_in_place(opt)
    assert inner is net and _compat.is_compiled(net)  # its __call__ compiled with the same settings
    assert _compat.compiled_in_place(net) is net
    other = torch.nn.Linear(3, 2)
    other.compile(backend="eager")
    assert _compat.is_compiled(other)


def test_dynamo_compile_events_and_guard_failures():
    torch._dynamo.reset()
    events: list[tuple[str, str, int | None, int | None]] = []
    remove = _compat.on_dynamo_compile(lambda *a: events.append(("start", *a)), lambda *a: events.append(("end", *a)))
    try:
        net = torch.nn.Linear(3, 2)
        net.compile(backend="aot_eager", dynamic=False)
        net(torch.randn(4, 3)).sum().backward()
        before = _compat.dynamo_guard_failures()
        net(torch.randn(5, 3))
        after = _compat.dynamo_guard_failures()
    finally:
        remove()
    net(torch.randn(6, 3))  # removed: no more events
    frames = [e for e in events if e[1] == "frame"]
    assert [(e[0], e[3]) for e in frames] == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert frames[0][2] == frames[2][2] is not None  # the same frame, compiled twice
    assert ("start", "backward", frames[0][2], 0) in events
    new = [r for k, v in after.items() for r in v[len(before.get(k, [])):]]
    assert any("size mismatch at index 0. expected 4, actual 5" in r for r in new), new


def test_model_parallel_sizes_reads_what_the_strategy_was_built_with():
    from lightning.fabric.strategies import ModelParallelStrategy

    from dltrain._compat import model_parallel_sizes

    def parallelize(module, mesh):
        return module

    assert model_parallel_sizes(ModelParallelStrategy(parallelize, data_parallel_size=3, tensor_parallel_size=2)) == (3, 2)
    assert model_parallel_sizes(ModelParallelStrategy(parallelize)) == ("auto", "auto")


def test_wandb_offline_steps_reads_an_offline_run_file(tmp_path, monkeypatch):
    import glob

    import wandb

    from dltrain._compat import wandb_offline_steps

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    run = wandb.init(project="p", dir=str(tmp_path), mode="offline", id="compat1", reinit="create_new")
    for step in (1, 2, 5):
        run.log({"a": float(step), "b/c": 1.0}, step=step)
    run.finish()
    (path,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-compat1.wandb"))
    # wandb's service process may still be writing the file when finish() returns (seen under load: no rows yet).
    deadline = time.monotonic() + 30
    while len(rows := wandb_offline_steps(path)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [s for s, _ in rows] == [1, 2, 5]
    assert all(set(keys) == {"a", "b/c"} for _, keys in rows)
    # Cut short (a kill mid-write): the complete records before the cut.
    data = open(path, "rb").read()
    torn = tmp_path / "torn.wandb"
    torn.write_bytes(data[: len(data) - 5])
    assert [s for s, _ in wandb_offline_steps(str(torn))][:2] == [1, 2]


def test_lighthouse_server_starts_answers_and_stops():
    """torchft's in-process lighthouse (``torchft._torchft.LighthouseServer``): an address, a quorum for a client
    that asks, and a shutdown."""
    from datetime import timedelta

    pytest = __import__("pytest")
    torchft = pytest.importorskip("torchft")
    from torchft._torchft import LighthouseClient

    server = _compat.lighthouse_server("[::]:0", 1, join_timeout_ms=100, quorum_tick_ms=10, heartbeat_timeout_ms=5000)
    try:
        address = server.address()
        assert address.startswith("http://")
        quorum = LighthouseClient(address, connect_timeout=timedelta(seconds=10)).quorum(
            replica_id="probe", timeout=timedelta(seconds=10))
        assert [p.replica_id for p in quorum.participants] == ["probe"]
    finally:
        server.shutdown()
    assert torchft is not None


def test_dcp_fsspec_storage_reads_what_it_wrote(tmp_path):
    import torch.distributed.checkpoint as dcp

    url = f"file://{tmp_path}/dcp"
    dcp.save({"w": torch.arange(4.0)}, storage_writer=_compat.dcp_fsspec_storage(url, {}, reader=False), no_dist=True)
    state = {"w": torch.zeros(4)}
    dcp.load(state, storage_reader=_compat.dcp_fsspec_storage(url, None, reader=True), no_dist=True)
    assert torch.equal(state["w"], torch.arange(4.0))


def test_loader_worker_socket_path_is_as_long_as_the_listener_multiprocessing_binds():
    import os
    import sys
    from multiprocessing.connection import Listener

    from dltrain._compat import loader_worker_socket_path

    if not sys.platform.startswith("linux"):
        pytest.skip("the file_descriptor sharing strategy is Linux's default")
    predicted = loader_worker_socket_path()
    assert predicted is not None
    listener = Listener(family="AF_UNIX")  # what the resource sharer of a loader worker binds
    try:
        assert os.path.dirname(listener.address) == os.path.dirname(predicted)
        assert len(listener.address) == len(predicted)
    finally:
        listener.close()
