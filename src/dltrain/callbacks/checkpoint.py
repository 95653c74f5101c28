"""`ModelCheckpoint`: save checkpoints on a schedule, keep the best ones, and maintain ``last.ckpt``."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dltrain.callbacks.base import Callback
from dltrain.checkpoint import link_atomic
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.task import Task
    from dltrain.trainer import Trainer

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Save checkpoints every ``every_n_train_steps`` steps and/or every ``every_n_epochs`` epochs.

    Every write is atomic; ``last.ckpt`` is re-pointed only after the new checkpoint is complete, so it always
    loads. With ``monitor``, the ``save_top_k`` best checkpoints are kept; without it, the ``save_top_k`` newest.
    ``save_top_k=-1`` keeps all.

    Args:
        dirpath: folder (default ``<default_root_dir>/checkpoints``).
        filename: name pattern without extension, formatted with ``epoch``, ``step`` and logged metrics
            (``"{epoch}-{step}"`` gives ``epoch=3-step=1200.ckpt``).
        monitor: metric to rank checkpoints by, e.g. ``"val/loss"``.
        mode: ``"min"`` or ``"max"``.
        save_top_k: how many to keep.
        save_last: maintain ``last.ckpt`` (what ``fit(ckpt_path="last")`` resumes from).
        every_n_train_steps: save after every n optimizer steps (mid-epoch checkpoints).
        every_n_epochs: save at the end of every n epochs (0 disables).

    Example:
        >>> ckpt = ModelCheckpoint(monitor="val/acc", mode="max", save_top_k=2, every_n_train_steps=500)
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "{epoch}-{step}",
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        every_n_train_steps: int = 0,
        every_n_epochs: int = 1,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigurationError(f"ModelCheckpoint(mode={mode!r}): use 'min' or 'max'")
        if save_top_k < -1:
            raise ConfigurationError(f"ModelCheckpoint(save_top_k={save_top_k}): use -1 (all), 0 (none) or more")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_train_steps = every_n_train_steps
        self.every_n_epochs = every_n_epochs
        # (score, path) of the checkpoints we keep; scores are floats, the newest last when unmonitored.
        self.kept: list[tuple[float, str]] = []
        self.last_path: str | None = None
        self._last_saved_step = -1

    @property
    def state_key(self) -> str:
        return f"ModelCheckpoint[{self.monitor or ''},{self.filename}]"

    def setup(self, trainer: Trainer, task: Task, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "checkpoints"

    def on_train_batch_end(self, trainer: Trainer, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.every_n_train_steps
        stepped = trainer.loop_state.stepped  # only right after an optimizer step (not inside a window)
        if n and stepped and trainer.global_step % n == 0 and trainer.global_step != self._last_saved_step:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, task: Task) -> None:
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0 and trainer.global_step != self._last_saved_step:
            self._save(trainer)

    def on_fit_end(self, trainer: Trainer, task: Task) -> None:
        # The final state is always saved, whatever the schedule: it is what a user expects to find.
        if trainer.global_step != self._last_saved_step and (self.every_n_epochs or self.every_n_train_steps):
            self._save(trainer)

    # ------------------------------------------------------------------
    def _score(self, trainer: Trainer) -> float:
        if self.monitor is None:
            return float(trainer.global_step)  # newest is "best" when nothing is monitored
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigurationError(
                f"ModelCheckpoint(monitor={self.monitor!r}): no such metric was logged; logged metrics: "
                f"{sorted(trainer.callback_metrics)}"
            )
        score = float(value)
        if math.isnan(score):
            return -math.inf
        return -score if self.mode == "min" else score

    def _format(self, trainer: Trainer) -> str:
        values: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for k, v in trainer.callback_metrics.items():
            with contextlib.suppress(Exception):
                values[k] = float(v)
        name = self.filename
        for key, value in values.items():
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            # Metric names often hold "/" ("val/loss"): keep the file in dirpath.
            name = name.replace("{" + key + "}", f"{key.replace('/', '_')}={text}")
        return name + ".ckpt"

    def _save(self, trainer: Trainer) -> None:
        assert self.dirpath is not None
        score = self._score(trainer)
        keep = self.save_top_k == -1 or (
            self.save_top_k > 0 and (len(self.kept) < self.save_top_k or score > min(s for s, _ in self.kept))
        )
        # Every rank must take the same decision: ranks join the save (it gathers their RNG and data positions).
        keep = bool(trainer.fabric.broadcast(keep, src=0))
        if not keep and not self.save_last:
            return
        path = self.dirpath / self._format(trainer)
        if not keep:
            path = self.dirpath / f".last-{trainer.global_step}.ckpt"
        trainer.save_checkpoint(path)
        self._last_saved_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        if self.save_last:
            link_atomic(path, self.dirpath / "last.ckpt")
            self.last_path = str(path)
        if keep:
            self.kept = [(s, p) for s, p in self.kept if p != str(path)] + [(score, str(path))]
            self.kept.sort(key=lambda sp: sp[0])
            while self.save_top_k != -1 and len(self.kept) > self.save_top_k:
                _, old = self.kept.pop(0)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(old)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # last.ckpt is a hard link: the data lives on under that name

    def save(self, trainer: Trainer) -> None:
        """Write a checkpoint now, as a scheduled one would be (every rank calls it): named, kept or rotated by the
        same rules, ``last`` updated. Used by `Preemption`."""
        self._save(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"kept": [[s, p] for s, p in self.kept], "last_path": self.last_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.kept = [(float(s), str(p)) for s, p in state_dict.get("kept", [])]
        self.last_path = state_dict.get("last_path")

    @property
    def best_model_path(self) -> str | None:
        return self.kept[-1][1] if self.kept else None
