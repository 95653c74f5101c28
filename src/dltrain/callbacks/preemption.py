"""`Preemption`: on SIGTERM, SIGUSR1 or Ctrl-C, finish the step, checkpoint on every rank, flush, and exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from dltrain.callbacks.base import Callback
from dltrain.errors import ConfigurationError

if TYPE_CHECKING:
    from dltrain.callbacks.base import TrainerView
    from dltrain.task import Task

__all__ = ["Preempted", "Preemption"]


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; the process exits with ``128 + signal number``.

    That is 143 for SIGTERM, 138 for SIGUSR1, 130 for SIGINT, as a process killed by that signal would report.
    """

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint


class Preemption(Callback):
    """Turn a stop request from the cluster or the keyboard into a checkpoint instead of lost work.

    Schedulers stop jobs with a signal before killing them (Kubernetes: SIGTERM, then SIGKILL after the grace
    period; Slurm: SIGUSR1 or SIGTERM with ``--signal``; torchrun forwards SIGTERM to every worker). On the first
    such signal every rank finishes its current batch; at the next optimizer-step boundary that all ranks agree on,
    the checkpoint callback writes a checkpoint (atomically, as always, and updates ``last``), the loggers are
    flushed, and the process exits with ``128 + signal`` (`Preempted`). ``fit(ckpt_path="last")`` resumes it
    bitwise. A second Ctrl-C aborts at once. With ``requeue=True`` inside a Slurm job, global rank zero runs
    ``scontrol requeue $SLURM_JOB_ID`` after the checkpoint, as Lightning's SLURM plugin does.

    Added by default when checkpointing is on. Under several processes the ranks agree with one all-reduce every
    ``check_every_n_steps`` optimizer steps (one process: every step, at no cost).

    Args:
        signals: signal names to handle (default SIGTERM, SIGUSR1 and SIGINT).
        requeue: requeue the Slurm job after the checkpoint.
        check_every_n_steps: how often ranks agree on a stop when distributed.

    Example:
        A callback stands for the scheduler here: it sends SIGTERM before the third batch. The fit ends with a
        checkpoint at step 3, and the next fit resumes from it:

        >>> import os, signal
        >>> class Scheduler(dltrain.Callback):
        ...     def on_train_batch_start(self, trainer, task, batch, batch_idx):
        ...         if trainer.global_step == 2:
        ...             os.kill(os.getpid(), signal.SIGTERM)
        >>> trainer = dltrain.Trainer(max_epochs=3, callbacks=[Scheduler()], log_every_n_steps=1,
        ...                           enable_progress_bar=False, enable_model_summary=False)
        >>> [type(c).__name__ for c in trainer.callbacks]  # added by default
        ['Scheduler', 'Preemption', 'ModelCheckpoint']
        >>> trainer.fit(task, train_loader, val_loader)
        Traceback (most recent call last):
        ...
        dltrain.callbacks.preemption.Preempted: 143
        >>> trainer.global_step
        3
        >>> trainer = dltrain.Trainer(max_epochs=3, log_every_n_steps=1, enable_progress_bar=False,
        ...                           enable_model_summary=False)
        >>> trainer.fit(task, train_loader, val_loader, ckpt_path="last")
        >>> trainer.global_step  # 3 epochs of 4 batches
        12

        In a Slurm job, ``Trainer(callbacks=[Preemption(requeue=True)])`` also requeues the job.
    """

    def __init__(self, signals: Sequence[str] = ("SIGTERM", "SIGUSR1", "SIGINT"), requeue: bool = False,
                 check_every_n_steps: int = 10) -> None:
        unknown = [s for s in signals if not hasattr(signal, s)]
        if unknown:
            raise ConfigurationError(f"Preemption(signals=...): {unknown} are not signals on this platform")
        if check_every_n_steps < 1:
            raise ConfigurationError(f"Preemption(check_every_n_steps={check_every_n_steps}): use 1 or more")
        self.signals = tuple(signals)
        self.requeue = requeue
        self.check_every_n_steps = check_every_n_steps
        self.received: int | None = None  # the first signal received, until it is acted on
        self._previous: dict[int, Any] = {}
        self._distributed = False

    # ------------------------------------------------------------------ handlers
    @override
    def setup(self, trainer: TrainerView, task: Task, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        self.received = None
        self._distributed = trainer.world_size > 1
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handle)

    @override
    def teardown(self, trainer: TrainerView, task: Task, stage: str) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt("second Ctrl-C: stopping without a checkpoint")
        if self.received is None:
            self.received = signum
            sys.stderr.write(f"[dltrain] {signal.Signals(signum).name} received: checkpointing after this step "
                             "(Ctrl-C again to abort without a checkpoint)\n")

    # ------------------------------------------------------------------ acting on it
    @override
    def on_train_batch_end(self, trainer: TrainerView, task: Task, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Per step, one process: two attribute reads. Only at an optimizer-step boundary: a checkpoint inside an
        # accumulation window is not exact.
        if not (self._distributed or self.received) or not trainer.loop_state.stepped:
            return
        if self._distributed:
            if trainer.global_step % self.check_every_n_steps:
                return
            # Every rank reaches this step; they agree on the signal of the lowest rank that got one.
            agreed = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
            signum = self._agree_on_signal(trainer) if agreed else None
        else:
            signum = self.received
        if signum is None:
            return
        path = self._checkpoint(trainer)
        if self.requeue and trainer.is_global_zero and "SLURM_JOB_ID" in os.environ:
            self._requeue(os.environ["SLURM_JOB_ID"])
        if trainer.is_global_zero:
            sys.stderr.write(f"[dltrain] stopped by {signal.Signals(signum).name} at global step {trainer.global_step}"
                             f"; checkpoint: {path}. Resume with fit(..., ckpt_path='last')\n")
        raise Preempted(signum, path)

    def _agree_on_signal(self, trainer: TrainerView) -> int:
        from dltrain.distributed import gather_ints

        return next(v for v in gather_ints(self.received or 0, trainer.device) if v)

    @staticmethod
    def _checkpoint(trainer: TrainerView) -> str | None:
        cb = trainer.checkpoint_callback
        if cb is None:
            path = os.path.join(trainer.default_root_dir, f"preempted-step={trainer.global_step}.ckpt")
            trainer.save_checkpoint(path)
            return path
        cb.save(trainer)
        return cb.last_model_path or cb.best_model_path or None

    @staticmethod
    def _requeue(job_id: str) -> None:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.stderr.write(f"[dltrain] scontrol requeue {job_id} failed: {result.stderr.strip()}\n")
        else:
            sys.stderr.write(f"[dltrain] requeued Slurm job {job_id}\n")
