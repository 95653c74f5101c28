"""`EarlyStopping`: stop training when a monitored metric stops improving."""

from __future__ import annotations

import logging
import math
import sys
import warnings
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError, DltrainError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["EarlyStopping"]

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Set ``trainer.should_stop`` once ``monitor`` has not improved for ``patience`` checks.

    Lightning's callback, with its arguments in its order.

    When it checks: at the end of every training epoch when validation runs once at every epoch end (or not at
    all), else at the end of every validation during ``fit`` (``check_on_train_epoch_end=None`` decides as
    Lightning; ``True``/``False`` force it). The Trainer ORs ``should_stop`` across ranks at the end of the epoch,
    so ranks stop together. The wait count and best score are part of the checkpoint, so patience carries over a
    resume.

    Args:
        monitor: name of a logged metric, as in ``trainer.callback_metrics`` (for example ``"val/loss"``).
        min_delta: smallest change that counts as an improvement.
        patience: number of checks without improvement after which training stops.
        verbose: say on stderr why it stopped, and each improvement.
        mode: ``"min"`` (lower is better) or ``"max"``.
        strict: a missing metric is an error (``False``: the check is skipped, with a warning when verbose).
        check_finite: stop at once when the metric becomes NaN or infinite.
        stopping_threshold: stop at once when the metric is better than this.
        divergence_threshold: stop at once when the metric is worse than this.
        check_on_train_epoch_end: check at the training epoch end (``True``) or after validation (``False``).
        log_rank_zero_only: with ``verbose``, only global rank zero speaks.
        check_on: dltrain's earlier spelling: ``"train"`` or ``"validation"`` (``check_on_train_epoch_end``).

    Example:
        >>> stop = EarlyStopping("val/loss", patience=5, stopping_threshold=0.01)
        >>> # Trainer(callbacks=[stop]).fit(task, train_loader, val_loader)
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        *,
        check_on: str | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigurationError(f"EarlyStopping(mode={mode!r}): use 'min' or 'max'")
        if check_on not in (None, "validation", "train"):
            raise ConfigurationError(f"EarlyStopping(check_on={check_on!r}): use 'validation' or 'train'")
        if patience < 0:
            raise ConfigurationError(f"EarlyStopping(patience={patience}): use a number >= 0")
        if check_on is not None and check_on_train_epoch_end is None:
            check_on_train_epoch_end = check_on == "train"
        self.monitor = monitor
        self.patience = patience
        self.mode = mode
        self.min_delta = abs(min_delta)
        self.verbose = verbose
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end_given = check_on_train_epoch_end
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.wait_count = 0
        self.best_score: float = math.inf if mode == "min" else -math.inf
        self.stopped_epoch: int = 0
        self.stop_reason: str | None = None
        self._last_checked: tuple[int, int] | None = None  # (epoch, global step) of the last check

    @property
    def check_on(self) -> str:
        """When it checks, in dltrain's earlier spelling: ``"train"`` (epoch end) or ``"validation"``."""
        return "train" if self._check_on_train_epoch_end else "validation"

    @property
    def stopping_reason_message(self) -> str | None:
        """Why training stopped (Lightning's name); None while it has not."""
        return self.stop_reason

    @property
    @override
    def state_key(self) -> str:
        return f"EarlyStopping{{monitor={self.monitor},mode={self.mode}}}"

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        if self._check_on_train_epoch_end_given is None:
            interval = trainer.val_check_interval
            once_per_epoch = interval is None or (not isinstance(interval, bool) and interval == 1.0)
            self._check_on_train_epoch_end = once_per_epoch and trainer.check_val_every_n_epoch == 1

    @override
    def on_validation_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        # After the validation's metrics are reduced (Lightning checks in on_validation_end, right after).
        if self._check_on_train_epoch_end or trainer.stage != "fit":
            return  # trainer.validate() on its own does not stop anything
        self._check(trainer)

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        if self._check_on_train_epoch_end or (self._check_on_train_epoch_end_given is None
                                              and not _has_validation(trainer)):
            # Without validation in this fit: on the training epoch's metrics, unless the user asked for checks
            # after validation only (then, as in Lightning, never).
            self._check(trainer)

    # ------------------------------------------------------------------ logic
    def _check(self, trainer: TrainerView) -> None:
        if trainer.sanity_checking:
            return
        epoch = int(trainer.current_epoch)
        point = (epoch, int(trainer.global_step))
        if self._last_checked == point:
            return  # once per point: a check at a validation and at the epoch end it belongs to is one check
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            available = ", ".join(sorted(metrics)) or "none"
            message = (f"EarlyStopping(monitor={self.monitor!r}): no metric named {self.monitor!r} was logged "
                       f"(epoch {epoch}, step {trainer.global_step}). Available metrics: {available}. Log it with "
                       f"self.log({self.monitor!r}, ...) in validation_step (or training_step), or pass strict=False")
            if self.strict:
                raise DltrainError(message)
            if self.verbose:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            return
        self._last_checked = point
        value = float(metrics[self.monitor])
        stop, reason = self._update(value)
        if stop:
            self.stopped_epoch = epoch
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info("EarlyStopping: stopping at epoch %d, step %d: %s", epoch, trainer.global_step, reason)
        if reason and self.verbose and (trainer.is_global_zero or not self.log_rank_zero_only):
            where = f"[rank: {trainer.global_rank}] " if trainer.world_size > 1 else ""
            sys.stderr.write(f"[dltrain] {where}{reason}\n")

    def _better(self, value: float, than: float) -> bool:
        return value < than if self.mode == "min" else value > than

    def _update(self, value: float) -> tuple[bool, str | None]:
        """Record one check: (stop?, what happened, when worth saying)."""
        sign = "<" if self.mode == "min" else ">"
        if self.check_finite and not math.isfinite(value):
            self.stop_reason = (f"Monitored metric {self.monitor} = {value} is not finite. Previous best value was "
                                f"{self.best_score:.3f}. Signaling Trainer to stop.")
            return True, self.stop_reason
        if self.stopping_threshold is not None and self._better(value, self.stopping_threshold):
            self.stop_reason = (f"Stopping threshold reached: {self.monitor} = {value} {sign} "
                                f"{self.stopping_threshold}. Signaling Trainer to stop.")
            return True, self.stop_reason
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, value):
            self.stop_reason = (f"Divergence threshold reached: {self.monitor} = {value} {sign} "
                                f"{self.divergence_threshold}. Signaling Trainer to stop.")
            return True, self.stop_reason
        shifted = value + self.min_delta if self.mode == "min" else value - self.min_delta
        if self._better(shifted, self.best_score):
            message = (f"Metric {self.monitor} improved by {abs(self.best_score - value):.3f} >= min_delta = "
                       f"{self.min_delta}. New best score: {value:.3f}" if math.isfinite(self.best_score) else
                       f"Metric {self.monitor} improved. New best score: {value:.3f}")
            self.best_score = value
            self.wait_count = 0
            return False, message
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self.stop_reason = (f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} "
                                f"records. Best score: {self.best_score:.3f}. Signaling Trainer to stop.")
            return True, self.stop_reason
        return False, None

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "best_score": self.best_score,
            "stopped_epoch": self.stopped_epoch,
            "patience": self.patience,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.best_score = float(state_dict["best_score"])
        self.stopped_epoch = int(state_dict.get("stopped_epoch") or 0)


def _has_validation(trainer: TrainerView) -> bool:
    """Whether this fit runs validation (``trainer.val_dataloaders`` is ``None`` when it does not)."""
    return trainer.val_dataloaders is not None
