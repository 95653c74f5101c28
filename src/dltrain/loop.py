"""The fit loop behind `Trainer.fit`: epochs, one training batch, the epoch end, validation inside fit.

Read top to bottom:

- `dltrain._run_state.LoopState` (re-exported here): where `fit` is. It is exactly what a checkpoint saves of the
  loop, and a resume continues from it.
- `dltrain.batch_path.BatchPath`: the one way a batch goes from a loader to a step, in every stage.
- `FitLoop`: the epoch loop, one training batch (accumulation, clipping, optimizer and scheduler steps), the epoch
  end and validation.
- ``dltrain.evaluation``: the evaluation and prediction loops, on the same batch path.

A loop takes the run's parts, not the Trainer: the `Settings` (what was asked), the `Engine` (how a step,
backward, clipping and collectives run on this strategy), the `HookDispatcher` (which callbacks and task methods
each hook reaches) and the `RunState` (what the trainer view shows). The hook order is in ``Trainer.fit``. Hooks
are resolved once per epoch (or stage), so a hook nobody overrides costs nothing per batch.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dltrain import checkpoint as ckpt_io
from dltrain._logged_values import LoggedValues
from dltrain._optim import SchedulerConfig
from dltrain._resumable_loader import release_workers
from dltrain._run_state import LoopState, log_skipped_samples
from dltrain._step_output import NonfiniteLosses, loss_of
from dltrain.batch_path import BatchPath
from dltrain.errors import ConfigurationError
from dltrain.evaluation import evaluate
from dltrain.task import Task, log_into

if TYPE_CHECKING:
    from dltrain._engine import Engine
    from dltrain._hooks import HookDispatcher
    from dltrain._run_state import RunState
    from dltrain._settings import Settings
    from dltrain.distributed import Watchdog

__all__ = ["FitLoop", "LoopState"]


@dataclass
class _TrainHooks:
    """What each training batch of an epoch calls, resolved once per epoch.

    The hooks, to what overrides them (callbacks first, then the task), and the optimizer (automatic
    optimization steps the first).
    """

    optimizer: Any = None  # the torch optimizer (None: configure_optimizers returned none)
    stepper: Any = None  # what steps it: the optimizer itself on the plain path, else Fabric's wrapper
    batch_start: list[Callable[..., Any]] = field(default_factory=list)
    batch_end: list[Callable[..., Any]] = field(default_factory=list)
    checkpoint_batch_end: list[Callable[..., Any]] = field(default_factory=list)  # after the step's values are sent
    before_backward: list[Callable[..., Any]] = field(default_factory=list)
    after_backward: list[Callable[..., Any]] = field(default_factory=list)
    before_optimizer_step: list[Callable[..., Any]] = field(default_factory=list)
    before_zero_grad: list[Callable[..., Any]] = field(default_factory=list)
    optimizer_step: Callable[..., Any] | None = None  # the task's overrides, or None for the default
    optimizer_zero_grad: Callable[..., Any] | None = None
    configure_gradient_clipping: Callable[..., Any] | None = None


class FitLoop:
    """`fit`'s loops over one task and pair of loaders; its progress is ``run.loop_state``.

    Args:
        settings: the run's settings (``max_epochs`` resolved for this fit).
        engine: the placed task's strategy mechanics.
        hooks: the hook dispatcher.
        run: what the trainer view shows; the loop writes its counts and publishes metrics there.
        task: the task being trained.
        loader: the training loader.
        val_loaders: the validation loaders (``None``: no validation).
        reload_loader: a fresh training loader (``reload_dataloaders_every_n_epochs``).
    """

    def __init__(self, settings: Settings, engine: Engine, hooks: HookDispatcher, run: RunState, task: Task,
                 loader: Any, val_loaders: list[Any] | None, reload_loader: Callable[[], Any]) -> None:
        self.settings = settings
        self.engine = engine
        self.hooks = hooks
        self.run_state = run
        self.task = task
        self.loader = loader
        self.val_loaders = val_loaders
        self.reload_loader = reload_loader
        self.state = run.loop_state
        self.results = LoggedValues(training=True, trainer=hooks.view)
        # With manual optimization under DDP the task runs as it is and manual_backward averages the gradients
        # (DDP's reducer expects one backward per forward; a GAN step has several).
        through = engine.wraps_module and (task.automatic_optimization or engine.shards_module)
        self.path = BatchPath(engine, hooks, run.loop_state, task, "training_step", through_wrapper=through,
                              datamodule=run.datamodule)
        self.batch_idx = 0  # the batch being run (the watchdog reports it)
        self.in_batches = False
        # Where the restored checkpoint was taken ("epoch_end", "epoch_start" or "mid_epoch"), until the loop is there.
        self.resumed: str | None = None
        self.pending_rng: dict[str, Any] | None = None  # this rank's RNG state from that checkpoint
        self.watchdog: Watchdog | None = None  # told when a loader without a length runs out (several ranks)
        self.nonfinite = NonfiniteLosses(settings.on_nonfinite_loss, engine, self.state)
        self._published_skips = 0
        self._published_replicas: tuple[int, int] | None = None
        # The fewest replica groups in a quorum since the loggers last got the step values: a group that left and
        # came back between two logging steps still shows as a dip in ft/replicas.
        self._fewest_replicas: int | None = None
        # Replica groups: the training loader's position after the batches done (None at an epoch's start).
        self.replica_position: dict[str, Any] | None = None
        self._last_loss: Tensor | None = None  # what an overridden optimizer_step's closure returns
        self._val_check_batch = math.inf  # Settings.val_check_batch of the epoch being run
        self._batches_with_loss = 0  # this epoch: batches whose training_step returned a loss

    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch being run is its epoch's last (``trainer.is_last_batch``)."""
        return self.run_state.is_last_batch

    # ------------------------------------------------------------------ epochs
    def run(self) -> None:
        """Train: sanity check, ``on_train_start``, the epochs, ``on_train_end``.

        Epochs run until ``max_epochs``, ``max_steps`` or ``should_stop``.
        """
        state, max_epochs = self.state, self._epoch_limit()
        self._sanity_check()
        log_into(self.task, self.results)  # on_train_start may log (epoch values), as in Lightning
        with self.results.epoch_values():
            self.hooks.call("on_train_start")
        if self.resumed in ("epoch_end", "epoch_start"):
            self._restore_rng()
        if self.resumed == "epoch_end":
            with warnings.catch_warnings():
                # A fresh optimizer has not stepped yet, so torch warns that the scheduler steps first: expected
                # when replaying the end of the epoch the checkpoint was taken in.
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning)
                self._finish_epoch()
        while not (self._stopping() or self._max_steps_reached()):
            if max_epochs is not None and state.epoch >= max_epochs:
                break
            self._train_epoch()
        # Lightning counts the epoch training stopped in (by max_steps or should_stop) as done: from
        # on_train_end on, current_epoch is one more than that epoch's index, as after a full last epoch.
        self.run_state.stopped_in_epoch = state.phase == "epoch_end" or state.batches_done > 0
        self.hooks.call("on_train_end")

    def finished(self) -> bool:
        """Whether there is nothing left to train (a resumed run that had completed)."""
        state, max_epochs = self.state, self._epoch_limit()
        epochs_done = state.epoch + (state.phase == "epoch_end")
        return (max_epochs is not None and epochs_done >= max_epochs) or self._max_steps_reached() or (
            self._stopping())

    def finished_reason(self) -> str:
        """Why `finished` is true, in words, with what to do to train further."""
        state, max_epochs = self.state, self._epoch_limit()
        if max_epochs is not None and state.epoch + (state.phase == "epoch_end") >= max_epochs:
            return f"max_epochs={max_epochs} reached): nothing to train; raise max_epochs to train further"
        if self._max_steps_reached():
            return f"max_steps={self.settings.max_steps} reached): nothing to train; raise max_steps to train further"
        return (f"it stopped early in epoch {state.epoch}: trainer.should_stop was set, e.g. by EarlyStopping): "
                "nothing to train. A stopped run stays stopped, so that running the same command again is safe "
                "(Lightning would train on). To train further, start a new fit from its weights: "
                "YourTask.load_from_checkpoint(path), then trainer.fit(task) without ckpt_path")

    def _epoch_limit(self) -> int | None:
        """``max_epochs``, or ``None`` for no limit (Lightning's ``-1``; ``None`` before a fit resolves it)."""
        max_epochs = self.settings.max_epochs
        return None if max_epochs is None or max_epochs == -1 else max_epochs

    def position(self) -> str:
        """Where the loop stands, in words (for the resume message)."""
        state = self.state
        if state.phase == "epoch_end":
            where = f"the end of epoch {state.epoch}"
        elif state.batches_done:
            where = f"epoch {state.epoch}, batch {state.batches_done}"
        else:
            where = f"the start of epoch {state.epoch}"
        return f"{where}, global step {state.global_step}"

    def _max_steps_reached(self) -> bool:
        return 0 < self.settings.max_steps <= self.state.global_step

    def _stopping(self) -> bool:
        """``should_stop``, once ``min_epochs`` and ``min_steps`` are reached (until then it is ignored)."""
        s, state = self.settings, self.state
        return state.should_stop and state.epoch + 1 >= s.min_epochs and state.global_step >= s.min_steps

    def _sanity_check(self) -> None:
        """A few validation batches before training, so that a broken validation_step fails now, not after an epoch.

        Nothing it logs reaches the loggers or callback_metrics.
        """
        steps = self.settings.num_sanity_val_steps
        if not self.val_loaders or not steps or self.resumed is not None:
            return
        self.run_state.sanity_checking = True
        try:
            self.hooks.call_callbacks("on_sanity_check_start")
            self._validate(cap=None if steps < 0 else steps)
            self.hooks.call_callbacks("on_sanity_check_end")
        finally:
            self.run_state.sanity_checking = False

    def _train_epoch(self) -> None:
        s, run, task, state = self.settings, self.run_state, self.task, self.state
        start = state.batches_done  # > 0 only when resuming in the middle of this epoch
        state.phase = "train"
        reload_every = s.reload_dataloaders_every_n_epochs
        if reload_every and state.epoch and state.epoch % reload_every == 0:
            release_workers([self.loader])
            self.loader = self.reload_loader()
        loader = self.loader
        log_into(task, self.results)
        task.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state.epoch)
        run.num_training_batches = n = s.count_batches(loader, s.limit_train_batches)
        self.engine.check_equal_batch_counts(int(n) - start if math.isfinite(n) else 0, n)
        for optimizer in self.engine.optimizers:  # nothing from an interrupted window crosses into the epoch
            optimizer.zero_grad(set_to_none=True)
        self.replica_position = None
        self._batches_with_loss = 0
        self.hooks.refresh()  # hooks are resolved once per epoch (callbacks may have been added in place)
        with self.results.epoch_values():
            self.hooks.call("on_train_epoch_start")
        iterator = self._iter(loader)
        self.in_batches = True
        hooks = self._resolve_hooks()
        self._val_check_batch = s.val_check_batch(n) if self.val_loaders else math.inf
        # The validation due after the epoch's last batch (or the batch training stops at) runs in _end_epoch,
        # before on_train_epoch_end.
        validate_at_end = False
        if self.resumed == "mid_epoch" and start > 0:
            # A checkpoint taken after batch start-1: the validation due after it has not run yet.
            due = self._validation_due(start - 1, is_last=start >= n, stopping=False)
            if due and start < n:
                self._validate()
            validate_at_end = due and start >= n
        self.resumed = None
        batch_idx = start - 1
        cut_short = False  # stopped before the epoch's end by max_steps or should_stop (max_time, a callback)
        max_steps = s.max_steps
        # `_validation_due`, inlined below (no call per batch): whether this epoch validates, and how often.
        val_epoch = bool(self.val_loaders) and s.validates_in_epoch(state.epoch)
        every, by_fit = self._val_check_batch, s.check_val_every_n_epoch is None
        batches = self.path.batches(loader, iterator, start, n, lookahead=True)
        with contextlib.closing(batches):  # however the epoch ends, its iterator is finished now (see batches)
            for batch_idx, batch, is_last in batches:
                self.batch_idx = batch_idx
                run.is_last_batch = is_last
                if self._train_batch(batch, batch_idx, is_last, hooks):
                    break  # the task's on_train_batch_start returned -1: the rest of the epoch is skipped
                stopping = state.should_stop and self._stopping()
                stop = stopping or 0 < max_steps <= state.global_step
                due = val_epoch and (stopping or (
                    is_last if every == math.inf else (state.total_batches if by_fit else batch_idx + 1) % every == 0))
                if is_last or stop:
                    validate_at_end = due
                elif due:
                    self._validate()
                if stop:
                    cut_short = not is_last
                    break
            else:
                if self.watchdog is not None and self.engine.world_size > 1 and not math.isfinite(n):
                    self.watchdog.report_exhausted(state.epoch, batch_idx + 1)
        self.in_batches = False
        self.batch_idx = batch_idx + 1
        trained = batch_idx + 1 - start
        if task.automatic_optimization and trained > 0 and self._batches_with_loss == 0 and self.engine.is_global_zero:
            warnings.warn(
                f"training_step returned None for all {trained} batches of epoch {state.epoch}: nothing was trained. "
                "Return the loss (a scalar tensor or {'loss': ...}) from training_step; None skips a batch",
                UserWarning, stacklevel=2,
            )
        self._end_epoch(complete=not cut_short, validate=validate_at_end)

    def _validation_due(self, batch_idx: int, is_last: bool, stopping: bool) -> bool:
        """Whether a validation follows this training batch: Lightning's rule.

        Only in the epochs ``check_val_every_n_epoch`` names; then after the last batch of a loader without a
        length, when training stops early (``should_stop``, once ``min_epochs``/``min_steps`` allow it), and after
        every `Settings.val_check_batch` batches (counted within the epoch, or over the fit when
        ``check_val_every_n_epoch=None``).
        """
        if not self.val_loaders or not self.settings.validates_in_epoch(self.state.epoch):
            return False
        every = self._val_check_batch
        if stopping:
            return True
        if every == math.inf:
            return is_last
        done = self.state.total_batches if self.settings.check_val_every_n_epoch is None else batch_idx + 1
        return done % every == 0

    def _resolve_hooks(self) -> _TrainHooks:
        hooks, engine = self.hooks, self.engine
        return _TrainHooks(
            optimizer=engine.optimizers[0] if engine.optimizers else None,
            stepper=engine.stepping_optimizer() if engine.optimizers else None,
            batch_start=hooks.hooks("on_train_batch_start"),
            batch_end=hooks.checkpoint_last("on_train_batch_end")[0],
            checkpoint_batch_end=hooks.checkpoint_last("on_train_batch_end")[1],
            before_backward=hooks.hooks("on_before_backward"),
            after_backward=hooks.hooks("on_after_backward"),
            before_optimizer_step=hooks.hooks("on_before_optimizer_step"),
            before_zero_grad=hooks.hooks("on_before_zero_grad"),
            optimizer_step=hooks.task_hook("optimizer_step"),
            optimizer_zero_grad=hooks.task_hook("optimizer_zero_grad"),
            configure_gradient_clipping=hooks.task_hook("configure_gradient_clipping"),
        )

    def _iter(self, loader: Any) -> Iterator[Any]:
        """``iter(loader)``, keeping the RNG stream of a resumed run equal to the uninterrupted run's.

        A torch DataLoader draws its workers' base seed from the global RNG at every ``iter()``, except that with
        persistent workers only the first does. Resumed at an epoch boundary, the RNG state was restored before
        this point, so the draw must happen exactly when the uninterrupted run made one; resumed in the middle of
        an epoch, the state is restored after it (the uninterrupted run drew before the checkpoint).
        """
        if self.resumed in ("epoch_end", "epoch_start") and getattr(loader, "persistent_workers", False):
            rng = torch.get_rng_state()
            iterator = iter(loader)  # the uninterrupted run's workers were already running: no draw
            torch.set_rng_state(rng)
        else:
            iterator = iter(loader)
        if self.resumed == "mid_epoch":
            self._restore_rng()
        return iterator

    def _restore_rng(self) -> None:
        if self.pending_rng is not None:
            ckpt_io.set_rng_state(self.pending_rng)
            self.pending_rng = None

    def _end_epoch(self, complete: bool, validate: bool) -> None:
        """The validation due after the epoch's last batch (``validate``) and the epoch-end hooks.

        An epoch cut short keeps ``phase="train"``: a checkpoint taken now, resumed with a larger max_steps or
        max_time, trains the rest of this epoch.
        """
        task, state = self.task, self.state
        self.results.batch = None
        log_skipped_samples(self.loader, self.results, "train")
        self.nonfinite.check()
        if validate:
            self._validate()
        log_into(task, self.results)
        with self.results.epoch_values():
            task.on_train_epoch_end()
        state.phase = "epoch_end" if complete else "train"
        self._publish_skips()
        self.run_state.end_epoch(self.results, self.hooks, "on_train_epoch_end")
        self._finish_epoch()

    def _finish_epoch(self) -> None:
        """What follows the epoch-end callbacks (a resume from an epoch-end checkpoint starts here)."""
        state = self.state
        state.should_stop = self.engine.any_rank(state.should_stop)
        # With manual optimization the task steps its schedulers. An epoch cut short (max_steps, should_stop) does
        # not step them, as in Lightning: a resume with a larger max_steps finishes that epoch and steps them then.
        if self.task.automatic_optimization and state.phase == "epoch_end":
            for config in self.engine.lr_scheduler_configs:
                if config.interval == "epoch" and (state.epoch + 1) % config.frequency == 0:
                    self._step_scheduler(config)
        if not (self._stopping() or self._max_steps_reached()):
            state.should_stop = False  # asked for before min_epochs/min_steps: ignored
            state.epoch += 1
            state.batches_done = 0
            state.phase = "train"

    def _step_scheduler(self, config: SchedulerConfig) -> None:
        metric = None
        if config.is_plateau:
            assert config.monitor is not None
            metrics = self.run_state.callback_metrics()
            value = metrics.get(config.monitor)
            if value is None:
                if config.interval == "step":
                    return
                raise ConfigurationError(
                    f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged; logged metrics: "
                    f"{sorted(metrics)}"
                )
            metric = float(value)
        step = self.hooks.task_hook("lr_scheduler_step")
        if step is not None:
            step(config.scheduler, metric)
        elif metric is None:
            config.scheduler.step()
        else:
            config.scheduler.step(metric)

    # ------------------------------------------------------------------ one training batch
    def _train_batch(self, batch: Any, batch_idx: int, is_last: bool, hooks: _TrainHooks) -> bool:
        """One batch: hooks, step, backward, optimizer step when due. True: end the epoch here."""
        task, state, accumulate = self.task, self.state, self.settings.accumulate_grad_batches
        self.results.batch = batch
        for hook in hooks.batch_start:
            if hook(batch, batch_idx) == -1:
                return True
        if not task.automatic_optimization:
            steps_before = state.global_step
            output = self.path.run(batch, batch_idx)  # the task steps its optimizers (ManualOptimizer counts)
            state.stepped = state.global_step != steps_before
        else:
            is_step = is_last or (batch_idx + 1) % accumulate == 0
            window_start = batch_idx % accumulate == 0
            if window_start and self.engine.replicas is not None:
                # Replica groups: the step's quorum, before the forward (a group behind heals here).
                self.engine.start_replica_step(state.global_step, accumulate)
            if is_step or not self.engine.wraps_module:
                output = self._forward_backward(batch, batch_idx, hooks, window_start)
            else:  # inside an accumulation window: no gradient all-reduce
                with self.engine.no_backward_sync():
                    output = self._forward_backward(batch, batch_idx, hooks, window_start)
            state.stepped = False
            if is_step and hooks.optimizer is not None:
                self._optimizer_step(batch_idx, hooks)
        state.batches_done = batch_idx + 1
        state.total_batches += 1
        if self.engine.replicas is not None:
            # What a joining replica group receives at the next step's quorum, when this loader has already read
            # that step's batch (and one ahead).
            self.replica_position = self.loader_position()
        for hook in hooks.batch_end:
            hook(output, batch, batch_idx)
        # After the batch-end hooks, so that what callbacks log for this step is sent with it; before the
        # checkpoint callbacks', so that a checkpoint of this step finds its values in the loggers' files.
        if state.stepped and state.global_step % self.settings.log_every_n_steps == 0:
            self._log_step()
        for hook in hooks.checkpoint_batch_end:
            hook(output, batch, batch_idx)
        return False

    def _forward_backward(self, batch: Any, batch_idx: int, hooks: _TrainHooks, window_start: bool) -> Any:
        engine, settings, path = self.engine, self.settings, self.path
        try:  # path.run(batch, batch_idx), one call less per batch
            output = None if batch is None else path.step(batch, batch_idx)
        except Exception as err:
            path.failed(err, batch, batch_idx)
            raise
        loss = loss_of(output, batch_idx)
        optimizer = hooks.optimizer
        if window_start and optimizer is not None:  # Lightning zeroes the gradients here: after the step, before backward
            for hook in hooks.before_zero_grad:
                hook(optimizer)
            if hooks.optimizer_zero_grad is not None:
                hooks.optimizer_zero_grad(self.state.epoch, batch_idx, optimizer)
            else:
                optimizer.zero_grad(set_to_none=True)
        if loss is not None and settings.on_nonfinite_loss != "ignore" and self.nonfinite.skip(loss, batch_idx):
            loss = None  # on_nonfinite_loss="skip": no backward from this batch
        if loss is None and engine.syncs_gradients:
            # The other ranks wait for this one in the gradient all-reduce: take part with a zero gradient.
            loss = engine.zero_loss(batch, batch_idx, forward_done=batch is not None)
        if loss is not None:
            if settings.accumulate_grad_batches > 1:
                loss = loss / settings.accumulate_grad_batches
            for hook in hooks.before_backward:
                hook(loss)
            engine.backward(loss)
            for hook in hooks.after_backward:
                hook()
            self._last_loss = loss
            self._batches_with_loss += 1
        return output

    def _optimizer_step(self, batch_idx: int, hooks: _TrainHooks) -> None:
        engine, settings, state = self.engine, self.settings, self.state
        optimizer = hooks.optimizer
        if engine.replicas is not None:
            committed = engine.replica_gradients_and_vote()
            self._publish_replicas()
            if not committed:  # the quorum did not commit it: this step did not happen
                optimizer.zero_grad(set_to_none=True)
                state.uncommitted_steps += 1
                return
        for hook in hooks.before_optimizer_step:
            hook(optimizer)
        if hooks.configure_gradient_clipping is not None:
            hooks.configure_gradient_clipping(optimizer, settings.gradient_clip_val, settings.gradient_clip_algorithm)
        elif settings.gradient_clip_val is not None:
            engine.clip(optimizer, settings.gradient_clip_val, settings.gradient_clip_algorithm)
        if hooks.optimizer_step is not None:
            hooks.optimizer_step(state.epoch, batch_idx, hooks.stepper, lambda: self._last_loss)
        else:
            hooks.stepper.step()
        state.global_step += 1
        state.stepped = True
        for config in engine.lr_scheduler_configs:
            # Lightning counts the batch index in the epoch here, not the global step (the same with frequency 1).
            if config.interval == "step" and (batch_idx + 1) % config.frequency == 0:
                self._step_scheduler(config)

    # ------------------------------------------------------------------ logging and validation
    def _log_step(self) -> None:
        self.nonfinite.check()
        self._publish_skips()
        values, bar = self.results.read_step()
        if values:
            self.run_state.publish(values, bar, self.results)
        self._fewest_replicas = None  # a new logging window

    def _publish_replicas(self) -> None:
        """``ft/replicas`` and ``ft/quorum_changes`` to the loggers, when they change.

        ``ft/replicas`` is the fewest groups in a quorum since the last logging step.
        """
        replicas = self.engine.replicas
        assert replicas is not None
        fewest = self._fewest_replicas
        fewest = replicas.replicas if fewest is None else min(fewest, replicas.replicas)
        self._fewest_replicas = fewest
        now = (fewest, replicas.quorum_changes)
        if now != self._published_replicas:
            self._published_replicas = now
            for name, value in (("ft/replicas", now[0]), ("ft/quorum_changes", now[1])):
                self.results.log(name, float(value), on_step=True, on_epoch=False, prog_bar=False,
                                 sync_dist=False, batch_size=1, reduce_fx="max")

    def _publish_skips(self) -> None:
        skipped = self.nonfinite.skipped
        if skipped != self._published_skips:
            self._published_skips = skipped
            self.results.log("train/skipped_nonfinite_steps", float(skipped), on_step=True, on_epoch=False,
                             prog_bar=False, sync_dist=True, batch_size=1, reduce_fx="max")

    def _validate(self, cap: int | None = None) -> None:
        """Validation inside fit: it leaves the training RNG stream and the train/eval mode as it found them.

        ``cap``: at most this many batches of each loader, within ``limit_val_batches`` (the sanity check's
        ``num_sanity_val_steps``, as in Lightning).
        """
        assert self.val_loaders is not None
        s = self.settings
        rng = ckpt_io.rng_state()
        try:
            evaluate(s, self.engine, self.hooks, self.run_state, self.task, self.val_loaders, "validation",
                     s.limit_val_batches, cap=cap)
        finally:
            ckpt_io.set_rng_state(rng)
            model_train = self.hooks.task_hook("on_validation_model_train")
            if model_train is not None:
                model_train()
            else:
                self.task.train()
            log_into(self.task, self.results)

    def loader_position(self) -> dict[str, Any] | None:
        """The training loader's position after the batches the loop has finished (for checkpoints)."""
        if self.path.lookahead_position is not None and self.in_batches:
            return self.path.lookahead_position
        state_dict = getattr(self.loader, "state_dict", None)
        return state_dict() if state_dict is not None else None
