"""A search run: short fits of the user's Trainer and task that leave both as they were (`search_fits`)."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from dltrain import checkpoint as ckpt_io
from dltrain.callbacks.base import Callback, Checkpoint
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task
    from dltrain.trainer import Trainer

# Trainer settings a search changes for its fits, put back afterwards.
_SETTINGS = ("max_epochs", "min_epochs", "max_steps", "min_steps", "limit_train_batches", "limit_val_batches",
             "limit_test_batches", "limit_predict_batches", "num_sanity_val_steps", "val_check_interval",
             "check_val_every_n_epoch")


class Snapshot(Callback):
    """Takes the task's weights once its first search fit has placed it (and run ``configure_model``).

    The search puts them back after every fit, so each trial starts from the same weights and the search
    leaves none.
    """

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        if self.weights is None:
            self.weights = {k: v.detach().clone() for k, v in task.state_dict().items()}

    on_validation_start = on_test_start = on_predict_start = on_fit_start  # type: ignore[assignment]

    @torch.no_grad()
    def restore(self, task: Task) -> None:
        if self.weights is not None:
            task.load_state_dict(self.weights)


def as_trainer(trainer: TrainerView, who: str) -> Trainer:
    """The `dltrain.Trainer` behind a callback's view.

    A search runs fits of its own, which only the real Trainer can (a test's stand-in cannot).
    """
    from dltrain.trainer import Trainer

    if not isinstance(trainer, Trainer):
        raise ConfigurationError(f"{who} runs fits of its own: it needs a dltrain.Trainer, got {type(trainer).__name__}")
    return trainer


def forget_optimizers(trainer: Trainer) -> None:
    """Make the next fit call ``configure_optimizers`` again, with the value a search found.

    Otherwise it would reuse the optimizers, and their state, of a search fit.
    """
    from dltrain.trainer import engine_of

    engine_of(trainer).forget_optimizers()


@contextlib.contextmanager
def search_fits(trainer: Trainer, task: Task, callbacks: Sequence[Callback], **settings: Any
                ) -> Generator[Snapshot, None, None]:
    """Run the ``with`` block's fits with only ``callbacks`` (and a `Snapshot`), no loggers, and ``settings``.

    Then put back the task's weights, the Trainer's settings, callbacks, loggers, loop state and metrics, and
    the random number generators.
    """
    from dltrain._run_state import LoopState
    from dltrain.trainer import run_state_of

    run = run_state_of(trainer)
    snapshot = Snapshot()
    saved_settings = {name: getattr(trainer, name) for name in _SETTINGS}
    saved_callbacks, saved_loggers = list(trainer.callbacks), list(trainer.loggers)
    saved_loop = run.loop_state
    saved_metrics = (dict(run.published), dict(run.logged_metrics), dict(run.published_bar))
    rng = ckpt_io.rng_state()
    own = [*callbacks, snapshot]
    trainer.callbacks = own
    trainer.loggers = []
    run.loop_state = LoopState()
    for name, value in settings.items():
        if name not in _SETTINGS:
            raise ConfigurationError(f"a search cannot set {name}")
        setattr(trainer, name, value)
    try:
        yield snapshot
    finally:
        snapshot.restore(task)
        forget_optimizers(trainer)
        # The task's configure_callbacks() ran in a search fit (once per task): keep what it added.
        added = [c for c in trainer.callbacks if not any(c is o for o in own)]
        kept = [c for c in saved_callbacks if type(c) not in {type(a) for a in added}]
        merged = kept + added
        trainer.callbacks = [c for c in merged if not isinstance(c, Checkpoint)] + [
            c for c in merged if isinstance(c, Checkpoint)]
        trainer.loggers = saved_loggers
        for name, value in saved_settings.items():
            setattr(trainer, name, value)
        run.loop_state = saved_loop
        run.published, run.logged_metrics, run.published_bar = saved_metrics
        run.oom_expected = False
        ckpt_io.set_rng_state(rng)


def find_attr(task: Task, datamodule: Any, names: Sequence[str]) -> tuple[Any, str] | None:
    """Where a hyperparameter lives, Lightning's order.

    The task's attribute, its ``hparams``, then the datamodule's attribute and its ``hparams``; ``(owner,
    name)`` of the first of ``names`` found.
    """
    for name in names:
        for owner in (task, datamodule):
            if owner is None:
                continue
            if name in vars(owner) or (hasattr(type(owner), name) and not callable(getattr(type(owner), name))):
                return owner, name
            hparams = getattr(owner, "hparams", None)
            if hparams is not None and name in hparams:
                return hparams, name
    return None


def get_attr(where: tuple[Any, str]) -> Any:
    owner, name = where
    return owner[name] if isinstance(owner, dict) else getattr(owner, name)


def set_attr(where: tuple[Any, str], value: Any) -> None:
    owner, name = where
    if isinstance(owner, dict):
        owner[name] = value
    else:
        setattr(owner, name, value)


def agree_max(trainer: TrainerView, value: float) -> float:
    """The largest ``value`` over the ranks (the same answer on every rank)."""
    if trainer.world_size < 2:
        return value
    reduced = trainer.fabric.all_reduce(torch.tensor(float(value), dtype=torch.float64, device=trainer.device),
                                        reduce_op=torch.distributed.ReduceOp.MAX)  # type: ignore[arg-type]
    return float(reduced)  # type: ignore[arg-type]


def agree_mean(trainer: TrainerView, value: float) -> float:
    """The mean of ``value`` over the ranks."""
    if trainer.world_size < 2:
        return value
    reduced = trainer.fabric.all_reduce(torch.tensor(float(value), dtype=torch.float64, device=trainer.device),
                                        reduce_op="mean")
    return float(reduced)  # type: ignore[arg-type]
