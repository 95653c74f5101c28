"""`Logger`: where logged metrics go. The Trainer calls loggers on global rank zero only."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

__all__ = ["Logger"]


class Logger(ABC):
    """Base class of experiment loggers.

    The Trainer calls ``log_metrics`` every ``log_every_n_steps`` optimizer steps and at the end of every epoch,
    with plain Python floats (values are read from the device only then), and only on global rank zero.
    A logger keeps what it needs to continue the same run after a restart in ``state_dict`` (saved in checkpoints).
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def version(self) -> str | int | None:
        return None

    @property
    def log_dir(self) -> str | None:
        """Folder of this run's files, if the logger writes any."""
        return None

    @property
    def save_dir(self) -> str | None:
        """Root folder of the logger's files (Lightning's name). With ``name`` and ``version`` it places a run's
        default checkpoint folder: ``<save_dir>/<name>/<version>/checkpoints`` (``<default_root_dir>`` when None)."""
        return None

    @property
    def experiment(self) -> Any:
        """The object behind the logger, for what dltrain does not wrap (Lightning's name): wandb's run,
        TensorBoard's ``SummaryWriter``; loggers without one (CSV) return themselves."""
        return self

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Record the run's hyperparameters (the task's ``hparams`` and the Trainer's settings)."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` at optimizer step ``step``. Steps only grow within a run, also across restarts."""

    def save(self) -> None:
        """Put everything logged so far on disk (called on global rank zero right after every checkpoint is
        written): what a checkpoint covers must survive a ``kill -9`` that comes after it."""

    def finalize(self, status: str) -> None:
        """Close the run; ``status`` is ``"success"``, ``"failed"`` or ``"interrupted"``."""
        self.save()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the run described by ``state_dict`` (called before the first ``log_metrics`` on resume)."""
