"""``configure_optimizers``'s return value as optimizers and scheduler configs; manual-optimization wrappers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch.optim import Optimizer

from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain._hooks import HookDispatcher
    from dltrain._run_state import LoopState

_EXPECTED = (
    "expected an Optimizer, (optimizers, schedulers), or "
    '{"optimizer": opt, "lr_scheduler": sched or {"scheduler": sched, "interval": "step"|"epoch", '
    '"frequency": n, "monitor": name}}'
)


@dataclass
class SchedulerConfig:
    """A learning-rate scheduler and when to step it."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    name: str | None = None

    @property
    def is_plateau(self) -> bool:
        return type(self.scheduler).__name__ == "ReduceLROnPlateau"


def _scheduler_config(item: Any, where: str) -> SchedulerConfig:
    if isinstance(item, Mapping):
        if "scheduler" not in item:
            raise ConfigurationError(f"configure_optimizers(): {where} is a dict without a 'scheduler' key; {_EXPECTED}")
        unknown = set(item) - {"scheduler", "interval", "frequency", "monitor", "name", "strict"}
        if unknown:
            raise ConfigurationError(f"configure_optimizers(): {where} has unknown keys {sorted(unknown)}")
        config = SchedulerConfig(
            scheduler=item["scheduler"],
            interval=item.get("interval", "epoch"),
            frequency=int(item.get("frequency", 1)),
            monitor=item.get("monitor"),
            name=item.get("name"),
        )
    else:
        config = SchedulerConfig(scheduler=item)
    if config.interval not in ("step", "epoch"):
        raise ConfigurationError(
            f"configure_optimizers(): {where} has interval={config.interval!r}; use 'step' or 'epoch'"
        )
    if config.frequency < 1:
        raise ConfigurationError(f"configure_optimizers(): {where} has frequency={config.frequency}; use >= 1")
    if not hasattr(config.scheduler, "step"):
        raise ConfigurationError(
            f"configure_optimizers(): {where} is a {type(config.scheduler).__name__}, not a learning-rate scheduler"
        )
    if config.is_plateau and config.monitor is None:
        raise ConfigurationError(
            "configure_optimizers(): ReduceLROnPlateau needs a metric: return "
            '{"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}'
        )
    return config


def parse_optimizers(returned: Any) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    """Normalise the return value of ``configure_optimizers`` (every shape Lightning accepts).

    ``None`` means no optimizer (Lightning allows it; then nothing is stepped). Raises ConfigurationError for any
    other shape, naming what was returned.
    """
    optimizers: list[Any]
    schedulers: list[Any] = []
    if returned is None:
        return [], []
    if isinstance(returned, Optimizer):
        optimizers = [returned]
    elif isinstance(returned, Mapping):
        optimizers, schedulers = _from_dict(returned)
    elif (
        isinstance(returned, (tuple, list))
        and len(returned) == 2
        and isinstance(returned[0], (list, tuple))
        and isinstance(returned[1], (list, tuple))
    ):
        optimizers, schedulers = list(returned[0]), list(returned[1])
    elif isinstance(returned, (tuple, list)) and returned and all(isinstance(o, Mapping) for o in returned):
        optimizers = []
        for item in returned:
            opts, scheds = _from_dict(item)
            optimizers += opts
            schedulers += scheds
    elif isinstance(returned, (tuple, list)) and all(isinstance(o, Optimizer) for o in returned) and returned:
        optimizers = list(returned)
    else:
        raise ConfigurationError(f"configure_optimizers() returned {type(returned).__name__}: {returned!r:.200}; {_EXPECTED}")
    for i, opt in enumerate(optimizers):
        if not isinstance(opt, Optimizer):
            raise ConfigurationError(
                f"configure_optimizers(): optimizer {i} is a {type(opt).__name__}, not a torch.optim.Optimizer; {_EXPECTED}"
            )
    configs = [_scheduler_config(s, f"scheduler {i}") for i, s in enumerate(schedulers)] if isinstance(
        schedulers, Sequence
    ) else []
    return optimizers, configs


def _from_dict(item: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    if "optimizer" not in item:
        raise ConfigurationError(f"configure_optimizers() returned a dict without 'optimizer'; {_EXPECTED}")
    scheduler = item.get("lr_scheduler")
    return [item["optimizer"]], ([] if scheduler is None else [scheduler])


class ManualOptimizer:
    """What ``Task.optimizers()`` returns under manual optimization (Lightning's ``LightningOptimizer``).

    ``step()`` runs the ``on_before_optimizer_step`` hooks, steps through the strategy and precision (Fabric's
    optimizer) and counts a training step (``trainer.global_step``), as Lightning does. Anything else (``zero_grad``
    after its hook, ``param_groups``, ``state``, ``state_dict``, ``add_param_group``) is the optimizer's own: every
    other attribute is read from and written to it. Build one with `ManualOptimizer.wrap`: its class is also a
    subclass of the optimizer's, so that ``isinstance(opt, torch.optim.Adam)`` holds, as Lightning's.
    """

    _OWN = frozenset({"step", "zero_grad", "optimizer", "_hooks", "_progress", "_fabric_optimizer", "wrap",
                      "_OWN"})

    def __init__(self, hooks: HookDispatcher, progress: LoopState, optimizer: Optimizer,
                 fabric_optimizer: Any) -> None:
        self._hooks = hooks
        self._progress = progress
        self.optimizer = optimizer
        self._fabric_optimizer = fabric_optimizer

    @classmethod
    def wrap(cls, hooks: HookDispatcher, progress: LoopState, optimizer: Optimizer,
             fabric_optimizer: Any) -> ManualOptimizer:
        """A wrapper of ``optimizer`` that is an instance of its class too (its ``__init__`` is not run again)."""
        kind = _manual_class(type(optimizer))
        wrapper: ManualOptimizer = object.__new__(kind)
        ManualOptimizer.__init__(wrapper, hooks, progress, optimizer, fabric_optimizer)
        return wrapper

    def step(self, closure: Any = None) -> Any:
        self._hooks.call("on_before_optimizer_step", self.optimizer)
        out = self._fabric_optimizer.step(closure) if closure is not None else self._fabric_optimizer.step()
        self._progress.global_step += 1
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._hooks.call("on_before_zero_grad", self.optimizer)
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattribute__(self, name: str) -> Any:
        # The optimizer class is a base of the wrapper's class: its methods and attributes must act on the wrapped
        # optimizer (its param_groups and state), not on this object.
        if name in ManualOptimizer._OWN or (name.startswith("__") and name.endswith("__")):
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "optimizer"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ManualOptimizer._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.optimizer, name, value)

    def __repr__(self) -> str:
        return repr(self.optimizer)


# One class per optimizer class: a class made per wrapper would make isinstance(a, type(b)) false for two Adams.
_MANUAL_CLASSES: dict[type, type] = {}


def _manual_class(optimizer_class: type) -> type:
    """``ManualOptimizer`` and ``optimizer_class`` as one class (`_MANUAL_CLASSES`)."""
    kind = _MANUAL_CLASSES.get(optimizer_class)
    if kind is None:
        kind = _MANUAL_CLASSES[optimizer_class] = type(
            f"Manual{optimizer_class.__name__}", (ManualOptimizer, optimizer_class), {})
    return kind
