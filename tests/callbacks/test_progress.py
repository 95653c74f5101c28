from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from tests.helpers.fake_trainer import FakeTrainer

from dltrain.callbacks import progress as pb
from dltrain.callbacks.progress import ProgressBar


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class TTY(io.StringIO):
    def isatty(self):
        return True


def _trainer(**kw):
    base = dict(
        current_epoch=0,
        max_epochs=2,
        num_training_batches=10,
        progress_bar_metrics={},
        is_global_zero=True,
        stage="fit",
        global_step=0,
    )
    base.update(kw)
    return FakeTrainer(**base)


def _train_epoch(bar, trainer, clock, n=10, dt=0.1):
    bar.on_train_epoch_start(trainer, None)
    for i in range(n):
        clock.t += dt
        trainer.progress_bar_metrics = {"train/loss": 1.0 / (i + 1)}
        bar.on_train_batch_end(trainer, None, None, None, i)
    bar.on_train_epoch_end(trainer, None)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(pb, "monotonic", c)
    return c


def test_non_tty_writes_sparse_plain_lines(clock):
    out = io.StringIO()
    bar = ProgressBar(log_interval_s=0.35, file=out)
    trainer = _trainer()
    bar.setup(trainer, None, "fit")
    _train_epoch(bar, trainer, clock)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # refreshes after batches 4 and 8 (0.35 s apart), then the epoch-end line
    assert [line.split(":")[1].split()[1] for line in lines] == ["4/10", "8/10", "10/10"]
    assert lines[0].startswith("Epoch 1/2:") and "loss=0.25" in lines[0]
    assert "it/s" in lines[-1] and "train/loss=0.1" in lines[-1]


def test_tty_bar_with_validation_and_test(clock):
    out = TTY()
    bar = ProgressBar(refresh_rate_s=0.25, file=out)
    trainer = _trainer(num_val_batches=[4], num_training_batches=float("inf"))
    bar.setup(trainer, None, "fit")
    bar.on_train_epoch_start(trainer, None)
    for i in range(5):
        clock.t += 0.1
        bar.on_train_batch_end(trainer, None, None, None, i)
    bar.on_validation_epoch_start(trainer, None)
    for i in range(4):
        clock.t += 0.1
        bar.on_validation_batch_end(trainer, None, None, None, i)
    trainer.progress_bar_metrics = {"val/acc": 0.75}
    bar.on_validation_epoch_end(trainer, None)
    bar.on_train_epoch_end(trainer, None)
    trainer.stage = "test"
    bar.on_test_epoch_start(trainer, None)
    bar.on_test_batch_end(trainer, None, None, None, 0)
    bar.on_test_epoch_end(trainer, None)
    bar.teardown(trainer, None, "test")
    text = out.getvalue()
    assert "Epoch 1/2: 5it" in text  # unknown length: a counter, no percentage
    assert "Validation: 100%" in text and "4/4" in text and "val/acc=0.75" in text
    assert "Test" in text
    assert not bar._bars


def test_only_rank_zero_of_each_launch(clock):
    out = TTY()
    bar = ProgressBar(file=out)
    trainer = _trainer(is_global_zero=False, global_rank=1)
    bar.setup(trainer, None, "fit")
    _train_epoch(bar, trainer, clock, dt=10.0)
    assert out.getvalue() == ""
    # Rank 0 of a replica group other than group 0 (dltrain.FaultTolerant): not the job's global zero, but its
    # launch's console shows the bar.
    out = TTY()
    bar = ProgressBar(file=out)
    trainer = _trainer(is_global_zero=False, global_rank=0)
    bar.setup(trainer, None, "fit")
    _train_epoch(bar, trainer, clock, dt=10.0)
    assert "Epoch 1/2" in out.getvalue()


def test_exception_closes_bars(clock):
    out = TTY()
    bar = ProgressBar(file=out)
    trainer = _trainer()
    bar.setup(trainer, None, "fit")
    bar.on_train_epoch_start(trainer, None)
    bar.on_exception(trainer, None, RuntimeError("boom"))
    assert not bar._bars


def test_predict_bar_opens_lazily(clock):
    out = io.StringIO()
    bar = ProgressBar(log_interval_s=0.0, file=out)
    trainer = _trainer(stage="predict")
    bar.setup(trainer, None, "predict")
    for i in range(3):
        clock.t += 1
        bar.on_predict_batch_end(trainer, None, None, None, i)
    bar.teardown(trainer, None, "predict")
    assert out.getvalue().splitlines()[-1].startswith("Predict: 3it")


class _CountingTrainer(SimpleNamespace):
    """A trainer whose prog_bar values count their reads (a read means a device-to-host copy in a real run)."""

    reads = 0

    @property
    def progress_bar_metrics(self):
        type(self).reads += 1
        return {"loss": 0.5}


def _calls_during(fn, *args) -> list[str]:
    """The functions ``fn(*args)`` runs (Python and C), by name, in call order: what a batch costs, counted."""
    import sys

    calls: list[str] = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)
        elif event == "c_call":
            calls.append(getattr(arg, "__qualname__", repr(arg)))

    sys.setprofile(profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return [c for c in calls if c != "setprofile"]


@pytest.mark.parametrize("tty", [True, False])
def test_per_batch_cost_between_refreshes(monkeypatch, tty):
    """Between redraws a batch runs the hook and one clock read, nothing else: no tqdm call, no metric read, no
    string formatting, no write. Counted with a fake clock, so the check is exact on any machine."""
    clock = Clock()
    monkeypatch.setattr(pb, "monotonic", clock)
    file = TTY() if tty else io.StringIO()
    bar = ProgressBar(refresh_rate_s=10, log_interval_s=10, file=file)
    trainer = _CountingTrainer(**{k: v for k, v in vars(_trainer(num_training_batches=10**6)).items()
                                  if k != "progress_bar_metrics"})
    bar.setup(trainer, None, "fit")
    bar.on_train_epoch_start(trainer, None)
    bar.on_validation_epoch_start(trainer, None)
    reads, written = _CountingTrainer.reads, file.getvalue()
    for batch in range(200):
        calls = _calls_during(bar.on_train_batch_end, trainer, None, None, None, batch)
        assert calls == ["on_train_batch_end", "__call__"], calls  # the hook and the clock
        calls = _calls_during(bar.on_validation_batch_end, trainer, None, None, None, batch, 1)
        assert calls == ["on_validation_batch_end", "__call__"], calls
    assert _CountingTrainer.reads == reads and file.getvalue() == written
    # Once the interval has passed the next batch redraws, reading the values once; the batch after does not.
    clock.t += 10
    bar.on_train_batch_end(trainer, None, None, None, 200)
    assert _CountingTrainer.reads == reads + 1 and file.getvalue() != written
    redrawn = _calls_during(bar.on_train_batch_end, trainer, None, None, None, 201)
    assert redrawn == ["on_train_batch_end", "__call__"] and _CountingTrainer.reads == reads + 1
    bar.teardown(trainer, None, "fit")


# ------------------------------------------------------------------ with the real Trainer (issue 22, issue 28 item 4)
class _SeveralVal:
    """A task with two validation loaders that logs per loader, and a prog_bar value per step."""

    @staticmethod
    def make():
        from tests.helpers.tasks import TinyTask

        class Task(TinyTask):
            def validation_step(self, batch, batch_idx, dataloader_idx=0):
                x, y = batch
                self.log("val/loss", torch.nn.functional.mse_loss(self(x), y), prog_bar=True)

        return Task()


def test_default_bar_with_several_validation_loaders_in_fit_and_validate(tmp_path):
    # Issue 22: the default bar (on, to stderr) crashed with TypeError in on_validation_batch_end: the Trainer passes
    # dataloader_idx with several loaders. Default settings otherwise too (logger, checkpointing).
    import contextlib

    from tests.helpers.tasks import loader

    import dltrain

    for file in (TTY(), io.StringIO()):  # a terminal (tqdm) and a log file (plain lines)
        bar = ProgressBar(refresh_rate_s=0.0, log_interval_s=0.0, file=file)
        trainer = dltrain.Trainer(accelerator="cpu", max_epochs=1, default_root_dir=str(tmp_path),
                                  log_every_n_steps=4, callbacks=[bar])
        task = _SeveralVal.make()
        trainer.fit(task, loader(n=32), [loader(n=24), loader(n=16)])
        results = trainer.validate(task, [loader(n=24), loader(n=16)])
        assert [sorted(r) for r in results] == [["val/loss/dataloader_idx_0"], ["val/loss/dataloader_idx_1"]]
        text = file.getvalue()
        assert "Validation" in text and "5/5" in text, text  # 3 + 2 batches of both loaders in one bar
        assert "val/loss/dataloader_idx_1=" in text, text
    # And the bar the Trainer adds by itself (stderr).
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=1, default_root_dir=str(tmp_path / "default"),
                              log_every_n_steps=4)
    assert any(isinstance(cb, ProgressBar) for cb in trainer.callbacks)
    with contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(_SeveralVal.make(), loader(n=32), [loader(n=24), loader(n=16)])
        trainer.validate(_SeveralVal.make(), [loader(n=24), loader(n=16)])


def test_lightning_constructor_arguments_and_alias(clock):
    import dltrain.callbacks as callbacks

    assert callbacks.TQDMProgressBar is ProgressBar
    out = TTY()
    bar = callbacks.TQDMProgressBar(refresh_rate=3, process_position=1, leave=False, file=out)
    assert (bar.refresh_rate, bar.process_position, bar.leave) == (3, 1, False)
    trainer = _trainer(num_training_batches=10)
    bar.setup(trainer, None, "fit")
    refreshed = []
    original = bar._refresh
    bar._refresh = lambda kind, tr: (refreshed.append(bar._n[kind]), original(kind, tr))  # type: ignore[method-assign]
    _train_epoch(bar, trainer, clock, n=10, dt=10.0)  # time alone would refresh every batch
    assert refreshed == [3, 6, 9], refreshed  # at most every refresh_rate batches, as in Lightning
    # refresh_rate=0 turns the bar off, as in Lightning.
    off = TTY()
    bar = callbacks.TQDMProgressBar(refresh_rate=0, file=off)
    bar.setup(_trainer(), None, "fit")
    _train_epoch(bar, _trainer(), clock, dt=10.0)
    assert off.getvalue() == ""


def test_bar_shows_the_latest_prog_bar_values_between_logging_steps(tmp_path, clock):
    # Issue 28: values logged with prog_bar=True reached the bar only at logging steps (every 50), so the first
    # epoch showed no loss and the next ones a stale one. Now each refresh reads the newest value.
    from tests.helpers.tasks import TinyTask, loader

    import dltrain

    class Count(TinyTask):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("seen", torch.tensor(float(self.trainer.global_step)), prog_bar=True)
            return loss

    out = TTY()
    bar = ProgressBar(refresh_rate_s=1.0, file=out)

    class Tick(dltrain.Callback):
        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            clock.t += 0.4  # a refresh every third batch or so

    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=2, default_root_dir=str(tmp_path), logger=False,
                              enable_checkpointing=False, log_every_n_steps=50, callbacks=[Tick(), bar])
    trainer.fit(Count(), loader(n=96, batch_size=8))  # 12 steps per epoch, no logging step at all
    frames = [f for f in out.getvalue().replace("\n", "\r").split("\r") if "seen=" in f]
    shown = [float(f.split("seen=")[1].split(",")[0].split("]")[0].strip()) for f in frames]
    assert len(set(shown)) >= 6, frames  # it moves
    assert shown[0] < 12 and shown[-1] == 23.0, shown  # in the first epoch already, and the last step's at the end
    assert trainer.progress_bar_metrics["seen"] == 23.0


def test_enable_disable_as_lightning():
    bar = ProgressBar(file=TTY())
    assert bar.is_enabled and not bar.is_disabled
    bar.disable()
    bar.setup(_trainer(), None, "fit")  # a disabled bar stays so through setup
    assert bar.is_disabled
    bar.on_train_epoch_start(_trainer(), None)
    bar.on_train_batch_end(_trainer(), None, None, None, 0)
    bar.teardown(_trainer(), None, "fit")
    assert bar.file.getvalue() == ""
    bar.enable()
    assert bar.is_enabled
    assert ProgressBar(refresh_rate=0).is_disabled
    other_rank = ProgressBar(file=TTY())
    other_rank.setup(_trainer(is_global_zero=False, global_rank=1), None, "fit")
    assert other_rank.is_disabled
