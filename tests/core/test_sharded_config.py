"""strategy="fsdp2"/"fsdp" choices and the sharded checkpoint's file handling, without a process group."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.strategies import FSDPStrategy

import dltrain
from dltrain import _sharded
from dltrain import checkpoint as ckpt_io
from dltrain.errors import ConfigurationError


@pytest.mark.parametrize("strategy", ["fsdp", FSDPStrategy()])
def test_fsdp1_is_refused_pointing_to_fsdp2(strategy):
    with pytest.raises(ConfigurationError, match=r'strategy="fsdp" \(FSDP1\) is not supported: use strategy="fsdp2"'):
        dltrain.Trainer(accelerator="cpu", strategy=strategy, logger=False)


def test_fsdp2_on_a_task_without_parameters_says_what_to_do():
    class NoParams(dltrain.Task):
        def training_step(self, batch, batch_idx):
            return batch.sum()

    with pytest.raises(ConfigurationError, match=r"NoParams has no trainable parameters\. Create the layers in "
                                                 r"__init__ or configure_model"):
        _sharded._parallelize(NoParams(), mesh=None, precision="32-true")  # type: ignore[arg-type]


def test_the_default_plan_shards_children_with_parameters_and_the_members_of_containers():
    task = torch.nn.Module()
    task.embed = torch.nn.Embedding(10, 4)
    task.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4)])
    task.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 1)})
    task.act = torch.nn.ReLU()
    names = {id(m): n for n, m in task.named_modules()}
    assert [names[id(u)] for u in _sharded.sharding_units(task)] == ["embed", "blocks.0", "blocks.2", "heads.a"]


@pytest.mark.parametrize(("accelerator", "devices", "nodes", "expected"),
                         [("cpu", 2, 1, 2), ("cpu", "3", 2, 6), ("cpu", [0, 1], 1, 2), ("cpu", "auto", 1, 1),
                          ("cpu", "0,1,2", 1, 3)])
def test_world_size_of_counts_processes_as_fabric_does(accelerator, devices, nodes, expected):
    assert _sharded.world_size_of(accelerator, devices, nodes) == expected


def test_publish_replaces_an_existing_checkpoint_through_a_link(tmp_path):
    """A new name is a rename; rewriting a name (last.ckpt written straight, not kept) swaps a link atomically and
    removes the hidden directory it named before."""
    def written(name: str, value: str):
        tmp = tmp_path / f".{name}.tmp-host-1"
        tmp.mkdir()
        (tmp / "meta.pt").write_text(value)
        return tmp

    final = tmp_path / "last.ckpt"
    _sharded.publish(written("last.ckpt", "a"), final)
    assert final.is_dir() and not final.is_symlink() and (final / "meta.pt").read_text() == "a"
    _sharded.publish(written("last.ckpt", "b"), final)
    assert final.is_symlink() and (final / "meta.pt").read_text() == "b"
    first = final.resolve()
    _sharded.publish(written("last.ckpt", "c"), final)
    assert (final / "meta.pt").read_text() == "c" and not first.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".last.ckpt.d-")) == ["last.ckpt"]


def test_stale_temporary_directories_are_removed(tmp_path):
    """A sharded save killed before its rename leaves ``.<name>.tmp-<host>-<pid>/``: removed like a stale file."""
    import socket

    stale = tmp_path / f".epoch=0-step=4.ckpt.tmp-{socket.gethostname()}-999999999"
    stale.mkdir()
    (stale / "__0_0.distcp").write_bytes(b"x")
    assert ckpt_io.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists()
    # A hidden directory behind last.ckpt is kept; one that no link names (killed before the swap) is removed.
    kept, orphan = tmp_path / ".last.ckpt.d-0123456789ab", tmp_path / ".last.ckpt.d-ba9876543210"
    kept.mkdir()
    orphan.mkdir()
    (tmp_path / "last.ckpt").symlink_to(kept.name, target_is_directory=True)
    assert ckpt_io.remove_stale_temporaries(tmp_path) == [orphan]
    assert kept.is_dir() and not orphan.exists()


def test_consolidate_refuses_a_file(tmp_path):
    path = tmp_path / "full.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(dltrain.DltrainError, match="is not a sharded checkpoint directory"):
        ckpt_io.consolidate(path, tmp_path / "out.ckpt")


# ---------------------------------------------------------------------- tensor parallelism: sizes and misuse
def test_a_tensor_parallel_size_that_does_not_divide_the_world_size_says_what_to_do():
    with pytest.raises(ConfigurationError, match=r"FSDP2\(tensor_parallel_size=3\): the tensor-parallel size 3 does "
                                                 r"not divide the world size 4 .* Use tensor_parallel_size in "
                                                 r"\[1, 2, 4\], or launch 6 processes"):
        dltrain.Trainer(accelerator="cpu", devices=4, strategy=dltrain.FSDP2(tensor_parallel_size=3), logger=False)
    with pytest.raises(ConfigurationError, match=r"use a whole number, 1 or more"):
        dltrain.FSDP2(tensor_parallel_size=0)


def test_lightnings_model_parallel_strategy_with_sizes_that_do_not_fit_is_refused_before_launch():
    from lightning.fabric.strategies import ModelParallelStrategy

    def parallelize(module, mesh):
        return module

    wrong = ModelParallelStrategy(parallelize_fn=parallelize, data_parallel_size=1, tensor_parallel_size=3)
    with pytest.raises(ConfigurationError, match=r"1 x 3 = 3 ranks, but the run has 2 processes"):
        dltrain.Trainer(accelerator="cpu", devices=2, strategy=wrong, logger=False)
    auto = ModelParallelStrategy(parallelize_fn=parallelize, data_parallel_size="auto", tensor_parallel_size=3)
    with pytest.raises(ConfigurationError, match=r"tensor-parallel size 3 does not divide the world size 4"):
        dltrain.Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy=auto, logger=False)


@pytest.mark.parametrize(("strategy", "sizes"), [("fsdp2", (4, 1)), (dltrain.FSDP2(), (4, 1)),
                                                 (dltrain.FSDP2(tensor_parallel_size=2), (2, 2))])
def test_fsdp2_and_its_spec_become_a_model_parallel_strategy_on_a_data_x_tensor_mesh(strategy, sizes):
    from lightning.fabric.strategies import ModelParallelStrategy

    from dltrain._compat import model_parallel_sizes

    built = _sharded.resolve_strategy(strategy, "cpu", 4, 1, "32-true")
    assert isinstance(built, ModelParallelStrategy) and model_parallel_sizes(built) == sizes


class _Mesh:
    """A stand-in for a device mesh: only the dimension sizes (no process group needed)."""

    def __init__(self, **sizes: int) -> None:
        self.sizes = sizes

    def __getitem__(self, name: str):
        return type("Dim", (), {"size": lambda _self, n=self.sizes[name]: n})()


def test_tensor_parallelism_asked_but_not_applied_in_configure_model_says_what_to_do():
    task = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ConfigurationError, match=r"tensor_parallel_size=2, but Sequential.configure_model applied "
                                                 r"no tensor parallelism .*parallelize_module\(self, "
                                                 r'self.device_mesh\["tensor_parallel"\], plan\)'):
        _sharded._parallelize(task, _Mesh(data_parallel=2, tensor_parallel=2), precision="32-true")  # type: ignore[arg-type]


def test_cpu_offload_shards_with_fsdp2s_offload_policy_and_trains_to_the_same_weights(tmp_path, monkeypatch):
    """FSDP2(cpu_offload=True) passes CPUOffloadPolicy to every fully_shard call; the training is unchanged (on
    this CPU-only machine the copies are to the same device; what changes on a GPU is where the state lives)."""
    import torch.distributed.fsdp as fsdp

    from tests.helpers.tasks import TinyTask, loader, quiet_trainer

    calls: list[dict] = []
    real = fsdp.fully_shard

    def recording(module, **kwargs):
        calls.append(kwargs)
        return real(module, **kwargs)

    monkeypatch.setattr(fsdp, "fully_shard", recording)

    def weights(strategy):
        torch.manual_seed(0)
        task = TinyTask()
        quiet_trainer(tmp_path, strategy=strategy, devices=1, max_epochs=2).fit(task, loader(n=32))
        return {k: v.full_tensor().clone() for k, v in task.state_dict().items()}

    try:
        plain = weights(dltrain.FSDP2())
        assert calls and not any("offload_policy" in c for c in calls)
        calls.clear()
        offloaded = weights(dltrain.FSDP2(cpu_offload=True))
    finally:  # FSDP2 in this process set up a (one-rank) default process group
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert calls and all(isinstance(c.get("offload_policy"), fsdp.CPUOffloadPolicy) for c in calls), calls
    for name, value in plain.items():
        assert torch.equal(value, offloaded[name]), name
    with pytest.raises(ConfigurationError, match="cpu_offload"):
        dltrain.FSDP2(cpu_offload="yes")  # type: ignore[arg-type]
