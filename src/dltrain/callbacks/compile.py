"""`Compile`: ``torch.compile`` the task's modules, report the compile time once and warn about recompilations."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from time import perf_counter
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from dltrain import _compat
from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["Compile"]


class Compile(Callback):
    """Compile the task's modules with ``torch.compile``, measure the compile time and count recompilations.

    Compiled in place: parameter names and checkpoints are unchanged.

    ``Trainer(compile=True)`` or ``Trainer(compile={...})`` adds this callback with those arguments; a task can
    choose its own in ``configure_callbacks`` (``return Compile(modules="blocks.*")``). Modules you compiled
    yourself (``self.net = torch.compile(net)``, ``trainer.fit(torch.compile(task))``) are left as they are and
    measured all the same.

    Compilation happens at the first call of a compiled module: the first training batch (forward, and backward
    at its first backward), and the first batch in evaluation, which compiles again (dynamo guards on grad
    mode). The time spent compiling up to the end of the first batch of the stage is printed once (``[dltrain]
    torch.compile: compiled in <seconds> s``) and logged as ``compile/seconds`` (with ``compile/recompiles``, epoch
    values of fit). A *recompilation* is a compilation of code already compiled in the same grad mode, because a
    guard failed (a new input shape with ``dynamic=False``, a changed Python attribute, ...): each is counted and
    warned about with dynamo's reasons, as it costs as much as the first compilation and dynamo gives up compiling
    after ``torch._dynamo.config.recompile_limit`` of them.

    Args:
        modules: which modules to compile: ``None`` (default) compiles each direct child of the task that is not a
            torchmetrics ``Metric``; a pattern or list of patterns (``fnmatch``, e.g. ``"blocks.*"``) over the
            names of ``task.named_modules()`` compiles each matching module (the outermost of nested matches).
        fullgraph: ``torch.compile``'s argument: fail on a graph break instead of splitting the graph.
        dynamic: ``torch.compile``'s argument: compile for dynamic shapes (``None``: after a shape changes).
        backend: ``torch.compile``'s argument: the compiler backend.
        mode: ``torch.compile``'s argument (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``, ...).
        options: ``torch.compile``'s argument: a dict of backend options.
        warn_recompiles: warn at each recompilation (they are counted either way).

    Example:
        >>> trainer = dltrain.Trainer(compile={"modules": "blocks.*", "mode": "max-autotune"})
    """

    def __init__(
        self,
        modules: str | Sequence[str] | None = None,
        *,
        fullgraph: bool = False,
        dynamic: bool | None = None,
        backend: str | Callable[..., Any] = "inductor",
        mode: str | None = None,
        options: dict[str, Any] | None = None,
        warn_recompiles: bool = True,
    ) -> None:
        self.modules = [modules] if isinstance(modules, str) else None if modules is None else list(modules)
        self.compile_kwargs: dict[str, Any] = {"fullgraph": fullgraph, "dynamic": dynamic, "backend": backend,
                                               "mode": mode, "options": options}
        self.warn_recompiles = warn_recompiles
        self.compiled: list[str] = []  # names of the modules this callback compiled
        self.compile_seconds = 0.0  # time spent compiling (frames and backward graphs), over the Trainer's life
        self.compilations = 0  # compilations of frames (not counting backward graphs)
        self.recompiles = 0
        self.recompile_reasons: list[str] = []  # one line per recompilation
        self._task: Task | None = None
        self._remove: Callable[[], None] | None = None
        self._started: float | None = None
        self._recompiling: tuple[str, float] | None = None  # the recompilation under way: its reasons, its start
        self._pending: list[tuple[str, float]] = []  # recompilations to report at the next batch end
        # Grad modes (grad enabled, inference mode) whose first compiling batch has ended, and the modes compiled
        # in during the batch under way.
        self._warm: set[tuple[bool, bool]] = set()
        self._compiling_modes: set[tuple[bool, bool]] = set()
        self._guard_failures: dict[str, int] = {}
        self._reported = False
        self._logged: tuple[float, int] | None = None  # (compile_seconds, recompiles) as last logged

    # ------------------------------------------------------------------ compiling
    @override
    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        self._start(task)

    @override
    def on_validation_start(self, trainer: TrainerView, task: Task) -> None:
        self._start(task)

    @override
    def on_test_start(self, trainer: TrainerView, task: Task) -> None:
        self._start(task)

    @override
    def on_predict_start(self, trainer: TrainerView, task: Task) -> None:
        self._start(task)

    def _start(self, task: Task) -> None:
        if self._remove is None:
            self._guard_failures = {k: len(v) for k, v in _compat.dynamo_guard_failures().items()}
            self._remove = _compat.on_dynamo_compile(self._on_compile_start, self._on_compile_end)
        if self._task is task:
            return
        self._task = task
        self._reported = False
        for name, module in self._targets(task):
            module.compile(**self.compile_kwargs)
            self.compiled.append(name)

    def _targets(self, task: Task) -> list[tuple[str, torch.nn.Module]]:
        from torchmetrics import Metric

        if _compat.is_compiled(task):
            return []
        if self.modules is None:
            chosen = [(n, m) for n, m in task.named_children() if not isinstance(m, Metric)]
        else:
            named = [(n, m) for n, m in task.named_modules() if n and not isinstance(m, Metric)]
            chosen = [(n, m) for n, m in named if any(fnmatchcase(n, p) for p in self.modules)]
            if not chosen:
                raise ConfigurationError(
                    f"Compile(modules={self.modules!r}) matches no module of {type(task).__name__}; its modules "
                    f"are named like {[n for n, _ in task.named_children()]} (patterns match dotted names, "
                    "e.g. 'blocks.*')"
                )
            chosen = [(n, m) for n, m in chosen if not any(n.startswith(o + ".") for o, _ in chosen)]
        compiled = [n for n, m in task.named_modules() if n and _compat.is_compiled(m)]
        # A module you compiled yourself, or inside one, is left as it is.
        return [(n, m) for n, m in chosen if not any(n == c or n.startswith(c + ".") for c in compiled)]

    @override
    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
        self._started = None

    # ------------------------------------------------------------------ measuring (called by dynamo)
    def _on_compile_start(self, kind: str, frame: int | None, index: int | None) -> None:
        self._started = perf_counter()
        if kind != "frame":
            return
        self.compilations += 1
        # Guard failures are recorded before dynamo recompiles: the new ones are this compilation's cause.
        new: list[str] = []
        for where, reasons in _compat.dynamo_guard_failures().items():
            seen = self._guard_failures.get(where, 0)
            new += [f"{where}: {r}" for r in reasons[seen:]]
            self._guard_failures[where] = len(reasons)
        # Expected: whatever compiles during the first batch that compiles in each grad mode (training, evaluation
        # under no_grad or inference_mode), where several compiled modules sharing code (blocks whose inputs differ
        # in requires_grad) may compile it more than once. After that, compiling a frame again is a recompilation.
        mode = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        if mode not in self._warm:
            self._compiling_modes.add(mode)
        elif index:
            self._recompiling = ("; ".join(new) or "no guard failure recorded", perf_counter())

    def _on_compile_end(self, kind: str, frame: int | None, index: int | None) -> None:
        if self._started is None:
            return
        now = perf_counter()
        self.compile_seconds += now - self._started
        self._started = None
        if kind == "frame" and self._recompiling is not None:
            reasons, began = self._recompiling
            self._recompiling = None
            self._pending.append((reasons, now - began))

    # ------------------------------------------------------------------ reporting (between batches)
    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._report(trainer, task, log=True)

    @override
    def on_validation_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._report(trainer, task, log=False, once=trainer.stage != "fit")

    @override
    def on_test_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._report(trainer, task, log=False)

    @override
    def on_predict_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._report(trainer, task, log=False)

    def _report(self, trainer: TrainerView, task: Task, log: bool, once: bool = True) -> None:
        if self._compiling_modes:
            self._warm |= self._compiling_modes
            self._compiling_modes.clear()
        for reasons, seconds in self._pending:
            self.recompiles += 1
            self.recompile_reasons.append(reasons)
            if self.warn_recompiles and trainer.is_global_zero:
                warnings.warn(
                    f"torch.compile recompiled ({self.recompiles} recompilation(s) so far, this one {seconds:.1f} s) "
                    f"because guards of earlier compilations failed: {reasons}. Each recompilation costs about as "
                    "much as the first compilation: keep shapes fixed (drop_last=True for a smaller last batch) or "
                    "compile with dynamic=True; TORCH_LOGS=recompiles prints more",
                    UserWarning, stacklevel=2,
                )
        self._pending.clear()
        if once and not self._reported and self.compile_seconds > 0:
            self._reported = True
            if trainer.is_global_zero:
                what = ", ".join(self.compiled) or "the modules you compiled"
                sys.stderr.write(f"[dltrain] torch.compile: compiled in {self.compile_seconds:.1f} s "
                                 f"({self.compilations} frame compilation(s); {what})\n")
        if log and self._reported and self._logged != (self.compile_seconds, self.recompiles):
            self._logged = (self.compile_seconds, self.recompiles)
            task.log("compile/seconds", self.compile_seconds, on_step=False, on_epoch=True, reduce_fx="max")
            task.log("compile/recompiles", float(self.recompiles), on_step=False, on_epoch=True, reduce_fx="max")
