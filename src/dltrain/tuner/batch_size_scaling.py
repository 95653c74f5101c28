"""The batch-size search: the largest batch size that trains (or evaluates) without running out of memory.

Trials are short runs (``steps_per_trial`` steps of ``fit``, or batches of ``validate``/``test``/``predict``)
with the batch size set on the task (``batch_size`` or ``batch_arg_name``: an attribute, a hyperparameter, or the
datamodule's); the loaders are made again for each trial by the task's or datamodule's ``*_dataloader()``.
``"power"`` doubles the size until a trial runs out of memory; ``"binsearch"`` then searches between the last size
that worked and the one that failed. Lightning's algorithm, with its limits (``max_trials``, ``max_val``, the
length of the dataset). Under DDP/FSDP2 the ranks agree on each trial's outcome (one all-reduce), so every rank
ends with the same size; ranks must run out of memory at the same step (the same model and batch shapes on
devices of the same size), as a rank that fails alone leaves the others waiting in a collective.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

import torch

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["is_oom_error", "scale_batch_size"]

_OOM_MESSAGES = ("CUDA out of memory.", "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED.",
                 "DefaultCPUAllocator: can't allocate memory", "MPS backend out of memory")


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (``torch.OutOfMemoryError`` or the allocators' messages)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and len(exc.args) == 1 and any(m in str(exc.args[0]) for m in _OOM_MESSAGES)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _DatasetLength(Callback):
    """Reads the length of the data a trial ran on (to stop growing the batch past it)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.length: int | None = None

    def _read(self, loaders: Any) -> None:
        loaders = loaders if isinstance(loaders, list) else [loaders]
        try:
            self.length = sum(len(loader.dataset) for loader in loaders)
        except (AttributeError, TypeError):
            self.length = None  # no dataset with a length (an iterable stream): no limit from it

    def on_train_start(self, trainer: TrainerView, task: Task) -> None:
        self._read(trainer.train_dataloader)

    def on_validation_start(self, trainer: TrainerView, task: Task) -> None:
        if self.method == "validate":
            self._read(trainer.val_dataloaders)

    def on_test_start(self, trainer: TrainerView, task: Task) -> None:
        self._read(trainer.test_dataloaders)

    def on_predict_start(self, trainer: TrainerView, task: Task) -> None:
        self._read(trainer.predict_dataloaders)


def scale_batch_size(trainer: Trainer, task: Task, method: str = "fit", datamodule: Any = None, mode: str = "power",
                     steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                     batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> int | None:
    """Find the batch size (see the module docstring), set it on the task and return it.

    Returns ``None`` under ``fast_dev_run``.
    """
    from dltrain.loop import LoopState
    from dltrain.trainer import run_state_of
    from dltrain.tuner._search import agree_max, find_attr, forget_optimizers, get_attr, search_fits, set_attr

    if mode not in ("power", "binsearch"):
        raise ConfigurationError(f"scale_batch_size(mode={mode!r}): use 'power' or 'binsearch'")
    if not 0.0 <= margin < 1.0:
        raise ConfigurationError(f"scale_batch_size(margin={margin}): use a value in [0, 1)")
    if trainer.fast_dev_run:
        import warnings

        warnings.warn("scale_batch_size is skipped with fast_dev_run", UserWarning, stacklevel=3)
        return None
    dm = datamodule if datamodule is not None else trainer.datamodule
    where = find_attr(task, dm, (batch_arg_name,))
    if where is None:
        raise ConfigurationError(
            f"scale_batch_size sets {batch_arg_name!r} on the task, but neither {type(task).__name__}, its hparams "
            "nor the datamodule has it: add it and read it in *_dataloader(), or pass batch_arg_name=...")
    length = _DatasetLength(method)
    limits: dict[str, Any] = {"num_sanity_val_steps": 0}
    if method == "fit":
        limits.update(max_steps=steps_per_trial, limit_train_batches=1.0, limit_val_batches=steps_per_trial)
    else:
        limits[f"limit_{ {'validate': 'val', 'test': 'test', 'predict': 'predict'}[method]}_batches"] = steps_per_trial

    with search_fits(trainer, task, [length], **limits) as snapshot:

        def trial() -> bool:
            """One run at the current size; True when it ran out of memory on any rank."""
            run_state_of(trainer).oom_expected = True
            oom = False
            try:
                if method == "fit":
                    trainer.fit(task, datamodule=datamodule)
                else:
                    getattr(trainer, method)(task, datamodule=datamodule, **({} if method == "predict" else
                                                                             {"verbose": False}))
            except RuntimeError as err:
                if not is_oom_error(err):
                    raise
                oom = True
            finally:
                run_state_of(trainer).oom_expected = False
                snapshot.restore(task)  # each trial starts from the same weights, with new optimizers
                forget_optimizers(trainer)
                run_state_of(trainer).loop_state = LoopState()
            _free_memory()
            return agree_max(trainer, float(oom)) > 0

        def adjust(factor: float = 1.0, value: int | None = None) -> tuple[int, bool]:
            current = int(get_attr(where))
            if length.length is not None and current >= length.length:
                return current, False  # the whole dataset fits in one batch already
            new = value if value is not None else int(current * factor)
            new = min(new, max_val)
            set_attr(where, new)
            return new, new != current

        set_attr(where, init_val)
        size = init_val
        if mode == "power":
            size = _power(trial, adjust, size, max_trials, max_val)
        else:
            size = _binsearch(trial, adjust, size, max_trials, max_val)
            if margin > 0:
                size = max(1, int(size * (1 - margin)))
        set_attr(where, size)
    return size


def _power(trial: Any, adjust: Any, size: int, max_trials: int, max_val: int) -> int:
    succeeded_once = False
    last_good = size
    for i in range(max_trials):
        if size >= max_val:
            break
        if not trial():
            last_good = size
            if i + 1 >= max_trials:
                return last_good
            size, changed = adjust(factor=2.0)
            if not changed:
                break
            succeeded_once = True
        else:
            size, _ = adjust(factor=0.5)
            if succeeded_once:
                break
    return size


def _binsearch(trial: Any, adjust: Any, size: int, max_trials: int, max_val: int) -> int:
    low, high, count = 1, 0, 0
    last_good = size
    while True:
        if size >= max_val:
            break
        if not trial():
            last_good = size
            count += 1
            if count >= max_trials:
                return last_good
            low = size
            if high:
                if high - low <= 1:
                    break
                size, changed = adjust(value=(high + low) // 2)
            else:
                size, changed = adjust(factor=2.0)
            if not changed:
                break
        else:
            high = size
            size, _ = adjust(value=(high + low) // 2)
            if high - low <= 1:
                break
    return size
