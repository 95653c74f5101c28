"""`BatchPath`: the one way a batch goes from a loader to a step, for fit, validate, test and predict.

Fetch (looking one batch ahead when the loader has no length, so that the last batch is known), move to the
device, the transfer hooks, then the step, which goes through the strategy's wrapper or the precision context as
the strategy needs. A ``None`` batch (a loader that skipped every sample of it) reaches no step, in any stage.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from types import GeneratorType
from typing import TYPE_CHECKING, Any

from dltrain._batch import describe_batch
from dltrain._step_output import add_note, raise_if_unused_parameters
from dltrain.task import Task

if TYPE_CHECKING:
    from dltrain._engine import Engine
    from dltrain._hooks import HookDispatcher
    from dltrain._run_state import LoopState

__all__ = ["BatchPath"]

_END = object()


class BatchPath:
    """Loader → device → transfer hooks → step, for one stage and loader (see the module docstring)."""

    def __init__(self, engine: Engine, hooks: HookDispatcher, progress: LoopState, task: Task, step_name: str,
                 through_wrapper: bool, dataloader_idx: int | None = None, datamodule: Any = None) -> None:
        self.engine = engine
        self.progress = progress  # epoch and step, for error notes
        self.task = task
        self.step_name = step_name
        self.dataloader_idx = dataloader_idx  # passed to the step only with several loaders (as in Lightning)
        self.move = engine.device.type != "cpu"
        # The datamodule's transfer hooks when it overrides them, else the task's (Lightning's rule).
        self.before_transfer = hooks.data_hook("on_before_batch_transfer", datamodule)
        self.transfer = hooks.data_hook("transfer_batch_to_device", datamodule)
        self.after_transfer = hooks.data_hook("on_after_batch_transfer", datamodule)
        self.needs_preparing = self.move or any((self.before_transfer, self.transfer, self.after_transfer))
        self.step = engine.step_method(task, step_name, through_wrapper, dataloader_idx)
        self.lookahead_position: dict[str, Any] | None = None  # the loader's position before the look-ahead

    def batches(self, loader: Any, iterator: Iterator[Any], start: int, limit: float,
                lookahead: bool) -> Generator[tuple[int, Any, bool], None, None]:
        """``(batch_idx, batch, is_last)`` for the batches from ``start`` up to ``limit``, ready for the step.

        Closing this generator (the loop does, however the epoch ends) closes `iterator` too when it is a generator
        made for this epoch, so that a loader stops workers it will not reuse now, not when garbage collection
        finds them (``dltrain._resumable_loader.release_workers``).
        """
        prepare = self.prepare
        try:
            if math.isfinite(limit) or not lookahead:
                last = int(limit) - 1 if math.isfinite(limit) else -1
                needs_preparing = self.needs_preparing  # else a batch is used as it comes
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
        finally:
            # Only an iterator made for this epoch: a generator given as the loader itself goes on next epoch.
            if isinstance(iterator, GeneratorType) and iterator is not loader:
                iterator.close()

    def prepare(self, batch: Any) -> Any:
        """``on_before_batch_transfer`` → ``transfer_batch_to_device`` (or Fabric's move) → ``on_after_batch_transfer``."""
        if batch is None:
            return None
        idx = self.dataloader_idx or 0
        if self.before_transfer is not None:
            batch = self.before_transfer(batch, idx)
        if self.transfer is not None:
            batch = self.transfer(batch, self.engine.device, idx)
        elif self.move:
            batch = self.engine.fabric.to_device(batch)
        if self.after_transfer is not None:
            batch = self.after_transfer(batch, idx)
        return batch

    def run(self, batch: Any, batch_idx: int) -> Any:
        """The step's output; ``None`` for a ``None`` batch. An error keeps its type and gains a note saying where."""
        if batch is None:
            return None
        try:
            return self.step(batch, batch_idx)
        except Exception as err:
            self.failed(err, batch, batch_idx)
            raise

    def failed(self, err: Exception, batch: Any, batch_idx: int) -> None:
        """Say where the step raised ``err`` (the caller re-raises it), as `run` does.

        DDP's unused-parameter error is said plainly, any other error gains a note naming the batch, epoch, step and
        rank. The training loop calls ``step`` itself, and this on an error (one call less per batch).
        """
        raise_if_unused_parameters(err)
        progress = self.progress
        add_note(
            err,
            f"[dltrain] {self.step_name} failed on batch {batch_idx} (epoch {progress.epoch}, global step "
            f"{progress.global_step}, rank {self.engine.global_rank}); the batch was {describe_batch(batch)}",
        )
