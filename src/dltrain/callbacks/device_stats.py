"""`DeviceStatsMonitor`: device (and CPU) statistics to the loggers around training batches (Lightning's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["DeviceStatsMonitor", "cpu_stats", "device_stats"]


def cpu_stats() -> dict[str, float]:
    """CPU use, memory and swap in percent (psutil), with Lightning's names."""
    import psutil

    return {"cpu_vm_percent": psutil.virtual_memory().percent, "cpu_percent": psutil.cpu_percent(),
            "cpu_swap_percent": psutil.swap_memory().percent}


def device_stats(device: torch.device) -> dict[str, float]:
    """The accelerator's statistics.

    ``torch.cuda.memory_stats`` on CUDA, the allocator's memory on MPS, and the CPU statistics on CPU.
    """
    if device.type == "cuda":
        return {k: float(v) for k, v in torch.cuda.memory_stats(device).items() if isinstance(v, (int, float))}
    if device.type == "mps":
        return {"mps.current_allocated_bytes": float(torch.mps.current_allocated_memory()),
                "mps.driver_allocated_bytes": float(torch.mps.driver_allocated_memory())}
    return cpu_stats()


class DeviceStatsMonitor(Callback):
    """Log the device's statistics at the start and end of training batches, every ``log_every_n_steps``.

    Names are ``DeviceStatsMonitor.on_train_batch_start/<stat>`` and ``.../on_train_batch_end/<stat>``, sent to
    the loggers by global rank zero, at the global step (as Lightning's).

    Args:
        cpu_stats: also log CPU statistics on a GPU (``None``: only on CPU, where they are the device's).

    Example:
        >>> trainer = dltrain.Trainer(max_epochs=1, callbacks=[DeviceStatsMonitor()], log_every_n_steps=2,
        ...                           enable_progress_bar=False)
        >>> trainer.fit(task, train_loader)
        >>> header = open(f"{trainer.logger.log_dir}/metrics.csv").readline()
        >>> "DeviceStatsMonitor.on_train_batch_end/" in header
        True
    """

    def __init__(self, cpu_stats: bool | None = None) -> None:
        self._cpu_stats = cpu_stats

    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise ConfigurationError("DeviceStatsMonitor logs to the loggers: the Trainer has none (logger=False)")
        if self._cpu_stats or trainer.device.type == "cpu":
            import importlib.util

            if importlib.util.find_spec("psutil") is None:
                raise ConfigurationError("DeviceStatsMonitor's CPU statistics need psutil: pip install dltrain[devicestats]")

    def _log(self, trainer: TrainerView, hook: str) -> None:
        if not trainer.is_global_zero or (trainer.global_step + 1) % trainer.log_every_n_steps:
            return
        stats: dict[str, Any] = device_stats(trainer.device)
        if self._cpu_stats and trainer.device.type != "cpu":
            stats.update(cpu_stats())
        named = {f"{type(self).__name__}.{hook}/{k}": float(v) for k, v in stats.items()}
        for logger in trainer.loggers:
            logger.log_metrics(named, trainer.global_step)

    @override
    def on_train_batch_start(self, trainer: TrainerView, task: Task, batch: Any, batch_idx: int) -> None:
        self._log(trainer, "on_train_batch_start")

    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._log(trainer, "on_train_batch_end")
