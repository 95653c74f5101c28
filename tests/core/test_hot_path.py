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
