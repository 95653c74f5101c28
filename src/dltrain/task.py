"""`Task`: the model, its loss, its optimizers and its metrics, with Lightning's hook names."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from dltrain.errors import DltrainError

if TYPE_CHECKING:
    from torchmetrics import Metric

    from dltrain.trainer import Trainer

__all__ = ["Task"]


class Task(nn.Module):
    """Subclass this to describe what to train. A plain ``nn.Module``: no attribute magic.

    Override ``training_step`` and ``configure_optimizers``; the other hooks are optional and keep Lightning's
    names and meaning, so a ``LightningModule`` moves over with few changes.

    ``training_step`` returns the loss: a scalar tensor, or a mapping with a ``"loss"`` entry (the other entries are
    passed to callbacks as the step's outputs). Returning ``None`` skips the step: no backward and no optimizer step
    for that batch (with gradient accumulation, the batch simply contributes nothing).

    Example:
        >>> import torch, dltrain
        >>> class Regression(dltrain.Task):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(4, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         loss = torch.nn.functional.mse_loss(self.net(x), y)
        ...         self.log("train/loss", loss)
        ...         return loss
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    """

    def __init__(self) -> None:
        super().__init__()
        # Plain attributes (not buffers or submodules): set by the Trainer while it runs this task.
        self._trainer: Trainer | None = None
        self._results: Any = None
        self.hparams: dict[str, Any] = {}

    # ------------------------------------------------------------------ context
    @property
    def trainer(self) -> Trainer:
        """The Trainer running this task (raises outside ``fit``/``validate``/``test``/``predict``)."""
        if self._trainer is None:
            raise DltrainError(f"{type(self).__name__} is not attached to a Trainer; call trainer.fit(task, ...)")
        return self._trainer

    @property
    def device(self) -> torch.device:
        """The device the task's parameters live on."""
        if self._trainer is not None:
            return self._trainer.device
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def global_rank(self) -> int:
        return 0 if self._trainer is None else self._trainer.global_rank

    def save_hyperparameters(self, *names: str, ignore: tuple[str, ...] = (), **values: Any) -> None:
        """Store constructor arguments in ``self.hparams`` (saved in checkpoints, sent to loggers).

        With no arguments, collects the arguments of the calling ``__init__`` as Lightning does.

        Args:
            names: only keep these arguments of the calling ``__init__``.
            ignore: arguments to leave out (modules, large objects).
            values: explicit name/value pairs, stored as given.
        """
        if not values or names:
            frame = inspect.currentframe()
            caller = frame.f_back if frame is not None else None
            if caller is not None:
                info = inspect.getargvalues(caller)
                collected = {a: info.locals[a] for a in info.args if a != "self"}
                if info.keywords:
                    collected.update(info.locals[info.keywords])
                if names:
                    collected = {k: v for k, v in collected.items() if k in names}
                self.hparams.update({k: v for k, v in collected.items() if k not in ignore})
        self.hparams.update(values)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | Mapping[str, Any] | None:
        """Compute and return the training loss for one batch."""
        raise DltrainError(f"{type(self).__name__} must override training_step(batch, batch_idx) to be trained")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        """Evaluate one validation batch; log metrics with ``self.log`` (epoch means by default)."""

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        """Evaluate one test batch; log metrics with ``self.log``."""

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        """Return the prediction for one batch. Default: ``self(batch)``."""
        return self(batch)

    def configure_optimizers(self) -> Any:
        """Return an optimizer, ``(optimizers, schedulers)``, or ``{"optimizer": ..., "lr_scheduler": ...}``.

        The scheduler may be a scheduler or a dict ``{"scheduler": s, "interval": "step"|"epoch",
        "frequency": n, "monitor": "val/loss"}`` (``monitor`` for ``ReduceLROnPlateau``).
        """
        raise DltrainError(f"{type(self).__name__} must override configure_optimizers() to be trained")

    # ------------------------------------------------------------------ logging
    def log(
        self,
        name: str,
        value: Tensor | float | int | Metric,
        *,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        prog_bar: bool = False,
        sync_dist: bool = False,
        batch_size: int | None = None,
        reduce_fx: str = "mean",
    ) -> None:
        """Record a value; the Trainer sends it to the loggers.

        Nothing is read back from the device here: values stay tensors and are reduced every
        ``log_every_n_steps`` (``on_step``) or at the end of the epoch (``on_epoch``).

        Args:
            name: metric name, for example ``"train/loss"``.
            value: a tensor, a number, or a torchmetrics ``Metric`` (computed, synced across ranks and reset at
                the end of the epoch).
            on_step: log the value of every logging step. Default: True in training, False in evaluation.
            on_epoch: log the epoch aggregate. Default: False in training, True in evaluation.
            prog_bar: also show it on the progress bar.
            sync_dist: reduce the value across ranks when it is read (every logging interval / epoch end).
            batch_size: weight of this value in the epoch mean; inferred from the batch when not given.
            reduce_fx: ``"mean"``, ``"sum"``, ``"max"`` or ``"min"`` for the epoch aggregate.
        """
        if self._results is None:
            raise DltrainError(
                f"self.log({name!r}) was called outside a Trainer loop; log from training_step, validation_step, "
                "test_step or an epoch hook"
            )
        self._results.log(
            name, value, on_step=on_step, on_epoch=on_epoch, prog_bar=prog_bar, sync_dist=sync_dist,
            batch_size=batch_size, reduce_fx=reduce_fx,
        )

    def log_dict(self, values: Mapping[str, Tensor | float | int | Metric], **kwargs: Any) -> None:
        """``self.log`` for every item of ``values`` with the same options."""
        for name, value in values.items():
            self.log(name, value, **kwargs)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Transform a batch once it is on the device (batch augmentation such as MixUp, log-mel features).

        ``self.training`` tells training from evaluation.
        """
        return batch

    def _zero_grad_loss(self, batch: Any, batch_idx: int) -> Tensor:
        """A loss whose gradient is zero for every trainable parameter.

        A rank with nothing to contribute to a step (its batch was skipped) still joins DDP's gradient all-reduce
        with it; the Trainer calls it through the strategy's wrapper (``mark_forward_method``) when no forward ran.
        """
        zero = torch.zeros((), device=self.device)
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), zero)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add entries to a checkpoint before it is written."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read entries you added in ``on_save_checkpoint``."""
