"""Sharded training (``strategy="fsdp2"``) and sharded checkpoints.

FSDP2 runs through Fabric's ``ModelParallelStrategy`` with a parallelize function that applies ``fully_shard`` to
each top-level child module holding parameters, then to the task itself, on a 1-D data-parallel mesh; a task that
shards itself in ``configure_model`` (``self.device_mesh``) is left as it made itself.

A sharded checkpoint is a directory: model and optimizer shards written by every rank with
``torch.distributed.checkpoint`` (through the strategy's ``save_checkpoint``), and ``meta.pt``, written by global
rank zero, with everything else dltrain saves (loop state, per-rank RNG states and loader positions, callbacks,
loggers). It is written under a temporary name and renamed by rank zero once every rank's shards are on disk, so
the directory is either absent or complete. Loading reshards: a checkpoint written at world size N loads at any
world size, and into a model that is not sharded at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from dltrain import _storage
from dltrain.checkpoint import fsync_path
from dltrain.errors import CheckpointError, ConfigurationError

if TYPE_CHECKING:
    from lightning.fabric.strategies import ModelParallelStrategy
    from torch.distributed.device_mesh import DeviceMesh

    from dltrain._async_checkpoint import AsyncSave
    from dltrain._engine import Engine

META_FILE = "meta.pt"  # Fabric's name for the non-tensor part of a distributed checkpoint
_DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of every shard
# The methods the loops call instead of forward: FSDP2 must gather the parameters around them too.
_STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")


# ---------------------------------------------------------------------- the strategy
class Layout(NamedTuple):
    """Where this rank sits on the mesh: what data it reads and with whom it reduces metrics."""

    rank: int  # data-parallel rank: the split of the data this rank reads
    size: int  # data-parallel ranks (world size without tensor parallelism)
    group: Any  # the data-parallel process group; None: the default group (every rank)
    tensor_parallel_rank: int
    tensor_parallel_size: int


def resolve_strategy(strategy: Any, accelerator: str, devices: Any, num_nodes: int, precision: str) -> Any:
    """What Fabric gets for ``Trainer(strategy=...)``.

    ``"fsdp2"`` and :class:`dltrain.FSDP2` become a ``ModelParallelStrategy``; a ``ModelParallelStrategy`` given
    whole is checked against the world size; anything else is passed on as it is.

    Args:
        strategy: the Trainer's ``strategy`` argument.
        accelerator: the Trainer's ``accelerator`` (with ``devices="auto"``, it decides how many devices count).
        devices: the Trainer's ``devices`` per node.
        num_nodes: the Trainer's ``num_nodes``.
        precision: the Trainer's ``precision`` (``"bf16-mixed"`` gives FSDP2 a mixed-precision policy).

    Raises:
        ConfigurationError: the tensor-parallel size does not divide the world size (or the sizes given do not
            multiply to it).
    """
    from lightning.fabric.strategies import ModelParallelStrategy

    from dltrain.strategies import FSDP2, data_parallel_size

    if strategy == "fsdp2":
        strategy = FSDP2()
    if isinstance(strategy, FSDP2):
        world = world_size_of(accelerator, devices, num_nodes)
        return fsdp2_strategy(world, precision, strategy.tensor_parallel_size, cpu_offload=strategy.cpu_offload)
    if isinstance(strategy, ModelParallelStrategy):
        _check_model_parallel_sizes(strategy, accelerator, devices, num_nodes, data_parallel_size)
    return strategy


def _check_model_parallel_sizes(strategy: ModelParallelStrategy, accelerator: str, devices: Any, num_nodes: int,
                                data_parallel_size: Any) -> None:
    """Fabric checks the sizes only once the processes run (a RuntimeError from inside ``launch``): say it here."""
    world = world_size_of(accelerator, devices, num_nodes)
    # Fabric's "auto": data parallel across nodes, tensor parallel within a node.
    from dltrain._compat import model_parallel_sizes

    dp_asked, tp_asked = model_parallel_sizes(strategy)
    tp = world // num_nodes if tp_asked == "auto" else int(tp_asked)
    asked = f"ModelParallelStrategy(data_parallel_size={dp_asked!r}, tensor_parallel_size={tp_asked!r})"
    dp = data_parallel_size(world, tp, asked) if dp_asked == "auto" else int(dp_asked)
    if dp * tp != world:
        raise ConfigurationError(
            f"{asked}: {dp} x {tp} = {dp * tp} ranks, but the run has {world} processes (devices x nodes). Make "
            f"data_parallel_size x tensor_parallel_size equal {world}, or pass dltrain.FSDP2(tensor_parallel_size="
            f"{tp}), which takes the data-parallel size from the world size"
        )


def fsdp2_strategy(world_size: int, precision: str, tensor_parallel_size: int = 1, *,
                   cpu_offload: bool = False) -> ModelParallelStrategy:
    """Fabric's ``ModelParallelStrategy`` that shards the task as :func:`_parallelize` does.

    Args:
        world_size: processes of the run; the mesh is (``world_size // tensor_parallel_size``) x
            ``tensor_parallel_size``.
        precision: the Trainer's ``precision`` (``"bf16-mixed"``: compute in bfloat16, reduce in float32).
        tensor_parallel_size: the tensor-parallel dimension of the mesh.
        cpu_offload: keep the shards of parameters, gradients and optimizer states in host memory.
    """
    from lightning.fabric.strategies import ModelParallelStrategy

    from dltrain.strategies import data_parallel_size

    dp = data_parallel_size(world_size, tensor_parallel_size,
                            f"FSDP2(tensor_parallel_size={tensor_parallel_size})")

    def parallelize(module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        return _parallelize(module, mesh, precision, cpu_offload)

    return ModelParallelStrategy(parallelize_fn=parallelize, data_parallel_size=dp,
                                 tensor_parallel_size=tensor_parallel_size)


def layout_of(strategy: Any, global_rank: int, world_size: int) -> Layout:
    """This rank's `Layout` under ``strategy`` (after launch).

    From the device mesh of a ``ModelParallelStrategy``, else every rank is its own data-parallel replica.
    """
    from lightning.fabric.strategies import ModelParallelStrategy

    if not isinstance(strategy, ModelParallelStrategy):
        return Layout(global_rank, world_size, None, 0, 1)
    mesh = strategy.device_mesh
    dp, tp = mesh["data_parallel"], mesh["tensor_parallel"]
    if tp.size() == 1:  # one replica per rank: the default group, as without a mesh
        return Layout(global_rank, world_size, None, 0, 1)
    return Layout(dp.get_local_rank(), dp.size(), dp.get_group(), tp.get_local_rank(), tp.size())


def check_no_dtensors(module: nn.Module, strategy: Any) -> None:
    """Refuse parameters already distributed when ``strategy`` does not own a mesh.

    Parameters made DTensors in ``configure_model`` (tensor parallelism) need the strategy that owns the mesh; DDP
    or one device would train them wrongly or fail deep inside torch.

    Raises:
        ConfigurationError: a parameter of ``module`` is a DTensor (the message names it).
    """
    from torch.distributed.tensor import DTensor

    name = next((n for n, p in module.named_parameters() if isinstance(p, DTensor)), None)
    if name is not None:
        raise ConfigurationError(
            f"parameter {name!r} of {type(module).__name__} is a DTensor (tensor parallelism or sharding applied "
            f"in configure_model), but the strategy ({type(strategy).__name__}) does not handle distributed "
            "parameters: use Trainer(strategy=dltrain.FSDP2(tensor_parallel_size=N)) and parallelize on "
            'self.device_mesh["tensor_parallel"]'
        )


def _parallelize(module: nn.Module, mesh: DeviceMesh, precision: str, cpu_offload: bool = False) -> nn.Module:
    """``fully_shard`` each of `sharding_units`, then the root, over the data-parallel mesh.

    On top of the task's own tensor parallelism, if any; the step methods become forward methods of the root, so
    that its own parameters are gathered around them as around ``forward``.
    """
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
    )
    from torch.distributed.tensor import DTensor

    if not any(p.requires_grad for p in module.parameters()):
        raise ConfigurationError(
            f'strategy="fsdp2" shards parameters, but {type(module).__name__} has no trainable parameters. Create '
            "the layers in __init__ or configure_model (not in a step), or use strategy=\"ddp\" or \"auto\""
        )
    tensor_parallel = any(isinstance(p, DTensor) for p in module.parameters())
    tp_size = mesh["tensor_parallel"].size()
    if tp_size > 1 and not tensor_parallel:
        raise ConfigurationError(
            f"tensor_parallel_size={tp_size}, but {type(module).__name__}.configure_model applied no tensor "
            "parallelism (no parameter is a DTensor): call torch.distributed.tensor.parallel.parallelize_module("
            'self, self.device_mesh["tensor_parallel"], plan) there, or use tensor_parallel_size=1'
        )
    # A task that called fully_shard itself is left as it is; one that applied only tensor parallelism gets the
    # default plan over the data-parallel dimension on top (2-D: each shard of a DTensor is sharded again).
    if not any(isinstance(m, FSDPModule) for m in module.modules()):
        dp_mesh = mesh["data_parallel"]
        kwargs: dict[str, Any] = {"mesh": dp_mesh}
        if precision == "bf16-mixed":
            # Compute in bfloat16, keep float32 weights and reduce gradients in float32.
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if cpu_offload:
            # Pinned host memory makes the copies to a GPU asynchronous; pinning needs a CUDA runtime.
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
        for unit in sharding_units(module):
            fully_shard(unit, **kwargs)
        fully_shard(module, **kwargs)
    register_step_methods(module)
    return module


def register_step_methods(module: nn.Module) -> None:
    """Make the step methods of a ``fully_shard``-ed root forward methods of FSDP2.

    Its parameters are gathered and its root hooks run around them as around ``forward``; also for a root sharded
    by a user's own ``parallelize_fn``. A module that is not sharded is left as it is.
    """
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    if isinstance(module, FSDPModule):
        for name in _STEP_METHODS:
            if callable(getattr(module, name, None)) and name not in vars(module):  # not registered yet
                register_fsdp_forward_method(module, name)


def sharding_units(module: nn.Module) -> list[nn.Module]:
    """What the default plan shards one by one.

    Each child holding parameters; instead of a ``ModuleList`` or ``ModuleDict`` child, its members (containers
    have no ``forward`` for FSDP2 to hook; a transformer's blocks live there).
    """
    units: list[nn.Module] = []
    for child in module.children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            units.extend(sharding_units(child))
        else:
            units.append(child)
    return units


def is_fsdp2(strategy: Any) -> bool:
    """Whether ``strategy`` shards the task itself (FSDP2 on Fabric's ``ModelParallelStrategy``)."""
    from lightning.fabric.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy)


def world_size_of(accelerator: str, devices: Any, num_nodes: int) -> int:
    """Processes of the run, from the Trainer's ``devices`` and ``num_nodes`` (as Fabric counts them)."""
    if isinstance(devices, (list, tuple)):
        per_node = len(devices)
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    elif devices in ("auto", -1, "-1"):
        cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
        per_node = torch.cuda.device_count() if cuda else 1
    else:
        per_node = int(devices)
    return per_node * num_nodes


# ---------------------------------------------------------------------- saving
def save(engine: Engine, path: str | os.PathLike[str], metadata: dict[str, Any],
         storage_options: Mapping[str, Any] | None = None, *, optimizers: bool = True,
         background: AsyncSave | None = None, after: Callable[[], None] | None = None) -> None:
    """Write the sharded checkpoint directory ``path`` (every rank calls it).

    Shards of the model and optimizers (``optimizers=False``: weights only) from every rank, ``metadata`` from rank
    zero. ``path`` appears only once all of it is on disk (on an object store: the parts, then the commit object
    ``path`` naming them). ``after`` runs on rank zero once it has.

    With ``background``: DCP's ``async_save`` copies this rank's shards to host memory and returns; the write, the
    publication and ``after`` run on the writer thread (DCP's collectives on a process group of their own).
    """
    remote = _storage.is_remote(path)
    if remote:
        from dltrain import _remote_checkpoint

        location: str = engine.fabric.broadcast(
            _remote_checkpoint.new_parts(str(path)) if engine.is_global_zero else "", src=0)
    else:
        final = Path(path)
        tmp = final.with_name(f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        location = engine.fabric.broadcast(str(tmp), src=0)  # rank zero's name on every rank
        if engine.is_global_zero:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(location, ignore_errors=True)
            os.mkdir(location)  # meta.pt may be written before DCP's background write has made it
        engine.fabric.barrier()

    def publish_all() -> None:  # on rank zero, once every rank's shards are written
        if remote:
            commit_shards(str(path), location, metadata, storage_options)
        else:
            tmp = Path(location)
            for file in tmp.iterdir():
                fsync_path(file)
            fsync_path(tmp)
            publish(tmp, Path(path))
        if after is not None:
            after()

    if background is None:
        write_shards(engine, location, metadata, storage_options, optimizers)  # DCP: each rank its shards
        engine.fabric.barrier()  # every rank's shards are written
        if engine.is_global_zero:
            publish_all()
        engine.fabric.barrier()  # no rank goes on (and may be killed) before the checkpoint is in place
        return
    import torch.distributed.checkpoint as dcp  # looked up at each call (the kill tests wrap it)

    group = background.process_group()
    if remote:
        from dltrain._compat import dcp_fsspec_storage

        future = dcp.async_save(shard_state(engine, optimizers), storage_writer=dcp_fsspec_storage(
            location, storage_options, reader=False), process_group=group)
    else:
        future = dcp.async_save(shard_state(engine, optimizers), checkpoint_id=location, process_group=group)
    if engine.is_global_zero:
        write_meta(location, metadata, storage_options)
    rank_zero = engine.is_global_zero
    upload: Any = getattr(future, "upload_completion", future)  # an AsyncSaveResponse with asynchronous staging

    def finish() -> None:
        upload.result()  # on rank zero: DCP's coordinator has gathered every rank's write results
        if rank_zero:
            publish_all()

    background.writer.submit(finish, str(path))


def shard_state(engine: Engine, optimizers: bool = True) -> dict[str, Any]:
    """This rank's shards of the model (``model``) and of every optimizer (``optimizer_<i>``), on the CPU.

    The layout Fabric's ``ModelParallelStrategy.save_checkpoint`` writes, so that either reads the other's.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    module = engine.module.module
    options = StateDictOptions(cpu_offload=True)
    state: dict[str, Any] = {"model": get_model_state_dict(module, options=options)}
    for i, optimizer in enumerate(engine.optimizers if optimizers else []):
        state[f"optimizer_{i}"] = get_optimizer_state_dict(module, optimizer, options=options)
    return state


def write_shards(engine: Engine, location: str, metadata: dict[str, Any],
                 storage_options: Mapping[str, Any] | None = None, optimizers: bool = True) -> None:
    """Every rank's shards into ``location`` (a directory or a URL prefix), then ``meta.pt`` from rank zero."""
    import torch.distributed.checkpoint as dcp  # looked up at each call (the kill tests wrap dcp.save)

    state = shard_state(engine, optimizers)
    if _storage.is_remote(location):
        from dltrain._compat import dcp_fsspec_storage

        dcp.save(state, storage_writer=dcp_fsspec_storage(location, storage_options, reader=False))
    else:
        dcp.save(state, checkpoint_id=location)
    if engine.is_global_zero:
        write_meta(location, metadata, storage_options)


def write_meta(location: str, metadata: dict[str, Any], storage_options: Mapping[str, Any] | None = None) -> None:
    """``meta.pt`` (the non-tensor part of the checkpoint) into ``location``, a directory or a URL prefix."""
    if _storage.is_remote(location):
        from dltrain import _remote_checkpoint

        _storage.write_bytes(_storage.join(location, META_FILE), _remote_checkpoint.to_bytes(metadata),
                             storage_options)
    else:
        torch.save(metadata, Path(location) / META_FILE)


def commit_shards(url: str, parts: str, metadata: dict[str, Any],
                  storage_options: Mapping[str, Any] | None = None) -> None:
    """The commit object ``url`` of the complete sharded ``parts`` (every file listed with its size)."""
    from dltrain import _remote_checkpoint

    files = {_storage.basename(e["name"]): int(e["size"]) for e in _storage.listing(parts, storage_options)
             if e.get("type") != "directory"}
    missing = {META_FILE, _DCP_METADATA} - set(files)
    if missing:
        raise CheckpointError(f"sharded checkpoint {_storage.redact(url)!r}: {sorted(missing)} not found under "
                              f"{_storage.redact(parts)} after every rank wrote its shards")
    _remote_checkpoint.commit(url, parts, files, metadata, sharded=True, storage_options=storage_options)


def publish(tmp: Path, final: Path) -> None:
    """Make the complete directory ``tmp`` visible as ``final``, atomically.

    A new name is a rename. An existing ``final`` (``last.ckpt`` rewritten) becomes a symbolic link to a hidden
    directory, swapped atomically; the directory it named before is removed afterwards when it was such a hidden one.
    """
    if not os.path.lexists(final):
        os.rename(tmp, final)
        fsync_path(final.parent)
        return
    real = final.with_name(f".{final.name}.d-{uuid.uuid4().hex[:12]}")
    os.rename(tmp, real)
    link_atomic(real, final)


def link_atomic(target: Path, link: Path) -> None:
    """Point ``link`` at the directory ``target`` in the same folder, in one rename.

    ``link`` is a relative symbolic link (the folder can move); a hidden directory it named before (see
    `publish`) is removed then.
    """
    previous = os.readlink(link) if link.is_symlink() else None
    tmp = link.with_name(f".{link.name}.tmp-{socket.gethostname()}-{os.getpid()}")  # a stale one is removed at start
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target.name, tmp, target_is_directory=True)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)
    fsync_path(link.parent)
    if previous is not None and previous != target.name and previous.startswith(f".{link.name}.d-"):
        shutil.rmtree(link.parent / previous, ignore_errors=True)


# ---------------------------------------------------------------------- reading
def is_sharded(path: str | os.PathLike[str]) -> bool:
    """Whether the local checkpoint ``path`` is a sharded one (a directory)."""
    return Path(path).is_dir()


def load_metadata(path: Path) -> dict[str, Any]:
    """``meta.pt`` of a sharded checkpoint (``weights_only=True``), after checking that every shard is there.

    Raises:
        CheckpointError: the metadata or a shard file is missing or unreadable.
    """
    _check_complete(path)
    try:
        meta = torch.load(path / META_FILE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"sharded checkpoint {str(path)!r}: {META_FILE} cannot be read "
                              f"({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(meta, dict) or "loops" not in meta:
        raise CheckpointError(f"{str(path)!r} is not a dltrain sharded checkpoint ({META_FILE} holds no loop state)")
    meta["sharded"] = True
    meta["_shards"] = str(path)  # where the shards are (a URL on an object store: the commit's parts)
    return meta


def _check_complete(path: Path) -> None:
    from dltrain._compat import dcp_storage_files

    for name in (META_FILE, _DCP_METADATA):
        if not (path / name).is_file():
            raise CheckpointError(
                f"sharded checkpoint {str(path)!r} is incomplete: {name} is missing (a directory of a killed save, "
                "or not a dltrain checkpoint). Pass ckpt_path='last' to use the newest complete one"
            )
    metadata = _read_dcp_metadata(path)
    missing = sorted(f for f in dcp_storage_files(metadata) if not (path / f).is_file())
    if missing:
        raise CheckpointError(
            f"sharded checkpoint {str(path)!r} is incomplete: shard file(s) {', '.join(missing)} are missing "
            "(each rank writes __<rank>_*.distcp; copy the whole directory). Pass ckpt_path='last' to use the "
            "newest complete one"
        )


def _reader(location: str | Path) -> Any:
    """torch.distributed.checkpoint's reader of a directory, or of a URL prefix (fsspec)."""
    if _storage.is_remote(location):
        from dltrain._compat import dcp_fsspec_storage

        return dcp_fsspec_storage(str(location), None, reader=True)
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(location))


def _read_dcp_metadata(path: str | Path) -> Any:
    try:
        return _reader(path).read_metadata()
    except Exception as err:
        raise CheckpointError(f"sharded checkpoint {str(path)!r}: {_DCP_METADATA} cannot be read "
                              f"({type(err).__name__}: {str(err)[:200]})") from err


def check_model(module: nn.Module, path: str | Path) -> None:
    """A CheckpointError naming missing/unexpected keys and shape mismatches between the model and the shards."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from dltrain import checkpoint as ckpt_io

    stored = _read_dcp_metadata(path).state_dict_metadata
    shapes = {k[len("model."):]: torch.empty(tuple(v.size), device="meta")
              for k, v in stored.items() if k.startswith("model.") and isinstance(v, TensorStorageMetadata)}
    ckpt_io.check_state_dict(module, shapes, str(path))


def load_model(engine: Engine, path: str | Path) -> None:
    """Load the model's weights from the shards, resharded to this run's world size (or into a plain model)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    module: nn.Module = engine.module.module
    check_model(module, path)
    state = {"model": get_model_state_dict(module)}
    _dcp_load(state, path)
    set_model_state_dict(module, state["model"])


def read_model(module: nn.Module, path: str | Path) -> dict[str, Any]:
    """The whole model state of the shards in ``path``, in the layout of ``module``'s own (unsharded) state dict.

    Read by this process alone (no collective, whatever process group exists).

    Raises:
        CheckpointError: the shards cannot be read (the message names ``path`` and the error).
    """
    import torch.distributed.checkpoint as dcp

    state = {"model": {k: v.clone() for k, v in module.state_dict().items()}}
    try:
        dcp.load(state, storage_reader=_reader(path), no_dist=True)
    except Exception as err:
        raise CheckpointError(f"sharded checkpoint {_storage.redact(str(path))!r} cannot be read: {type(err).__name__}: "
                              f"{str(err)[:500]}") from err
    return state["model"]


def load_full_model(engine: Engine, state_dict: dict[str, Any]) -> None:
    """Load a full (unsharded) state dict into the sharded task: each rank keeps its own shard of it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(engine.module.module, state_dict, options=StateDictOptions(full_state_dict=True))


def load_optimizers(engine: Engine, path: str | Path) -> None:
    """Load every optimizer's state from the shards (``optimizer_<i>``), resharded to this run's world size."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    module = engine.module.module
    stored = {k.split(".", 1)[0] for k in _read_dcp_metadata(path).state_dict_metadata if k.startswith("optimizer_")}
    if len(stored) != len(engine.optimizers):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds {len(stored)} optimizer states, but configure_optimizers() returned "
            f"{len(engine.optimizers)} optimizers"
        )
    for i, optimizer in enumerate(engine.optimizers):
        key = f"optimizer_{i}"
        state = {key: get_optimizer_state_dict(module, optimizer)}
        _dcp_load(state, path)
        set_optimizer_state_dict(module, optimizer, optim_state_dict=state[key])


def _dcp_load(state: dict[str, Any], path: str | Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    try:  # without a process group (one process, a plain model) DCP reads every shard itself
        dcp.load(state, storage_reader=_reader(path), no_dist=not dist.is_initialized())
    except Exception as err:
        raise CheckpointError(f"sharded checkpoint {_storage.redact(str(path))!r} cannot be loaded: {type(err).__name__}: "
                              f"{str(err)[:500]}") from err
