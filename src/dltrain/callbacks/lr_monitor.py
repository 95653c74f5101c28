"""`LearningRateMonitor`: log the learning rate of every optimizer parameter group."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor(Callback):
    """Log each parameter group's learning rate, with Lightning's metric names.

    Names: ``lr-<OptimizerClass>`` for an optimizer with one parameter group; ``lr-<OptimizerClass>/pg<i>``
    (``i`` from 1) or ``lr-<OptimizerClass>/<group "name">`` with several; a second optimizer of the same class
    gets ``lr-<OptimizerClass>-1``. With ``log_momentum``, ``<name>-momentum`` too (``betas[0]`` for Adam).

    ``"step"``: logged in ``on_before_optimizer_step`` of the optimizer steps whose values the Trainer sends to the
    loggers (every ``log_every_n_steps``): the value is the rate that step used (a per-step scheduler has not
    advanced it yet). ``"epoch"``: the rate at the start of each training epoch, logged as an epoch value.

    Args:
        logging_interval: ``"step"`` or ``"epoch"``.
        log_momentum: also log the momentum (or Adam's ``beta1``) of each group.
        log_weight_decay: also log the weight decay of each group (``<name>-weight_decay``).

    Example:
        >>> monitor = LearningRateMonitor(logging_interval="step")
        >>> # Trainer(callbacks=[monitor]); logs e.g. "lr-AdamW" every log_every_n_steps steps
    """

    def __init__(self, logging_interval: str = "step", log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        if logging_interval not in ("step", "epoch"):
            raise ConfigurationError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}): use 'step' or 'epoch'"
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self._last_logged_step = -1

    # ------------------------------------------------------------------ hooks
    @override
    def on_train_start(self, trainer: TrainerView, task: Task) -> None:
        if not trainer.loggers:  # as Lightning: the rates would be logged into nothing
            raise ConfigurationError(
                "LearningRateMonitor was given to a Trainer with no logger (logger=False), so the learning rates "
                "it reads would go nowhere: pass a logger (logger=True for the default CSV logger, or e.g. "
                "logger=dltrain.loggers.TensorBoardLogger(...)) or remove the callback"
            )

    @override
    def on_before_optimizer_step(
        self, trainer: TrainerView, task: Task, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.logging_interval != "step":
            return
        # Called once per optimizer step, before it and before per-step schedulers advance: the rates read now
        # are the ones this step uses. The step brings global_step to global_step + 1; the Trainer sends step
        # values to the loggers right after the steps where that is a multiple of log_every_n_steps.
        step = trainer.global_step + 1
        if step % max(1, trainer.log_every_n_steps) != 0 or step == self._last_logged_step:
            return  # with several optimizers this hook runs once per optimizer: log once per step
        self._last_logged_step = step
        for name, value in self.read(trainer.optimizers).items():
            task.log(name, value, on_step=True, on_epoch=False)

    @override
    def on_train_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        if self.logging_interval == "epoch":
            # Logged now as an epoch value: the rate at the start of the epoch is the one the epoch uses (epoch
            # schedulers step after the epoch), and a value logged here is part of this epoch's aggregates.
            for name, value in self.read(trainer.optimizers).items():
                task.log(name, value, on_step=False, on_epoch=True, reduce_fx="min")

    # ------------------------------------------------------------------ reading
    def read(self, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """``{metric name: value}`` for every parameter group of ``optimizers`` (plain floats, no device read)."""
        values: dict[str, float] = {}
        seen: Counter[type] = Counter()
        for optimizer in optimizers:
            # Wrappers (Fabric's, DeepSpeed's) keep the real optimizer in `.optimizer`.
            inner = getattr(optimizer, "optimizer", optimizer)
            cls = type(inner)
            base = f"lr-{cls.__name__}"
            if seen[cls]:
                base = f"{base}-{seen[cls]}"
            seen[cls] += 1
            groups = inner.param_groups
            for i, group in enumerate(groups):
                if len(groups) > 1:
                    name = f"{base}/{group.get('name', f'pg{i + 1}')}"
                else:
                    name = f"{base}/{group['name']}" if group.get("name") else base
                values[name] = _as_float(group["lr"])
                if self.log_momentum:
                    momentum = group.get("betas", (group.get("momentum"),))[0]
                    if momentum is not None:
                        values[f"{name}-momentum"] = _as_float(momentum)
                if self.log_weight_decay and "weight_decay" in group:
                    values[f"{name}-weight_decay"] = _as_float(group["weight_decay"])
        return values


def _as_float(value: Any) -> float:
    # Some optimizers accept a tensor lr (capturable Adam); a CPU scalar tensor reads without a device sync.
    return float(value)
