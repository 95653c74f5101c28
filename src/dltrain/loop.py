"""The loops behind `Trainer`: one batch path for fit, validate, test and predict, and the state that resumes fit.

Read top to bottom:

- `LoopState`: where `fit` is. It is exactly what a checkpoint saves of the loop, and a resume continues from it.
- `dltrain.batch_path.BatchPath`: the one way a batch goes from a loader to a step, in every stage.
- `FitLoop`: the epoch loop, one training batch (accumulation, clipping, optimizer and scheduler steps), the epoch
  end and validation.
- ``dltrain.evaluation``: the evaluation and prediction loops, on the same batch path.

The Trainer (``dltrain.trainer``) holds the settings and builds these; the hook order is in ``Trainer.fit``. Hooks
are resolved once per epoch (or stage) to the callbacks and task methods that override them, so a hook nobody
overrides costs nothing per batch.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dltrain import checkpoint as ckpt_io
from dltrain._data_sources import reload_train_loader
from dltrain._logged_values import LoggedValues
from dltrain._resumable_loader import release_workers
from dltrain._step_output import NonfiniteLosses, loss_of
from dltrain.batch_path import BatchPath
from dltrain.task import Task

if TYPE_CHECKING:
    from dltrain.trainer import Trainer

__all__ = ["FitLoop", "LoopState"]



@dataclass
class LoopState:
    """Where `fit` is. A checkpoint saves exactly this (``state_dict``) and a resume restores it.

    Checkpoints are taken at two kinds of points, and ``phase`` says which:

    - ``"train"``: after a training batch, ``batches_done`` batches of ``epoch`` finished (their optimizer step
      and ``on_train_batch_end`` hooks included). A resume runs the validation that was due after that batch,
      then the next batch.
    - ``"epoch_end"``: in the epoch-end callbacks (after validation and ``on_train_epoch_end`` hooks up to the
      checkpoint callback, which runs last). A resume does what follows them: agree on ``should_stop`` over the
      ranks, step the epoch-interval schedulers, start the next epoch.
    """

    epoch: int = 0
    global_step: int = 0  # optimizer steps taken
    batches_done: int = 0  # training batches of `epoch` finished
    phase: str = "train"  # "train" or "epoch_end" (see above)
    should_stop: bool = False
    stepped: bool = False  # whether the last training batch ended with an optimizer step
    skipped_nonfinite_steps: int = 0  # steps skipped with on_nonfinite_loss="skip", over the whole fit

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "batches_in_epoch" in state:  # checkpoint format 1
            phase = "epoch_end" if state["epoch_complete"] else "train"
            state = {"epoch": state["epoch"], "global_step": state["global_step"],
                     "batches_done": state["batches_in_epoch"], "phase": phase}
        known = {f.name for f in fields(self)}
        for name, value in state.items():
            if name in known:
                setattr(self, name, value)


@dataclass
class _TrainHooks:
    """The per-batch hooks of one epoch, resolved to what overrides them (callbacks first, then the task)."""

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
    """`fit`'s loops over one Trainer, task and pair of loaders; its progress is ``trainer.loop_state``."""

    def __init__(self, trainer: Trainer, task: Task, loader: Any, val_loaders: list[Any] | None) -> None:
        self.trainer = trainer
        self.task = task
        self.loader = loader
        self.val_loaders = val_loaders
        self.state = trainer.loop_state
        self.hooks = trainer._hooks
        self.results = LoggedValues(training=True, trainer=trainer)
        # With manual optimization under DDP the task runs as it is and manual_backward averages the gradients
        # (DDP's reducer expects one backward per forward; a GAN step has several).
        through = trainer._strategy_wraps_module and (task.automatic_optimization or trainer._strategy_shards_module)
        self.path = BatchPath(trainer, task, "training_step", through_wrapper=through)
        self.batch_idx = 0  # the batch being run (the watchdog reports it)
        self.is_last_batch = False  # whether it is the epoch's last (trainer.is_last_batch)
        self.in_batches = False
        # Where the restored checkpoint was taken ("epoch_end", "epoch_start" or "mid_epoch"), until the loop is there.
        self.resumed: str | None = None
        self.pending_rng: dict[str, Any] | None = None  # this rank's RNG state from that checkpoint
        self.nonfinite = NonfiniteLosses(trainer)
        self._published_skips = 0
        self._last_loss: Tensor | None = None  # what an overridden optimizer_step's closure returns
        self._batches_with_loss = 0  # this epoch: batches whose training_step returned a loss

    # ------------------------------------------------------------------ epochs
    def run(self) -> None:
        """Sanity check, ``on_train_start``, epochs until ``max_epochs``/``max_steps``/``should_stop``,
        ``on_train_end``."""
        state, t = self.state, self.trainer
        self._sanity_check()
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
            if t.max_epochs is not None and state.epoch >= t.max_epochs:
                break
            self._train_epoch()
        self.hooks.call("on_train_end")

    def finished(self) -> bool:
        """Whether there is nothing left to train (a resumed run that had completed)."""
        t, state = self.trainer, self.state
        epochs_done = state.epoch + (state.phase == "epoch_end")
        return (t.max_epochs is not None and epochs_done >= t.max_epochs) or self._max_steps_reached() or (
            self._stopping())

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
        return 0 < self.trainer.max_steps <= self.state.global_step

    def _stopping(self) -> bool:
        """``should_stop``, once ``min_epochs`` and ``min_steps`` are reached (until then it is ignored)."""
        t, state = self.trainer, self.state
        return state.should_stop and state.epoch + 1 >= t.min_epochs and state.global_step >= t.min_steps

    def _sanity_check(self) -> None:
        """A few validation batches before training, so that a broken validation_step fails now, not after an
        epoch; nothing it logs reaches the loggers or callback_metrics."""
        t = self.trainer
        if not self.val_loaders or not t.num_sanity_val_steps or self.resumed is not None:
            return
        t.sanity_checking = True
        try:
            self.hooks.call_callbacks("on_sanity_check_start")
            limit = None if t.num_sanity_val_steps < 0 else t.num_sanity_val_steps
            self._validate(limit)
            self.hooks.call_callbacks("on_sanity_check_end")
        finally:
            t.sanity_checking = False

    def _train_epoch(self) -> None:
        t, task, state = self.trainer, self.task, self.state
        start = state.batches_done  # > 0 only when resuming in the middle of this epoch
        state.phase = "train"
        if t.reload_dataloaders_every_n_epochs and state.epoch and state.epoch % t.reload_dataloaders_every_n_epochs == 0:
            release_workers([self.loader])
            self.loader = reload_train_loader(t)
        loader = self.loader
        task._results = self.results
        task.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state.epoch)
        t.num_training_batches = t._count_batches(loader, t.limit_train_batches)
        t._check_equal_lengths(int(t.num_training_batches) - start if math.isfinite(t.num_training_batches) else 0)
        for optimizer in t.optimizers:  # nothing from an interrupted window crosses into the epoch
            optimizer.zero_grad(set_to_none=True)
        self._batches_with_loss = 0
        self.hooks.refresh()  # hooks are resolved once per epoch (callbacks may have been added in place)
        self.hooks.call("on_train_epoch_start")
        iterator = self._iter(loader)
        self.in_batches = True
        hooks = self._resolve_hooks()
        val_every = t._val_batches_interval(val=bool(self.val_loaders))
        if self.resumed == "mid_epoch" and val_every and start % val_every == 0 and start < t.num_training_batches:
            self._validate()  # due after the batch the checkpoint was taken at
        self.resumed = None
        batch_idx = start - 1
        cut_short = False  # stopped before the epoch's end by max_steps or should_stop (max_time, a callback)
        batches = self.path.batches(loader, iterator, start, t.num_training_batches, lookahead=True)
        with contextlib.closing(batches):  # however the epoch ends, its iterator is finished now (see batches)
            for batch_idx, batch, is_last in batches:
                self.batch_idx, self.is_last_batch = batch_idx, is_last
                if self._train_batch(batch, batch_idx, is_last, hooks):
                    break  # the task's on_train_batch_start returned -1: the rest of the epoch is skipped
                if val_every is not None and (batch_idx + 1) % val_every == 0 and not is_last:
                    self._validate()
                if (state.should_stop and self._stopping()) or 0 < t.max_steps <= state.global_step:
                    cut_short = not is_last
                    break
            else:
                t._report_exhausted(batch_idx + 1)
        self.in_batches = False
        self.batch_idx = batch_idx + 1
        trained = batch_idx + 1 - start
        if task.automatic_optimization and trained > 0 and self._batches_with_loss == 0 and t.is_global_zero:
            warnings.warn(
                f"training_step returned None for all {trained} batches of epoch {state.epoch}: nothing was trained. "
                "Return the loss (a scalar tensor or {'loss': ...}) from training_step; None skips a batch",
                UserWarning, stacklevel=2,
            )
        self._end_epoch(complete=not cut_short)

    def _resolve_hooks(self) -> _TrainHooks:
        hooks = self.hooks
        return _TrainHooks(
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

    def _end_epoch(self, complete: bool) -> None:
        """Validation and the epoch-end hooks. An epoch cut short keeps ``phase="train"``: a checkpoint taken
        now, resumed with a larger max_steps or max_time, trains the rest of this epoch."""
        t, task, state = self.trainer, self.task, self.state
        self.results.batch = None
        t._log_skipped(self.loader, self.results, "train")
        self.nonfinite.check()
        if self.val_loaders and t._validate_after_epoch(state.epoch):
            self._validate()
        task._results = self.results
        task.on_train_epoch_end()
        state.phase = "epoch_end" if complete else "train"
        self._publish_skips()
        t._epoch_end_callbacks("on_train_epoch_end", self.results)
        self._finish_epoch()

    def _finish_epoch(self) -> None:
        """What follows the epoch-end callbacks (a resume from an epoch-end checkpoint starts here)."""
        t, state = self.trainer, self.state
        state.should_stop = t._any_rank(state.should_stop)
        if self.task.automatic_optimization:  # with manual optimization the task steps its schedulers
            for config in t.lr_scheduler_configs:
                if config.interval == "epoch" and (state.epoch + 1) % config.frequency == 0:
                    t._step_scheduler(config)
        if not (self._stopping() or self._max_steps_reached()):
            state.should_stop = False  # asked for before min_epochs/min_steps: ignored
            state.epoch += 1
            state.batches_done = 0
            state.phase = "train"

    # ------------------------------------------------------------------ one training batch
    def _train_batch(self, batch: Any, batch_idx: int, is_last: bool, hooks: _TrainHooks) -> bool:
        """One batch: hooks, step, backward, optimizer step when due. True: end the epoch here."""
        t, task, state = self.trainer, self.task, self.state
        self.results.batch = batch
        for hook in hooks.batch_start:
            if hook(batch, batch_idx) == -1:
                return True
        if not task.automatic_optimization:
            steps_before = state.global_step
            output = self.path.run(batch, batch_idx)  # the task steps its optimizers (ManualOptimizer counts)
            state.stepped = state.global_step != steps_before
        else:
            is_step = is_last or (batch_idx + 1) % t.accumulate_grad_batches == 0
            window_start = batch_idx % t.accumulate_grad_batches == 0
            if is_step or not t._strategy_wraps_module:
                output = self._forward_backward(batch, batch_idx, hooks, window_start)
            else:  # inside an accumulation window: no gradient all-reduce
                with t.fabric.no_backward_sync(t._fabric_module, enabled=True):
                    output = self._forward_backward(batch, batch_idx, hooks, window_start)
            state.stepped = False
            if is_step and t.optimizers:
                self._optimizer_step(batch_idx, hooks)
        state.batches_done = batch_idx + 1
        for hook in hooks.batch_end:
            hook(output, batch, batch_idx)
        # After the batch-end hooks, so that what callbacks log for this step is sent with it; before the
        # checkpoint callbacks', so that a checkpoint of this step finds its values in the loggers' files.
        if state.stepped and state.global_step % t.log_every_n_steps == 0:
            self._log_step()
        for hook in hooks.checkpoint_batch_end:
            hook(output, batch, batch_idx)
        return False

    def _forward_backward(self, batch: Any, batch_idx: int, hooks: _TrainHooks, window_start: bool) -> Any:
        t = self.trainer
        output = self.path.run(batch, batch_idx)
        loss = loss_of(output, batch_idx)
        if window_start and t.optimizers:  # Lightning zeroes the gradients here: after the step, before backward
            optimizer = t.optimizers[0]
            for hook in hooks.before_zero_grad:
                hook(optimizer)
            if hooks.optimizer_zero_grad is not None:
                hooks.optimizer_zero_grad(self.state.epoch, batch_idx, optimizer)
            else:
                optimizer.zero_grad(set_to_none=True)
        if loss is not None and t.on_nonfinite_loss != "ignore" and self.nonfinite.skip(loss, batch_idx):
            loss = None  # on_nonfinite_loss="skip": no backward from this batch
        if loss is None and t._syncs_gradients:
            # The other ranks wait for this one in the gradient all-reduce: take part with a zero gradient.
            loss = t._zero_loss(batch, batch_idx, forward_done=batch is not None)
        if loss is not None:
            if t.accumulate_grad_batches > 1:
                loss = loss / t.accumulate_grad_batches
            for hook in hooks.before_backward:
                hook(loss)
            if t._plain:
                loss.backward()
            else:
                t._backward(loss)
            for hook in hooks.after_backward:
                hook()
            self._last_loss = loss
            self._batches_with_loss += 1
        return output

    def _optimizer_step(self, batch_idx: int, hooks: _TrainHooks) -> None:
        t, state = self.trainer, self.state
        optimizer = t.optimizers[0]
        for hook in hooks.before_optimizer_step:
            hook(optimizer)
        if hooks.configure_gradient_clipping is not None:
            hooks.configure_gradient_clipping(optimizer, t.gradient_clip_val, t.gradient_clip_algorithm)
        elif t.gradient_clip_val is not None:
            t._clip(optimizer, t.gradient_clip_val, t.gradient_clip_algorithm)
        if hooks.optimizer_step is not None:
            wrapped = optimizer if t._plain else t._fabric_optimizers[0]
            hooks.optimizer_step(state.epoch, batch_idx, wrapped, lambda: self._last_loss)
        elif t._plain:
            optimizer.step()
        else:
            t._fabric_optimizers[0].step()
        state.global_step += 1
        state.stepped = True
        for config in t.lr_scheduler_configs:
            if config.interval == "step" and state.global_step % config.frequency == 0:
                t._step_scheduler(config)

    # ------------------------------------------------------------------ logging and validation
    def _log_step(self) -> None:
        self.nonfinite.check()
        self._publish_skips()
        values, bar = self.results.read_step()
        if values:
            self.trainer._publish(values, bar, self.results)

    def _publish_skips(self) -> None:
        skipped = self.nonfinite.skipped
        if skipped != self._published_skips:
            self._published_skips = skipped
            self.results.log("train/skipped_nonfinite_steps", float(skipped), on_step=True, on_epoch=False,
                             prog_bar=False, sync_dist=True, batch_size=1, reduce_fx="max")

    def _validate(self, limit: int | float | None = None) -> None:
        """Validation inside fit: it leaves the training RNG stream and the train/eval mode as it found them."""
        from dltrain.evaluation import evaluate

        t = self.trainer
        assert self.val_loaders is not None
        rng = ckpt_io.rng_state()
        try:
            evaluate(t, self.task, self.val_loaders, "validation", t.limit_val_batches if limit is None else limit)
        finally:
            ckpt_io.set_rng_state(rng)
            model_train = self.hooks.task_hook("on_validation_model_train")
            if model_train is not None:
                model_train()
            else:
                self.task.train()
            self.task._results = self.results

    def loader_position(self) -> dict[str, Any] | None:
        """The training loader's position after the batches the loop has finished (for checkpoints)."""
        if self.path.lookahead_position is not None and self.in_batches:
            return self.path.lookahead_position
        state_dict = getattr(self.loader, "state_dict", None)
        return state_dict() if state_dict is not None else None
