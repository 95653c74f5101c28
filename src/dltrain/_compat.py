"""Every use of another library's private API, in one place.

Each function names what it reads, why no public API does the job, and what happens when a new version changes it.
``tests/test_compat.py`` calls each one against the installed versions, so that a change fails there, loudly,
instead of somewhere in a training run.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "dcp_storage_files",
    "default_store",
    "metric_forward_value",
    "random_sampler_draws_fixed_count",
    "shutdown_loader_workers",
    "strategy_wraps_module",
    "tar_writer_offset",
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


def tar_writer_offset(writer: Any) -> int | None:
    """Bytes written so far by webdataset's ``ShardWriter`` (its ``TarWriter.tarstream``, a ``tarfile.TarFile``).

    Why: the shard index records each sample's byte offset as it is written, which no public attribute exposes.
    ``None`` (no offsets in the index; readers then scan) when the attributes are missing.
    """
    tar = getattr(getattr(writer, "tarstream", None), "tarstream", None)
    offset = getattr(tar, "offset", None)
    return offset if isinstance(offset, int) else None


def shutdown_loader_workers(iterator: Any) -> None:
    """Stop a ``DataLoader`` iterator's worker processes now (``_MultiProcessingDataLoaderIter._shutdown_workers``).

    Why: when an epoch fails, leaving it to garbage collection makes each worker wait 5 s in an arbitrary order.
    A no-op for iterators without workers.
    """
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()


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
