"""`HookDispatcher`: which callbacks and task methods a hook reaches, resolved once, and the calls.

A hook nobody overrides costs nothing per batch: the loops ask for a hook's resolved list once per epoch (or
stage) and call what is in it. `overrides` is the one test of "does this class override that method" in dltrain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dltrain.callbacks.base import Callback, TrainerView
    from dltrain.task import Task

__all__ = ["HookDispatcher", "overrides"]


def overrides(obj: Any, base: type, name: str) -> bool:
    """Whether ``obj``'s class (or ``obj``, a class) defines ``name`` differently from ``base``'s default."""
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, name, None) is not getattr(base, name, None)


class HookDispatcher:
    """Hooks to the callbacks that override them, then to the task if it does (Lightning's order).

    Callbacks get ``(view, task, *args)``: ``view`` is what callbacks read of the run (the Trainer, typed as
    `dltrain.callbacks.TrainerView`). What a hook resolves to is kept until `refresh` (the loops refresh at the
    start of each stage and epoch, after the task's ``configure_callbacks`` ran), so a per-batch hook is looked up
    once per epoch, not per batch.
    """

    def __init__(self, view: TrainerView, callbacks: Sequence[Callback]) -> None:
        self.view = view
        self._callbacks: list[Callback] = list(callbacks)
        self._task: Task | None = None
        self._resolved: dict[str, list[Callable[..., Any]]] = {}

    @property
    def callbacks(self) -> list[Callback]:
        return self._callbacks

    @callbacks.setter
    def callbacks(self, callbacks: Sequence[Callback]) -> None:
        self._callbacks = list(callbacks)
        self._resolved.clear()

    @property
    def task(self) -> Task | None:
        """The task the hooks reach (the one the running or last stage ran)."""
        return self._task

    @task.setter
    def task(self, task: Task | None) -> None:
        self._task = task
        self._resolved.clear()

    def refresh(self) -> None:
        """Resolve hooks again (the callbacks list may have changed in place)."""
        self._resolved.clear()

    def hooks(self, name: str) -> list[Callable[..., Any]]:
        """Hook ``name`` of the callbacks that override it, then of the task if it does.

        Each is bound to its leading arguments (callbacks: ``view, task``).
        """
        found = self._resolved.get(name)
        if found is None:
            from dltrain.callbacks.base import Callback
            from dltrain.task import Task

            task = self._task
            found = [partial(getattr(cb, name), self.view, task) for cb in self._callbacks
                     if overrides(cb, Callback, name)]
            if task is not None and overrides(task, Task, name):
                found.append(getattr(task, name))
            self._resolved[name] = found
        return found

    def checkpoint_last(self, name: str) -> tuple[list[Callable[..., Any]], list[Callable[..., Any]]]:
        """`hooks` of ``name`` in two parts: the task's and the non-checkpoint callbacks'; then the others.

        The loop sends a step's (an epoch's) values to the loggers in between, so that what a checkpoint
        covers is in the loggers' files before it is written (a resume after a kill then logs nothing twice
        and loses nothing).
        """
        from dltrain.callbacks.base import Checkpoint

        def owner(hook: Callable[..., Any]) -> Any:
            return getattr(getattr(hook, "func", hook), "__self__", None)

        found = self.hooks(name)
        return ([h for h in found if not isinstance(owner(h), Checkpoint)],
                [h for h in found if isinstance(owner(h), Checkpoint)])

    def call(self, name: str, *args: Any) -> None:
        """Call hook ``name`` on the callbacks, then the task."""
        for hook in self.hooks(name):
            hook(*args)

    def call_callbacks(self, name: str, *args: Any, checkpoints: bool | None = None) -> None:
        """Call hook ``name`` on the callbacks only (the caller runs the task's own at its place).

        ``checkpoints``: ``False``: all but the checkpoint callbacks, ``True``: only those
        (`checkpoint_last`'s split).
        """
        from dltrain.callbacks.base import Callback, Checkpoint

        for cb in self._callbacks:
            if overrides(cb, Callback, name) and (checkpoints is None or isinstance(cb, Checkpoint) == checkpoints):
                getattr(cb, name)(self.view, self._task, *args)

    def data_hook(self, name: str, datamodule: Any) -> Callable[..., Any] | None:
        """A batch-transfer hook: the datamodule's when its class overrides DataModule's default, else `task_hook`.

        As Lightning: when both override it, the datamodule's runs, with a warning.
        """
        from dltrain.datamodule import DataModule

        if datamodule is None or not isinstance(datamodule, DataModule) or not overrides(datamodule, DataModule,
                                                                                           name):
            return self.task_hook(name)
        if self.task_hook(name) is not None:
            import warnings

            warnings.warn(f"{type(self._task).__name__} and {type(datamodule).__name__} both override {name}: "
                          f"the data module's runs (as in Lightning); remove one of them", UserWarning, stacklevel=2)
        hook: Callable[..., Any] = getattr(datamodule, name)
        return hook

    def task_hook(self, name: str) -> Callable[..., Any] | None:
        """``task.<name>`` when the task's class overrides Task's default, else None (the caller does the default)."""
        from dltrain.task import Task

        task = self._task
        return getattr(task, name) if task is not None and overrides(task, Task, name) else None
