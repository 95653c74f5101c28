"""`Timer`: stop training after a wall-clock budget (``Trainer(max_time=...)``)."""

from __future__ import annotations

import re
from datetime import timedelta
from time import monotonic
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["Timer"]


class Timer(Callback):
    """Set ``trainer.should_stop`` once ``duration`` of training has passed (checked after every batch).

    Args:
        duration: ``"DD:HH:MM:SS"`` (Lightning's format), a ``timedelta``, or a dict of ``timedelta`` arguments
            (``{"hours": 2}``); ``None``: only measure.
        interval: check after every batch (``"step"``) or at the end of every epoch (``"epoch"``).
        verbose: say on stderr (global rank zero) when the time is up.

    The time already spent is part of the checkpoint, so a resumed run keeps counting.

    Example:
        >>> Timer(duration="00:12:00:00").duration  # 12 hours, as Trainer(max_time="00:12:00:00")
        datetime.timedelta(seconds=43200)
        >>> Timer(duration={"minutes": 90}).duration
        datetime.timedelta(seconds=5400)
        >>> timer = Timer(duration={"seconds": 0}, verbose=False)  # time is up after the first batch
        >>> trainer = dltrain.Trainer(max_epochs=5, callbacks=[timer], log_every_n_steps=1,
        ...                           enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(task, train_loader, val_loader)
        >>> trainer.global_step, timer.time_elapsed() > 0
        (1, True)
    """

    def __init__(self, duration: str | timedelta | dict[str, int] | None = None, interval: str = "step",
                 verbose: bool = True) -> None:
        if interval not in ("step", "epoch"):
            raise ConfigurationError(f"Timer(interval={interval!r}): use 'step' or 'epoch'")
        self.duration = _parse(duration) if duration is not None else None
        self.interval = interval
        self.verbose = verbose
        self.elapsed_before = 0.0  # seconds of earlier runs (restored from a checkpoint)
        self._start: float | None = None

    @override
    def on_train_start(self, trainer: TrainerView, task: Task) -> None:
        self._start = monotonic()

    def time_elapsed(self) -> float:
        """Seconds of training so far, those of the runs this one resumed included."""
        return self.elapsed_before + (monotonic() - self._start if self._start is not None else 0.0)

    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.interval == "step":
            self._check(trainer)

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        if self.interval == "epoch":
            self._check(trainer)

    def _check(self, trainer: TrainerView) -> None:
        if self.duration is None or self.time_elapsed() < self.duration.total_seconds():
            return
        if self.verbose and trainer.is_global_zero and not trainer.should_stop:
            import sys

            elapsed = timedelta(seconds=int(self.time_elapsed()))
            sys.stderr.write(f"[dltrain] time limit reached ({self.duration}): elapsed {elapsed}; stopping\n")
        trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.time_elapsed()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("elapsed", 0.0))


def _parse(duration: str | timedelta | dict[str, int]) -> timedelta:
    if isinstance(duration, timedelta):
        return duration
    if isinstance(duration, dict):
        return timedelta(**duration)
    if isinstance(duration, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", duration):
        days, hours, minutes, seconds = (int(x) for x in duration.split(":"))
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise ConfigurationError(f"max_time={duration!r}: use 'DD:HH:MM:SS', a timedelta or a dict such as {{'hours': 2}}")
