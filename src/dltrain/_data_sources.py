"""Where a stage's data comes from: loaders given to the Trainer, a DataModule, or the task's ``*_dataloader()``;
wrapping map-style loaders for distributed, resumable sampling; ``prepare_data`` and ``setup``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from dltrain._hooks import overrides
from dltrain._resumable_loader import wrap_loader
from dltrain.errors import ConfigurationError
from dltrain.task import Task

if TYPE_CHECKING:
    from dltrain.trainer import Trainer

__all__ = ["is_datamodule", "prepare_and_setup", "reload_train_loader", "source", "wrap", "wrap_all"]


def source(trainer: Trainer, kind: str, given: Any, required: bool = True) -> Any:
    """The loader(s) of ``kind`` ("train", "val", "test", "predict"): given, else the datamodule's, else the
    task's ``<kind>_dataloader()``."""
    if given is not None:
        refuse_datasets(given, kind)
        return given
    name = f"{kind}_dataloader"
    for owner in (trainer.datamodule, trainer._task):
        method = getattr(owner, name, None) if owner is not None else None
        if method is None or (owner is trainer.datamodule and _datamodule_default(owner, name)):
            continue
        if owner is trainer._task and getattr(type(owner), name) is getattr(Task, name):
            continue  # Task's default (raising) *_dataloader(): the task gives no loaders
        loaders = method()
        refuse_datasets(loaders, kind)
        return loaders
    if required:
        raise ConfigurationError(
            f"no {kind} data: pass {kind}_dataloaders (or dataloaders=) to the Trainer method, a datamodule with "
            f"{name}(), or define {name}() on {type(trainer._task).__name__}"
        )
    return None

def wrap(trainer: Trainer, loader: Any, training: bool) -> Any:
    """What the loop iterates: map-style loaders made distributed and resumable; several training loaders (a dict
    or a list of loaders) combined by `dltrain.data.CombinedLoader`, each wrapped."""
    from dltrain.data.combined import CombinedLoader

    several = isinstance(loader, Mapping) or (isinstance(loader, (list, tuple)) and not _is_batch_list(loader))
    if training and several:
        loader = CombinedLoader(loader)
    if isinstance(loader, CombinedLoader):
        loader.loaders = [wrap(trainer, child, training) for child in loader.loaders]
        return loader
    if not trainer.use_distributed_sampler:
        _refuse_unsplit_under_tp(trainer, loader)
        return loader
    # Split by data-parallel rank: tensor-parallel peers must read the same samples.
    loader = wrap_loader(loader, rank=trainer.data_parallel_rank, world_size=trainer.data_parallel_size,
                         seed=trainer.seed, training=training)
    set_split = getattr(loader, "set_split", None)  # loaders that split themselves (StreamingDataLoader)
    if callable(set_split):
        set_split(trainer.data_parallel_rank, trainer.data_parallel_size)
    return loader


def _refuse_unsplit_under_tp(trainer: Trainer, loader: Any) -> None:
    """``use_distributed_sampler=False`` leaves the split to the loader; a streaming one given none splits by
    global rank, so under tensor parallelism the peers of a group would train on different batches."""
    from dltrain.data.streaming import StreamingDataLoader, StreamingDataset

    if trainer._layout.tensor_parallel_size == 1:
        return
    if isinstance(loader, StreamingDataset) or (isinstance(loader, StreamingDataLoader) and loader.split is None):
        raise ConfigurationError(
            f"use_distributed_sampler=False under tensor parallelism (tensor_parallel_size="
            f"{trainer._layout.tensor_parallel_size}), but the {type(loader).__name__} has no split of its own: it "
            "would split by global rank and tensor-parallel peers would read different batches. Build it with "
            ".loader(rank=trainer.data_parallel_rank, world_size=trainer.data_parallel_size) (or call its "
            "set_split), or leave use_distributed_sampler=True"
        )


def wrap_all(trainer: Trainer, loaders: Any) -> list[Any]:
    """Evaluation loaders as a list (a list/tuple of loaders, a dict of loaders by name, or one loader)."""
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if not isinstance(loaders, (list, tuple)) or _is_batch_list(loaders):
        loaders = [loaders]
    return [wrap(trainer, loader, training=False) for loader in loaders]

def reload_train_loader(trainer: Trainer) -> Any:
    """``reload_dataloaders_every_n_epochs``: ask the datamodule or task for a new training loader."""
    loader = wrap(trainer, source(trainer, "train", None), training=True)
    trainer.train_dataloader = loader
    return loader

def prepare_and_setup(trainer: Trainer, stage: str) -> None:
    """``prepare_data`` (one process per machine, or per job), then ``setup(stage)`` on every rank."""
    dm, task = trainer.datamodule, trainer._task
    for owner in (dm, task):
        if owner is None or not hasattr(owner, "prepare_data"):
            continue
        per_node = getattr(owner, "prepare_data_per_node", True)
        if (trainer.local_rank if per_node else trainer.global_rank) == 0:
            owner.prepare_data()
    if trainer.world_size > 1:
        trainer.fabric.barrier()
    if dm is not None:
        dm.trainer = trainer
        dm.setup(stage)
    trainer._hooks.call_callbacks("setup", stage)
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
