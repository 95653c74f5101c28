"""`ThroughputMonitor`: samples/s, steps/s and the share of time spent waiting for data."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import torch

from dltrain._batch import batch_size_of
from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["ThroughputMonitor"]

PREFIX = "throughput/"


class ThroughputMonitor(Callback):
    """Measure training speed and how much of it is lost waiting for data.

    Two timestamps per batch: ``on_train_batch_start`` (the batch has arrived) and ``on_train_batch_end`` (its
    step is done). The time from one batch's end to the next batch's start is *data wait*: fetching the batch
    from the loader, moving it to the device, plus whatever runs between batches (callbacks called after this one,
    such as checkpointing). Validation runs during training are excluded from every measure.

    Logged with ``task.log(..., on_step=True)`` on the optimizer steps the Trainer sends to the loggers (every
    ``log_every_n_steps``), over the last ``window`` batches:

    - ``throughput/samples_per_sec`` (this rank; ``throughput/global_samples_per_sec`` = that x world size when
      distributed, assuming ranks run in lockstep as DDP does),
    - ``throughput/batches_per_sec``, ``throughput/steps_per_sec`` (optimizer steps),
    - ``throughput/data_wait_fraction``: data wait / wall time, from 0 (never waits) to 1. Above ~0.1 the input
      pipeline is the bottleneck: add loader workers, decode less on the fly, or move augmentation to the device.

    and once per epoch (``on_epoch=True``, averaged over ranks) the same over the whole epoch, named
    ``throughput/epoch_<measure>``. Per step it stores a few floats into preallocated slots; nothing else.

    Args:
        window: number of recent batches the step values are measured over.
        batch_size_fn: ``batch -> number of samples``; default: the first dimension of the first tensor found
            in the batch (tensors, then inside dicts/lists/tuples in order).
        prog_bar: also show ``samples_per_sec`` (or ``batches_per_sec``) on the progress bar.

    Example:
        >>> monitor = ThroughputMonitor(window=100, batch_size_fn=lambda b: len(b["input_ids"]))
        >>> # Trainer(callbacks=[monitor]); watch "throughput/data_wait_fraction"
    """

    def __init__(
        self,
        window: int = 50,
        batch_size_fn: Callable[[Any], int] | None = None,
        prog_bar: bool = False,
    ) -> None:
        if window < 1:
            raise ConfigurationError(f"ThroughputMonitor(window={window}): use 1 or more")
        self.window = window
        self.batch_size_fn = batch_size_fn or batch_size_of
        self.prog_bar = prog_bar
        size = window + 1  # slot 0 of a window is its starting point
        # Cumulative values since the epoch start, at the end of recent batches (ring buffers, preallocated).
        self._t = [0.0] * size
        self._wait = [0.0] * size
        self._samples = [0] * size
        self._steps = [0] * size
        self._size = size
        self._reset(0.0, 0)

    def _reset(self, now: float, step: int) -> None:
        self._n = 0  # batches ended this epoch; entry i lives in slot i % size, entry 0 is the epoch start
        self._t[0] = now
        self._wait[0] = 0.0
        self._samples[0] = 0
        self._steps[0] = step
        self._epoch_t0 = now
        self._epoch_step0 = step
        self._cum_wait = 0.0
        self._cum_samples = 0
        self._prev_end = now
        self._paused = 0.0
        self._pause_start: float | None = None
        self._epoch_logged = False

    # ------------------------------------------------------------------ timing hooks
    def on_train_epoch_start(self, trainer: Trainer, task: Task) -> None:
        # The first batch's wait is measured from here: creating the loader iterator (worker start-up) is data
        # wait the user pays every epoch.
        self._reset(perf_counter(), trainer.global_step)

    def on_train_batch_start(self, trainer: Trainer, task: Task, batch: Any, batch_idx: int) -> None:
        now = perf_counter() - self._paused
        self._cum_wait += now - self._prev_end

    def on_train_batch_end(
        self, trainer: Trainer, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = perf_counter() - self._paused
        self._cum_samples += self.batch_size_fn(batch)
        self._n += 1
        i = self._n % self._size
        self._t[i] = now
        self._wait[i] = self._cum_wait
        self._samples[i] = self._cum_samples
        self._steps[i] = trainer.global_step
        self._prev_end = now
        # The epoch summary is logged at the last batch when the epoch length is known, so that it is part of
        # this epoch's aggregates whatever the Trainer does after the loop; otherwise at the epoch end.
        if batch_idx + 1 == trainer.num_training_batches:
            self._log_epoch(trainer, task)

    def on_validation_epoch_start(self, trainer: Trainer, task: Task) -> None:
        self._pause_start = perf_counter()

    def on_validation_epoch_end(self, trainer: Trainer, task: Task) -> None:
        if self._pause_start is not None:
            self._paused += perf_counter() - self._pause_start
            self._pause_start = None

    # ------------------------------------------------------------------ reporting
    def on_before_optimizer_step(
        self, trainer: Trainer, task: Task, optimizer: torch.optim.Optimizer
    ) -> None:
        # Runs just before the step that brings global_step to global_step + 1; the Trainer sends step values to
        # the loggers right after the steps where that is a multiple of log_every_n_steps. The window ends at the
        # previous batch's end (the current batch is not done yet).
        if (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) != 0 or self._n == 0:
            return
        newest = self._n
        oldest = max(0, newest - self.window)
        values = self._rates(oldest % self._size, newest % self._size, newest - oldest, trainer.world_size)
        for name, value in values.items():
            task.log(
                PREFIX + name, value, on_step=True, on_epoch=False, prog_bar=self.prog_bar and name in _BAR
            )

    def on_train_epoch_end(self, trainer: Trainer, task: Task) -> None:
        self._log_epoch(trainer, task)

    def _log_epoch(self, trainer: Trainer, task: Task) -> None:
        if self._epoch_logged or self._n == 0:
            return
        self._epoch_logged = True
        b = self._n % self._size
        # Over the whole epoch: from the epoch start (kept apart, the ring's slot 0 is reused) to the last batch.
        values = _rates_from(
            self._t[b] - self._epoch_t0,
            self._wait[b],
            self._samples[b],
            self._n,
            self._steps[b] - self._epoch_step0,
            trainer.world_size,
        )
        for name, value in values.items():
            task.log(PREFIX + "epoch_" + name, value, on_step=False, on_epoch=True)

    def _rates(self, a: int, b: int, batches: int, world_size: int) -> dict[str, float]:
        return _rates_from(
            self._t[b] - self._t[a],
            self._wait[b] - self._wait[a],
            self._samples[b] - self._samples[a],
            batches,
            self._steps[b] - self._steps[a],
            world_size,
        )


_BAR = ("samples_per_sec", "batches_per_sec")


def _rates_from(
    dt: float, wait: float, samples: int, batches: int, steps: int, world_size: int
) -> dict[str, float]:
    if dt <= 0:
        return {}
    values: dict[str, float] = {}
    if samples:
        values["samples_per_sec"] = samples / dt
        if world_size > 1:
            values["global_samples_per_sec"] = samples * world_size / dt
    values["batches_per_sec"] = batches / dt
    values["steps_per_sec"] = steps / dt
    values["data_wait_fraction"] = min(max(wait / dt, 0.0), 1.0)
    return values
