"""`ProgressBar`: tqdm bars for training and evaluation, refreshed by time, on global rank zero only."""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from time import monotonic
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm
from typing_extensions import override

from dltrain.callbacks.base import Callback

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["ProgressBar", "TQDMProgressBar"]


class ProgressBar(Callback):
    """A tqdm bar per training epoch (and per validation/test/predict run) with the ``prog_bar`` metrics.

    Lightning's ``TQDMProgressBar`` (also importable under that name, with its arguments). Shows batches done /
    total (when the loader has a length), it/s, elapsed time and ETA, and every metric logged with
    ``prog_bar=True`` as of the last redraw (``trainer.progress_bar_metrics``: the newest step values are read
    from the device at a redraw, not at each step; add ``ThroughputMonitor(prog_bar=True)`` for samples/s).

    Cost per batch: the bar is redrawn only when ``refresh_rate_s`` has passed (and at least ``refresh_rate``
    batches since the last redraw); other batches cost one counter increment and one ``time.monotonic()``
    comparison (a few hundred nanoseconds). The logged values are read (one device-to-host copy) only at a
    redraw, so a step between redraws and logging steps reads nothing from the device.

    When the output stream is not a terminal (a log file, a batch job), no bar is drawn: one plain line (the
    same text as the bar, without carriage returns) is written every ``log_interval_s`` seconds and at the end of
    each epoch/run, so logs stay readable and small.

    With several evaluation loaders one bar counts the batches of all of them. Only global rank zero draws; other
    ranks do nothing.

    Args:
        refresh_rate: batches between redraws at the least (Lightning's argument); ``0`` turns the bar off.
        process_position: lines to offset the bars by (tqdm's ``position``), for several trainers in one
            terminal (Lightning's argument).
        refresh_rate_s: seconds between redraws in a terminal (tqdm's own ``mininterval`` is 0.1 s).
        log_interval_s: seconds between lines when the stream is not a terminal.
        file: stream to write to (default ``sys.stderr``, as tqdm).
        leave: keep the finished training bars on screen.

    Example:
        >>> bar = ProgressBar(refresh_rate_s=1.0)
        >>> # Trainer(callbacks=[bar]); a ProgressBar is added by default otherwise
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = True,
        *,
        refresh_rate_s: float = 0.5,
        log_interval_s: float = 30.0,
        file: TextIO | None = None,
    ) -> None:
        if refresh_rate < 0 or process_position < 0:
            raise ValueError(f"ProgressBar(refresh_rate={refresh_rate}, process_position={process_position}): "
                             "both must be >= 0")
        self.refresh_rate = refresh_rate
        self.process_position = process_position
        self.refresh_rate_s = refresh_rate_s
        self.log_interval_s = log_interval_s
        self.leave = leave
        self._file_arg = file
        self._enabled = True
        self._bars: dict[str, _Bar] = {}
        # Hot-path state of the bar being advanced (training or evaluation): batches done, next redraw time, and
        # the count at the last redraw (for refresh_rate).
        self._n = {"train": 0, "validation": 0, "test": 0, "predict": 0}
        self._next = {"train": math.inf, "validation": math.inf, "test": math.inf, "predict": math.inf}
        self._drawn = {"train": 0, "validation": 0, "test": 0, "predict": 0}
        self._intervals: dict[str, float] = {}

    @property
    def file(self) -> TextIO:
        """Where the bar is drawn (default ``sys.stderr``)."""
        return self._file_arg if self._file_arg is not None else sys.stderr

    @property
    def is_tty(self) -> bool:
        """Whether `file` is a terminal (a bar redrawn in place; otherwise one log line per refresh)."""
        isatty = getattr(self.file, "isatty", None)
        return bool(isatty and isatty())

    @property
    def is_enabled(self) -> bool:
        """Whether the bar is drawn (Lightning's): not disabled, ``refresh_rate > 0``, global rank zero."""
        return self._enabled and self.refresh_rate > 0

    @property
    def is_disabled(self) -> bool:
        """``not is_enabled`` (Lightning's)."""
        return not self.is_enabled

    def disable(self) -> None:
        """Stop drawing (Lightning's; e.g. while another bar or a prompt uses the terminal)."""
        self._enabled = False

    def enable(self) -> None:
        """Draw again after `disable` (Lightning's)."""
        self._enabled = True

    # ------------------------------------------------------------------ lifecycle
    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        # Rank 0 of each launch, where its console is: with replica groups every group draws its own bar, which
        # keeps going when another group fails (is_global_zero is group 0's rank 0 alone).
        self._enabled = self.is_enabled and getattr(trainer, "global_rank", 0) == 0

    @override
    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        for kind in list(self._bars):
            self._close(kind, trainer, final=False)

    @override
    def on_exception(self, trainer: TrainerView, task: Task, exception: BaseException) -> None:
        self.teardown(trainer, task, "")

    # ------------------------------------------------------------------ training
    @override
    def on_train_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        max_epochs = getattr(trainer, "max_epochs", None)
        desc = f"Epoch {trainer.current_epoch + 1}" + (
            f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
        )
        self._open("train", desc, trainer.num_training_batches, self.leave, trainer)

    @override
    def on_train_batch_end(
        self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The hot path: keep it to a store, a clock read and a comparison.
        self._n["train"] = batch_idx + 1
        if monotonic() >= self._next["train"]:
            self._maybe_refresh("train", trainer)

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._close("train", trainer, final=True)

    # ------------------------------------------------------------------ evaluation
    @override
    def on_validation_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        # During fit the validation bar goes away when done (the epoch bar stays); trainer.validate() keeps it.
        during_fit = getattr(trainer, "stage", None) == "fit"
        self._open("validation", "Validation", _eval_total(trainer, "val"), not during_fit, trainer)

    @override
    def on_validation_batch_end(
        self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # Counted, not batch_idx + 1: with several loaders batch_idx starts again at each loader.
        self._n["validation"] += 1
        if monotonic() >= self._next["validation"]:
            self._maybe_refresh("validation", trainer)

    @override
    def on_validation_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._close("validation", trainer, final=True)

    @override
    def on_test_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        self._open("test", "Test", _eval_total(trainer, "test"), True, trainer)

    @override
    def on_test_batch_end(
        self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # Counted, not batch_idx + 1: with several loaders batch_idx starts again at each loader.
        self._n["test"] += 1
        if monotonic() >= self._next["test"]:
            self._maybe_refresh("test", trainer)

    @override
    def on_test_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._close("test", trainer, final=True)

    @override
    def on_predict_batch_end(
        self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # No predict epoch hooks: the bar opens on the first batch and closes in teardown.
        if "predict" not in self._bars:
            self._open("predict", "Predict", _eval_total(trainer, "predict"), True, trainer)
        self._n["predict"] += 1
        if monotonic() >= self._next["predict"]:
            self._maybe_refresh("predict", trainer)

    # ------------------------------------------------------------------ drawing
    def _open(self, kind: str, desc: str, total: float | None, leave: bool, trainer: TrainerView) -> None:
        self._close(kind, trainer, final=False)
        self._n[kind] = 0
        self._drawn[kind] = 0
        if not self._enabled:
            self._next[kind] = math.inf
            return
        total_int = int(total) if total is not None and math.isfinite(total) else None
        if self.is_tty:
            self._bars[kind] = _TqdmBar(desc, total_int, leave, self.file, self.process_position)
            interval = self.refresh_rate_s
        else:
            self._bars[kind] = _LineBar(desc, total_int, self.file)
            interval = self.log_interval_s
        self._intervals[kind] = interval
        self._next[kind] = monotonic() + interval

    def _maybe_refresh(self, kind: str, trainer: TrainerView) -> None:
        """Time for a redraw: draw if ``refresh_rate`` batches have passed since the last one."""
        if self._n[kind] - self._drawn[kind] >= self.refresh_rate:
            self._refresh(kind, trainer)

    def _refresh(self, kind: str, trainer: TrainerView) -> None:
        bar = self._bars.get(kind)
        if bar is None:
            self._next[kind] = math.inf
            return
        bar.update(self._n[kind], _postfix(trainer))
        self._drawn[kind] = self._n[kind]
        self._next[kind] = monotonic() + self._intervals[kind]

    def _close(self, kind: str, trainer: TrainerView, final: bool) -> None:
        bar = self._bars.pop(kind, None)
        self._next[kind] = math.inf
        if bar is not None:
            bar.close(self._n[kind], _postfix(trainer) if final else None)


def _eval_total(trainer: Any, prefix: str) -> float | None:
    value = getattr(trainer, f"num_{prefix}_batches", None)
    if isinstance(value, (list, tuple)):
        value = sum(value) if value else None
    return value if isinstance(value, (int, float)) else None


def _postfix(trainer: Any) -> str:
    metrics = getattr(trainer, "progress_bar_metrics", None) or {}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


class _Bar(ABC):
    @abstractmethod
    def update(self, n: int, postfix: str) -> None: ...

    @abstractmethod
    def close(self, n: int, postfix: str | None) -> None: ...


class _TqdmBar(_Bar):
    """A tqdm bar redrawn only when we call it (``mininterval=0``: our caller already throttles by time)."""

    def __init__(self, desc: str, total: int | None, leave: bool, file: TextIO, position: int = 0) -> None:
        self.bar = tqdm(
            total=total,
            position=position or None,
            desc=desc,
            leave=leave,
            file=file,
            dynamic_ncols=True,
            mininterval=0,
            miniters=1,  # no dynamic miniters: draw on every call
            smoothing=0.3,
            unit="it",
        )

    def update(self, n: int, postfix: str) -> None:
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(n - self.bar.n)

    def close(self, n: int, postfix: str | None) -> None:
        if postfix is not None:
            self.update(n, postfix)
        self.bar.close()


class _LineBar(_Bar):
    """One plain line per refresh (tqdm's text without the carriage returns): for log files and batch jobs."""

    def __init__(self, desc: str, total: int | None, file: TextIO) -> None:
        self.desc = desc
        self.total = total
        self.file = file
        self.start = monotonic()

    def update(self, n: int, postfix: str) -> None:
        line = tqdm.format_meter(
            n, self.total, monotonic() - self.start, ncols=0, prefix=self.desc, postfix=postfix or None
        )
        self.file.write(line.replace("\r", "") + "\n")
        self.file.flush()

    def close(self, n: int, postfix: str | None) -> None:
        if postfix is not None:
            self.update(n, postfix)


TQDMProgressBar = ProgressBar
"""Lightning's name for `ProgressBar` (``lightning.pytorch.callbacks.TQDMProgressBar``)."""
