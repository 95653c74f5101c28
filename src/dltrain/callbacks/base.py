"""`Callback`: the typed base class of every Trainer extension, and `TrainerView`: what its hooks get."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from lightning.fabric import Fabric

    from dltrain._async_checkpoint import AsyncSave
    from dltrain._optim import SchedulerConfig
    from dltrain._run_state import LoopState
    from dltrain.loggers.base import Logger
    from dltrain.strategies import StrategyView
    from dltrain.task import Task

__all__ = ["HOOKS", "Callback", "Checkpoint", "TrainerView"]


class Callback:
    """Override the hooks you need; the Trainer calls a hook only on the callbacks that override it.

    Hooks have Lightning's names and arguments (all of Lightning 2.x's callback hooks), plus dltrain's
    `on_before_fit`. Every hook gets ``trainer``, a `TrainerView` (the `dltrain.Trainer` itself, typed by what
    a callback may read), and ``task``, the `dltrain.Task` being run (Lightning's ``pl_module``). A hook of
    the callbacks runs before the task's hook of the same name, in the order of ``trainer.callbacks``,
    checkpoint callbacks (`Checkpoint`) last. `dltrain.Trainer.fit` lists the order of every hook of a fit.

    ``state_dict``/``load_state_dict`` make a callback's state part of every checkpoint (keyed by
    `state_key`), so that a resumed fit continues where it was.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_train_epoch_end(self, trainer, task):
        ...         print(trainer.current_epoch, round(float(trainer.callback_metrics["train/loss"]), 3))
        >>> trainer = dltrain.Trainer(max_epochs=2, callbacks=[PrintLoss()], log_every_n_steps=2,
        ...                           enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(task, train_loader, val_loader)
        0 ...
        1 ...
    """

    @property
    def state_key(self) -> str:
        """Key of this callback's state in checkpoints; make it unique when a callback is used twice.

        Lightning's way: ``return self._generate_state_key(monitor=self.monitor)``.
        """
        return type(self).__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        """A `state_key` made of the class name and ``kwargs``: ``Name{'monitor': 'val_loss'}``.

        Lightning's helper, which its docs tell callbacks used more than once to call.
        """
        return f"{type(self).__qualname__}{kwargs!r}"

    # ------------------------------------------------------------------ every stage
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        """Called at the start of ``fit``, ``validate``, ``test`` and ``predict``, on every rank.

        It runs after ``prepare_data`` and the datamodule's ``setup``, before the task's ``setup``,
        ``configure_model``, the data loaders and ``configure_optimizers``.

        Args:
            trainer: the running Trainer.
            task: the task being run.
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """

    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        """Called at the end of every stage, also after an exception (after `on_exception`).

        It runs after the datamodule's ``teardown``, before the task's.

        Args:
            trainer: the running Trainer.
            task: the task that was run.
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """

    # ------------------------------------------------------------------ fit
    def on_before_fit(self, trainer: TrainerView, task: Task, train_dataloaders: Any, val_dataloaders: Any,
                      datamodule: Any) -> None:
        """Called first thing in ``fit``, before `setup`, with ``fit``'s data arguments (dltrain's hook).

        Lightning has no such hook. Not called when resuming (``fit(ckpt_path=...)``). ``LearningRateFinder``
        and ``BatchSizeFinder`` run their searches here, with fits of their own (through `dltrain.tuner`,
        which needs the real Trainer).

        Args:
            trainer: the running Trainer.
            task: the task to train.
            train_dataloaders: ``fit``'s argument of that name (``None`` when the data comes from elsewhere).
            val_dataloaders: ``fit``'s argument of that name.
            datamodule: ``fit``'s datamodule, if any.
        """

    def on_fit_start(self, trainer: TrainerView, task: Task) -> None:
        """Called in ``fit`` once all is set up, before the sanity check and the first epoch.

        Data loaders, optimizers and, when resuming, the callbacks' and the task's checkpoint state are ready;
        the optimizer and LR scheduler states of a resumed fit are restored just after this hook, as in
        Lightning (so that a hook may rebuild param groups first).
        """

    def on_fit_end(self, trainer: TrainerView, task: Task) -> None:
        """Called at the end of a ``fit`` that raised nothing, after `on_train_end`; the loggers end after."""

    def on_sanity_check_start(self, trainer: TrainerView, task: Task) -> None:
        """Called before the sanity check: ``num_sanity_val_steps`` validation batches before training.

        There is none when resuming or without validation. ``trainer.sanity_checking`` is ``True`` until
        `on_sanity_check_end`; the validation hooks run for those batches, and nothing they log reaches the
        loggers or ``callback_metrics``. Only callbacks have this hook (as in Lightning).
        """

    def on_sanity_check_end(self, trainer: TrainerView, task: Task) -> None:
        """Called after the sanity check's validation (see `on_sanity_check_start`)."""

    def on_train_start(self, trainer: TrainerView, task: Task) -> None:
        """Called after the sanity check, before the first training epoch (or the resumed one)."""

    def on_train_end(self, trainer: TrainerView, task: Task) -> None:
        """Called when training stops without an exception, before `on_fit_end`.

        Training stops at ``max_epochs``, ``max_steps``, ``max_time`` or when ``trainer.should_stop`` is set.
        """

    def on_train_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        """Called at the start of every training epoch, before its first batch.

        The task is in ``train()`` mode; ``trainer.current_epoch`` is the epoch starting,
        ``trainer.num_training_batches`` its number of batches.
        """

    def on_train_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        """Called at the end of every training epoch, after the epoch-end validation (when one runs).

        The task's ``on_train_epoch_end`` runs first and the epoch's values are then reduced over the ranks,
        so ``trainer.callback_metrics`` holds the epoch aggregates; what a callback logs here is reported with
        the same epoch. The checkpoint callbacks run last, after the epoch's values were sent to the loggers,
        so that an epoch-end checkpoint covers them. An epoch cut short (``max_steps``, ``should_stop``) ends
        here too.
        """

    def on_train_batch_start(self, trainer: TrainerView, task: Task, batch: Any, batch_idx: int) -> None:
        """Called before ``training_step`` on every training batch, once the batch is on the device.

        Returning ``-1`` ends the epoch here. Lightning honours that only from the task's hook; dltrain from
        a callback's as well.

        Args:
            trainer: the running Trainer.
            task: the task being trained.
            batch: the batch, as ``training_step`` gets it.
            batch_idx: its index in the epoch.
        """

    def on_train_batch_end(
        self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Called after every training batch: its ``training_step``, backward and, when due, optimizer step.

        ``trainer.loop_state.stepped`` says whether the batch ended with an optimizer step (``global_step``
        has counted it). After the non-checkpoint callbacks and the task, the step's logged values are sent to
        the loggers (every ``log_every_n_steps`` steps), then the checkpoint callbacks' hook runs.

        Args:
            trainer: the running Trainer.
            task: the task being trained.
            outputs: what ``training_step`` returned (a loss tensor, a dict with ``"loss"``, or ``None``).
            batch: the batch.
            batch_idx: its index in the epoch.
        """

    def on_before_backward(self, trainer: TrainerView, task: Task, loss: torch.Tensor) -> None:
        """Called before the backward pass of every batch that has a loss (``manual_backward`` too).

        Args:
            trainer: the running Trainer.
            task: the task being trained.
            loss: the loss about to be backpropagated (divided by ``accumulate_grad_batches`` when
                accumulating).
        """

    def on_after_backward(self, trainer: TrainerView, task: Task) -> None:
        """Called after the backward pass: the parameters' ``.grad`` hold the gradients summed so far.

        Before the optimizer step, gradient clipping and, under accumulation, before the window's other
        batches.
        """

    def on_before_optimizer_step(self, trainer: TrainerView, task: Task, optimizer: torch.optim.Optimizer) -> None:
        """Called before each optimizer step, when the accumulation window's gradients are complete.

        That is every ``accumulate_grad_batches`` batches and at the epoch's last batch, before gradient
        clipping (``gradient_clip_val``, ``configure_gradient_clipping``); under manual optimization, when the
        task steps.

        Args:
            trainer: the running Trainer.
            task: the task being trained.
            optimizer: the optimizer about to step.
        """

    def on_before_zero_grad(self, trainer: TrainerView, task: Task, optimizer: torch.optim.Optimizer) -> None:
        """Called before the gradients are zeroed, at the first batch of each accumulation window.

        It runs after that batch's ``training_step`` and before its backward pass, where Lightning zeroes
        them.

        Args:
            trainer: the running Trainer.
            task: the task being trained.
            optimizer: the optimizer whose gradients are zeroed.
        """

    # ------------------------------------------------------------------ validation
    def on_validation_start(self, trainer: TrainerView, task: Task) -> None:
        """Called when a validation starts, with the task in ``eval()`` mode.

        In ``fit``: at the sanity check, at each ``val_check_interval`` and at the epochs' ends; and in
        ``validate``. One validation covers every validation loader.
        """

    def on_validation_end(self, trainer: TrainerView, task: Task) -> None:
        """Called when a validation ends, after `on_validation_epoch_end` (in ``fit``, training goes on)."""

    def on_validation_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        """Called after `on_validation_start`, before the first batch; ``trainer.num_val_batches`` is set."""

    def on_validation_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        """Called after the last validation batch of every loader.

        The task's ``on_validation_epoch_end`` runs first and the values are then reduced over the ranks, so
        ``trainer.callback_metrics`` holds this validation's aggregates (except in the sanity check). The
        checkpoint callbacks run last, after the values were sent to the loggers.
        """

    def on_validation_batch_start(self, trainer: TrainerView, task: Task, batch: Any, batch_idx: int) -> None:
        """Called before ``validation_step`` on every validation batch.

        With several validation loaders, a ``dataloader_idx`` argument follows (as in Lightning): declare it
        (``dataloader_idx: int = 0``) in a callback that may meet several.

        Args:
            trainer: the running Trainer.
            task: the task being validated.
            batch: the batch, on the device.
            batch_idx: its index in its loader.
        """

    def on_validation_batch_end(
        self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Called after ``validation_step`` on every validation batch.

        With several validation loaders, a ``dataloader_idx`` argument follows (as in Lightning).

        Args:
            trainer: the running Trainer.
            task: the task being validated.
            outputs: what ``validation_step`` returned.
            batch: the batch.
            batch_idx: its index in its loader.
        """

    # ------------------------------------------------------------------ test
    def on_test_start(self, trainer: TrainerView, task: Task) -> None:
        """Called when ``test`` starts, with the task in ``eval()`` mode."""

    def on_test_end(self, trainer: TrainerView, task: Task) -> None:
        """Called when ``test`` ends, after `on_test_epoch_end`."""

    def on_test_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        """Called after `on_test_start`, before the first batch; ``trainer.num_test_batches`` is set."""

    def on_test_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        """Called after the last test batch of every loader.

        The task's ``on_test_epoch_end`` runs first and the values are then reduced over the ranks, so
        ``trainer.callback_metrics`` holds the test's aggregates.
        """

    def on_test_batch_start(self, trainer: TrainerView, task: Task, batch: Any, batch_idx: int) -> None:
        """Called before ``test_step`` on every test batch.

        With several test loaders, a ``dataloader_idx`` argument follows (as in Lightning).

        Args:
            trainer: the running Trainer.
            task: the task being tested.
            batch: the batch, on the device.
            batch_idx: its index in its loader.
        """

    def on_test_batch_end(
        self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Called after ``test_step`` on every test batch.

        With several test loaders, a ``dataloader_idx`` argument follows (as in Lightning).

        Args:
            trainer: the running Trainer.
            task: the task being tested.
            outputs: what ``test_step`` returned.
            batch: the batch.
            batch_idx: its index in its loader.
        """

    # ------------------------------------------------------------------ predict
    def on_predict_start(self, trainer: TrainerView, task: Task) -> None:
        """Called when ``predict`` starts, with the task in ``eval()`` mode."""

    def on_predict_end(self, trainer: TrainerView, task: Task) -> None:
        """Called when ``predict`` ends, after `on_predict_epoch_end`."""

    def on_predict_epoch_start(self, trainer: TrainerView, task: Task) -> None:
        """Called after `on_predict_start`, before the first batch; ``trainer.num_predict_batches`` is set."""

    def on_predict_epoch_end(self, trainer: TrainerView, task: Task) -> None:
        """Called after the last batch of every prediction loader, before the task's hook of that name."""

    def on_predict_batch_start(self, trainer: TrainerView, task: Task, batch: Any, batch_idx: int) -> None:
        """Called before ``predict_step`` on every batch.

        With several prediction loaders, a ``dataloader_idx`` argument follows (as in Lightning).

        Args:
            trainer: the running Trainer.
            task: the task predicting.
            batch: the batch, on the device.
            batch_idx: its index in its loader.
        """

    def on_predict_batch_end(
        self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Called after ``predict_step`` on every batch.

        With several prediction loaders, a ``dataloader_idx`` argument follows (as in Lightning).

        Args:
            trainer: the running Trainer.
            task: the task predicting.
            outputs: what ``predict_step`` returned (``predict`` returns them too).
            batch: the batch.
            batch_idx: its index in its loader.
        """

    # ------------------------------------------------------------------ failures and checkpoints
    def on_exception(self, trainer: TrainerView, task: Task, exception: BaseException) -> None:
        """Called when a stage stops on an exception, on the rank that raised it, before `teardown`.

        Any exception counts: an error, ``KeyboardInterrupt``, a preemption's exit. The loggers are finalized
        after the callbacks' hooks; an error raised in this hook is ignored, and the exception goes on after.

        Args:
            trainer: the running Trainer.
            task: the task being run.
            exception: what was raised.
        """

    def on_save_checkpoint(self, trainer: TrainerView, task: Task, checkpoint: dict[str, Any]) -> None:
        """Called when a checkpoint is written, on every rank, after the task's ``on_save_checkpoint``.

        Edit ``checkpoint`` in place to store more. A callback's own state belongs in `state_dict`, which the
        checkpoint already holds.

        Args:
            trainer: the running Trainer.
            task: the task being trained.
            checkpoint: the checkpoint about to be written (``checkpoint["state_dict"]``: the weights, except
                under FSDP2, whose ranks write their shards themselves).
        """

    def on_load_checkpoint(self, trainer: TrainerView, task: Task, checkpoint: dict[str, Any]) -> None:
        """Called when ``fit`` resumes from a checkpoint, before `on_fit_start`.

        It runs after every callback's `load_state_dict` and the task's ``on_load_checkpoint``.
        ``validate``/``test``/``predict`` with a ``ckpt_path`` load the weights only and do not call it.

        Args:
            trainer: the running Trainer.
            task: the task being trained.
            checkpoint: the checkpoint read.
        """

    def state_dict(self) -> dict[str, Any]:
        """This callback's state, saved in every checkpoint under `state_key` (``{}``: nothing to save)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, when ``fit`` resumes (before `on_load_checkpoint`)."""


class Checkpoint(Callback):
    """Base class of the callbacks that write checkpoints (``ModelCheckpoint``, ``OnExceptionCheckpoint``).

    The Trainer runs their hooks after every other callback's, so that a checkpoint holds what the others
    decided, and lists them in ``trainer.checkpoint_callbacks``.

    Example:
        >>> class EveryEpoch(Checkpoint):
        ...     def on_train_epoch_end(self, trainer, task):
        ...         trainer.save_checkpoint(f"epoch-{trainer.current_epoch}.ckpt")
        >>> trainer = dltrain.Trainer(max_epochs=2, callbacks=[EveryEpoch()], enable_checkpointing=False,
        ...                           log_every_n_steps=2, enable_progress_bar=False,
        ...                           enable_model_summary=False)
        >>> [type(c).__name__ for c in trainer.checkpoint_callbacks]
        ['EveryEpoch']
        >>> trainer.fit(task, train_loader, val_loader)
        >>> import os
        >>> sorted(f for f in os.listdir() if f.endswith(".ckpt"))
        ['epoch-0.ckpt', 'epoch-1.ckpt']
    """


HOOKS: tuple[str, ...] = tuple(
    name for name, value in vars(Callback).items() if name.startswith(("on_", "setup", "teardown")) and callable(value)
)


@runtime_checkable
class TrainerView(Protocol):
    """What callbacks (and tasks, through ``self.trainer``) read of the run: docs/DESIGN.md's "trainer view".

    The `Trainer` is one; a test may stand in any object that has these members (tests/helpers/fake_trainer.py
    is checked against this Protocol by mypy). Built-in callbacks use only these and documented public APIs.

    Example:
        A helper of your callbacks takes the view, so that a test may call it with a stand-in:

        >>> def steps_left(trainer: TrainerView) -> float:
        ...     return trainer.estimated_stepping_batches - trainer.global_step
        >>> trainer = dltrain.Trainer(max_epochs=2, log_every_n_steps=2, enable_progress_bar=False,
        ...                           enable_model_summary=False)
        >>> isinstance(trainer, TrainerView)
        True
        >>> trainer.fit(task, train_loader, val_loader)
        >>> trainer.global_step, steps_left(trainer)
        (8, 0)
    """

    # progress
    @property
    def loop_state(self) -> LoopState:
        """Where ``fit`` is (epoch, global step, batches done, phase): what a checkpoint saves of the loop."""
    @property
    def global_step(self) -> int:
        """Optimizer steps taken (Lightning's meaning: a step of an accumulation window counts once)."""
    @property
    def current_epoch(self) -> int:
        """The training epoch being run, from 0 (after a fit: the number of epochs trained)."""
    should_stop: bool  # read/write: stop at the end of this batch (ORed over ranks at the epoch end)
    @property
    def stage(self) -> str | None:
        """The running (or last) stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"``; else ``None``."""
    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch being run is the last of its epoch."""
    @property
    def sanity_checking(self) -> bool:
        """Whether the validation running is the sanity check before training."""
    @property
    def interrupted(self) -> bool:
        """Whether the last stage stopped on an exception (Ctrl-C, a signal, an error)."""

    # data
    @property
    def datamodule(self) -> Any:
        """The datamodule of the stage, if it has one."""
    @property
    def num_training_batches(self) -> float:
        """Training batches per epoch, after ``limit_train_batches`` (``inf``: a loader without a length)."""
    @property
    def num_val_batches(self) -> list[float]:
        """Batches of each validation loader (after ``limit_val_batches``)."""
    @property
    def num_test_batches(self) -> list[float]:
        """Batches of each test loader (after ``limit_test_batches``)."""
    @property
    def num_predict_batches(self) -> list[float]:
        """Batches of each prediction loader (after ``limit_predict_batches``)."""
    @property
    def train_dataloader(self) -> Any:
        """The training loader of the fit, as the Trainer wrapped it."""
    @property
    def val_dataloaders(self) -> Any:
        """The validation loader, or the list of them when there are several."""
    @property
    def test_dataloaders(self) -> Any:
        """The test loader, or the list of them when there are several."""
    @property
    def predict_dataloaders(self) -> Any:
        """The prediction loader, or the list of them when there are several."""

    # metrics
    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """The newest value of every logged metric (epoch aggregates at an epoch's end), as tensors."""
    @property
    def logged_metrics(self) -> dict[str, float]:
        """The values last sent to the loggers, as numbers."""
    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The ``prog_bar=True`` values, under their bar names, as numbers."""

    # optimization
    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers ``configure_optimizers`` returned."""
    @property
    def lr_scheduler_configs(self) -> list[SchedulerConfig]:
        """The LR schedulers ``configure_optimizers`` returned, with their interval and frequency."""
    @property
    def estimated_stepping_batches(self) -> float:
        """Optimizer steps the whole fit will take (for schedulers such as ``OneCycleLR``)."""

    # settings
    @property
    def max_epochs(self) -> int | None:
        """``Trainer(max_epochs=...)``; ``-1``: no limit.

        An unset limit becomes ``-1`` when the fit starts if ``max_steps`` or ``max_time`` bound it, else 1000.
        """
    @property
    def max_steps(self) -> int:
        """``Trainer(max_steps=...)``: ``-1`` for no limit."""
    @property
    def accumulate_grad_batches(self) -> int:
        """Batches whose gradients are summed before each optimizer step."""
    @accumulate_grad_batches.setter
    def accumulate_grad_batches(self, value: int) -> None:
        """Settable at an epoch start (`GradientAccumulationScheduler`)."""
    @property
    def log_every_n_steps(self) -> int:
        """Optimizer steps between two sends of the step values to the loggers."""
    @property
    def val_check_interval(self) -> int | float | None:
        """``Trainer(val_check_interval=...)``: validate every n batches (an int) or fraction of an epoch."""
    @property
    def check_val_every_n_epoch(self) -> int | None:
        """``Trainer(check_val_every_n_epoch=...)``: validate at the end of every n-th epoch."""
    @property
    def default_root_dir(self) -> str:
        """The folder of the run's outputs when the loggers and callbacks are given none."""
    @property
    def precision(self) -> str:
        """The precision the run trains in, in Lightning's spelling (``"32-true"``, ``"bf16-mixed"``, ...)."""

    # where the process runs
    @property
    def world_size(self) -> int:
        """The number of processes of the run."""
    @property
    def global_rank(self) -> int:
        """This process's rank among all processes."""
    @property
    def local_rank(self) -> int:
        """This process's rank on its machine."""
    @property
    def is_global_zero(self) -> bool:
        """Whether this process is global rank zero (the one that prints and writes shared files)."""
    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
    @property
    def strategy(self) -> StrategyView:
        """The strategy that runs the model, under Fabric's and Lightning's names (``dltrain.strategies.StrategyView``)."""
    @property
    def fabric(self) -> Fabric:
        """The ``lightning.fabric.Fabric`` the Trainer runs on."""
    @property
    def data_parallel_rank(self) -> int:
        """This rank's index among the data-parallel replicas (what data it reads)."""
    @property
    def data_parallel_size(self) -> int:
        """How many replicas read different data (``world_size`` without tensor parallelism)."""
    @property
    def data_parallel_group(self) -> Any:
        """The process group of the data-parallel replicas (``None``: every rank)."""
    @property
    def fault_tolerance(self) -> Any:
        """The replica groups' figures under ``strategy=dltrain.FaultTolerant`` (``None`` otherwise)."""
    @property
    def tensor_parallel_rank(self) -> int:
        """This rank's index in its tensor-parallel group (0 without tensor parallelism)."""

    # the run's loggers and callbacks
    @property
    def loggers(self) -> list[Logger]:
        """The run's loggers."""
    @property
    def logger(self) -> Logger | None:
        """The first logger, or ``None``."""
    @property
    def callbacks(self) -> list[Callback]:
        """The run's callbacks, in the order their hooks run (checkpoint callbacks last)."""
    @property
    def checkpoint_callback(self) -> Any:
        """The first ``ModelCheckpoint``, or ``None``."""
    @property
    def profiler(self) -> Any:
        """The profiler (``Trainer(profiler=...)``), or one that measures nothing when none was asked for."""
    @property
    def log_dir(self) -> str:
        """The first logger's folder (its version folder for CSV/TensorBoard), else ``default_root_dir``."""

    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False,
                        storage_options: dict[str, Any] | None = None, *, background: AsyncSave | None = None,
                        after: Callable[[], None] | None = None) -> None:
        """Write a checkpoint to ``filepath``; every rank calls it.

        Args:
            filepath: the checkpoint's path, or a URL of an object store (``s3://bucket/run/last.ckpt``).
            weights_only: write the weights, hparams and loop counters only (no optimizer or callback state).
            storage_options: fsspec options for a URL (never saved).
            background: write it on this writer thread (``ModelCheckpoint(async_save=True)``): the state is staged
                in host memory and this returns before it is written.
            after: called on global rank zero once the checkpoint is complete (on the writer thread with
                ``background``).
        """
