"""`BasePredictionWriter`: write predictions as they are made, or once per predict run (Lightning's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["BasePredictionWriter"]

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


class BasePredictionWriter(Callback):
    """Subclass it and override ``write_on_batch_end`` and/or ``write_on_epoch_end``.

    Each rank writes its own share (under DDP every rank predicts a part of the data): name files by
    ``trainer.global_rank``. ``batch_indices`` are the dataset indices of each batch on this rank, for loaders
    dltrain distributes (a plain map-style ``DataLoader``); ``None`` for other loaders. Pair it with
    ``trainer.predict(..., return_predictions=False)`` to keep predictions out of memory.

    Args:
        write_interval: ``"batch"``, ``"epoch"`` or ``"batch_and_epoch"``.

    Example:
        >>> class WritePredictions(BasePredictionWriter):
        ...     def write_on_epoch_end(self, trainer, task, predictions, batch_indices):
        ...         torch.save(predictions, f"predictions-rank{trainer.global_rank}.pt")
        >>> trainer = dltrain.Trainer(callbacks=[WritePredictions("epoch")], logger=False, enable_progress_bar=False)
        >>> inputs = torch.utils.data.DataLoader(torch.randn(32, 8), batch_size=16)
        >>> trainer.predict(task, inputs, return_predictions=False)
        >>> len(torch.load("predictions-rank0.pt"))  # one tensor per batch
        2
    """

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in _INTERVALS:
            raise ConfigurationError(f"BasePredictionWriter(write_interval={write_interval!r}): use one of {_INTERVALS}")
        self.interval = write_interval
        self._predictions: list[list[Any]] = []
        self._indices: list[list[Any]] = []
        self._loader_indices: list[list[list[int]] | None] = []

    def write_on_batch_end(self, trainer: TrainerView, task: Task, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        """Write one batch's prediction."""
        raise NotImplementedError(f"{type(self).__name__} writes per batch: override write_on_batch_end")

    def write_on_epoch_end(self, trainer: TrainerView, task: Task, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        """Write every prediction of the run.

        One per batch (with several loaders, one such list per loader); ``batch_indices`` has one list per
        loader, of each batch's dataset indices.
        """
        raise NotImplementedError(f"{type(self).__name__} writes per run: override write_on_epoch_end")

    @override
    def on_predict_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        loaders = trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, list) else [loaders]
        self._loader_indices = [_index_batches(loader) for loader in loaders]
        self._predictions = [[] for _ in loaders]
        self._indices = [[] for _ in loaders]

    @override
    def on_predict_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        known = self._loader_indices[dataloader_idx] if dataloader_idx < len(self._loader_indices) else None
        indices = known[batch_idx] if known is not None and batch_idx < len(known) else None
        if self.interval in ("epoch", "batch_and_epoch"):
            self._predictions[dataloader_idx].append(outputs)
            self._indices[dataloader_idx].append(indices)
        if self.interval in ("batch", "batch_and_epoch"):
            self.write_on_batch_end(trainer, task, outputs, indices, batch, batch_idx, dataloader_idx)

    @override
    def on_predict_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        if self.interval in ("epoch", "batch_and_epoch"):
            # As Lightning's: with one loader the predictions are a flat list; the indices are one list per loader.
            one = len(self._predictions) == 1
            self.write_on_epoch_end(trainer, task, self._predictions[0] if one else self._predictions, self._indices)
        self._predictions, self._indices = [], []


def _index_batches(loader: Any) -> list[list[int]] | None:
    index_batches = getattr(loader, "index_batches", None)
    return index_batches() if callable(index_batches) else None
