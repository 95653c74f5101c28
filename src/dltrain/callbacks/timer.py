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

    The time already spent is part of the checkpoint, so a resumed run keeps counting. As Lightning's, it also
    clocks validation and testing: ``time_elapsed(stage)``, ``start_time(stage)``, ``end_time(stage)`` and
    ``time_remaining(stage)`` take ``"train"`` (the default), ``"validate"`` or ``"test"``.

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
        self.elapsed_before = 0.0  # seconds of training in the runs this one resumed (restored from a checkpoint)
        # (start, end) of the latest run of each stage, in time.monotonic() seconds; end None while it runs.
        self._clock: dict[str, tuple[float, float | None]] = {}

    def start_time(self, stage: str = "train") -> float | None:
        """When ``stage`` (``"train"``, ``"validate"``, ``"test"``) last started (``time.monotonic()``)."""
        clock = self._clock.get(_stage(stage))
        return clock[0] if clock is not None else None

    def end_time(self, stage: str = "train") -> float | None:
        """When ``stage`` last ended (``time.monotonic()``); ``None`` while it runs or before it ran."""
        clock = self._clock.get(_stage(stage))
        return clock[1] if clock is not None else None

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in ``stage``'s latest run; for ``"train"``, those of the runs this one resumed too."""
        stage = _stage(stage)
        before = self.elapsed_before if stage == "train" else 0.0
        clock = self._clock.get(stage)
        if clock is None:
            return before
        start, end = clock
        return before + ((end if end is not None else monotonic()) - start)

    def time_remaining(self, stage: str = "train") -> float | None:
        """Seconds left of ``duration`` (negative once it passed); ``None`` without a duration."""
        if self.duration is None:
            return None
        return self.duration.total_seconds() - self.time_elapsed(stage)

    def _begin(self, stage: str) -> None:
        self._clock[stage] = (monotonic(), None)

    def _end(self, stage: str) -> None:
        start = self._clock.get(stage, (monotonic(), None))[0]
        self._clock[stage] = (start, monotonic())

    @override
    def on_train_start(self, trainer: TrainerView, task: Task) -> None:
        self._begin("train")

    @override
    def on_train_end(self, trainer: TrainerView, task: Task) -> None:
        self._end("train")

    @override
    def on_validation_start(self, trainer: TrainerView, task: Task) -> None:
        self._begin("validate")

    @override
    def on_validation_end(self, trainer: TrainerView, task: Task) -> None:
        self._end("validate")

    @override
    def on_test_start(self, trainer: TrainerView, task: Task) -> None:
        self._begin("test")

    @override
    def on_test_end(self, trainer: TrainerView, task: Task) -> None:
        self._end("test")

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
        return {"elapsed": self.time_elapsed("train")}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("elapsed", 0.0))


_STAGES = ("train", "validate", "test")


def _stage(stage: str) -> str:
    """A stage name (a `RunningStage` is a ``str``): one of those a Timer clocks."""
    value = getattr(stage, "value", stage)
    if value not in _STAGES:
        raise ValueError(f"Timer: stage {stage!r} is not timed; use one of {', '.join(map(repr, _STAGES))}")
    return str(value)


def _parse(duration: str | timedelta | dict[str, int]) -> timedelta:
    if isinstance(duration, timedelta):
        return duration
    if isinstance(duration, dict):
        return timedelta(**duration)
    if isinstance(duration, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", duration):
        days, hours, minutes, seconds = (int(x) for x in duration.split(":"))
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise ConfigurationError(f"max_time={duration!r}: use 'DD:HH:MM:SS', a timedelta or a dict such as {{'hours': 2}}")
