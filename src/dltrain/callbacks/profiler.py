"""Profilers as callbacks: ``Trainer(profiler="simple")``, ``"advanced"`` and ``"pytorch"``.

``"simple"`` times each stage of the loop, ``"advanced"`` runs ``cProfile`` over them, ``"pytorch"`` runs
``torch.profiler`` and writes a Chrome trace file.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, TextIO

from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler", "make_profiler"]


def make_profiler(profiler: Any) -> Callback:
    """What ``Trainer(profiler=...)`` accepts: ``"simple"``, ``"pytorch"`` or a profiler callback."""
    if isinstance(profiler, Callback):
        return profiler
    if profiler == "simple":
        return SimpleProfiler()
    if profiler == "pytorch":
        return PyTorchProfiler()
    if profiler == "advanced":
        return AdvancedProfiler()
    if profiler == "xla":
        from dltrain._refusals import refuse

        refuse("lightning.pytorch.profilers.XLAProfiler")
    raise ConfigurationError(f"profiler={profiler!r}: use 'simple', 'advanced', 'pytorch' or a dltrain profiler "
                             "callback")


class Profiler(Callback):
    """Base class of the profilers (Lightning's ``Profiler``).

    ``start``/``stop`` an action by name, ``profile`` a block, ``summary`` as text; ``describe`` prints it. As
    callbacks, profilers time the loop's stages themselves (``Trainer(profiler=...)`` adds one).

    Args:
        dirpath: where the reports go with ``filename`` (default: ``trainer.log_dir``).
        filename: with it, each stage's report is written to ``<dirpath>/<stage>-<filename>.txt`` instead of
            printed.

    Example:
        A profiler of your own implements ``start``, ``stop`` and ``summary``:

        >>> class Counting(Profiler):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.calls: dict[str, int] = {}
        ...     def start(self, action_name: str) -> None:
        ...         self.calls[action_name] = self.calls.get(action_name, 0) + 1
        ...     def stop(self, action_name: str) -> None:
        ...         pass
        ...     def summary(self) -> str:
        ...         return ", ".join(f"{k}: {v}" for k, v in self.calls.items())
        >>> profiler = Counting()
        >>> for _ in range(3):
        ...     with profiler.profile("decode"):
        ...         pass
        >>> profiler.describe()
        decode: 3
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename

    def _report(self, trainer: TrainerView, stage: str, text: str, file: TextIO | None = None) -> None:
        """Print ``text`` (global rank zero), or write it to ``<dirpath>/<stage>-<filename>.txt``."""
        if not trainer.is_global_zero:
            return
        if self.filename is None:
            print(text, file=file or sys.stdout)
            return
        folder = Path(self.dirpath if self.dirpath is not None else trainer.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{_plain(stage)}-{self.filename}.txt").write_text(text + "\n")

    def start(self, action_name: str) -> None:
        """Start timing ``action_name``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement start()")

    def stop(self, action_name: str) -> None:
        """Stop timing ``action_name``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement stop()")

    def summary(self) -> str:
        """The report as text (empty in this base class)."""
        return ""

    @contextmanager
    def profile(self, action_name: str) -> Iterator[None]:
        """Time a block of your own code under ``action_name`` (``with trainer.profiler.profile("decode"):``)."""
        self.start(action_name)
        try:
            yield
        finally:
            self.stop(action_name)

    def describe(self) -> None:
        """Print `summary` to stdout."""
        print(self.summary(), file=sys.stdout)


class PassThroughProfiler(Profiler):
    """``trainer.profiler`` when no profiler was asked for: ``profile(action)`` measures nothing (Lightning's).

    ``dirpath``/``filename`` are accepted as Lightning's; nothing is written.

    Example:
        >>> trainer = dltrain.Trainer(max_epochs=1)
        >>> type(trainer.profiler).__name__
        'PassThroughProfiler'
        >>> with trainer.profiler.profile("decode"):  # your code, profiled when a profiler is chosen
        ...     pass
    """

    @override
    def start(self, action_name: str) -> None: ...
    @override
    def stop(self, action_name: str) -> None: ...

    @contextmanager
    @override
    def profile(self, action_name: str) -> Iterator[None]:
        yield

    @override
    def describe(self) -> None: ...


class SimpleProfiler(Profiler):
    """Wall time spent in each stage of the loop, printed as a table when the stage ends (on global rank zero).

    Args:
        dirpath: where the reports go with ``filename`` (default: ``trainer.log_dir``).
        filename: write each stage's report to ``<dirpath>/<stage>-<filename>.txt`` instead of printing it.
        extended: Lightning's switch for the calls/mean/total/percent columns, which dltrain's table always has.
        file: where to print the report when no ``filename`` is given (default ``sys.stdout``).

    Measured between hooks, so it costs two clock reads per batch: ``run_training_batch`` (batch start to end:
    forward, backward, optimizer step), ``data_wait`` (from one batch's end to the next one's start: fetching,
    moving to the device, other callbacks), ``run_training_epoch``, ``run_validation``, ``run_test``,
    ``run_predict`` and ``fit``. ``summary()`` returns the table; ``timings`` holds the raw durations.

    Example:
        >>> profiler = SimpleProfiler(filename="perf")
        >>> trainer = dltrain.Trainer(max_epochs=1, profiler=profiler, log_every_n_steps=2,
        ...                           enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(task, train_loader, val_loader)
        >>> sorted(profiler.timings)
        ['data_wait', 'fit', 'run_training_batch', 'run_training_epoch', 'run_validation']
        >>> len(profiler.timings["run_training_batch"])  # 64 samples in batches of 16
        4
        >>> print(open(f"{trainer.log_dir}/fit-perf.txt").read())
        Profiler report
        Action                 |   Calls |   Mean (s) |  Total (s) |      %
        fit                    |       1 | ...
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None, extended: bool = True,
                 file: TextIO | None = None) -> None:
        super().__init__(dirpath, filename)
        self.extended = extended
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

    @override
    def describe(self) -> None:
        print(self.summary(), file=self.file or sys.stdout)

    @override
    def start(self, action_name: str) -> None:
        self._start(action_name)

    @override
    def stop(self, action_name: str) -> None:
        self._stop(action_name)

    def _start(self, name: str) -> None:
        self._open[name] = perf_counter()

    def _stop(self, name: str) -> None:
        start = self._open.pop(name, None)
        if start is not None:
            self.timings[name].append(perf_counter() - start)

    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        self._start(_plain(stage))

    @override
    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        self._stop(_plain(stage))
        self._report(trainer, stage, self.summary(), self.file)

    @override
    def on_train_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        self._start("run_training_epoch")

    @override
    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._stop("run_training_epoch")

    @override
    def on_train_batch_start(self, trainer: TrainerView, task: Task, batch: Any, batch_idx: int) -> None:
        self._stop("data_wait")
        self._start("run_training_batch")

    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop("run_training_batch")
        self._start("data_wait")

    @override
    def on_validation_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        self._start("run_validation")

    @override
    def on_validation_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._stop("run_validation")

    @override
    def on_test_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        self._start("run_test")

    @override
    def on_test_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._stop("run_test")

    @override
    def on_predict_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        self._start("run_predict")

    @override
    def on_predict_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        self._stop("run_predict")

    @override
    def summary(self) -> str:
        rows = [(name, len(d), sum(d) / len(d), sum(d)) for name, d in self.timings.items() if d]
        rows.sort(key=lambda r: -r[3])
        total = max((r[3] for r in rows), default=0.0) or 1.0
        lines = ["Profiler report", f"{'Action':<22} | {'Calls':>7} | {'Mean (s)':>10} | {'Total (s)':>10} | {'%':>6}"]
        lines += [f"{n:<22} | {c:>7} | {m:>10.5f} | {t:>10.3f} | {100 * t / total:>6.1f}" for n, c, m, t in rows]
        return "\n".join(lines)


class PyTorchProfiler(Profiler):
    """``torch.profiler`` around each stage: a Chrome trace per stage, and a table of the top operators.

    The traces (for ``chrome://tracing`` or Perfetto) go to ``dirpath`` (default
    ``<default_root_dir>/profiler``); global rank zero prints the table.

    Args:
        dirpath: where the traces (and, with ``filename``, the tables) go.
        filename: the traces are ``<stage>-<filename>-rank<r>.pt.trace.json`` (default ``<stage>-rank<r>...``)
            and the operator table is written to ``<dirpath>/<stage>-<filename>.txt`` instead of printed.
        group_by_input_shapes: one table row per operator and input shapes (needs ``record_shapes=True``).
        emit_nvtx: NVTX ranges for Nsight Systems (``torch.autograd.profiler.emit_nvtx``; CUDA only).
        export_to_chrome: write the Chrome trace.
        row_limit: operators in the table (-1: all).
        sort_by_key: the table's sort key (default ``cuda_time_total`` on CUDA, else ``cpu_time_total``).
        record_module_names: a named range for each submodule's forward (``<Type>: <name>``) in the trace.
        table_kwargs: more arguments of ``key_averages().table()``.
        **profiler_kwargs: passed to ``torch.profiler.profile`` (``record_shapes``, ``profile_memory``, ...).

    Example:
        >>> profiler = PyTorchProfiler(filename="ops", row_limit=5)
        >>> trainer = dltrain.Trainer(max_epochs=1, profiler=profiler, log_every_n_steps=2,
        ...                           enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(task, train_loader, val_loader)
        [dltrain] profiler trace: .../profiler/fit-ops-rank0.pt.trace.json
        >>> [path.name for path in profiler.trace_paths]
        ['fit-ops-rank0.pt.trace.json']
        >>> "Self CPU time total" in open(f"{trainer.log_dir}/fit-ops.txt").read()
        True
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 group_by_input_shapes: bool = False, emit_nvtx: bool = False, export_to_chrome: bool = True,
                 row_limit: int = 20, sort_by_key: str | None = None, record_module_names: bool = True,
                 table_kwargs: dict[str, Any] | None = None, **profiler_kwargs: Any) -> None:
        super().__init__(dirpath, filename)
        self.group_by_input_shapes = group_by_input_shapes
        self.emit_nvtx = emit_nvtx
        self.export_to_chrome = export_to_chrome
        self.row_limit = row_limit
        self.sort_by_key = sort_by_key
        self.record_module_names = record_module_names
        self.table_kwargs = table_kwargs or {}
        self.profiler_kwargs = profiler_kwargs
        self._profiler: Any = None
        self._ranges: dict[str, Any] = {}  # start()ed ranges, by name
        self._module_hooks: list[Any] = []
        self.trace_paths: list[Path] = []

    @contextmanager
    def profile(self, action_name: str) -> Iterator[None]:
        """A named range of your own code in the trace (``torch.profiler.record_function``)."""
        import torch.profiler

        with torch.profiler.record_function(action_name):
            yield

    @override
    def start(self, action_name: str) -> None:
        import torch.profiler

        self._ranges[action_name] = torch.profiler.record_function(action_name)
        self._ranges[action_name].__enter__()

    @override
    def stop(self, action_name: str) -> None:
        opened = self._ranges.pop(action_name, None)
        if opened is not None:
            opened.__exit__(None, None, None)

    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        import torch.profiler

        if self.emit_nvtx:
            if trainer.device.type != "cuda":
                raise ConfigurationError("PyTorchProfiler(emit_nvtx=True) needs CUDA (NVTX ranges for Nsight)")
            self._profiler = torch.autograd.profiler.emit_nvtx()
        else:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if trainer.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities, **self.profiler_kwargs)
        self._profiler.__enter__()
        if self.record_module_names:
            self._record_modules(task)

    def _record_modules(self, task: Task) -> None:
        for name, module in task.named_modules():
            if not name:
                continue
            label = f"{type(module).__name__}: {name}"
            self._module_hooks.append(module.register_forward_pre_hook(
                lambda _m, _i, label=label: self.start(label)))
            self._module_hooks.append(module.register_forward_hook(
                lambda _m, _i, _o, label=label: self.stop(label)))

    @override
    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        for handle in self._module_hooks:
            handle.remove()
        self._module_hooks = []
        if self._profiler is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        if self.emit_nvtx:
            return  # the ranges went to NVTX (Nsight records them)
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "profiler")
        folder.mkdir(parents=True, exist_ok=True)
        if self.export_to_chrome:
            name = f"{_plain(stage)}-{self.filename}" if self.filename else _plain(stage)
            path = folder / f"{name}-rank{trainer.global_rank}.pt.trace.json"
            profiler.export_chrome_trace(str(path))
            self.trace_paths.append(path)
            if trainer.is_global_zero:
                print(f"[dltrain] profiler trace: {path}")
        sort = self.sort_by_key or ("cuda_time_total" if trainer.device.type == "cuda" else "cpu_time_total")
        table = profiler.key_averages(group_by_input_shape=self.group_by_input_shapes).table(
            sort_by=sort, row_limit=self.row_limit, **self.table_kwargs)
        self._report(trainer, stage, table)


class AdvancedProfiler(SimpleProfiler):
    """``cProfile`` statistics of each stage of the loop (training batches, validation, test, predict).

    Printed per stage as ``pstats`` tables (cumulative time) when the stage ends, on global rank zero.

    Args:
        dirpath: where the reports go with ``filename`` (default: ``trainer.log_dir``).
        filename: write each stage's report to ``<dirpath>/<stage>-<filename>.txt`` instead of printing it.
        line_count_restriction: lines of each table (an int) or a fraction of them.
        dump_stats: also write each action's raw statistics (``<dirpath>/<filename>_<action>.prof``).

    Example:
        >>> profiler = AdvancedProfiler(filename="stats", line_count_restriction=5)
        >>> trainer = dltrain.Trainer(max_epochs=1, profiler=profiler, log_every_n_steps=2,
        ...                           enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(task, train_loader, val_loader)
        >>> sorted(profiler.profiled_actions)
        ['run_training_batch', 'run_validation']
        >>> report = open(f"{trainer.log_dir}/fit-stats.txt").read()
        >>> sorted(line for line in report.splitlines() if line.startswith("Profile stats"))
        ['Profile stats for: run_training_batch', 'Profile stats for: run_validation']
        >>> "List reduced from" in report and "due to restriction <5>" in report  # 5 lines per table
        True
    """

    _PROFILED = ("run_training_batch", "run_validation", "run_test", "run_predict")  # never nested in each other

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath, filename)
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self.profiled_actions: dict[str, Any] = {}

    def _start(self, name: str) -> None:
        super()._start(name)
        if name in self._PROFILED or name not in self._builtin_actions():
            import cProfile

            profile = self.profiled_actions.setdefault(name, cProfile.Profile())
            profile.enable()

    def _stop(self, name: str) -> None:
        profile = self.profiled_actions.get(name)
        if profile is not None and name in self._open:
            profile.disable()
        super()._stop(name)

    @staticmethod
    def _builtin_actions() -> set[str]:
        return {"fit", "validate", "test", "predict", "run_training_epoch", "data_wait",
                *AdvancedProfiler._PROFILED}

    @override
    def summary(self) -> str:
        import io
        import pstats

        parts = []
        for name, profile in self.profiled_actions.items():
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out).strip_dirs().sort_stats("cumulative")
            stats.print_stats(self.line_count_restriction)
            parts.append(f"Profile stats for: {name}\n{out.getvalue()}")
            if self.dump_stats and self.dirpath is not None:
                Path(self.dirpath).mkdir(parents=True, exist_ok=True)
                stats.dump_stats(str(Path(self.dirpath) / f"{self.filename or 'profile'}_{name}.prof"))
        return "\n".join(parts)


def _plain(stage: str) -> str:
    """``"fit"`` for ``TrainerFn.FITTING`` (what setup/teardown get), for file names."""
    return str(getattr(stage, "value", stage))
