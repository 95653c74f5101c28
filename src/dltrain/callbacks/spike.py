"""`SpikeDetection`: stop training at a loss spike, and write which batches to leave out (Lightning's)."""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError, DltrainError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["SpikeDetection", "TrainingSpikeException"]


class TrainingSpikeException(DltrainError, RuntimeError):
    """The loss of a training batch spiked (`SpikeDetection`)."""

    def __init__(self, batch_idx: int) -> None:
        super().__init__(f"Training spike detected in batch {batch_idx}")
        self.batch_idx = batch_idx


class SpikeDetection(Callback):
    """Raise `TrainingSpikeException` when a batch's loss jumps away from the running mean of recent losses.

    Before raising it writes the batch and the one before it to ``exclude_batches_path`` (JSON), so that a
    restart can leave them out. The running mean is over the last ``window`` losses.

    A loss is a spike when it is worse than the previous one (higher with ``mode="min"``) and differs from the
    running mean by at least ``atol`` and by at least ``rtol`` times the mean (each check skipped when ``None``);
    with ``finite_only`` a non-finite loss is a spike too. Every rank reads its loss each batch, and the ranks
    agree (one all-reduce), so they all stop together.

    Args:
        mode: ``"min"`` (the loss should fall) or ``"max"``.
        window: losses in the running mean.
        warmup: batches of each epoch before checking.
        atol: absolute distance from the running mean that makes a spike.
        rtol: distance from the running mean, relative to it, that makes a spike.
        exclude_batches_path: a ``.json`` file or a folder (``skip_batches.json`` in it); default
            ``<default_root_dir>/skip_batches.json``.
        finite_only: a NaN or infinite loss counts as a spike.

    Example:
        >>> class Spiky(type(task)):
        ...     def training_step(self, batch, batch_idx):
        ...         loss = super().training_step(batch, batch_idx)
        ...         return loss * 1000 if self.trainer.global_step == 6 else loss
        >>> spikes = SpikeDetection(window=4, warmup=2, exclude_batches_path="runs/skip.json")
        >>> trainer = dltrain.Trainer(max_epochs=3, callbacks=[spikes], logger=False, enable_progress_bar=False,
        ...                           enable_model_summary=False)
        >>> try:
        ...     trainer.fit(Spiky(), train_loader)
        ... except TrainingSpikeException as spike:
        ...     print(type(spike).__name__, os.path.exists("runs/skip.json"))
        TrainingSpikeException True
    """

    def __init__(self, mode: str = "min", window: int = 10, warmup: int = 1, atol: float | None = None,
                 rtol: float | None = 2.0, exclude_batches_path: str | os.PathLike[str] | None = None,
                 finite_only: bool = True) -> None:
        if mode not in ("min", "max"):
            raise ConfigurationError(f"SpikeDetection(mode={mode!r}): use 'min' or 'max'")
        if window < 1:
            raise ConfigurationError(f"SpikeDetection(window={window}): use 1 or more")
        self.mode = mode
        self.window = window
        self.warmup = warmup
        self.atol = atol
        self.rtol = rtol
        self.exclude_batches_path = exclude_batches_path
        self.finite_only = finite_only
        self.last_val = 0.0
        self.values: deque[float] = deque(maxlen=window)
        self.bad_batches: list[int] = []

    def _path(self, trainer: TrainerView) -> str:
        path = str(self.exclude_batches_path or trainer.default_root_dir)
        return path if path.endswith(".json") else os.path.join(path, "skip_batches.json")

    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        if isinstance(outputs, torch.Tensor):
            loss = float(outputs.detach())
        elif isinstance(outputs, Mapping) and "loss" in outputs:
            loss = float(outputs["loss"].detach())
        else:
            raise ConfigurationError(
                f"SpikeDetection reads the loss from training_step's output: got {type(outputs).__name__} at "
                f"batch {batch_idx} (return the loss or a dict with 'loss')")
        spike = batch_idx >= self.warmup and self._is_spike(loss)
        if trainer.world_size > 1:
            votes = trainer.fabric.all_reduce(torch.tensor(float(spike), device=trainer.device), reduce_op="sum")
            spike = float(votes) > 0  # type: ignore[arg-type]
        if spike:
            self.bad_batches.extend([batch_idx - 1, batch_idx])
            path = self._path(trainer)
            if trainer.is_global_zero:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path, "w") as f:
                    json.dump(self.bad_batches, f, indent=4)
            raise TrainingSpikeException(batch_idx)
        if not self.finite_only or math.isfinite(loss):
            self.values.append(loss)
            self.last_val = loss

    def _is_spike(self, loss: float) -> bool:
        if self.finite_only and not math.isfinite(loss):
            return True
        if not self.values:
            return False
        mean = sum(self.values) / len(self.values)
        diff = loss - self.last_val
        if (diff <= 0) if self.mode == "min" else (diff >= 0):
            return False  # better than the last one
        far_abs = self.atol is None or abs(loss - mean) >= abs(self.atol)
        far_rel = self.rtol is None or abs(loss - mean) >= abs(self.rtol * mean)
        return far_abs and far_rel

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_val": self.last_val, "values": list(self.values), "bad_batches": list(self.bad_batches)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_val = state_dict["last_val"]
        self.values = deque(state_dict["values"], maxlen=self.window)
        self.bad_batches = list(state_dict["bad_batches"])
