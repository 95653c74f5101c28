"""Lightning's callbacks and profilers that dltrain adds (issue 22 item 2), each run in a real fit with the user's
defaults (progress bar on, CSV logger, checkpointing)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from tests.helpers.tasks import RecordingLogger, TinyTask, loader

import dltrain
from dltrain.callbacks import (
    BasePredictionWriter,
    DeviceStatsMonitor,
    GradientAccumulationScheduler,
    LambdaCallback,
    ModelPruning,
    OnExceptionCheckpoint,
    RichModelSummary,
    RichProgressBar,
    SpikeDetection,
    TrainingSpikeException,
)
from dltrain.errors import ConfigurationError
from dltrain.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler, XLAProfiler


def trainer_for(tmp_path, **kwargs) -> dltrain.Trainer:
    kwargs.setdefault("max_epochs", 1)
    return dltrain.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), log_every_n_steps=1, **kwargs)


def test_lambda_callback_calls_the_functions_given(tmp_path):
    calls: list[str] = []
    cb = LambdaCallback(on_train_epoch_end=lambda t, m: calls.append(f"epoch_end {t.current_epoch}"),
                        on_train_batch_end=lambda t, m, out, batch, i: calls.append(f"batch {i}"),
                        on_before_fit=lambda t, m, train, val, dm: calls.append("before_fit"))
    trainer_for(tmp_path, max_epochs=2, limit_train_batches=2).fit(TinyTask(), loader(32))
    assert calls == []  # not given to that trainer
    trainer_for(tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[cb]).fit(TinyTask(), loader(32))
    assert calls == ["before_fit", "batch 0", "batch 1", "epoch_end 0", "batch 0", "batch 1", "epoch_end 1"]
    with pytest.raises(ConfigurationError, match="not callback hooks"):
        LambdaCallback(on_train_batch_ending=print)


def test_gradient_accumulation_scheduler_changes_batches_per_step(tmp_path):
    steps: list[int] = []
    cb = GradientAccumulationScheduler({1: 2, 2: 4})
    probe = LambdaCallback(on_train_epoch_end=lambda t, m: steps.append(t.global_step))
    trainer = trainer_for(tmp_path, max_epochs=3, callbacks=[cb, probe])
    trainer.fit(TinyTask(), loader(64))  # 8 batches per epoch
    assert steps == [8, 8 + 4, 8 + 4 + 2]
    assert cb.get_accumulate_grad_batches(5) == 4
    with pytest.raises(ConfigurationError, match="keep one"):
        trainer_for(tmp_path, callbacks=[GradientAccumulationScheduler({1: 2})], accumulate_grad_batches=2).fit(
            TinyTask(), loader(16))


class Writer(BasePredictionWriter):
    def __init__(self, interval):
        super().__init__(interval)
        self.batches: list[tuple[int, list[int] | None, tuple[int, ...]]] = []
        self.epoch: tuple[list, list] | None = None

    def write_on_batch_end(self, trainer, task, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.batches.append((batch_idx, batch_indices, tuple(prediction.shape)))

    def write_on_epoch_end(self, trainer, task, predictions, batch_indices):
        self.epoch = (predictions, batch_indices)


class Predicts(TinyTask):
    def predict_step(self, batch, batch_idx):
        return self(batch[0])


def test_prediction_writer_per_batch_and_per_run(tmp_path):
    writer = Writer("batch_and_epoch")
    trainer = trainer_for(tmp_path, callbacks=[writer])
    out = trainer.predict(Predicts(), loader(20, batch_size=8), return_predictions=False)
    assert out is None
    assert writer.batches == [(0, list(range(8)), (8, 1)), (1, list(range(8, 16)), (8, 1)), (2, [16, 17, 18, 19], (4, 1))]
    predictions, indices = writer.epoch
    assert len(predictions) == 3 and indices == [[list(range(8)), list(range(8, 16)), [16, 17, 18, 19]]]
    with pytest.raises(ConfigurationError, match="write_interval"):
        Writer("step")


class FailsAt(TinyTask):
    def __init__(self, at=None):
        super().__init__()
        self.at = at

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.at:
            raise RuntimeError("failed on purpose")
        return super().training_step(batch, batch_idx)


def test_on_exception_checkpoint_saves_what_resumes(tmp_path):
    cb = OnExceptionCheckpoint(dirpath=tmp_path / "ex")
    with pytest.raises(RuntimeError, match="on purpose"):
        trainer_for(tmp_path, callbacks=[cb]).fit(FailsAt(at=3), loader(64))
    from dltrain import checkpoint as ckpt_io

    assert ckpt_io.load(cb.ckpt_path)["loops"]["global_step"] == 3
    resumed = trainer_for(tmp_path, callbacks=[OnExceptionCheckpoint(dirpath=tmp_path / "ex")])
    resumed.fit(FailsAt(), loader(64), ckpt_path=cb.ckpt_path)
    assert resumed.global_step == 7  # it goes on with the batch after the one that raised
    assert not (tmp_path / "ex" / "on_exception.ckpt").exists()  # a run that ended normally removes it
    with pytest.raises(ConfigurationError, match="empty"):
        OnExceptionCheckpoint(tmp_path, filename="")


def test_device_stats_monitor_logs_cpu_stats(tmp_path):
    logger = RecordingLogger()
    trainer = trainer_for(tmp_path, callbacks=[DeviceStatsMonitor()], logger=logger, limit_train_batches=3)
    trainer.fit(TinyTask(), loader(32))
    keys = {k for _, m in logger.records for k in m}
    assert "DeviceStatsMonitor.on_train_batch_start/cpu_percent" in keys
    assert "DeviceStatsMonitor.on_train_batch_end/cpu_vm_percent" in keys
    with pytest.raises(ConfigurationError, match="loggers"):
        trainer_for(tmp_path, callbacks=[DeviceStatsMonitor()], logger=False).fit(TinyTask(), loader(16))


class Spiky(TinyTask):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1000 if batch_idx == 6 else loss


def test_spike_detection_stops_at_the_spike_and_writes_the_batches(tmp_path):
    cb = SpikeDetection(window=4, warmup=2)
    with pytest.raises(TrainingSpikeException, match="batch 6"):
        trainer_for(tmp_path, callbacks=[cb], enable_checkpointing=False).fit(Spiky(), loader(96))
    assert json.loads((tmp_path / "skip_batches.json").read_text()) == [5, 6]
    cb2 = SpikeDetection(window=4, warmup=2)  # no spike without one
    trainer_for(tmp_path / "b", callbacks=[cb2], enable_checkpointing=False).fit(TinyTask(), loader(96))


def test_model_pruning_prunes_and_checkpoints_load(tmp_path):
    cb = ModelPruning("l1_unstructured", amount=0.5, use_lottery_ticket_hypothesis=False)
    trainer = trainer_for(tmp_path, callbacks=[cb], max_epochs=2)
    task = TinyTask()
    trainer.fit(task, loader(32))
    weights = [task.model[0].weight, task.model[3].weight]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights) + task.model[0].bias.numel() + task.model[3].bias.numel()
    assert zeros >= total * 0.5 * 0.7  # global pruning over weights and biases: at least most of half are weights
    assert not hasattr(task.model[0], "weight_orig")  # made permanent at the end
    loaded = TinyTask.load_from_checkpoint(trainer.checkpoint_callback.last_model_path)
    torch.testing.assert_close(loaded.model[0].weight, task.model[0].weight)


def test_rich_progress_bar_and_summary(tmp_path):
    console = io.StringIO()
    bar = RichProgressBar(console_kwargs={"file": console, "force_terminal": True, "width": 120}, leave=True)
    summary = RichModelSummary(max_depth=2)
    trainer = trainer_for(tmp_path, callbacks=[bar, summary], limit_train_batches=3, max_epochs=2)
    trainer.fit(TinyTask(), loader(32), loader(16))
    assert trainer.progress_bar_callback is bar  # no tqdm bar added next to it
    assert "Epoch 1" in console.getvalue() and "train/loss" in console.getvalue()
    trainer.test(TinyTask(), loader(16), verbose=False)


def test_rich_callbacks_without_rich_name_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rich" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"dltrain\[rich\]"):
        RichProgressBar()
    with pytest.raises(ConfigurationError, match=r"dltrain\[rich\]"):
        RichModelSummary()


def test_profilers_write_their_reports(tmp_path):
    simple = SimpleProfiler(dirpath=tmp_path / "p", filename="simple")
    trainer_for(tmp_path, profiler=simple, limit_train_batches=2).fit(TinyTask(), loader(32))
    assert "run_training_batch" in (tmp_path / "p" / "fit-simple.txt").read_text()
    advanced = AdvancedProfiler(dirpath=tmp_path / "a", filename="adv")
    trainer = trainer_for(tmp_path, profiler=advanced, limit_train_batches=2)
    trainer.fit(TinyTask(), loader(32))
    assert trainer.profiler is advanced
    report = (tmp_path / "a" / "fit-adv.txt").read_text()
    assert "Profile stats for: run_training_batch" in report and "function calls" in report
    torch_profiler = PyTorchProfiler(dirpath=tmp_path / "t", filename="torch", record_module_names=True)
    trainer_for(tmp_path, profiler=torch_profiler, limit_train_batches=2).fit(TinyTask(), loader(32))
    assert (tmp_path / "t" / "fit-torch-rank0.pt.trace.json").exists()
    assert "Linear: model.0" in (tmp_path / "t" / "fit-torch-rank0.pt.trace.json").read_text()
    assert "Name" in (tmp_path / "t" / "fit-torch.txt").read_text()
    assert isinstance(trainer_for(tmp_path, profiler="advanced").profiler, AdvancedProfiler)
    with pytest.raises(ConfigurationError, match="TPU"):
        XLAProfiler()
    with pytest.raises(ConfigurationError, match="TPU"):
        trainer_for(tmp_path, profiler="xla")


def test_timer_interval_epoch_and_throughput_length_fn(tmp_path):
    from dltrain.callbacks import ThroughputMonitor, Timer

    timer = Timer({"seconds": 0}, interval="epoch", verbose=False)
    trainer = trainer_for(tmp_path, callbacks=[timer], max_epochs=3)
    trainer.fit(TinyTask(), loader(32))
    assert trainer.current_epoch == 1 and trainer.global_step == 4  # the whole first epoch, then stopped (counted)
    monitor = ThroughputMonitor(window=2, length_fn=lambda batch: 3 * len(batch[0]))
    logger = RecordingLogger()
    trainer_for(tmp_path, callbacks=[monitor], logger=logger).fit(TinyTask(), loader(64))
    rates = dict(logger.values("throughput/tokens_per_sec")), dict(logger.values("throughput/samples_per_sec"))
    step = sorted(rates[0])[-1]
    assert rates[0][step] == pytest.approx(3 * rates[1][step])


def test_callback_base_checkpoint_orders_last():
    from dltrain.callbacks import Checkpoint, ModelCheckpoint

    assert issubclass(ModelCheckpoint, Checkpoint) and issubclass(OnExceptionCheckpoint, Checkpoint)
    trainer = dltrain.Trainer(accelerator="cpu", callbacks=[OnExceptionCheckpoint("x"), LambdaCallback()],
                              enable_progress_bar=False, logger=False)
    assert isinstance(trainer.callbacks[-1], Checkpoint) and isinstance(trainer.callbacks[-2], Checkpoint)


def test_generate_state_key_names_the_class_and_its_arguments():
    """Lightning's docs have a callback used twice return ``self._generate_state_key(...)`` as its state_key (it
    was an AttributeError when the first checkpoint was written)."""

    class Counter(dltrain.Callback):
        def __init__(self, what: str) -> None:
            self.what = what

        @property
        def state_key(self) -> str:
            return self._generate_state_key(what=self.what)

    assert Counter("a").state_key == Counter.__qualname__ + "{'what': 'a'}" != Counter("b").state_key


def test_timer_times_each_stage_as_lightning(tmp_path):
    """Lightning's ``Timer.time_elapsed(stage)`` / ``start_time`` / ``end_time`` / ``time_remaining`` take a stage
    (``"train"``, ``"validate"``, ``"test"``); ``time_elapsed("train")`` was a TypeError (a probe under both)."""
    from dltrain.callbacks import Timer
    from dltrain.states import RunningStage

    timer = Timer(duration={"minutes": 5}, verbose=False)
    assert timer.time_elapsed() == 0.0 and timer.start_time("train") is None and timer.end_time() is None
    trainer = trainer_for(tmp_path, callbacks=[timer], max_epochs=1)
    task = TinyTask()
    trainer.fit(task, loader(32), loader(16))
    train = timer.time_elapsed("train")
    assert 0 < train == timer.time_elapsed(RunningStage.TRAINING) == timer.time_elapsed()
    assert timer.end_time("train") >= timer.start_time("train") and timer.end_time("train") is not None
    assert 0 < timer.time_elapsed("validate") <= train  # the validation inside fit
    assert timer.start_time("test") is None and timer.time_elapsed("test") == 0.0
    assert timer.time_remaining("train") == pytest.approx(300 - train)
    trainer.test(task, loader(16))
    assert timer.time_elapsed("test") > 0 and timer.time_elapsed("train") == train  # train stays as it ended
    assert Timer().time_remaining() is None  # no duration: nothing remains to count
    with pytest.raises(ValueError, match="stage"):
        timer.time_elapsed("training")


def test_lr_monitor_without_a_logger_is_an_error_as_in_lightning(tmp_path):
    """Lightning raises when LearningRateMonitor has no logger to write to; dltrain logged into nothing."""
    from dltrain.callbacks import LearningRateMonitor

    trainer = trainer_for(tmp_path, callbacks=[LearningRateMonitor()], logger=False)
    with pytest.raises(ConfigurationError, match=r"LearningRateMonitor.*no logger.*logger="):
        trainer.fit(TinyTask(), loader(32))
