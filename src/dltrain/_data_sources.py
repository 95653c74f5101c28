"""Where a stage's data comes from, how it is wrapped, and ``prepare_data``/``setup``.

The data: loaders given to the Trainer, a DataModule, or the task's ``*_dataloader()``; map-style loaders are
wrapped for distributed, resumable sampling.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from dltrain import _compat
from dltrain._hooks import overrides
from dltrain._resumable_loader import in_order, wrap_loader
from dltrain.errors import ConfigurationError
from dltrain.task import Task

if TYPE_CHECKING:
    from dltrain._engine import Engine
    from dltrain._hooks import HookDispatcher
    from dltrain._settings import Settings
    from dltrain._sharded import Layout
    from dltrain.callbacks.base import TrainerView

__all__ = ["in_order_to_overfit", "is_datamodule", "prepare_and_setup", "source", "wrap", "wrap_all"]


def source(kind: str, given: Any, datamodule: Any, task: Task | None, required: bool = True) -> Any:
    """The loader(s) of ``kind``: given, else the datamodule's, else the task's ``<kind>_dataloader()``.

    ``kind``: ``"train"``, ``"val"``, ``"test"`` or ``"predict"``.
    """
    if given is not None:
        refuse_datasets(given, kind)
        return given
    name = f"{kind}_dataloader"
    for owner in (datamodule, task):
        method = getattr(owner, name, None) if owner is not None else None
        if method is None or (owner is datamodule and _datamodule_default(owner, name)):
            continue
        if owner is task and not overrides(owner, Task, name):
            continue  # Task's default (raising) *_dataloader(): the task gives no loaders
        loaders = method()
        refuse_datasets(loaders, kind)
        return loaders
    if required:
        raise ConfigurationError(
            f"no {kind} data: pass {kind}_dataloaders (or dataloaders=) to the Trainer method, a datamodule with "
            f"{name}(), or define {name}() on {type(task).__name__}"
        )
    return None


def in_order_to_overfit(loaders: Any, kind: str, view: TrainerView) -> Any:
    """``overfit_batches``: a fit's ``kind`` ("train" or "val") loaders, read the same batches every epoch.

    A map-style loader that does not read in order (a shuffled one) is rebuilt to, with Lightning's warning (on
    global rank 0); others are left as they are.
    """
    if isinstance(loaders, Mapping):
        rebuilt: Any = {name: in_order(one) for name, one in loaders.items()}
        changed = any(rebuilt[name] is not loaders[name] for name in loaders)
    elif isinstance(loaders, (list, tuple)) and not _is_batch_list(loaders):
        rebuilt = type(loaders)(in_order(one) for one in loaders)
        changed = any(a is not b for a, b in zip(rebuilt, loaders))
    else:
        rebuilt = in_order(loaders)
        changed = rebuilt is not loaders
    if changed and view.is_global_zero:
        warnings.warn(f"You requested to overfit but enabled {kind} dataloader shuffling. We are turning off the "
                      f"{kind} dataloader shuffling for you.", UserWarning, stacklevel=4)
    return rebuilt


def wrap(loader: Any, training: bool, settings: Settings, split: Layout) -> Any:
    """What the loop iterates: map-style loaders made distributed and resumable.

    Several training loaders (a dict or a list of loaders) are combined by `dltrain.data.CombinedLoader`, each
    wrapped.
    """
    from dltrain.data.combined import CombinedLoader

    loader = _from_lightning_combined(loader, training)
    several = isinstance(loader, Mapping) or (isinstance(loader, (list, tuple)) and not _is_batch_list(loader))
    if training and several:
        loader = CombinedLoader(loader)
    if isinstance(loader, CombinedLoader):
        loader.loaders = [wrap(child, training, settings, split) for child in loader.loaders]
        return loader
    if not settings.use_distributed_sampler:
        _refuse_unsplit_under_tp(split, loader)
        return loader
    # Split by data-parallel rank: tensor-parallel peers must read the same samples.
    loader = wrap_loader(loader, rank=split.rank, world_size=split.size, seed=settings.seed, training=training)
    set_split = getattr(loader, "set_split", None)  # loaders that split themselves (StreamingDataLoader)
    if callable(set_split):
        set_split(split.rank, split.size)
    return loader


def _from_lightning_combined(loader: Any, training: bool) -> Any:
    """Lightning's ``CombinedLoader`` as dltrain takes it; anything else as it is.

    Training: its loaders and mode as a `dltrain.data.CombinedLoader` ('sequential' refused, as Lightning's fit
    does). Evaluation: 'sequential' is several loaders, one after the other, as a list is.
    """
    from dltrain.data.combined import MODES, CombinedLoader

    mode = _compat.lightning_combined_loader_mode(loader)
    if mode is None:
        return loader
    iterables = loader.iterables
    if not isinstance(iterables, (Mapping, list, tuple)):
        iterables = [iterables]
    if training:
        if mode not in MODES:
            raise ConfigurationError(
                f"CombinedLoader(mode={mode!r}) cannot be used for training (Lightning's fit refuses it too): use "
                f"one of {MODES}"
            )
        return CombinedLoader(iterables, mode=mode)
    if mode != "sequential":
        raise ConfigurationError(
            f"CombinedLoader(mode={mode!r}) for evaluation: dltrain evaluates several loaders one after the other "
            "(dataloader_idx tells them apart); pass them as a list or as CombinedLoader(..., mode='sequential')"
        )
    return list(iterables.values()) if isinstance(iterables, Mapping) else list(iterables)


def _refuse_unsplit_under_tp(split: Layout, loader: Any) -> None:
    """Refuse ``use_distributed_sampler=False`` with a streaming loader under tensor parallelism.

    ``use_distributed_sampler=False`` leaves the split to the loader; a streaming one given none splits by
    global rank, so under tensor parallelism the peers of a group would train on different batches.
    """
    from dltrain.data.streaming import StreamingDataLoader, StreamingDataset

    if split.tensor_parallel_size == 1:
        return
    if isinstance(loader, StreamingDataset) or (isinstance(loader, StreamingDataLoader) and loader.split is None):
        raise ConfigurationError(
            f"use_distributed_sampler=False under tensor parallelism (tensor_parallel_size="
            f"{split.tensor_parallel_size}), but the {type(loader).__name__} has no split of its own: it "
            "would split by global rank and tensor-parallel peers would read different batches. Build it with "
            ".loader(rank=trainer.data_parallel_rank, world_size=trainer.data_parallel_size) (or call its "
            "set_split), or leave use_distributed_sampler=True"
        )


def wrap_all(loaders: Any, settings: Settings, split: Layout) -> list[Any]:
    """Evaluation loaders as a list (a list/tuple of loaders, a dict of loaders by name, or one loader)."""
    loaders = _from_lightning_combined(loaders, training=False)
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if not isinstance(loaders, (list, tuple)) or _is_batch_list(loaders):
        loaders = [loaders]
    return [wrap(loader, False, settings, split) for loader in loaders]


def prepare_and_setup(view: TrainerView, engine: Engine, hooks: HookDispatcher, dm: Any, task: Task | None,
                      stage: str) -> None:
    """``prepare_data`` (one process per machine, or per job), then ``setup(stage)`` on every rank.

    The datamodule gets ``view``, the Trainer, as its ``trainer``. ``stage`` is passed as Lightning passes it, a
    `dltrain.states.TrainerFn` (a ``str``: ``stage == "fit"``).
    """
    from dltrain.states import TrainerFn

    stage = TrainerFn(stage)
    for owner in (dm, task):
        if owner is None or not hasattr(owner, "prepare_data"):
            continue
        per_node = getattr(owner, "prepare_data_per_node", True)
        if (engine.local_rank if per_node else engine.global_rank) == 0:
            owner.prepare_data()
    if engine.world_size > 1:
        engine.barrier()
    if dm is not None:
        dm.trainer = view
        dm.setup(stage)
    hooks.call_callbacks("setup", stage)
    if task is not None:
        task.setup(stage)


def is_datamodule(obj: Any) -> bool:
    """A dltrain DataModule or anything shaped like Lightning's (duck typing: a LightningDataModule works)."""
    from dltrain.datamodule import DataModule

    return isinstance(obj, DataModule) or (
        obj is not None and hasattr(obj, "train_dataloader") and hasattr(obj, "setup") and not hasattr(obj, "__iter__")
    )


def _datamodule_default(dm: Any, name: str) -> bool:
    """Whether ``dm.<name>`` is the base class's (raising) default rather than the user's."""
    from dltrain.datamodule import DataModule

    if name in getattr(dm, "__dict__", {}):  # set on the instance (DataModule.from_datasets)
        return False
    return any(isinstance(dm, base) and not overrides(dm, base, name)
               for base in (DataModule, *_lightning_datamodule()))


def _lightning_datamodule() -> tuple[type, ...]:
    try:
        from lightning.pytorch import LightningDataModule
    except ImportError:  # pragma: no cover - lightning.pytorch is part of the lightning package
        return ()
    return (LightningDataModule,)


def _is_batch_list(items: Any) -> bool:
    """A list of batches (tensors, tuples or dicts of tensors) rather than a list of loaders."""
    if not items:
        return False
    first = items[0]
    if isinstance(first, (Tensor, tuple, dict)):
        return True
    if isinstance(first, list):
        return bool(first) and isinstance(first[0], Tensor)
    return not hasattr(first, "__iter__")


def refuse_datasets(loaders: Any, kind: str) -> None:
    """A map-style Dataset where a loader belongs would be iterated sample by sample, unbatched: refuse it."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    for loader in loaders if isinstance(loaders, (list, tuple)) and not _is_batch_list(loaders) else [loaders]:
        if isinstance(loader, Dataset) and not isinstance(loader, (IterableDataset, DataLoader)):
            raise ConfigurationError(
                f"the {kind} data is a {type(loader).__name__} (a Dataset), not a loader: it would be iterated "
                f"one sample at a time, unbatched. Wrap it: torch.utils.data.DataLoader(dataset, batch_size=...)"
            )
