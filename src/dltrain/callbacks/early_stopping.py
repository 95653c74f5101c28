"""`EarlyStopping`: stop training when a monitored metric stops improving."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError, DltrainError

if TYPE_CHECKING:
    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["EarlyStopping"]

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Set ``trainer.should_stop`` once ``monitor`` has not improved for ``patience`` checks.

    A check happens at the end of every validation run during ``fit`` (``check_on="validation"``), or at the end
    of every training epoch (``check_on="train"``; also used with ``"validation"`` when the fit has no
    validation). The Trainer ORs ``should_stop`` across ranks at the end of the epoch, so ranks stop together.
    The wait count and best score are part of the checkpoint, so patience carries over a resume.

    Args:
        monitor: name of a logged metric, as in ``trainer.callback_metrics`` (for example ``"val/loss"``).
        patience: number of checks without improvement after which training stops.
        mode: ``"min"`` (lower is better) or ``"max"``.
        min_delta: smallest change that counts as an improvement.
        check_on: ``"validation"`` or ``"train"`` (see above).
        check_finite: stop at once when the metric becomes NaN or infinite.

    Example:
        >>> stop = EarlyStopping("val/loss", patience=5)
        >>> # Trainer(callbacks=[stop]).fit(task, train_loader, val_loader)
    """

    def __init__(
        self,
        monitor: str,
        patience: int = 3,
        mode: str = "min",
        min_delta: float = 0.0,
        check_on: str = "validation",
        check_finite: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigurationError(f"EarlyStopping(mode={mode!r}): use 'min' or 'max'")
        if check_on not in ("validation", "train"):
            raise ConfigurationError(f"EarlyStopping(check_on={check_on!r}): use 'validation' or 'train'")
        if patience < 0:
            raise ConfigurationError(f"EarlyStopping(patience={patience}): use a number >= 0")
        self.monitor = monitor
        self.patience = patience
        self.mode = mode
        self.min_delta = abs(min_delta)
        self.check_on = check_on
        self.check_finite = check_finite
        self.wait_count = 0
        self.best_score: float = math.inf if mode == "min" else -math.inf
        self.stopped_epoch: int | None = None
        self.stop_reason: str | None = None
        self._seen_validation = False
        self._last_checked_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return f"EarlyStopping{{monitor={self.monitor},mode={self.mode}}}"

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, task: Task, stage: str) -> None:
        self._seen_validation = False

    def on_validation_epoch_end(self, trainer: Trainer, task: Task) -> None:
        if trainer.stage != "fit" or self.check_on != "validation":
            return  # trainer.validate() on its own does not stop anything
        self._seen_validation = True
        self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, task: Task) -> None:
        if self.check_on == "train":
            self._check(trainer)
        elif not self._seen_validation and not _has_validation(trainer):
            # No validation in this fit: check on the training epoch's metrics instead.
            self._check(trainer)

    # ------------------------------------------------------------------ logic
    def _check(self, trainer: Trainer) -> None:
        if trainer.sanity_checking:
            return
        epoch = int(trainer.current_epoch)
        if self._last_checked_epoch == epoch and not self._checks_every_run(trainer):
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            available = ", ".join(sorted(metrics)) or "none"
            raise DltrainError(
                f"EarlyStopping(monitor={self.monitor!r}): no metric named {self.monitor!r} was logged "
                f"(epoch {epoch}, step {trainer.global_step}). Available metrics: {available}. Log it with "
                f"self.log({self.monitor!r}, ...) in validation_step (or training_step with check_on='train')"
            )
        self._last_checked_epoch = epoch
        value = float(metrics[self.monitor])
        if self._update(value):
            self.stopped_epoch = epoch
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info(
                    "EarlyStopping: stopping at epoch %d, step %d: %s",
                    epoch,
                    trainer.global_step,
                    self.stop_reason,
                )

    @staticmethod
    def _checks_every_run(trainer: Trainer) -> bool:
        # Validation several times per epoch (val_check_interval < 1): every run counts as a check.
        interval = trainer.val_check_interval
        return isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval != 1.0

    def _update(self, value: float) -> bool:
        """Record one check; True when training should stop."""
        if self.check_finite and not math.isfinite(value):
            self.stop_reason = f"{self.monitor} = {value} is not finite"
            return True
        improved = (
            value < self.best_score - self.min_delta
            if self.mode == "min"
            else value > self.best_score + self.min_delta
        )
        if improved:
            self.best_score = value
            self.wait_count = 0
            return False
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self.stop_reason = (
                f"{self.monitor} did not improve by more than {self.min_delta} in {self.wait_count} checks "
                f"(best {self.best_score:.6g})"
            )
            return True
        return False

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "best_score": self.best_score,
            "stopped_epoch": self.stopped_epoch,
            "patience": self.patience,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.best_score = float(state_dict["best_score"])
        self.stopped_epoch = state_dict.get("stopped_epoch")


def _has_validation(trainer: Trainer) -> bool:
    """Whether this fit runs validation (``trainer.val_dataloaders`` is ``None`` when it does not)."""
    return trainer.val_dataloaders is not None
