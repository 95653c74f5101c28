"""Checks of a run's configuration that warn where Lightning warns.

As Lightning's ``configuration_validator`` and data connector: a mistake that does not stop the run is said
once, on global rank zero, and the run goes on.

The warning classes are Lightning's own (``PossibleUserWarning`` from ``lightning.fabric``), so that a filter a
Lightning user already has (``warnings.filterwarnings("ignore", category=PossibleUserWarning)``) works unchanged.
"""

from __future__ import annotations

import math
import multiprocessing
import warnings
from typing import TYPE_CHECKING, Any

from lightning.fabric.utilities.data import suggested_max_num_workers
from lightning.fabric.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader, RandomSampler

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["PossibleUserWarning", "check_loader", "check_manual_optimization", "check_removed_hooks",
           "check_restored_callbacks", "default_max_epochs", "validation_runs"]


def _warn(trainer: TrainerView, message: str, category: type[Warning] = UserWarning) -> None:
    if trainer.is_global_zero:
        warnings.warn(message, category, stacklevel=4)


def validation_runs(trainer: Trainer, task: Task, has_val_data: bool) -> bool:
    """Whether the fit validates: validation data, ``validation_step`` and ``limit_val_batches`` not 0.

    Either one alone is skipped with Lightning's warning (a GAN template passes a val loader and has no
    validation step); ``limit_val_batches=0`` switches validation off without one (the warnings, as Lightning's,
    look at the data and the step only).
    """
    from dltrain._hooks import overrides
    from dltrain.task import Task

    has_step = overrides(task, Task, "validation_step")
    if has_val_data and not has_step:
        _warn(trainer, f"You passed in a val_dataloader but {type(task).__name__} has no validation_step. Skipping "
                       "val loop.")
        return False
    if has_step and not has_val_data:
        _warn(trainer, f"{type(task).__name__} defines a validation_step but there is no val_dataloader. Skipping "
                       "val loop.", PossibleUserWarning)
    return has_val_data and has_step and trainer.limit_val_batches != 0


def default_max_epochs(trainer: Trainer, bounded: bool) -> int:
    """Lightning's value for an unset ``max_epochs``: ``-1`` (no limit) or 1000 (with a warning).

    ``-1`` when ``max_steps`` or ``max_time`` bound the fit (``bounded``).
    """
    if bounded:
        return -1
    finite = math.isfinite(trainer.num_training_batches)
    _warn(trainer, "max_epochs was not set. Setting it to 1000 epochs. To train without an epoch limit, set "
                   "max_epochs=-1" + ("" if finite else " (the training loader has no length: an endless loader "
                                      "then never ends an epoch; set max_steps)"))
    return 1000


def check_loader(trainer: Trainer, loader: Any, kind: str) -> None:
    """Lightning's data warnings for one loader as the user gave it (``kind``: train, val, test, predict)."""
    loaders = list(loader.values()) if isinstance(loader, dict) else (
        list(loader) if isinstance(loader, (list, tuple)) else [loader])
    for one in loaders:
        if not isinstance(one, DataLoader):
            continue
        name = f"{kind}_dataloader"
        if kind != "train" and isinstance(one.sampler, RandomSampler):
            _warn(trainer, f"Your {name}'s sampler has shuffling enabled, it is strongly recommended that you turn "
                           "shuffling off for val/test dataloaders.", PossibleUserWarning)
        context = one.multiprocessing_context
        start = context.get_start_method() if context is not None else multiprocessing.get_start_method()
        # Lightning's rule for the workers, on the same inputs: the cores this process may use and the devices of
        # this machine (an in-memory dataset warns too, as in Lightning: pass num_workers, or filter it by name).
        upper = suggested_max_num_workers(trainer.num_devices)
        if one.num_workers > 0 and start == "spawn" and not one.persistent_workers:
            _warn(trainer, f"Consider setting persistent_workers=True in '{name}' to speed up the dataloader worker "
                           "initialization.")
        elif one.num_workers < 2 and upper > 1:
            _warn(trainer, f"The '{name}' does not have many workers which may be a bottleneck. Consider increasing "
                           f"the value of the num_workers argument to num_workers={upper} in the DataLoader to "
                           "improve performance.", PossibleUserWarning)
        if one.persistent_workers and one.pin_memory and trainer.reload_dataloaders_every_n_epochs > 0:
            _warn(trainer, f"'{name}': the combination of DataLoader(pin_memory=True, persistent_workers=True) and "
                           "Trainer(reload_dataloaders_every_n_epochs > 0) can lead to instability due to limitations "
                           "in PyTorch (https://github.com/pytorch/pytorch/issues/91252); set pin_memory=False.",
                  PossibleUserWarning)


def check_restored_callbacks(trainer: TrainerView, saved: dict[str, Any]) -> None:
    """Warn, as Lightning, that a checkpoint holds state of callbacks this Trainer lacks (not restored)."""
    present = {cb.state_key for cb in trainer.callbacks}
    missing = sorted(k for k, v in saved.items() if k not in present and v)
    if missing:
        _warn(trainer, "Be aware that when using ckpt_path, callbacks used to create the checkpoint need to be "
                       f"provided during Trainer instantiation. Please add the following callbacks: {missing}.")


def check_manual_optimization(trainer: Trainer, task: Task) -> None:
    """Lightning's errors for settings manual optimization cannot honour."""
    from dltrain.errors import ConfigurationError

    if task.automatic_optimization:
        return
    if trainer.gradient_clip_val:
        raise ConfigurationError(
            "Automatic gradient clipping is not supported for manual optimization. Remove "
            f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) or switch to automatic optimization "
            "(with manual optimization, call self.clip_gradients(...) in training_step)")
    if trainer.accumulate_grad_batches != 1:
        raise ConfigurationError(
            "Automatic gradient accumulation is not supported for manual optimization. Remove "
            f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) or switch to automatic "
            "optimization")


def check_removed_hooks(task: Task, stage: str) -> None:
    """Hooks Lightning 2.0 removed: a task that still defines them gets Lightning's error, not silence."""
    removed = {"fit": ("training_epoch_end", "validation_epoch_end"), "validate": ("validation_epoch_end",),
               "test": ("test_epoch_end",)}.get(stage, ())
    for name in removed:
        if callable(getattr(task, name, None)):
            raise NotImplementedError(
                f"Support for `{name}` has been removed in Lightning 2.0 (and dltrain never had it). "
                f"`{type(task).__name__}` implements this method. Use the `on_{name}` hook instead; to access "
                "outputs, save them as instance attributes in the step.")

