"""Trainer options that are cheap to check in one process."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

import dltrain
from tests.helpers.tasks import TinyTask, loader, quiet_trainer


def test_sync_batchnorm_on_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(dltrain.ConfigurationError, match="sync_batchnorm=True needs CUDA"):
        quiet_trainer(tmp_path, sync_batchnorm=True)


def test_collective_timeout_through_a_fabric_strategy(tmp_path):
    from lightning.fabric.strategies import DDPStrategy

    trainer = quiet_trainer(tmp_path, devices=1, strategy=DDPStrategy(timeout=timedelta(seconds=42)), max_epochs=1)
    try:
        assert trainer.strategy._timeout == timedelta(seconds=42)
        trainer.fit(TinyTask(), loader(n=16))  # a one-process DDP job runs
        assert trainer.global_step == 2
    finally:
        # The process group would outlive the test and make later tests of this process "distributed".
        torch.distributed.destroy_process_group()


def test_compile_compiles_the_task_submodules_but_not_metrics(tmp_path, monkeypatch):
    import torchmetrics

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))

    class WithMetric(TinyTask):
        def __init__(self):
            super().__init__()
            self.mae = torchmetrics.MeanAbsoluteError()

    quiet_trainer(tmp_path, compile=True, max_epochs=1).fit(WithMetric(), loader(n=16))
    assert compiled == ["Sequential"]


def test_limits_and_val_interval(tmp_path):
    calls = []

    class Count(dltrain.Callback):
        def on_validation_epoch_end(self, trainer, task):
            calls.append((trainer.sanity_checking, trainer.global_step, trainer.num_val_batches))

    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=0.5, limit_val_batches=2,
                            val_check_interval=3, check_val_every_n_epoch=None, callbacks=[Count()])
    trainer.fit(TinyTask(), loader(n=96), loader(n=64))
    assert trainer.num_training_batches == 6
    assert trainer.global_step == 12
    # The sanity check first (2 batches, Lightning's default), then, with check_val_every_n_epoch=None, after every
    # 3 training batches counted over the fit, the epochs' last batches included (as Lightning; dltrain skipped those
    # before, found by comparing 56 schedules with Lightning's, compat case af_val_schedule); num_val_batches has one
    # count per loader, as in Lightning.
    assert calls == [(True, 0, [2]), (False, 3, [2]), (False, 6, [2]), (False, 9, [2]), (False, 12, [2])]


def test_validation_schedule_is_lightnings(tmp_path):
    """Lightning validates only after batches whose count is a multiple of the interval (no extra validation at an
    epoch's end), only in the epochs check_val_every_n_epoch names, and when should_stop ends training early; an
    int interval longer than an epoch is an error unless counted over the fit. dltrain validated at every epoch end
    and mid-epoch in every epoch (27 of 56 schedules differed)."""
    steps: list[int] = []

    class Count(dltrain.Callback):
        def on_validation_epoch_end(self, trainer, task):
            if not trainer.sanity_checking:
                steps.append(trainer.global_step)

    def schedule(**kwargs):
        steps.clear()
        quiet_trainer(tmp_path, max_epochs=4, callbacks=[Count()], **kwargs).fit(
            TinyTask(), loader(n=40), loader(n=16))  # 5 batches per epoch
        return list(steps)

    assert schedule(val_check_interval=0.5) == [2, 4, 7, 9, 12, 14, 17, 19]  # not after batch 5 of 5
    assert schedule(val_check_interval=2, check_val_every_n_epoch=2) == [7, 9, 17, 19]
    assert schedule(val_check_interval=3, check_val_every_n_epoch=None) == [3, 6, 9, 12, 15, 18]
    assert schedule(check_val_every_n_epoch=3) == [15]
    with pytest.raises(dltrain.ConfigurationError, match=r"val_check_interval=7 is more than the 5 training batches"):
        schedule(val_check_interval=7)


def test_max_steps_stops_mid_epoch_and_estimated_stepping_batches(tmp_path):
    seen = {}

    class Peek(TinyTask):
        def configure_optimizers(self):
            seen["steps"] = self.trainer.estimated_stepping_batches
            return super().configure_optimizers()

    trainer = quiet_trainer(tmp_path, max_steps=7, accumulate_grad_batches=2)
    trainer.fit(Peek(), loader(n=96))
    assert trainer.global_step == 7
    assert seen["steps"] == 7

    trainer = quiet_trainer(tmp_path, max_epochs=3, accumulate_grad_batches=5)
    trainer.fit(Peek(), loader(n=96))
    assert seen["steps"] == 3 * 3  # 12 batches per epoch, 5 per step: 3 steps (the last one partial)
    assert trainer.global_step == 9


def test_predict_returns_outputs_in_order(tmp_path):
    task = TinyTask()
    data = loader(n=20, batch_size=8)
    outputs = quiet_trainer(tmp_path).predict(task, [x for x, _ in data])
    assert [o.shape[0] for o in outputs] == [8, 8, 4]
    with torch.no_grad():
        assert torch.equal(outputs[0], task(next(iter(data))[0]))


def test_early_stopping_and_plateau_scheduler(tmp_path):
    from dltrain.callbacks import EarlyStopping

    class Plateau(TinyTask):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.0)  # nothing improves
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}

    trainer = quiet_trainer(tmp_path, max_epochs=20, callbacks=[EarlyStopping("val/loss", patience=2)])
    trainer.fit(Plateau(), loader(n=32), loader(n=16))
    assert trainer.current_epoch == 3  # epochs 0, 1, 2 ran (no improvement after the first); 2 counts as done
    assert trainer.should_stop


class _Rates(dltrain.Callback):
    """The learning rate at each training batch's start."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


class _Halving(TinyTask):
    """SGD at 0.01, halved by a StepLR every step of the given interval and frequency."""

    def __init__(self, interval: str = "epoch", frequency: int = 1) -> None:
        super().__init__()
        self.interval, self.frequency = interval, frequency

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return [opt], [{"scheduler": sched, "interval": self.interval, "frequency": self.frequency}]


def test_step_scheduler_frequency_counts_batches_of_the_epoch_as_lightning(tmp_path):
    """Lightning steps a step-interval scheduler with frequency f after the optimizer steps whose batch index in the
    epoch + 1 is a multiple of f; dltrain counted global steps, so with 5 batches per epoch the rates parted from
    Lightning's in the second epoch (found by a grid of 144 schedules run under both; compat case aj_steps_grid)."""
    record = _Rates()
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[record]).fit(_Halving("step", 2), loader(n=40))  # 5 batches
    assert [r / 0.01 for r in record.rates] == pytest.approx(
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125, 0.125, 0.0625])


def test_an_epoch_cut_short_does_not_step_epoch_schedulers_and_a_longer_resume_matches(tmp_path):
    """An epoch ended by max_steps stepped the epoch-interval schedulers (Lightning does not); the last checkpoint
    then held a stepped scheduler, and a resume with a larger max_steps stepped it again at that epoch's real end:
    its rates parted from an uninterrupted run's."""
    from dltrain.callbacks import ModelCheckpoint

    def run(folder, max_steps, resume=False):
        record = _Rates()
        trainer = quiet_trainer(tmp_path / folder, max_steps=max_steps, enable_checkpointing=True,
                                callbacks=[record, ModelCheckpoint(dirpath=tmp_path / folder / "ckpt")])
        torch.manual_seed(0)
        trainer.fit(_Halving(), loader(n=40), ckpt_path="last" if resume else None)  # 5 batches per epoch
        return record.rates, trainer.optimizers[0].param_groups[0]["lr"]

    whole, _ = run("whole", 12)
    first, lr_at_cut = run("cut", 7)
    assert lr_at_cut == pytest.approx(0.005)  # epoch 1 was cut at its 2nd batch: only epoch 0's step
    rest, _ = run("cut", 12, resume=True)
    assert first + rest == pytest.approx(whole)
