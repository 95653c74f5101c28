"""The loops behind `Trainer`: one batch path for fit, validate, test and predict, and the state that resumes fit.

Read top to bottom:

- `LoopState`: where `fit` is. It is exactly what a checkpoint saves of the loop, and a resume continues from it.
- `BatchPath`: the one way a batch goes from a loader to a step, for every stage: fetch (looking one batch ahead
  when the loader has no length, so that the last batch is known), move to the device, ``on_after_batch_transfer``,
  then the step, which goes through the strategy's wrapper or the precision context as the strategy needs. A
  ``None`` batch (a loader that skipped every sample of it) reaches no step, in any stage.
- `FitLoop`: the epoch loop, one training batch (accumulation, clipping, optimizer and scheduler steps), the epoch
  end and validation.
- `evaluate` and `predict`: the evaluation loops, on the same batch path.

The Trainer (``dltrain.trainer``) holds the settings and builds these; the hook order is in ``Trainer.fit``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins.precision import Precision

from dltrain import checkpoint as ckpt_io
from dltrain._batch import describe_batch
from dltrain._logged_values import LoggedValues
from dltrain._step_output import NonfiniteLosses, add_note, loss_of, raise_if_unused_parameters
from dltrain.errors import ConfigurationError
from dltrain.task import Task

if TYPE_CHECKING:
    from dltrain.trainer import Trainer

__all__ = ["BatchPath", "FitLoop", "LoopState", "evaluate", "predict"]

_END = object()


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


class BatchPath:
    """Loader → device → ``on_after_batch_transfer`` → step, for one stage (see the module docstring)."""

    def __init__(self, trainer: Trainer, task: Task, step_name: str, through_wrapper: bool) -> None:
        self.trainer = trainer
        self.task = task
        self.step_name = step_name
        self.move = trainer.device.type != "cpu"
        overridden = type(task).on_after_batch_transfer is not Task.on_after_batch_transfer
        self.after_transfer = task.on_after_batch_transfer if overridden else None
        self.step = self._resolve_step(step_name, through_wrapper)
        self.lookahead_position: dict[str, Any] | None = None  # the loader's position before the look-ahead

    def _resolve_step(self, name: str, through_wrapper: bool) -> Callable[[Any, int], Any]:
        if through_wrapper:
            # Fabric sends the call through the wrapper's forward (DDP's gradient sync, FSDP's all-gather), under
            # the precision context.
            return getattr(self.trainer._fabric_module, name)
        method = getattr(self.task, name)
        precision = self.trainer.strategy.precision
        if type(precision) is Precision:  # full precision: call the task as a hand-written loop would
            return method

        def with_precision(batch: Any, batch_idx: int) -> Any:
            with precision.forward_context():
                return method(precision.convert_input(batch), batch_idx)

        return with_precision

    def batches(self, loader: Any, iterator: Iterator[Any], start: int, limit: float,
                lookahead: bool) -> Iterator[tuple[int, Any, bool]]:
        """``(batch_idx, batch, is_last)`` for the batches from ``start`` up to ``limit``, ready for the step."""
        prepare = self.prepare
        if math.isfinite(limit) or not lookahead:
            last = int(limit) - 1 if math.isfinite(limit) else -1
            needs_preparing = self.move or self.after_transfer is not None  # else a batch is used as it comes
            for batch_idx, batch in enumerate(iterator, start):
                if batch_idx >= limit:
                    return
                yield batch_idx, prepare(batch) if needs_preparing else batch, batch_idx == last
            return
        # No length: fetch one batch ahead to know the last one (an accumulation window must end with the epoch).
        # The loader is then one batch ahead of the loop, so its position is read before each look-ahead.
        position = getattr(loader, "state_dict", None)
        batch_idx, upcoming = start, next(iterator, _END)
        while upcoming is not _END:
            batch = upcoming
            if position is not None:
                self.lookahead_position = position()
            upcoming = next(iterator, _END)
            yield batch_idx, prepare(batch), upcoming is _END
            batch_idx += 1
        self.lookahead_position = None

    def prepare(self, batch: Any) -> Any:
        if batch is None:
            return None
        if self.move:
            batch = self.trainer.fabric.to_device(batch)
        if self.after_transfer is not None:
            batch = self.after_transfer(batch, 0)
        return batch

    def run(self, batch: Any, batch_idx: int) -> Any:
        """The step's output; ``None`` for a ``None`` batch. An error keeps its type and gains a note saying where."""
        if batch is None:
            return None
        try:
            return self.step(batch, batch_idx)
        except Exception as err:
            raise_if_unused_parameters(err)
            t = self.trainer
            add_note(
                err,
                f"[dltrain] {self.step_name} failed on batch {batch_idx} (epoch {t.current_epoch}, global step "
                f"{t.global_step}, rank {t.global_rank}); the batch was {describe_batch(batch)}",
            )
            raise


class FitLoop:
    """`fit`'s loops over one Trainer, task and pair of loaders; its progress is ``trainer.loop_state``."""

    def __init__(self, trainer: Trainer, task: Task, loader: Any, val_loader: Any) -> None:
        self.trainer = trainer
        self.task = task
        self.loader = loader
        self.val_loader = val_loader
        self.state = trainer.loop_state
        self.results = LoggedValues(training=True, trainer=trainer)
        self.path = BatchPath(trainer, task, "training_step", through_wrapper=trainer._strategy_wraps_module)
        self.batch_idx = 0  # the batch being run (the watchdog reports it)
        self.in_batches = False
        # Where the restored checkpoint was taken ("epoch_end", "epoch_start" or "mid_epoch"), until the loop is there.
        self.resumed: str | None = None
        self.pending_rng: dict[str, Any] | None = None  # this rank's RNG state from that checkpoint
        self.nonfinite = NonfiniteLosses(trainer)
        self._published_skips = 0

    # ------------------------------------------------------------------ epochs
    def run(self) -> None:
        """Train until ``max_epochs``, ``max_steps`` or ``should_stop``."""
        state, t = self.state, self.trainer
        if self.resumed in ("epoch_end", "epoch_start"):
            self._restore_rng()
        if self.resumed == "epoch_end":
            with warnings.catch_warnings():
                # A fresh optimizer has not stepped yet, so torch warns that the scheduler steps first: expected
                # when replaying the end of the epoch the checkpoint was taken in.
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning)
                self._finish_epoch()
        while not (state.should_stop or self._max_steps_reached()):
            if t.max_epochs is not None and state.epoch >= t.max_epochs:
                break
            self._train_epoch()

    def _max_steps_reached(self) -> bool:
        return 0 < self.trainer.max_steps <= self.state.global_step

    def _train_epoch(self) -> None:
        t, task, state, loader = self.trainer, self.task, self.state, self.loader
        start = state.batches_done  # > 0 only when resuming in the middle of this epoch
        state.phase = "train"
        task._results = self.results
        task.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state.epoch)
        t.num_training_batches = t._count_batches(loader, t.limit_train_batches)
        t._check_equal_lengths(int(t.num_training_batches) - start if math.isfinite(t.num_training_batches) else 0)
        t.optimizers[0].zero_grad(set_to_none=True)  # nothing from an interrupted window crosses into the epoch
        task.on_train_epoch_start()
        t._call_hook("on_train_epoch_start")
        iterator = self._iter(loader)
        self.in_batches = True
        hooks = (t._hooks("on_train_batch_start"), t._hooks("on_train_batch_end"), t._hooks("on_before_optimizer_step"))
        val_every = t._val_batches_interval(val=self.val_loader is not None)
        if self.resumed == "mid_epoch" and val_every and start % val_every == 0 and start < t.num_training_batches:
            self._validate()  # due after the batch the checkpoint was taken at
        self.resumed = None
        batch_idx = start - 1
        for batch_idx, batch, is_last in self.path.batches(loader, iterator, start, t.num_training_batches,
                                                           lookahead=True):
            self.batch_idx = batch_idx
            self._train_batch(batch, batch_idx, is_last, *hooks)
            if val_every is not None and (batch_idx + 1) % val_every == 0 and not is_last:
                self._validate()
            if state.should_stop or 0 < t.max_steps <= state.global_step:
                break
        else:
            t._report_exhausted(batch_idx + 1)
        self.in_batches = False
        self.batch_idx = batch_idx + 1
        self._end_epoch()

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

    def _end_epoch(self) -> None:
        t, task, state = self.trainer, self.task, self.state
        self.results.batch = None
        t._log_skipped(self.loader, self.results, "train")
        self.nonfinite.check()
        if self.val_loader is not None and t._validate_after_epoch(state.epoch):
            self._validate()
        task._results = self.results
        task.on_train_epoch_end()
        state.phase = "epoch_end"
        self._publish_skips()
        t._epoch_end_callbacks("on_train_epoch_end", self.results)
        self._finish_epoch()

    def _finish_epoch(self) -> None:
        """What follows the epoch-end callbacks (a resume from an epoch-end checkpoint starts here)."""
        t, state = self.trainer, self.state
        state.should_stop = t._any_rank(state.should_stop)
        for config in t.lr_scheduler_configs:
            if config.interval == "epoch" and (state.epoch + 1) % config.frequency == 0:
                t._step_scheduler(config)
        if not (state.should_stop or self._max_steps_reached()):
            state.epoch += 1
            state.batches_done = 0
            state.phase = "train"

    # ------------------------------------------------------------------ one training batch
    def _train_batch(self, batch: Any, batch_idx: int, is_last: bool, batch_start: list[Any], batch_end: list[Any],
                     before_optimizer: list[Any]) -> None:
        t, task, state = self.trainer, self.task, self.state
        self.results.batch = batch
        for hook in batch_start:
            hook(t, task, batch, batch_idx)
        is_step = is_last or (batch_idx + 1) % t.accumulate_grad_batches == 0
        if is_step or not t._strategy_wraps_module:
            output = self._forward_backward(batch, batch_idx)
        else:  # inside an accumulation window: no gradient all-reduce
            with t.fabric.no_backward_sync(t._fabric_module, enabled=True):
                output = self._forward_backward(batch, batch_idx)
        state.stepped = False
        if is_step:
            self._optimizer_step(before_optimizer)
        state.batches_done = batch_idx + 1
        for hook in batch_end:
            hook(t, task, output, batch, batch_idx)
        # After the batch-end hooks, so that what callbacks log for this step is sent with it.
        if state.stepped and state.global_step % t.log_every_n_steps == 0:
            self._log_step()

    def _forward_backward(self, batch: Any, batch_idx: int) -> Any:
        t = self.trainer
        output = self.path.run(batch, batch_idx)
        loss = loss_of(output, batch_idx)
        if loss is not None and t.on_nonfinite_loss != "ignore" and self.nonfinite.skip(loss, batch_idx):
            loss = None  # on_nonfinite_loss="skip": no backward from this batch
        if loss is None and t._strategy_wraps_module and t.world_size > 1:
            # The other ranks wait for this one in the gradient all-reduce: take part with a zero gradient.
            loss = t._zero_loss(batch, batch_idx, forward_done=batch is not None)
        if loss is not None:
            if t.accumulate_grad_batches > 1:
                loss = loss / t.accumulate_grad_batches
            if t._plain:
                loss.backward()
            else:
                t._backward(loss)
        return output

    def _optimizer_step(self, before_optimizer: list[Any]) -> None:
        t, task, state = self.trainer, self.task, self.state
        optimizer = t.optimizers[0]
        task.on_before_optimizer_step(optimizer)
        for hook in before_optimizer:
            hook(t, task, optimizer)
        if t.gradient_clip_val is not None:
            t._clip_gradients()
        if t._plain:
            optimizer.step()
        else:
            t._fabric_optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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
            self.trainer._publish(values, bar)

    def _publish_skips(self) -> None:
        skipped = self.nonfinite.skipped
        if skipped != self._published_skips:
            self._published_skips = skipped
            self.results.log("train/skipped_nonfinite_steps", float(skipped), on_step=True, on_epoch=False,
                             prog_bar=False, sync_dist=True, batch_size=1, reduce_fx="max")

    def _validate(self) -> None:
        """Validation inside fit: it leaves the training RNG stream and the train/eval mode as it found them."""
        rng = ckpt_io.rng_state()
        try:
            evaluate(self.trainer, self.task, self.val_loader, "validation", self.trainer.limit_val_batches)
        finally:
            ckpt_io.set_rng_state(rng)
            self.task.train()
            self.task._results = self.results

    def loader_position(self) -> dict[str, Any] | None:
        """The training loader's position after the batches the loop has finished (for checkpoints)."""
        if self.path.lookahead_position is not None and self.in_batches:
            return self.path.lookahead_position
        state_dict = getattr(self.loader, "state_dict", None)
        return state_dict() if state_dict is not None else None


# ---------------------------------------------------------------------- evaluation
def evaluate(trainer: Trainer, task: Task, loader: Any, stage: str, limit: int | float | None) -> dict[str, float]:
    """Run ``validation_step`` or ``test_step`` over ``loader``; the epoch metrics, reduced over every rank."""
    step_name = {"validation": "validation_step", "test": "test_step"}[stage]
    if getattr(type(task), step_name) is getattr(Task, step_name):
        raise ConfigurationError(f"{type(task).__name__} has no {step_name}(batch, batch_idx) to run {stage} with")
    results = LoggedValues(training=False, trainer=trainer)
    task._results = results
    task.eval()
    n = trainer._count_batches(loader, limit)
    if stage == "validation":
        trainer.num_val_batches = n
    else:
        trainer.num_test_batches = n
    getattr(task, f"on_{stage}_epoch_start")()
    trainer._call_hook(f"on_{stage}_epoch_start")
    batch_end = trainer._hooks(f"on_{stage}_batch_end")
    # Evaluation runs no collective per step (ranks may have different numbers of batches, and DDP's forward
    # could sync): steps call the task directly; only sharded models (FSDP) go through the wrapper.
    path = BatchPath(trainer, task, step_name, through_wrapper=trainer._strategy_shards_module)
    with torch.no_grad():
        for batch_idx, batch, _ in path.batches(loader, iter(loader), 0, n, lookahead=False):
            results.batch = batch
            output = path.run(batch, batch_idx)
            for hook in batch_end:
                hook(trainer, task, output, batch, batch_idx)
    results.batch = None
    trainer._log_skipped(loader, results, stage)
    getattr(task, f"on_{stage}_epoch_end")()
    metrics = trainer._epoch_end_callbacks(f"on_{stage}_epoch_end", results)
    return {k: float(v) for k, v in metrics.items()}


def predict(trainer: Trainer, task: Task, loader: Any) -> list[Any]:
    """``predict_step`` on every batch: this rank's outputs in order (``None`` for a ``None`` batch)."""
    task.eval()
    trainer.num_predict_batches = trainer._count_batches(loader, None)
    batch_end = trainer._hooks("on_predict_batch_end")
    path = BatchPath(trainer, task, "predict_step", through_wrapper=trainer._strategy_shards_module)
    outputs = []
    with torch.no_grad():
        for batch_idx, batch, _ in path.batches(loader, iter(loader), 0, math.inf, lookahead=False):
            output = path.run(batch, batch_idx)
            for hook in batch_end:
                hook(trainer, task, output, batch, batch_idx)
            outputs.append(output)
    return outputs
