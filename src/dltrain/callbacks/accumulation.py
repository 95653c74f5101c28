"""`GradientAccumulationScheduler`: change ``accumulate_grad_batches`` by epoch (Lightning's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["GradientAccumulationScheduler"]


class GradientAccumulationScheduler(Callback):
    """Accumulate gradients over ``scheduling[e]`` batches from epoch ``e`` (zero-based) on.

    Example:
        >>> # 1 batch per step in epochs 0-3, 4 from epoch 4, 8 from epoch 8
        >>> cb = GradientAccumulationScheduler({4: 4, 8: 8})

    Sets ``trainer.accumulate_grad_batches`` at the start of each epoch (also of a resumed one), which the loop
    reads per batch. Not with manual optimization, nor together with ``Trainer(accumulate_grad_batches=...)``.
    """

    def __init__(self, scheduling: dict[int, int]) -> None:
        if not scheduling:
            raise ConfigurationError("GradientAccumulationScheduler(scheduling={}): give {epoch: batches per step}")
        if any(not isinstance(k, int) or k < 0 for k in scheduling):
            raise ConfigurationError(f"GradientAccumulationScheduler: epochs must be ints >= 0, got {list(scheduling)}")
        if any(not isinstance(v, int) or v < 1 for v in scheduling.values()):
            raise ConfigurationError(
                f"GradientAccumulationScheduler: batches per step must be ints >= 1, got {list(scheduling.values())}")
        self.scheduling = {0: 1, **scheduling}
        self.epochs = sorted(self.scheduling)
        self._scheduled = -1  # what this callback last set (so on_train_start tells it from the user's setting)

    def going_to_accumulate_grad_batches(self) -> bool:
        """Whether any epoch accumulates more than one batch."""
        return any(v > 1 for v in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """Batches per optimizer step in ``epoch``."""
        return self.scheduling[max(e for e in self.epochs if e <= epoch)]

    @override
    def on_train_start(self, trainer: TrainerView, task: Task) -> None:
        if not task.automatic_optimization:
            raise ConfigurationError("GradientAccumulationScheduler needs automatic optimization: with "
                                     "automatic_optimization = False, accumulate in training_step yourself")
        if trainer.accumulate_grad_batches != 1 and trainer.accumulate_grad_batches != self._scheduled:
            raise ConfigurationError(
                "Trainer(accumulate_grad_batches=...) and a GradientAccumulationScheduler: keep one of them")

    @override
    def on_train_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        self._scheduled = self.get_accumulate_grad_batches(trainer.current_epoch)
        trainer.accumulate_grad_batches = self._scheduled
