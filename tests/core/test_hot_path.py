"""A cheap, non-timing guard of the training step's hot path.

Between logging intervals a step must not read values back from the device (on a GPU that is a sync) and must
not call the loggers. On the CPU the Trainer reads the loss each step to check it is finite (free there); the
test switches that to the accelerator behaviour, which records a bad step on the device instead.
"""

from __future__ import annotations

import sys

import torch

import dltrain
from dltrain.loggers.base import Logger
from tests.helpers.tasks import TinyTask, loader, quiet_trainer

_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "cpu")


class CountingLogger(Logger):
    def __init__(self):
        self.steps: list[int] = []

    def log_metrics(self, metrics, step):
        self.steps.append(step)


def test_no_device_reads_and_no_logger_calls_between_logging_intervals(tmp_path, monkeypatch):
    logger = CountingLogger()
    log_every = 5
    trainer = quiet_trainer(tmp_path, max_epochs=2, log_every_n_steps=log_every, logger=logger)
    reads = _fit_counting_reads(monkeypatch, trainer)

    assert trainer.global_step == 24
    # Every read happened right after an optimizer step that is a logging step.
    assert reads, "the logging steps should read the logged values"
    assert {step % log_every for _, step, _ in reads} == {0}, reads
    # Loggers: every log_every steps only (the task logs no epoch aggregate).
    assert logger.steps == [5, 10, 15, 20]


def _fit_counting_reads(monkeypatch, trainer) -> list[tuple[str, int, bool]]:
    """Fit TinyTask as on an accelerator; (method, global step, stepped) of every tensor read inside the training
    batches."""
    reads: list[tuple[str, int, bool]] = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            # The sampler turns its CPU index permutation into a list once per epoch: not a device read.
            from_sampler = sys._getframe(1).f_code.co_filename.endswith("_resumable_loader.py")
            loop = trainer._fit_loop
            if loop is not None and loop.in_batches and not from_sampler:
                reads.append((name, trainer.global_step, trainer.loop_state.stepped))
            return original(self, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(trainer, "_place", _accelerator_like(trainer._place, trainer))
    for name in _READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    trainer.fit(TinyTask(), loader(n=96, batch_size=8))
    monkeypatch.undo()
    return reads


def _accelerator_like(setup, trainer):
    def wrapped(*args, **kwargs):
        setup(*args, **kwargs)
        trainer._engine.check_loss_on_host = False  # what the engine decides on an accelerator

    return wrapped


def test_nonfinite_loss_on_the_accelerator_path_names_the_first_bad_step(tmp_path, monkeypatch):
    import math

    import pytest

    class NanFrom(TinyTask):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * math.nan if self.trainer.global_step >= 7 else loss

    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=5)
    monkeypatch.setattr(trainer, "_place", _accelerator_like(trainer._place, trainer))
    with pytest.raises(dltrain.StepError, match="NaN or infinite at global step 7"):
        trainer.fit(NanFrom(), loader(n=96, batch_size=8))


def test_progress_bar_reads_the_device_only_when_it_redraws(tmp_path, monkeypatch):
    """Issue 28 item 4: the bar (on, in a terminal) shows the newest prog_bar values; it reads them from the device
    only when it redraws (time-based), never on the other steps."""
    import io

    from dltrain.callbacks import ProgressBar
    from dltrain.callbacks import progress as pb

    class TTY(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    monkeypatch.setattr(pb, "monotonic", lambda: now[0])

    class Tick(dltrain.Callback):
        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            now[0] += 0.4  # with refresh_rate_s=1.0: a redraw every third step

    redraws: list[int] = []

    bar = ProgressBar(refresh_rate_s=1.0, file=TTY())
    original_refresh = bar._refresh

    def recording_refresh(kind, trainer):
        redraws.append(trainer.global_step)
        original_refresh(kind, trainer)

    monkeypatch.setattr(bar, "_refresh", recording_refresh)
    log_every = 5
    trainer = dltrain.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), max_epochs=2, logger=False,
                              enable_checkpointing=False, log_every_n_steps=log_every, callbacks=[Tick(), bar])
    reads = _fit_counting_reads(monkeypatch, trainer)

    assert trainer.global_step == 24
    assert len(redraws) >= 6, redraws
    off_interval = {step for step in redraws if step % log_every}
    assert off_interval, redraws  # redraws between logging steps: the values shown there are read there
    read_steps = {step for _, step, _ in reads}
    # Every read is at a logging step or at a redraw; at a redraw between logging steps, one copy (tolist).
    assert read_steps <= {s for s in range(25) if s % log_every == 0} | set(redraws), (reads, redraws)
    for step in off_interval:
        assert [name for name, s, _ in reads if s == step] == ["tolist"], (step, reads)
    assert "train/loss=" in bar.file.getvalue()


# ------------------------------------------------------------------ Python calls per training batch (issue 25 item 5)
def _dltrain_calls_per_batch(tmp_path, monkeypatch) -> list[list[str]]:
    """The dltrain functions (``module.function``, generators counted at each resumption) each training batch runs
    between two batches of a default fit (progress bar on, CSV logger, checkpointing, preemption), counted with
    ``sys.setprofile``. The bar's clock is frozen so that it redraws only once, at the start."""
    import io
    from pathlib import Path

    from dltrain.callbacks import progress as pb

    monkeypatch.setattr(pb, "monotonic", lambda: 0.0)
    src = str(Path(dltrain.__file__).parent)
    marks: list[int] = []
    events: list[tuple[int, str]] = []

    class Mark(dltrain.Callback):
        def on_train_batch_start(self, trainer, task, batch, batch_idx):
            marks.append(batch_idx)

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(src):
            module = Path(frame.f_code.co_filename).relative_to(src).with_suffix("").as_posix().replace("/", ".")
            events.append((len(marks), f"{module}.{frame.f_code.co_name}"))

    trainer = dltrain.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), max_epochs=1, log_every_n_steps=1000,
                              callbacks=[pb.ProgressBar(file=io.StringIO()), Mark()])
    torch.manual_seed(0)
    task, data = TinyTask(lr=0.01), loader(n=8 * 40, batch_size=8)  # a loss that stays finite over 40 steps
    sys.setprofile(profile)
    try:
        trainer.fit(task, data)
    finally:
        sys.setprofile(None)
    assert trainer.global_step == 40
    # From one batch's on_train_batch_start to the next one's: its step, backward, optimizer step, batch-end hooks,
    # then fetching the next batch. 30 batches from the middle of the 40-batch epoch.
    return [[name for mark, name in events if mark == i] for i in range(6, 36)]


# What one training batch of a default fit runs in dltrain's own code, in order. A new entry here costs every step of
# every run: add one only when the feature needs it per batch (see BENCHMARKS.md case 1 and
# scripts/calls_per_step.py).
_PER_BATCH = [
    "loop._forward_backward",
    "task.log",  # the task's self.log("train/loss", ...)
    "_logged_values.log",
    "_step_output.loss_of",
    "_step_output.skip",  # the non-finite loss check (one .item() on the CPU)
    "_engine.backward",
    "loop._optimizer_step",
    "callbacks.progress.on_train_batch_end",
    "callbacks.preemption.on_train_batch_end",
    "callbacks.checkpoint.on_train_batch_end",
    "batch_path.batches",  # the next batch
    "_resumable_loader._count",
    "loop._train_batch",  # the next batch's (its on_train_batch_start starts the next count)
]


def test_python_calls_per_training_batch_are_pinned(tmp_path, monkeypatch):
    """Issue 25 item 5: a batch of a default fit calls the loop, the task's log, the loss checks, backward, the
    optimizer step and the three default callbacks' batch-end hooks, nothing else of dltrain's: no trainer property
    read, no value check call for a scalar tensor, no batch_path.run wrapper. Counted, so exact on any machine."""
    per_batch = _dltrain_calls_per_batch(tmp_path, monkeypatch)
    for calls in per_batch:
        assert calls == _PER_BATCH, "\n".join(calls)

