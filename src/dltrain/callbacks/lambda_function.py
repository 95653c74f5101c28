"""`LambdaCallback`: a callback made of functions, one per hook (Lightning's)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from dltrain.callbacks.base import HOOKS, Callback
from dltrain.errors import ConfigurationError

__all__ = ["LambdaCallback"]


class LambdaCallback(Callback):
    """Pass functions by hook name; each is called with the hook's arguments (``trainer, task, ...``).

    Example:
        >>> seen = []
        >>> cb = LambdaCallback(on_train_epoch_end=lambda trainer, task: seen.append(trainer.current_epoch))

    The hooks given become methods of a class made for this instance, so the Trainer dispatches to them (and only
    them) as to any callback's overrides.
    """

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise ConfigurationError(f"LambdaCallback({', '.join(unknown)}=...): not callback hooks; hooks: {HOOKS}")
        given = {name: staticmethod(fn) for name, fn in hooks.items() if fn is not None}
        for name, fn in given.items():
            if not callable(fn.__func__):
                raise ConfigurationError(f"LambdaCallback({name}=...): expected a function, got {type(fn.__func__)}")
        self.__class__ = type("LambdaCallback", (LambdaCallback,), given)


# Its signature names every hook (keyword-only, default None), as Lightning's does.
LambdaCallback.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in HOOKS])
