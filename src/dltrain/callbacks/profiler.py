"""Profilers as callbacks: ``Trainer(profiler="simple")`` (time per stage of the loop) and ``"pytorch"``
(``torch.profiler``, a Chrome trace file)."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, TextIO

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["PassThroughProfiler", "PyTorchProfiler", "SimpleProfiler", "make_profiler"]


def make_profiler(profiler: Any) -> Callback:
    """What ``Trainer(profiler=...)`` accepts: ``"simple"``, ``"pytorch"`` or a profiler callback."""
    if isinstance(profiler, Callback):
        return profiler
    if profiler == "simple":
        return SimpleProfiler()
    if profiler == "pytorch":
        return PyTorchProfiler()
    raise ConfigurationError(f"profiler={profiler!r}: use 'simple', 'pytorch' or a dltrain profiler callback")


class PassThroughProfiler:
    """``trainer.profiler`` when no profiler was asked for: ``profile(action)`` measures nothing (Lightning's)."""

    @contextmanager
    def profile(self, action_name: str) -> Iterator[None]:
        yield

    def describe(self) -> None: ...


class SimpleProfiler(Callback):
    """Wall time spent in each stage of the loop, printed as a table when the stage ends (on global rank zero).

    Measured between hooks, so it costs two clock reads per batch: ``run_training_batch`` (batch start to end:
    forward, backward, optimizer step), ``data_wait`` (from one batch's end to the next one's start: fetching,
    moving to the device, other callbacks), ``run_training_epoch``, ``run_validation``, ``run_test``,
    ``run_predict`` and ``fit``. ``summary()`` returns the table; ``timings`` holds the raw durations.
    """

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file
        self.timings: dict[str, list[float]] = defaultdict(list)
        self._open: dict[str, float] = {}

    @contextmanager
    def profile(self, action_name: str) -> Iterator[None]:
        """Time a block of your own code under ``action_name`` (``with trainer.profiler.profile("decode"):``)."""
        start = perf_counter()
        try:
            yield
        finally:
            self.timings[action_name].append(perf_counter() - start)

    def describe(self) -> None:
        print(self.summary(), file=self.file or sys.stdout)

    def _start(self, name: str) -> None:
        self._open[name] = perf_counter()

    def _stop(self, name: str) -> None:
        start = self._open.pop(name, None)
        if start is not None:
            self.timings[name].append(perf_counter() - start)

    def setup(self, trainer: Trainer, task: Task, stage: str) -> None:
        self._start(stage)

    def teardown(self, trainer: Trainer, task: Task, stage: str) -> None:
        self._stop(stage)
        if trainer.is_global_zero:
            print(self.summary(), file=self.file or sys.stdout)

    def on_train_epoch_start(self, trainer: Trainer, task: Task) -> None:
        self._start("run_training_epoch")

    def on_train_epoch_end(self, trainer: Trainer, task: Task) -> None:
        self._stop("run_training_epoch")

    def on_train_batch_start(self, trainer: Trainer, task: Task, batch: Any, batch_idx: int) -> None:
        self._stop("data_wait")
        self._start("run_training_batch")

    def on_train_batch_end(self, trainer: Trainer, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop("run_training_batch")
        self._start("data_wait")

    def on_validation_epoch_start(self, trainer: Trainer, task: Task) -> None:
        self._start("run_validation")

    def on_validation_epoch_end(self, trainer: Trainer, task: Task) -> None:
        self._stop("run_validation")

    def on_test_epoch_start(self, trainer: Trainer, task: Task) -> None:
        self._start("run_test")

    def on_test_epoch_end(self, trainer: Trainer, task: Task) -> None:
        self._stop("run_test")

    def on_predict_epoch_start(self, trainer: Trainer, task: Task) -> None:
        self._start("run_predict")

    def on_predict_epoch_end(self, trainer: Trainer, task: Task) -> None:
        self._stop("run_predict")

    def summary(self) -> str:
        rows = [(name, len(d), sum(d) / len(d), sum(d)) for name, d in self.timings.items() if d]
        rows.sort(key=lambda r: -r[3])
        total = max((r[3] for r in rows), default=0.0) or 1.0
        lines = ["Profiler report", f"{'Action':<22} | {'Calls':>7} | {'Mean (s)':>10} | {'Total (s)':>10} | {'%':>6}"]
        lines += [f"{n:<22} | {c:>7} | {m:>10.5f} | {t:>10.3f} | {100 * t / total:>6.1f}" for n, c, m, t in rows]
        return "\n".join(lines)


class PyTorchProfiler(Callback):
    """``torch.profiler`` around each stage; writes a Chrome trace (``chrome://tracing``, Perfetto) per stage to
    ``dirpath`` (default ``<default_root_dir>/profiler``) and prints the top operators on global rank zero.

    Args:
        dirpath: where the traces go.
        row_limit: operators in the printed table.
        **profiler_kwargs: passed to ``torch.profiler.profile`` (``record_shapes``, ``profile_memory``, ...).
    """

    def __init__(self, dirpath: str | None = None, row_limit: int = 20, **profiler_kwargs: Any) -> None:
        self.dirpath = dirpath
        self.row_limit = row_limit
        self.profiler_kwargs = profiler_kwargs
        self._profiler: Any = None
        self.trace_paths: list[Path] = []

    @contextmanager
    def profile(self, action_name: str) -> Iterator[None]:
        """A named range of your own code in the trace (``torch.profiler.record_function``)."""
        import torch.profiler

        with torch.profiler.record_function(action_name):
            yield

    def setup(self, trainer: Trainer, task: Task, stage: str) -> None:
        import torch.profiler

        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities, **self.profiler_kwargs)
        self._profiler.__enter__()

    def teardown(self, trainer: Trainer, task: Task, stage: str) -> None:
        if self._profiler is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "profiler")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stage}-rank{trainer.global_rank}.pt.trace.json"
        profiler.export_chrome_trace(str(path))
        self.trace_paths.append(path)
        if trainer.is_global_zero:
            print(profiler.key_averages().table(sort_by="cpu_time_total", row_limit=self.row_limit))
            print(f"[dltrain] profiler trace: {path}")
