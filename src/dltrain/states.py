"""What the Trainer is doing, under Lightning's names: `TrainerState`, `TrainerFn`, `RunningStage`, `TrainerStatus`.

``trainer.state`` holds one of each (see `dltrain.Trainer.state`). They are string enums, so a member equals its
string (``TrainerFn.FITTING == "fit"``), and Lightning code that compares with them, or with the strings, runs.

Example:
    >>> from dltrain import TrainerFn, RunningStage
    >>> TrainerFn.FITTING == "fit", RunningStage.SANITY_CHECKING.evaluating
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]


class TrainerFn(str, Enum):
    """The Trainer method running (or run last): ``trainer.state.fn``.

    Example:
        >>> TrainerFn("fit") is TrainerFn.FITTING, TrainerFn.TESTING == "test"
        (True, True)
    """

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class RunningStage(str, Enum):
    """The part of the method running now: ``trainer.state.stage`` (``None`` outside a run).

    Example:
        >>> RunningStage.VALIDATING.evaluating, RunningStage.VALIDATING.dataloader_prefix
        (True, 'val')
    """

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    @property
    def evaluating(self) -> bool:
        """Whether this stage runs evaluation steps (sanity check, validation, test)."""
        return self in (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> str | None:
        """The prefix of this stage's ``*_dataloader`` method (``"val"`` for validation and the sanity check)."""
        if self in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING):
            return "val"
        return self.value


class TrainerStatus(str, Enum):
    """Whether the Trainer is starting, running, finished, or was interrupted: ``trainer.state.status``.

    Example:
        >>> TrainerStatus.INTERRUPTED.stopped, TrainerStatus.RUNNING.stopped
        (True, False)
    """

    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    @property
    def stopped(self) -> bool:
        """Finished or interrupted."""
        return self in (TrainerStatus.FINISHED, TrainerStatus.INTERRUPTED)


@dataclass(frozen=True)
class TrainerState:
    """What the Trainer is doing: ``trainer.state`` (Lightning's), made of the string enums above.

    Example:
        >>> state = TrainerState(fn=TrainerFn.FITTING, stage=RunningStage.TRAINING, status=TrainerStatus.RUNNING)
        >>> state.fn == "fit", state.stopped
        (True, False)

    Attributes:
        fn: the method running or run last: `TrainerFn` ``"fit"``, ``"validate"``, ``"test"``, ``"predict"``
            (``None`` before).
        stage: `RunningStage` ``"train"``, ``"sanity_check"``, ``"validate"``, ``"test"``, ``"predict"``
            (``None`` outside a run).
        status: `TrainerStatus` ``"initializing"``, ``"running"``, ``"finished"`` or ``"interrupted"`` (an
            exception stopped it).
    """

    fn: TrainerFn | None
    stage: RunningStage | None
    status: TrainerStatus

    @property
    def finished(self) -> bool:
        """The method ran to its end."""
        return self.status == "finished"

    @property
    def stopped(self) -> bool:
        """The method ended, finished or interrupted."""
        return self.status in ("finished", "interrupted")
