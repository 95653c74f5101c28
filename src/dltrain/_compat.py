"""Every use of another library's private API, in one place.

Each function names what it reads, why no public API does the job, and what happens when a new version changes it.
``tests/test_compat.py`` calls each one against the installed versions, so that a change fails there, loudly,
instead of somewhere in a training run.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "check_loader_worker_sockets",
    "compiled_in_place",
    "dcp_fsspec_storage",
    "dcp_storage_files",
    "default_store",
    "dynamo_guard_failures",
    "is_batch_norm",
    "is_compiled",
    "lighthouse_server",
    "lightning_combined_loader_mode",
    "loader_worker_socket_path",
    "metric_forward_value",
    "model_parallel_sizes",
    "on_dynamo_compile",
    "process_group_settings",
    "random_sampler_draws_fixed_count",
    "release_loader_iterator",
    "shutdown_loader_workers",
    "strategy_wraps_module",
    "tar_next_offset",
    "tar_read_member_at",
    "tar_writer_offset",
    "wandb_offline_steps",
    "wds_drops_meta_member",
    "wds_split_name",
]


def random_sampler_draws_fixed_count(sampler: Any) -> bool:
    """Whether a ``RandomSampler`` was built with ``num_samples=`` (torch keeps it only in ``_num_samples``).

    Why: such a sampler draws a fixed count, not a permutation of the dataset, so dltrain must not replace it with
    its own resumable permutation sampler. ``sampler.num_samples`` (public) cannot tell: it falls back to the
    dataset length.
    """
    return getattr(sampler, "_num_samples") is not None  # noqa: B009  (fails loudly if torch renames it)


def metric_forward_value(metric: Any) -> Any:
    """The value a torchmetrics ``Metric`` computed in its last ``forward`` call (``_forward_cache``).

    Why: ``self.log("acc", metric)`` after ``metric(preds, target)`` reports the batch value at step level, as
    Lightning does; torchmetrics keeps that value only in this attribute. ``None`` until the first forward.
    """
    return getattr(metric, "_forward_cache")  # noqa: B009


def lightning_combined_loader_mode(loader: Any) -> str | None:
    """The mode of Lightning's ``CombinedLoader`` (``lightning.pytorch.utilities``; kept in ``_mode``), else None.

    Why: a Lightning user's script passes Lightning's object (its import is a utility, not renamed) and dltrain
    takes it as its own `dltrain.data.CombinedLoader`; Lightning exposes the loaders (``iterables``) but not the
    mode. Detected by class, without importing ``lightning.pytorch``.
    """
    cls = type(loader)
    if cls.__name__ != "CombinedLoader" or not cls.__module__.startswith(("lightning.pytorch.", "pytorch_lightning.")):
        return None
    return str(getattr(loader, "_mode"))  # noqa: B009  (fails loudly if Lightning renames it)


def tar_writer_offset(writer: Any) -> int | None:
    """Bytes written so far by webdataset's ``ShardWriter`` (its ``TarWriter.tarstream``, a ``tarfile.TarFile``).

    Why: the shard index records each sample's byte offset as it is written, which no public attribute exposes.
    ``None`` (no offsets in the index; readers then scan) when the attributes are missing.
    """
    tar = getattr(getattr(writer, "tarstream", None), "tarstream", None)
    offset = getattr(tar, "offset", None)
    return offset if isinstance(offset, int) else None


def tar_next_offset(tar: Any) -> int:
    """Where the next member header of a ``tarfile.TarFile`` starts, after the member parsed last (``TarFile.offset``).

    Why: the tar walker of `dltrain.data.tar` goes from header to header by seeking (payloads are never read) and
    records each sample's byte range for the shard index; `tarfile` keeps that position only in this undocumented
    attribute. A rename fails here with AttributeError.
    """
    return int(tar.offset)


def tar_read_member_at(tar: Any, pos: int | None) -> Any:
    """Parse the member (with its PAX/GNU extension headers) whose header starts at byte ``pos`` of ``tar``'s file.

    ``pos`` ``None``: where the file is now. Parsed as ``TarInfo.fromtarfile`` does in ``TarFile.next``; sets
    `tar_next_offset`.

    Why: reading one sample at its indexed offset, and walking a damaged shard strictly, need a parse at a known
    position; `TarFile`'s public iteration only goes forward from where it stopped, and quietly ends at damage.
    It reaches ``TarFile.fileobj`` and ``TarFile.tarinfo`` (undocumented attributes).
    """
    if pos is not None:
        tar.fileobj.seek(pos)
    return tar.tarinfo.fromtarfile(tar)


def wds_split_name(name: str) -> tuple[str | None, str]:
    """``(sample key, field)`` of a tar member name, as webdataset groups it.

    As ``webdataset.tariterators.base_plus_ext`` (not documented API): the key is the name up to the first dot
    of its file name; ``(None, ...)`` when the file name has no dot.

    Why: dltrain's readers and counters must form exactly the samples webdataset forms from the same shards.
    """
    from webdataset import tariterators

    key, field = tariterators.base_plus_ext(name)
    return key, field


def wds_drops_meta_member(name: str) -> bool:
    """Whether webdataset drops this member as a meta file instead of grouping it into a sample.

    As ``tariterators.meta_prefix``/``meta_suffix``: names such as ``__key__`` at the top level.

    Why: counting samples must drop the same members webdataset's tar iteration drops.
    """
    from webdataset import tariterators

    return "/" not in name and name.startswith(tariterators.meta_prefix) and name.endswith(tariterators.meta_suffix)


def loader_worker_socket_path() -> str | None:
    """The longest UNIX socket path a DataLoader worker of this process binds to send a batch, or None if none.

    torch's default sharing strategy on Linux (``file_descriptor``) hands each batch's storage to the main process
    through multiprocessing's resource sharer, whose listener is a UNIX socket named
    ``<multiprocessing.util.get_temp_dir()>/listener-<8 random characters>`` (``connection.arbitrary_address``);
    that folder is ``<tempfile.gettempdir()>/pymp-<8 random characters>``, made once per process and inherited by
    forked workers (calling it here makes it, so that the workers use the folder measured).

    Why: Linux caps a socket path at 107 bytes. Past it the bind fails in the worker's queue feeder thread, which
    prints the error and drops the batch, and the main process waits for it forever. If multiprocessing renames
    its listener, this length is off by a few bytes; ``tests/test_compat.py`` binds a listener to check it.
    """
    import multiprocessing.util

    import torch.multiprocessing

    if not sys.platform.startswith("linux") or torch.multiprocessing.get_sharing_strategy() != "file_descriptor":
        return None
    return f"{multiprocessing.util.get_temp_dir()}/listener-{'X' * 8}"


_MAX_SOCKET_PATH = 107  # Linux: sockaddr_un.sun_path is 108 bytes, the last one a NUL


def check_loader_worker_sockets(num_workers: int) -> None:
    """Raise `ConfigurationError` where DataLoader workers could not send a batch (see `loader_worker_socket_path`).

    Called before a loader with workers starts them: the error names the folder and what to do, where torch would
    wait forever for the first batch.
    """
    if num_workers <= 0:
        return
    path = loader_worker_socket_path()
    if path is not None and len(path.encode()) > _MAX_SOCKET_PATH:
        from dltrain.errors import ConfigurationError

        folder = path.rsplit("/", 2)[0]
        raise ConfigurationError(
            f"DataLoader workers cannot send batches from this process: torch passes each batch through a socket "
            f"under the temporary folder {folder!r}, and that socket's path would be {len(path.encode())} "
            f"characters, over Linux's {_MAX_SOCKET_PATH} (torch would drop every batch and wait forever). Set "
            "TMPDIR to a shorter folder (e.g. TMPDIR=/tmp), or use num_workers=0"
        )


def shutdown_loader_workers(iterator: Any) -> None:
    """Stop a ``DataLoader`` iterator's worker processes now (``_MultiProcessingDataLoaderIter._shutdown_workers``).

    Why: when an epoch fails, leaving it to garbage collection makes each worker wait 5 s in an arbitrary order.
    A no-op for iterators without workers.
    """
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()


def release_loader_iterator(loader: Any) -> None:
    """Stop the workers of the iterator a ``DataLoader`` keeps for persistent workers, and forget it.

    That iterator is ``DataLoader._iterator``; the next ``iter()`` starts workers afresh.

    Why: garbage collection finalizes such an iterator after its queues (a reference cycle), the stop message
    never reaches the workers, and ``_shutdown_workers`` waits 5 s per worker before killing them.
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        shutdown_loader_workers(iterator)
        loader._iterator = None


def default_store() -> Any:
    """The default process group's key-value store (``torch.distributed.distributed_c10d._get_default_store``).

    Why: the watchdog that stops every rank when one fails polls the same store as the process group, which
    torchrun or the launcher created; there is no public getter. ``None`` without a process group.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def strategy_wraps_module(fabric_module: Any) -> bool:
    """Whether Fabric's strategy wrapped the module (DDP, FSDP) rather than using it as it is.

    Why: steps of a wrapped module must go through the wrapper's ``forward`` (gradient sync, parameter gathering);
    Fabric's ``_FabricModule`` keeps the wrapper in ``_forward_module`` and the user's module in ``module``.
    """
    forward_module = getattr(fabric_module, "_forward_module")  # noqa: B009
    return forward_module is not fabric_module.module


def dcp_storage_files(metadata: Any) -> set[str]:
    """The files a ``torch.distributed.checkpoint`` checkpoint's shards live in, from its ``Metadata``.

    Why: a missing rank's shard is named before loading (a clear error instead of DCP's failure in the middle of a
    collective load). ``Metadata.storage_data`` is public, but its values are the file system storage's private
    ``_StorageInfo`` records, whose ``relative_path`` names the file.
    """
    return {getattr(info, "relative_path") for info in metadata.storage_data.values()}  # noqa: B009


def is_compiled(module: Any) -> bool:
    """Whether ``module`` is ``torch.compile(m)``'s ``OptimizedModule`` or was compiled in place (``m.compile()``).

    Why: dltrain leaves a module the user compiled as it is; ``OptimizedModule`` lives in the private
    ``torch._dynamo.eval_frame`` and ``Module.compile()`` keeps its compiled call only in ``_compiled_call_impl``.
    """
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(module, OptimizedModule) or getattr(module, "_compiled_call_impl") is not None  # noqa: B009


def compiled_in_place(module: Any) -> Any:
    """For ``torch.compile(m)``: ``m`` itself, its ``__call__`` compiled with the same settings; else ``module``.

    Why: ``trainer.fit(torch.compile(task))`` is Lightning's pattern, but the Trainer needs the ``Task`` (its hooks,
    its parameter names in checkpoints). ``OptimizedModule`` keeps the module in ``_orig_mod`` and the compile
    settings in ``dynamo_ctx``, the callable that ``torch.compile`` applies; ``Module.compile()`` stores
    ``torch.compile(m._call_impl)`` in ``_compiled_call_impl``, which is what this does with those settings.
    """
    if "torch._dynamo" not in sys.modules:  # nothing was compiled; importing dynamo would cost a second or more
        return module
    from torch._dynamo.eval_frame import OptimizedModule

    if not isinstance(module, OptimizedModule):
        return module
    inner = getattr(module, "_orig_mod")  # noqa: B009
    inner._compiled_call_impl = getattr(module, "dynamo_ctx")(inner._call_impl)  # noqa: B009
    return inner


def on_dynamo_compile(
    start: Callable[[str, int | None, int | None], None], end: Callable[[str, int | None, int | None], None]
) -> Callable[[], None]:
    """Call ``start(kind, frame, index)`` and ``end(kind, frame, index)`` around every torch.compile compilation.

    Returns the function that stops it.

    ``kind`` is ``"frame"`` (dynamo compiling a Python frame: the forward graph, and the backend's compile of
    it), ``"backward"`` (the backward graph, compiled at the first backward) or another trigger's name;
    ``frame`` numbers the compiled code and ``index`` counts its compilations (0: the first, 1 or more: a
    recompilation); ``None`` when unknown.

    Why: compile time and recompilations are reported as they happen. Dynamo's compile callbacks
    (``torch._dynamo.callback.callback_handler``) are the only hook; their argument's ``compile_id`` ("frame/count",
    a private format) says which compilation of a frame it is.
    """
    from torch._dynamo.callback import CallbackTrigger, callback_handler

    def describe(args: Any) -> tuple[str, int | None, int | None]:
        trigger = args.callback_trigger
        kind = {CallbackTrigger.DYNAMO: "frame", CallbackTrigger.LAZY_BACKWARD: "backward"}.get(
            trigger, str(getattr(trigger, "name", trigger)).lower())
        found = re.search(r"(\d+)/(\d+)", str(args.compile_id))
        if found is None:
            return kind, None, None
        return kind, int(found.group(1)), int(found.group(2))

    def on_start(args: Any) -> None:
        start(*describe(args))

    def on_end(args: Any) -> None:
        end(*describe(args))

    callback_handler.register_start_callback(on_start)
    callback_handler.register_end_callback(on_end)

    def remove() -> None:
        callback_handler.remove_start_callback(on_start)
        callback_handler.remove_end_callback(on_end)

    return remove


def dynamo_guard_failures() -> dict[str, list[str]]:
    """Every guard failure dynamo recorded in this process: ``{"name (file:line)": [reason, ...]}``, oldest first.

    Why: a recompilation's cause is the guards of the frame's earlier compilations that failed ("tensor 'x' size
    mismatch at index 0. expected 8, actual 4"). Dynamo appends them, before it recompiles, to
    ``torch._dynamo.utils.guard_failures`` (keyed by the code object); no public API returns them (``TORCH_LOGS=
    "recompiles"`` prints them, and changes the process's logging).
    """
    from torch._dynamo.utils import guard_failures

    return {f"{code.co_name} ({code.co_filename}:{code.co_firstlineno})": list(reasons)
            for code, reasons in list(guard_failures.items())}


def model_parallel_sizes(strategy: Any) -> tuple[Any, Any]:
    """``(data_parallel_size, tensor_parallel_size)`` a Fabric ``ModelParallelStrategy`` was built with.

    Each an int or ``"auto"``, read from ``_data_parallel_size``/``_tensor_parallel_size``.

    Why: Fabric checks that they multiply to the world size only inside ``launch`` (a RuntimeError from the
        spawned
    processes); dltrain checks before, with a message that says what to do. The device mesh, the public view
    of the sizes, exists only after launch. A rename fails here with an AttributeError (tests/test_compat.py).
    """
    return strategy._data_parallel_size, strategy._tensor_parallel_size


def wandb_offline_steps(path: str) -> list[tuple[int, list[str]]]:
    """``(step, keys)`` of every history row in an offline wandb run file (``run-<id>.wandb``), in file order.

    A file cut short by a kill is read up to its last complete record.

    Why: after a ``kill -9`` the rows of an offline run that are on disk are what a resumed run must not log
        again,
    and what is missing must be logged again; wandb has no public reader of its run files (0.19+ dropped
    ``wandb.sdk.internal.datastore``). The file is a leveldb-style log: a 7-byte header (``:W&B``, magic,
    version), then 32 KiB blocks of records ``crc32:u32 length:u16 type:u8 data`` (type FULL=1, FIRST=2,
    MIDDLE=3, LAST=4), ``data`` a serialized ``wandb.proto.wandb_internal_pb2.Record``. A changed format fails the
    round trip in tests/test_compat.py.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b":W&B":
        return []
    rows: list[tuple[int, list[str]]] = []
    pos, pending = header, b""
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # the block's trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        pos += header
        chunk = data[pos:pos + length]
        if len(chunk) < length:
            break  # cut short by a kill
        pos += length
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += block - pos % block if pos % block else 0
            continue
        if kind in (2, 3):
            pending = chunk if kind == 2 else pending + chunk
            continue
        payload = chunk if kind == 1 else pending + chunk
        pending = b""
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
        try:
            record.ParseFromString(payload)
        except Exception:  # a record torn by the kill: what follows cannot be trusted
            break
        if record.WhichOneof("record_type") == "history":
            keys = [item.key or "/".join(item.nested_key) for item in record.history.item]
            step = record.history.step.num if record.history.HasField("step") else None
            if step is not None:
                rows.append((int(step), [k for k in keys if not k.startswith("_")]))
    return rows


def process_group_settings(strategy: Any) -> tuple[str, Any] | None:
    """``(backend, timeout)`` a Lightning strategy would create its process group with.

    Read from its ``_get_process_group_backend()`` and ``_timeout``; ``None`` for a strategy that creates none
    (not one of the DDP/FSDP/model-parallel family). The timeout is ``None`` when the strategy has none.

    Why: `dltrain.distributed.isolate_restart_round` creates the process group itself (under torchrun
        restarts) and
    must use exactly what the strategy would have used; Fabric has no public getter for either. A rename turns
    this into ``None`` (the strategy then creates its group as usual) and fails tests/test_compat.py.
    """
    backend_of = getattr(strategy, "_get_process_group_backend", None)
    if backend_of is None:
        return None
    return backend_of(), getattr(strategy, "_timeout", None)


def is_batch_norm(module: Any) -> TypeGuard[_BatchNorm]:
    """Whether ``module`` is a batch-norm layer of any dimension.

    That is a ``torch.nn.modules.batchnorm._BatchNorm``: ``BatchNorm1d/2d/3d``, their lazy forms,
    ``SyncBatchNorm``.

    Why: `dltrain.callbacks.BaseFinetuning` keeps frozen batch-norm layers in eval mode (their running
        statistics
    would otherwise move), as Lightning's does; torch has no public base class of the batch-norm layers that
    excludes instance norm.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    return isinstance(module, _BatchNorm)


def lighthouse_server(bind: str, min_replicas: int, *, join_timeout_ms: int, quorum_tick_ms: int,
                      heartbeat_timeout_ms: int) -> Any:
    """The quorum server of torchft (``torchft._torchft.LighthouseServer``, in Rust), started in this process.

    ``.address()`` is its URL, ``.shutdown()`` stops it.

    Why: torchft 0.2 has no public Python name for it: its public way is the ``torchft_lighthouse`` executable,
    which the ``dltrain lighthouse`` command and the tests would have to start and kill as a child process
    (and parse its address from the log). The class is in torchft's own stub (``_torchft.pyi``); a rename fails
    here with ImportError and in ``tests/test_compat.py``.
    """
    from torchft._torchft import LighthouseServer

    return LighthouseServer(bind=bind, min_replicas=min_replicas, join_timeout_ms=join_timeout_ms,
                            quorum_tick_ms=quorum_tick_ms, heartbeat_timeout_ms=heartbeat_timeout_ms)


def dcp_fsspec_storage(location: str, options: Mapping[str, Any] | None, *, reader: bool) -> Any:
    """torch.distributed.checkpoint's ``FsspecReader``/``FsspecWriter`` of the URL prefix ``location``.

    With the fsspec ``options``; from ``torch.distributed.checkpoint._fsspec_filesystem``.

    Why: DCP picks them by itself for ``checkpoint_id="s3://..."`` (public), but then with no options: a user's
    ``storage_options`` (an endpoint, a profile) reach fsspec only through their constructors, which the package
    does not export. A move fails here with an ImportError (tests/test_compat.py).
    """
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    if reader:
        return FsspecReader(location, **dict(options or {}))
    # sync_files: an object store's stream has no fsync (DCP warns, then relies on close, which completes the PUT).
    return FsspecWriter(location, sync_files=False, **dict(options or {}))
