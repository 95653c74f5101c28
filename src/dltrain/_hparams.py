"""``self.hparams`` and ``save_hyperparameters``, shared by `Task` and `DataModule` (Lightning's semantics)."""

from __future__ import annotations

import copy
import inspect
from argparse import Namespace
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from dltrain.errors import ConfigurationError

__all__ = ["AttributeDict", "HyperparametersMixin"]


class AttributeDict(dict):  # type: ignore[type-arg]
    """A dict whose items are also attributes: ``hparams.lr`` and ``hparams["lr"]``.

    Lightning's ``lightning.fabric.utilities.data.AttributeDict`` does the same, but importing it loads Lightning
    Fabric (about 5 s measured with ``python -X importtime -c "import dltrain"``), and ``import dltrain`` stays light.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(f"hparams has no {name!r}; it has {sorted(self)}") from err

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


class HyperparametersMixin:
    """``hparams`` (an `AttributeDict`.

    ``self.hparams.lr`` and ``self.hparams["lr"]``) and ``save_hyperparameters``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._hparams = AttributeDict()
        self._hparams_initial = AttributeDict()  # as save_hyperparameters stored them (hparams_initial)
        self._hparams_to_loggers = False  # save_hyperparameters(logger=...): whether the Trainer sends them

    @property
    def hparams(self) -> AttributeDict:
        """The saved hyperparameters; stored in checkpoints and sent to the loggers."""
        return self._hparams

    @hparams.setter
    def hparams(self, value: Mapping[str, Any] | Namespace) -> None:
        self._hparams = AttributeDict(vars(value) if isinstance(value, Namespace) else dict(value))

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: FrameType | None = None,
        logger: bool = True,
        **values: Any,
    ) -> None:
        """Store hyperparameters in ``self.hparams``.

        With no arguments, the arguments of the calling ``__init__``; with names, only those arguments; with one
        dict or ``argparse.Namespace``, its items. ``ignore`` leaves names out (modules, large objects).
        ``logger=False`` keeps them from the loggers (the Trainer sends ``hparams_initial`` at the start of fit).
        Keyword arguments are stored as given (``save_hyperparameters(model="resnet18")``).
        """
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        self._hparams_to_loggers = logger
        if values and not args:
            self._hparams.update(values)
            self._hparams_initial = copy.deepcopy(self._hparams)
            return
        if len(args) == 1 and isinstance(args[0], (Mapping, Namespace)):
            collected = dict(vars(args[0]) if isinstance(args[0], Namespace) else args[0])
        else:
            if frame is None:
                current = inspect.currentframe()
                frame = current.f_back if current is not None else None
            collected = _init_args(frame) if frame is not None else {}
            names = [a for a in args if isinstance(a, str)]
            if names:
                missing = [n for n in names if n not in collected]
                if missing:
                    raise ValueError(f"save_hyperparameters{tuple(names)}: {missing} are not arguments of __init__")
                collected = {k: v for k, v in collected.items() if k in names}
        self._hparams.update({k: v for k, v in collected.items() if k not in ignored})
        self._hparams.update(values)
        self._hparams_initial = copy.deepcopy(self._hparams)

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of the hyperparameters as ``save_hyperparameters`` stored them.

        Later changes to ``hparams`` are not in it; empty before ``save_hyperparameters`` is called.
        """
        return copy.deepcopy(self._hparams_initial)

    def remove_ignored_hparams(self, ignore_list: list[str]) -> None:
        """Drop ``ignore_list`` from the saved hyperparameters (a subclass leaving out what its base saved)."""
        for name in ignore_list:
            self._hparams.pop(name, None)
            self._hparams_initial.pop(name, None)


def hparams_for_loggers(task: HyperparametersMixin, datamodule: Any) -> dict[str, Any] | None:
    """What the Trainer sends to the loggers, as Lightning: the task's and the datamodule's ``hparams_initial``.

    Each only if saved with ``save_hyperparameters(logger=True)`` (the default); ``None`` when neither was.

    Raises:
        ConfigurationError: a name in both with different values.
    """
    sources = [(name, obj) for name, obj in (("task", task), ("datamodule", datamodule))
               if isinstance(obj, HyperparametersMixin) and obj._hparams_to_loggers]  # noqa: SLF001  (this module's)
    if not sources:
        return None
    merged: dict[str, Any] = {}
    for _, obj in sources:
        merged.update(obj.hparams_initial)
    if len(sources) == 2:
        task_hp, dm_hp = task.hparams_initial, datamodule.hparams_initial
        clash = sorted(k for k in task_hp.keys() & dm_hp.keys() if not _same(task_hp[k], dm_hp[k]))
        if clash:
            raise ConfigurationError(
                f"hyperparameters {', '.join(map(repr, clash))} are saved by both the task and the datamodule, with "
                "different values: the loggers would get one of them. Rename one, or keep one side from the "
                "loggers with save_hyperparameters(logger=False)"
            )
    return merged


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # tensors and other values without a plain truth value
        return a is b


def _init_args(frame: FrameType) -> dict[str, Any]:
    info = inspect.getargvalues(frame)
    values = {a: info.locals[a] for a in info.args if a != "self" and not a.startswith("__")}
    if info.varargs and info.locals.get(info.varargs):
        values[info.varargs] = info.locals[info.varargs]
    if info.keywords:
        values.update(info.locals[info.keywords])
    return values
