"""`Callback`: the typed base class of every Trainer extension."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["HOOKS", "Callback", "Checkpoint"]


class Callback:
    """Override the hooks you need; the Trainer calls a hook only on the callbacks that override it.

    Hooks have Lightning's names and arguments (all of Lightning 2.x's callback hooks). ``state_dict``/``load_state_dict`` make a callback's state part
    of every checkpoint (keyed by ``state_key``).

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        ...         if trainer.global_step % 100 == 0:
        ...             print(trainer.global_step, trainer.callback_metrics.get("train/loss"))
    """

    @property
    def state_key(self) -> str:
        """Key of this callback's state in checkpoints; make it unique when a callback is used twice."""
        return type(self).__qualname__

    def setup(self, trainer: Trainer, task: Task, stage: str) -> None:
        """Called at the start of ``fit``/``validate``/``test``/``predict`` (stage), before ``configure_optimizers``."""

    def teardown(self, trainer: Trainer, task: Task, stage: str) -> None:
        """Called at the end of every stage, also after an exception."""

    def on_before_fit(self, trainer: Trainer, task: Task, train_dataloaders: Any, val_dataloaders: Any,
                      datamodule: Any) -> None:
        """dltrain's hook (Lightning has none): the first thing ``fit`` does, before ``setup``, with ``fit``'s data
        arguments; not called when resuming (``ckpt_path``). ``LearningRateFinder`` and ``BatchSizeFinder`` run
        their searches here, with fits of their own."""

    def on_fit_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_fit_end(self, trainer: Trainer, task: Task) -> None: ...
    def on_sanity_check_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_sanity_check_end(self, trainer: Trainer, task: Task) -> None: ...
    def on_train_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_train_end(self, trainer: Trainer, task: Task) -> None: ...
    def on_train_epoch_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_train_epoch_end(self, trainer: Trainer, task: Task) -> None: ...

    def on_train_batch_start(self, trainer: Trainer, task: Task, batch: Any, batch_idx: int) -> None: ...

    def on_train_batch_end(
        self, trainer: Trainer, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None: ...

    def on_before_backward(self, trainer: Trainer, task: Task, loss: torch.Tensor) -> None: ...
    def on_after_backward(self, trainer: Trainer, task: Task) -> None: ...
    def on_before_optimizer_step(self, trainer: Trainer, task: Task, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, trainer: Trainer, task: Task, optimizer: torch.optim.Optimizer) -> None: ...

    def on_validation_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_validation_end(self, trainer: Trainer, task: Task) -> None: ...
    def on_validation_epoch_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_validation_epoch_end(self, trainer: Trainer, task: Task) -> None: ...

    def on_validation_batch_start(self, trainer: Trainer, task: Task, batch: Any, batch_idx: int) -> None:
        """With several validation loaders, a ``dataloader_idx`` argument follows (as in Lightning)."""

    def on_validation_batch_end(
        self, trainer: Trainer, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """With several validation loaders, a ``dataloader_idx`` argument follows (as in Lightning)."""

    def on_test_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_test_end(self, trainer: Trainer, task: Task) -> None: ...
    def on_test_epoch_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_test_epoch_end(self, trainer: Trainer, task: Task) -> None: ...
    def on_test_batch_start(self, trainer: Trainer, task: Task, batch: Any, batch_idx: int) -> None: ...

    def on_test_batch_end(
        self, trainer: Trainer, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None: ...

    def on_predict_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_predict_end(self, trainer: Trainer, task: Task) -> None: ...
    def on_predict_epoch_start(self, trainer: Trainer, task: Task) -> None: ...
    def on_predict_epoch_end(self, trainer: Trainer, task: Task) -> None: ...
    def on_predict_batch_start(self, trainer: Trainer, task: Task, batch: Any, batch_idx: int) -> None: ...

    def on_predict_batch_end(
        self, trainer: Trainer, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None: ...

    def on_exception(self, trainer: Trainer, task: Task, exception: BaseException) -> None:
        """Called when a stage stops on an exception, before ``teardown``."""

    def on_save_checkpoint(self, trainer: Trainer, task: Task, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, trainer: Trainer, task: Task, checkpoint: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class Checkpoint(Callback):
    """Base class of the callbacks that write checkpoints (``ModelCheckpoint``, ``OnExceptionCheckpoint``): the
    Trainer runs them after every other callback, so that a checkpoint holds what the others decided, and lists
    them in ``trainer.checkpoint_callbacks``."""


HOOKS: tuple[str, ...] = tuple(
    name for name, value in vars(Callback).items() if name.startswith(("on_", "setup", "teardown")) and callable(value)
)
