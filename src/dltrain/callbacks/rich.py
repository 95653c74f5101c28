"""`RichProgressBar` and `RichModelSummary`: the progress bar and the model summary drawn with ``rich``.

``rich`` is an optional dependency (``pip install dltrain[rich]``); building either callback without it raises an
error that says so.
"""

from __future__ import annotations

import importlib.util
import math
from time import monotonic
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.callbacks.summary import ModelSummary, summary_rows
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["RichModelSummary", "RichProgressBar"]


def _require_rich(what: str) -> None:
    if importlib.util.find_spec("rich") is None:
        raise ConfigurationError(f"{what} needs the rich package: pip install dltrain[rich] (or use "
                                 f"{'ProgressBar' if 'Progress' in what else 'ModelSummary'}, which does not)")


class RichProgressBar(Callback):
    """A ``rich`` progress bar per training epoch and evaluation run, with the ``prog_bar`` metrics.

    Drawn on global rank zero only. As Lightning's, ``refresh_rate`` counts batches: the bar advances every
    ``refresh_rate`` batches, and is redrawn at most ten times a second whatever the batch rate.

    Args:
        refresh_rate: advance the bar every this many batches (0 disables the bar).
        leave: keep the finished epoch bars on screen.
        theme: Lightning's ``RichProgressBarTheme`` (any object with ``description``/``progress_bar`` style
            attributes is read for those two styles; others are ignored).
        console_kwargs: arguments of ``rich.console.Console``.

    Example:
        >>> trainer = dltrain.Trainer(max_epochs=1, callbacks=[RichProgressBar(leave=True)], logger=False)
        >>> trainer.fit(task, train_loader)
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, theme: Any = None,
                 console_kwargs: dict[str, Any] | None = None) -> None:
        _require_rich("RichProgressBar")
        self.refresh_rate = refresh_rate
        self.leave = leave
        self.theme = theme
        self.console_kwargs = console_kwargs or {}
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._enabled = True
        self._last_draw = 0.0

    @property
    def is_enabled(self) -> bool:
        """Whether the bar is drawn (enabled and ``refresh_rate > 0``)."""
        return self._enabled and self.refresh_rate > 0

    @property
    def is_disabled(self) -> bool:
        """``not is_enabled`` (Lightning's)."""
        return not self.is_enabled

    def disable(self) -> None:
        """Stop drawing the bar."""
        self._enabled = False

    def enable(self) -> None:
        """Draw the bar again."""
        self._enabled = True

    # ------------------------------------------------------------------ lifecycle
    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        self._enabled = self._enabled and trainer.global_rank == 0  # each launch's console (see ProgressBar)
        if not self.is_enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        style = getattr(self.theme, "progress_bar", "magenta") or "magenta"
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(complete_style=style),
            TextColumn("{task.completed}/{task.fields[total_text]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=Console(**self.console_kwargs),
            auto_refresh=False,
            transient=not self.leave,
        )
        self._progress.start()

    @override
    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()
        self._progress = None
        self._tasks = {}

    @override
    def on_exception(self, trainer: TrainerView, task: Task, exception: BaseException) -> None:
        self.teardown(trainer, task, "")

    # ------------------------------------------------------------------ bars
    def _open(self, kind: str, description: str, total: float | None, trainer: TrainerView) -> None:
        if self._progress is None:
            return
        self._close(kind, trainer)
        count = int(total) if total is not None and math.isfinite(total) else None
        self._tasks[kind] = self._progress.add_task(
            description, total=count, total_text=str(count) if count is not None else "?", metrics="")

    def _advance(self, kind: str, done: int, trainer: TrainerView) -> None:
        if self._progress is None or kind not in self._tasks or done % self.refresh_rate:
            return
        self._progress.update(self._tasks[kind], completed=done, metrics=_metrics_text(trainer))
        now = monotonic()
        if now - self._last_draw > 0.1:  # redraw at most ten times a second, whatever the batch rate
            self._last_draw = now
            self._progress.refresh()

    def _close(self, kind: str, trainer: TrainerView) -> None:
        if self._progress is None or kind not in self._tasks:
            return
        task_id = self._tasks.pop(kind)
        self._progress.update(task_id, metrics=_metrics_text(trainer))
        self._progress.refresh()
        if kind != "train" or not self.leave:
            self._progress.remove_task(task_id)

    @override
    def on_train_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self._open("train", f"Epoch {trainer.current_epoch}{epochs}", trainer.num_training_batches, trainer)

    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._advance("train", batch_idx + 1, trainer)

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._close("train", trainer)

    @override
    def on_validation_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        name = "Sanity Checking" if trainer.sanity_checking else "Validation"
        self._open("validation", name, sum(trainer.num_val_batches) if trainer.num_val_batches else None, trainer)

    @override
    def on_validation_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._advance("validation", batch_idx + 1, trainer)

    @override
    def on_validation_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._close("validation", trainer)

    @override
    def on_test_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        self._open("test", "Testing", sum(trainer.num_test_batches) if trainer.num_test_batches else None, trainer)

    @override
    def on_test_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._advance("test", batch_idx + 1, trainer)

    @override
    def on_test_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._close("test", trainer)

    @override
    def on_predict_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        counts = trainer.num_predict_batches
        self._open("predict", "Predicting", sum(counts) if counts else None, trainer)

    @override
    def on_predict_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._advance("predict", batch_idx + 1, trainer)

    @override
    def on_predict_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._close("predict", trainer)


def _metrics_text(trainer: Any) -> str:
    metrics = trainer.progress_bar_metrics
    return " ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items())


class RichModelSummary(ModelSummary):
    """`ModelSummary` drawn as a ``rich`` table (with in/out sizes when the task has an ``example_input_array``).

    Args:
        max_depth: how deep to list submodules.
        header_style: the ``rich`` style of the header row.
        **summarize_kwargs: Lightning's extra summary options; none changes dltrain's table.

    Example:
        >>> trainer = dltrain.Trainer(max_epochs=1, callbacks=[RichModelSummary(max_depth=2)], logger=False,
        ...                           enable_progress_bar=False)
        >>> trainer.fit(task, train_loader)
    """

    def __init__(self, max_depth: int = 1, header_style: str = "bold magenta", **summarize_kwargs: Any) -> None:
        _require_rich("RichModelSummary")
        super().__init__(max_depth=max_depth, **summarize_kwargs)
        self.header_style = header_style

    @override
    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        if not trainer.is_global_zero:
            return
        from rich.console import Console
        from rich.table import Table

        rows, totals = summary_rows(task, self.max_depth)
        table = Table(header_style=self.header_style)
        for name in rows[0]:
            table.add_column(name)
        for row in rows[1:]:
            table.add_row(*row)
        console = Console(file=self.file)
        console.print(table)
        for line in totals:
            console.print(line)
