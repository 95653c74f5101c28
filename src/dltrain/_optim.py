"""Turn what ``Task.configure_optimizers`` returned into one optimizer and its scheduler configs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer

from dltrain.errors import ConfigurationError

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


def parse_optimizers(returned: Any) -> tuple[Optimizer, list[SchedulerConfig]]:
    """Normalise the return value of ``configure_optimizers``.

    Raises:
        ConfigurationError: the value has another shape, or holds several optimizers (automatic optimization
            steps exactly one; put parameter groups in one optimizer instead).
    """
    optimizers: list[Any]
    schedulers: list[Any] = []
    if isinstance(returned, Optimizer):
        optimizers = [returned]
    elif isinstance(returned, Mapping):
        if "optimizer" not in returned:
            raise ConfigurationError(f"configure_optimizers() returned a dict without 'optimizer'; {_EXPECTED}")
        optimizers = [returned["optimizer"]]
        if returned.get("lr_scheduler") is not None:
            schedulers = [returned["lr_scheduler"]]
    elif (
        isinstance(returned, (tuple, list))
        and len(returned) == 2
        and isinstance(returned[0], (list, tuple))
        and isinstance(returned[1], (list, tuple))
    ):
        optimizers, schedulers = list(returned[0]), list(returned[1])
    elif isinstance(returned, (tuple, list)) and all(isinstance(o, Optimizer) for o in returned) and returned:
        optimizers = list(returned)
    else:
        raise ConfigurationError(f"configure_optimizers() returned {type(returned).__name__}: {returned!r:.200}; {_EXPECTED}")
    for i, opt in enumerate(optimizers):
        if not isinstance(opt, Optimizer):
            raise ConfigurationError(
                f"configure_optimizers(): optimizer {i} is a {type(opt).__name__}, not a torch.optim.Optimizer; {_EXPECTED}"
            )
    if len(optimizers) != 1:
        raise ConfigurationError(
            f"configure_optimizers() returned {len(optimizers)} optimizers; dltrain steps exactly one optimizer per "
            "step: put several parameter groups in one optimizer"
        )
    configs = [_scheduler_config(s, f"scheduler {i}") for i, s in enumerate(schedulers)] if isinstance(
        schedulers, Sequence
    ) else []
    return optimizers[0], configs
