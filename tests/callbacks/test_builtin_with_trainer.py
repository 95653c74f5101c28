"""The built-in callbacks against the real Trainer (no stand-in trainer objects), through the public API only."""

from __future__ import annotations

import io

import pytest
from tests.helpers.tasks import CountEpochs, RecordingLogger, TinyTask, loader, quiet_trainer

import dltrain
from dltrain.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    ThroughputMonitor,
)

# ---------------------------------------------------------------------------------------------------- ModelCheckpoint


class SaveRecorder(dltrain.Callback):
    """Records (batch_idx, global_step) of each checkpoint written (the Trainer runs ModelCheckpoint last, so
    this reads the checkpoint being written rather than watching the callback)."""

    def __init__(self, ckpt: ModelCheckpoint) -> None:
        self.ckpt = ckpt
        self.saves: list[tuple[int, int]] = []

    def on_save_checkpoint(self, trainer, task, checkpoint):
        self.saves.append((checkpoint["loops"]["batches_done"] - 1, trainer.global_step))


def test_model_checkpoint_every_n_train_steps(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, every_n_train_steps=2, save_top_k=-1)
    recorder = SaveRecorder(ckpt)
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[ckpt, recorder])
    trainer.fit(TinyTask(), loader(n=96))  # 12 batches, 12 steps
    assert trainer.global_step == 12
    assert recorder.saves == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert files == {f"epoch=0-step={s}.ckpt" for s in (2, 4, 6, 8, 10, 12)} | {"last.ckpt"}


def test_model_checkpoint_saves_only_after_optimizer_steps_when_accumulating(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, every_n_train_steps=2, save_top_k=-1)
    recorder = SaveRecorder(ckpt)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=1,
        accumulate_grad_batches=3,
        enable_checkpointing=True,
        callbacks=[ckpt, recorder],
    )
    trainer.fit(TinyTask(), loader(n=96))  # 12 batches, 4 steps (after batches 2, 5, 8, 11)
    assert trainer.global_step == 4
    # Right after the optimizer steps 2 and 4, not on the later batches of the same step.
    assert recorder.saves == [(5, 2), (11, 4)]
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert files == {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"}


# ---------------------------------------------------------------------------------------------------- EarlyStopping


def test_early_stopping_on_validation_loss(tmp_path):
    class Worsening(TinyTask):
        def validation_step(self, batch, batch_idx):
            # Gets worse every epoch by design: 1.0, 2.0, 3.0, ...
            self.log("val/loss", float(self.trainer.current_epoch + 1))

    counter = CountEpochs()
    stop = EarlyStopping(monitor="val/loss", patience=2, mode="min")
    trainer = quiet_trainer(tmp_path, max_epochs=6, callbacks=[stop, counter])
    trainer.fit(Worsening(), loader(n=32), loader(n=16))
    # Epoch 0 sets the best (1.0); epochs 1 and 2 do not improve: stop after epoch 2.
    assert counter.epochs == [0, 1, 2]
    assert stop.stopped_epoch == 2
    assert stop.best_score == 1.0
    assert trainer.should_stop


# ---------------------------------------------------------------------------------------------------- LearningRateMonitor


def test_learning_rate_monitor_logs_the_rate_each_step_used(tmp_path):
    rec = RecordingLogger()
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, log_every_n_steps=1, logger=rec, callbacks=[LearningRateMonitor("step")]
    )
    trainer.fit(TinyTask(lr=0.05, scheduler="step"), loader(n=96))  # StepLR(step_size=3, gamma=0.5) per step
    logged = rec.values("lr-SGD")
    expected = [(s, 0.05 * 0.5 ** ((s - 1) // 3)) for s in range(1, 13)]
    assert [step for step, _ in logged] == [s for s, _ in expected]
    for (step, value), (_, want) in zip(logged, expected):
        assert value == pytest.approx(want, rel=1e-6), step  # logged values are float32


# ---------------------------------------------------------------------------------------------------- ThroughputMonitor


def test_throughput_monitor_logs_samples_per_sec_at_logging_steps(tmp_path):
    rec = RecordingLogger()
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, log_every_n_steps=2, logger=rec, callbacks=[ThroughputMonitor(window=4)]
    )
    trainer.fit(TinyTask(), loader(n=96))  # 12 steps: logging at 2, 4, ..., 12
    logged = rec.values("throughput/samples_per_sec")
    assert [step for step, _ in logged] == [2, 4, 6, 8, 10, 12]
    assert all(value > 0 for _, value in logged), logged
    epoch = rec.values("throughput/epoch_samples_per_sec")
    assert len(epoch) == 1 and epoch[0][1] > 0


# ---------------------------------------------------------------------------------------------------- ProgressBar


def test_progress_bar_writes_epoch_lines_to_its_file(tmp_path):
    out = io.StringIO()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[ProgressBar(file=out)])
    trainer.fit(TinyTask(), loader(n=96))  # 12 batches per epoch
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.startswith("Epoch 1")]
    assert lines, text
    assert "12/12" in lines[-1]
    assert any(line.startswith("Epoch 2") and "12/12" in line for line in text.splitlines()), text


def test_custom_progress_bar_replaces_the_default(tmp_path):
    class MyBar(ProgressBar):
        pass

    trainer = quiet_trainer(
        tmp_path, max_epochs=1, enable_progress_bar=True, callbacks=[MyBar(file=io.StringIO())]
    )
    bars = [cb for cb in trainer.callbacks if isinstance(cb, ProgressBar)]
    assert len(bars) == 1
    assert type(bars[0]) is MyBar
