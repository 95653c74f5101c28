"""The learning-rate range test: `LRFinder` (its result) and `lr_find`.

One short fit whose learning rate grows from ``min_lr`` to ``max_lr`` over ``num_training`` optimizer steps
(exponentially or linearly), recording the smoothed loss of each step; the suggestion is the learning rate where
the loss falls fastest. Lightning's algorithm, step for step, so a task gets the same suggestion from both on one
process; under DDP the loss of each step is averaged over the ranks first, so every rank records the same curve
and ends with the same suggestion.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["LRFinder", "lr_find"]

LR_NAMES = ("lr", "learning_rate")


class LRFinder:
    """The result of a learning-rate range test.

    Attributes:
        results: ``{"lr": [...], "loss": [...]}``, one entry per optimizer step (the smoothed loss).
        mode: ``"exponential"`` or ``"linear"`` growth of the learning rate.
        lr_min: the first learning rate.
        lr_max: the last learning rate.
        num_training: optimizer steps of the test.

    Example:
        >>> from dltrain.tuner import Tuner
        >>> trainer = dltrain.Trainer(max_epochs=5, logger=False, enable_progress_bar=False)
        >>> finder = Tuner(trainer).lr_find(task, train_loader, min_lr=1e-4, max_lr=0.1, num_training=20)
        >>> finder.mode, len(finder.results["lr"]), finder.results["lr"][0]
        ('exponential', 20, 0.0001)
        >>> lr = finder.suggestion(skip_begin=2)  # finder.plot(suggest=True) draws the curve and the point
        >>> finder.lr_min <= lr <= finder.lr_max
        True
    """

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        if mode not in ("linear", "exponential"):
            raise ConfigurationError(f"lr_find(mode={mode!r}): use 'linear' or 'exponential'")
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate where the loss falls fastest (the steepest negative gradient of the loss).

        Leaves out the ``skip_begin`` first and ``skip_end`` last points; ``None`` with fewer than two finite
        points left.
        """
        losses = torch.tensor(self.results["loss"][skip_begin:-skip_end])
        lrs = torch.tensor(self.results["lr"][skip_begin:-skip_end])
        finite = torch.isfinite(losses)
        losses, lrs = losses[finite], lrs[finite]
        if len(losses) < 2:
            self._optimal_idx = None
            return None
        gradients = torch.gradient(losses, spacing=[lrs])[0]
        steepest = int(torch.argmin(gradients))
        kept = torch.arange(len(self.results["loss"]))[skip_begin:-skip_end][finite]
        self._optimal_idx = int(kept[steepest])
        return self.results["lr"][self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """The loss over the learning rate (log scale for the exponential test) as a matplotlib figure.

        With ``suggest`` the suggestion marked in red. Needs matplotlib.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ConfigurationError("LRFinder.plot() needs matplotlib: pip install matplotlib") from err
        lrs, losses = self.results["lr"], self.results["loss"]
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            self.suggestion()
            if self._optimal_idx is not None:
                ax.plot(lrs[self._optimal_idx], losses[self._optimal_idx], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return fig


class _RangeSchedule(LRScheduler):
    """From the optimizer's learning rate to ``end_lr`` in ``num_iter`` steps, exponentially or linearly."""

    def __init__(self, optimizer: torch.optim.Optimizer, end_lr: float, num_iter: int, exponential: bool) -> None:
        self.end_lr = end_lr
        self.num_iter = num_iter
        self.exponential = exponential
        self.current: list[float] = []
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        fraction = (self.last_epoch + 1) / self.num_iter
        if self.last_epoch <= 0:
            values = [float(base) for base in self.base_lrs]
        elif self.exponential:
            values = [float(base * (self.end_lr / base) ** fraction) for base in self.base_lrs]
        else:
            values = [float(base + fraction * (self.end_lr - base)) for base in self.base_lrs]
        self.current = values
        return values


class _RangeTest(Callback):
    """Drives a range-test fit.

    Puts the schedule in place, records the learning rate and smoothed loss of each optimizer step, stops when
    the loss diverges.
    """

    def __init__(self, finder: LRFinder, early_stop_threshold: float | None, beta: float = 0.98) -> None:
        self.finder = finder
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self.avg_loss = 0.0
        self.best_loss = 0.0
        self.schedule: _RangeSchedule | None = None

    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigurationError(f"lr_find works with one optimizer; configure_optimizers() returned "
                                     f"{len(trainer.optimizers)}")
        from dltrain._optim import SchedulerConfig

        optimizer = trainer.optimizers[0]
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.finder.lr_min
        self.schedule = _RangeSchedule(optimizer, self.finder.lr_max, self.finder.num_training,
                                       exponential=self.finder.mode == "exponential")
        trainer.lr_scheduler_configs[:] = [SchedulerConfig(self.schedule, interval="step")]

    def _window_end(self, trainer: TrainerView, batch_idx: int) -> bool:
        return (batch_idx + 1) % trainer.accumulate_grad_batches == 0

    def on_train_batch_start(self, trainer: TrainerView, task: Task, batch: Any, batch_idx: int) -> None:
        if self._window_end(trainer, batch_idx) and self.schedule is not None:
            self.finder.results["lr"].append(self.schedule.current[0])

    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._window_end(trainer, batch_idx):
            return
        if outputs is None:
            loss = math.nan
        else:
            loss = float((outputs if isinstance(outputs, torch.Tensor) else outputs["loss"]).detach())
        from dltrain.tuner._search import agree_mean

        loss = agree_mean(trainer, loss)  # every rank records the same curve
        if math.isnan(loss) and outputs is None:
            self.finder.results["loss"].append(math.nan)
            return
        step = trainer.global_step
        self.avg_loss = self.beta * self.avg_loss + (1 - self.beta) * loss
        smoothed = self.avg_loss / (1 - self.beta ** (step + 1))
        threshold = self.early_stop_threshold
        if threshold is not None and step > 1 and smoothed > threshold * self.best_loss:
            trainer.should_stop = True  # diverged (the same decision on every rank: the same curve)
        if smoothed < self.best_loss or step == 1:
            self.best_loss = smoothed
        self.finder.results["loss"].append(smoothed)


def lr_attribute(task: Task, datamodule: Any, attr_name: str) -> tuple[Any, str]:
    """Where the task keeps its learning rate.

    ``attr_name``, else ``lr`` or ``learning_rate`` (the task, its ``hparams``, the datamodule's).
    """
    from dltrain.tuner._search import find_attr

    names = (attr_name,) if attr_name else LR_NAMES
    where = find_attr(task, datamodule, names)
    if where is None:
        raise ConfigurationError(
            f"lr_find(update_attr=True) sets the task's learning rate, but {type(task).__name__} (and its hparams) "
            f"has no {' or '.join(repr(n) for n in names)}: add one and read it in configure_optimizers(), pass "
            "attr_name=..., or update_attr=False")
    return where


def lr_find(trainer: Trainer, task: Task, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: Any = None, min_lr: float = 1e-8, max_lr: float = 1.0, num_training: int = 100,
            mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
            attr_name: str = "") -> LRFinder | None:
    """Run the range test with ``trainer`` (see the module docstring).

    With ``update_attr`` set the task's learning rate to the suggestion. ``None`` under ``fast_dev_run``.
    """
    from dltrain.tuner._search import search_fits, set_attr

    if trainer.fast_dev_run:
        import warnings

        warnings.warn("lr_find is skipped with fast_dev_run", UserWarning, stacklevel=3)
        return None
    where = lr_attribute(task, datamodule if datamodule is not None else trainer.datamodule, attr_name) \
        if update_attr else None
    finder = LRFinder(mode, min_lr, max_lr, num_training)
    test = _RangeTest(finder, early_stop_threshold)
    with search_fits(trainer, task, [test], max_steps=num_training, limit_val_batches=0, num_sanity_val_steps=0):
        trainer.fit(task, train_dataloaders, val_dataloaders, datamodule)
    if where is not None:
        lr = finder.suggestion()
        if lr is not None:
            set_attr(where, lr)
    return finder
