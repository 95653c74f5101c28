"""What a run has done so far: `LoopState` and `RunState`.

`LoopState` is where fit is (what a checkpoint saves of the loop); `RunState` the stage, its data counts and
loaders, and the metrics published so far: what the trainer view shows.

The loops write these; the Trainer's view reads them; callbacks read them through the view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from dltrain._hooks import HookDispatcher
    from dltrain._logged_values import LoggedValues
    from dltrain.loggers.base import Logger

__all__ = ["LoopState", "RunState", "log_skipped_samples"]


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

    Example:
        >>> trainer = dltrain.Trainer(max_epochs=2, log_every_n_steps=2, enable_progress_bar=False,
        ...                           enable_model_summary=False)
        >>> trainer.fit(task, train_loader, val_loader)
        >>> trainer.loop_state  # 2 epochs of 4 batches done: the next epoch would be 2
        LoopState(epoch=2, global_step=8, batches_done=0, phase='train', should_stop=False, stepped=True,
                  skipped_nonfinite_steps=0, uncommitted_steps=0, total_batches=8)
        >>> from dltrain.checkpoint import load
        >>> load(trainer.checkpoint_callback.last_model_path)["loops"]  # taken at the end of epoch 1
        {'epoch': 1, 'global_step': 8, 'batches_done': 4, 'phase': 'epoch_end', 'should_stop': False,
         'stepped': True, 'skipped_nonfinite_steps': 0, 'uncommitted_steps': 0, 'total_batches': 8}
    """

    epoch: int = 0
    global_step: int = 0  # optimizer steps taken
    batches_done: int = 0  # training batches of `epoch` finished
    phase: str = "train"  # "train" or "epoch_end" (see above)
    should_stop: bool = False
    stepped: bool = False  # whether the last training batch ended with an optimizer step
    skipped_nonfinite_steps: int = 0  # steps skipped with on_nonfinite_loss="skip", over the whole fit
    # Replica groups (dltrain.FaultTolerant): steps the quorum did not commit (a group failed during them); their
    # batches were not trained (``stepped`` is False after such a batch).
    uncommitted_steps: int = 0
    # Training batches finished over the whole fit: with check_val_every_n_epoch=None, an int val_check_interval
    # counts these (Lightning's total_batch_idx + 1).
    total_batches: int = 0

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


class RunState:
    """The running stage as the trainer view shows it, and the metrics published to callbacks and loggers."""

    def __init__(self, loggers: list[Logger], is_global_zero: bool) -> None:
        self.loop_state = LoopState()
        self.stage: str | None = None
        self.datamodule: Any = None
        self.sanity_checking = False  # True while the sanity check (num_sanity_val_steps batches) runs
        self.is_last_batch = False  # whether the training batch being run is its epoch's last
        # Set when fit's training ends inside an epoch (max_steps, should_stop): as in Lightning, that epoch then
        # counts in current_epoch (LoopState.epoch stays where a resume continues from).
        self.stopped_in_epoch = False
        self.num_training_batches: float = float("inf")
        self.num_val_batches: list[float] = []  # one count per loader, as in Lightning
        self.num_test_batches: list[float] = []
        self.num_predict_batches: list[float] = []
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None  # None: this fit runs no validation (else one loader or a list)
        self.test_dataloaders: Any = None
        self.predict_dataloaders: Any = None
        self.loggers = loggers
        self.is_global_zero = is_global_zero
        self.training_values: LoggedValues | None = None  # the fit's store, read on demand between logging steps
        self.published: dict[str, Tensor] = {}  # callback_metrics as published (epoch ends, logging steps)
        self.published_bar: dict[str, float] = {}
        self.logged_metrics: dict[str, float] = {}
        self.oom_expected = False  # set by dltrain.tuner while a batch-size trial runs: out-of-memory errors expected

    def callback_metrics(self) -> dict[str, Tensor]:
        """Published values and the latest step values logged since (read on demand: logging stays free)."""
        live = self.training_values
        if live is None or self.sanity_checking:
            return dict(self.published)
        return {**self.published, **live.latest()}

    def logged_metrics_now(self) -> dict[str, float]:
        """What the loggers got in this stage, and the newest step values logged since (``trainer.logged_metrics``).

        As Lightning's: reading keeps those step values, so after the fit they are the last step's.
        """
        live = self.training_values
        if live is not None and not self.sanity_checking:
            self.logged_metrics.update(_as_floats(live.latest(for_loggers=True)))
        return self.logged_metrics

    def reset_metrics(self) -> None:
        """A stage starts: ``callback_metrics``, ``logged_metrics`` and the progress bar's start empty (Lightning)."""
        self.published = {}
        self.published_bar = {}
        self.logged_metrics = {}

    def progress_bar_metrics(self) -> dict[str, float]:
        """The ``prog_bar`` values as numbers: as published, and the newest step values logged since.

        Reading them copies from the device once.
        """
        values = dict(self.published_bar)
        live = self.training_values
        if live is not None and not self.sanity_checking:
            values.update(_as_floats(live.latest(prog_bar=True)))
        return values

    def publish(self, values: dict[str, Tensor], bar: dict[str, Tensor], results: LoggedValues) -> None:
        """Publish metrics read from a store: into ``callback_metrics`` and the progress bar, and to the loggers.

        The loggers get them on global rank zero. Nothing leaves the sanity check.
        """
        if self.sanity_checking:
            return
        floats = {k: float(v) for k, v in values.items()}
        self.published.update(values)
        self.published.update(results.under_own_names(values))  # callbacks only, as in Lightning
        for_loggers = {k: v for k, v in floats.items() if k not in results.not_for_loggers}
        self.logged_metrics.update(for_loggers)  # logger=False values are not "logged" (Lightning)
        self.published_bar.update({k: floats[k] for k in bar})
        if for_loggers and self.is_global_zero:
            metrics = {**for_loggers, "epoch": float(self.loop_state.epoch)}
            for lg in self.loggers:
                lg.log_metrics(metrics, self.loop_state.global_step)

    def end_epoch(self, results: LoggedValues, hooks: HookDispatcher, hook: str) -> dict[str, Tensor]:
        """Reduce the epoch's values, run the callbacks' epoch-end ``hook``, then send everything to the loggers.

        Callbacks see the epoch aggregates (in ``callback_metrics``) and what they log in the hook is reported with
        the same epoch, as in Lightning.
        """
        metrics, bar = results.read_epoch()
        if not self.sanity_checking:
            self.published.update(metrics)
            self.published.update(results.under_own_names(metrics))
        with results.epoch_values():  # what the callbacks' epoch-end hooks log are epoch values
            hooks.call_callbacks(hook, checkpoints=False)
        more, more_bar = results.read_epoch()
        metrics.update(more)
        bar.update(more_bar)
        # Sent before the checkpoint callbacks run: an epoch-end checkpoint finds the epoch's values in the
        # loggers' files (a resume from it continues after them).
        self.publish(metrics, bar, results)
        hooks.call_callbacks(hook, checkpoints=True)
        return metrics


def log_skipped_samples(loader: Any, results: LoggedValues, stage: str) -> None:
    """Bad samples a loader skipped (``on_error="skip"``) this epoch, summed over ranks, as a metric."""
    report = getattr(loader, "epoch_report", None)
    skipped = report()["skipped"] if report is not None else 0
    if skipped:
        results.log(f"data/{stage}_skipped_samples", float(skipped), on_step=False, on_epoch=True,
                    prog_bar=False, sync_dist=False, batch_size=1, reduce_fx="sum")


def _as_floats(values: dict[str, Tensor]) -> dict[str, float]:
    """Tensors to numbers with one device-to-host copy per device (not one per value)."""
    by_device: dict[torch.device, list[str]] = {}
    for key, value in values.items():
        by_device.setdefault(value.device, []).append(key)
    floats: dict[str, float] = {}
    for keys in by_device.values():
        numbers = torch.stack([values[k].float().reshape(()) for k in keys]).tolist()
        floats.update(zip(keys, numbers))
    return floats
