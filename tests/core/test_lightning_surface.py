"""Lightning's surface on dltrain's loop (issue 13): data modules, hyperparameters, manual optimization, several
optimizers, Trainer arguments, Task attributes, load_from_checkpoint, and errors that say how to port."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import dltrain
from dltrain.callbacks import ModelCheckpoint
from tests.helpers.tasks import RecordingLogger, TinyTask, loader, make_data, quiet_trainer


# ---------------------------------------------------------------------------------------------------- data modules
class Digits(dltrain.DataModule):
    def __init__(self, batch_size: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.calls: list[str] = []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage):
        self.calls.append(f"setup:{stage.value}")  # a TrainerFn, as Lightning passes
        self.data = make_data(48)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=16)

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=16)

    def predict_dataloader(self):
        return DataLoader(self.data.tensors[0], batch_size=16)

    def teardown(self, stage):
        self.calls.append(f"teardown:{stage.value}")

    def state_dict(self):
        return {"seen_setups": len(self.calls)}


def test_datamodule_drives_fit_validate_test_predict(tmp_path):
    dm = Digits(batch_size=8)
    task = TinyTask()
    trainer = quiet_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 12 and trainer.datamodule is dm
    assert dm.calls == ["prepare_data", "setup:fit", "teardown:fit"]
    (val,) = trainer.validate(task, datamodule=dm)
    # Without a model, test() means ckpt_path="best" as in Lightning (test_task_members.py checks it); this Trainer
    # keeps no checkpoints, so the task is passed.
    (test,) = trainer.test(task, datamodule=dm)
    assert set(val) == {"val/loss"} and set(test) == {"test/loss"}
    predictions = trainer.predict(task, dm)  # Lightning also accepts the datamodule in place of the loaders
    assert [p.shape for p in predictions] == [torch.Size([16, 1])] * 3
    assert dm.calls[3:] == ["prepare_data", "setup:validate", "teardown:validate", "prepare_data", "setup:test",
                            "teardown:test", "prepare_data", "setup:predict", "teardown:predict"]


def test_task_can_bring_its_own_loaders_and_no_data_is_a_clear_error(tmp_path):
    class OwnData(TinyTask):
        def train_dataloader(self):
            return loader(n=32)

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(OwnData())
    assert trainer.global_step == 4
    with pytest.raises(dltrain.ConfigurationError, match="no train data"):
        quiet_trainer(tmp_path, max_epochs=1).fit(TinyTask())


def test_datamodule_state_is_in_checkpoints(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    dm = Digits()
    trainer.fit(TinyTask(), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "dm.ckpt")
    from dltrain import checkpoint as ckpt_io

    assert ckpt_io.load(tmp_path / "dm.ckpt")["datamodule"] == {"seen_setups": 3}  # prepare, setup, teardown


# ---------------------------------------------------------------------------------------------------- hparams
def test_hparams_is_an_attribute_dict_and_save_hyperparameters_takes_lightnings_forms(tmp_path):
    class WithArgs(TinyTask):
        def __init__(self, lr: float = 0.05, width: int = 32, net: nn.Module | None = None):
            super().__init__(lr=lr)
            self.hparams.clear()
            self.save_hyperparameters(ignore="net")

    task = WithArgs(lr=0.1)
    assert task.hparams.lr == task.hparams["lr"] == 0.1 and task.hparams.width == 32 and "net" not in task.hparams

    class FromNamespace(TinyTask):
        def __init__(self, args: argparse.Namespace):
            super().__init__()
            self.hparams.clear()
            self.save_hyperparameters(args)

    assert dict(FromNamespace(argparse.Namespace(lr=0.3, depth=2)).hparams) == {"lr": 0.3, "depth": 2}

    class Selected(TinyTask):
        def __init__(self, a: int = 1, b: int = 2):
            super().__init__()
            self.hparams.clear()
            self.save_hyperparameters("b")

    assert dict(Selected().hparams) == {"b": 2}


def test_load_from_checkpoint_rebuilds_from_hparams_with_overrides(tmp_path):
    task = TinyTask(dropout=0.1, lr=0.2)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, loader(n=32))
    trainer.save_checkpoint(tmp_path / "t.ckpt")
    loaded = TinyTask.load_from_checkpoint(tmp_path / "t.ckpt", lr=0.5)
    assert loaded.hparams.dropout == 0.1 and loaded.hparams.lr == 0.5
    for a, b in zip(task.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------- manual optimization
class Gan(dltrain.Task):
    """A tiny GAN: two optimizers, manual optimization, toggle_optimizer, per-optimizer schedulers."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], 4)
        self.toggle_optimizer(opt_g)
        g_loss = F.softplus(-self.discriminator(self.generator(z))).mean()
        self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)
        self.toggle_optimizer(opt_d)
        fake = self.generator(z).detach()
        d_loss = F.softplus(-self.discriminator(real)).mean() + F.softplus(self.discriminator(fake)).mean()
        self.manual_backward(d_loss)
        self.clip_gradients(opt_d, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        if self.trainer.is_last_batch:
            for scheduler in self.lr_schedulers():
                scheduler.step()
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss})

    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=2e-3)
        opt_d = torch.optim.SGD(self.discriminator.parameters(), lr=1e-2, momentum=0.5)
        scheds = [torch.optim.lr_scheduler.StepLR(opt_g, 1, 0.5), torch.optim.lr_scheduler.StepLR(opt_d, 1, 0.9)]
        return [opt_g, opt_d], scheds


def gan_data():
    g = torch.Generator().manual_seed(3)
    return DataLoader(TensorDataset(torch.randn(48, 8, generator=g) + 2, torch.zeros(48)), batch_size=8)


def hand_written_gan(epochs: int) -> Gan:
    """The same GAN trained by a plain PyTorch loop."""
    torch.manual_seed(0)
    gan = Gan()
    (opt_g, opt_d), scheds = gan.configure_optimizers()
    torch.manual_seed(1)
    gan.train()
    for _ in range(epochs):
        for real, _ in gan_data():
            z = torch.randn(real.shape[0], 4)
            gan.discriminator.requires_grad_(False)
            F.softplus(-gan.discriminator(gan.generator(z))).mean().backward()
            opt_g.step()
            opt_g.zero_grad()
            gan.discriminator.requires_grad_(True)
            gan.generator.requires_grad_(False)
            fake = gan.generator(z).detach()
            d_loss = F.softplus(-gan.discriminator(real)).mean() + F.softplus(gan.discriminator(fake)).mean()
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(gan.discriminator.parameters(), 1.0)
            opt_d.step()
            opt_d.zero_grad()
            gan.generator.requires_grad_(True)
        for s in scheds:
            s.step()
    return gan


def fit_gan(folder, epochs, crash_at=None, resume=False, every=0):
    torch.manual_seed(0)
    gan = Gan()
    callbacks = [ModelCheckpoint(dirpath=folder / "ckpt", every_n_epochs=1, every_n_train_steps=every, save_top_k=1)] if every else []
    if crash_at is not None:
        class Crash(dltrain.Callback):
            def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
                if trainer.global_step == crash_at:
                    raise KeyboardInterrupt

        callbacks.append(Crash())
    trainer = quiet_trainer(folder, max_epochs=epochs, callbacks=callbacks, enable_checkpointing=bool(every))
    torch.manual_seed(1)
    try:
        trainer.fit(gan, gan_data(), ckpt_path="last" if resume else None)
    except KeyboardInterrupt:
        return None, trainer
    return gan, trainer


def test_manual_optimization_gan_matches_a_hand_written_loop_bitwise(tmp_path):
    reference = hand_written_gan(epochs=2)
    gan, trainer = fit_gan(tmp_path, epochs=2)
    assert trainer.global_step == 2 * 6 * 2  # every optimizer.step() counts, as in Lightning
    for (name, a), b in zip(reference.state_dict().items(), gan.state_dict().values()):
        assert torch.equal(a, b), name
    assert {"g_loss", "d_loss"} <= set(trainer.callback_metrics)


def test_manual_optimization_resumes_mid_epoch_bitwise_with_two_optimizers(tmp_path):
    reference, _ = fit_gan(tmp_path / "ref", epochs=2)
    assert fit_gan(tmp_path / "run", epochs=2, crash_at=8, every=4)[0] is None
    resumed, trainer = fit_gan(tmp_path / "run", epochs=2, resume=True, every=4)
    assert trainer.global_step == 24
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_several_optimizers_need_manual_optimization(tmp_path):
    class TwoOpts(TinyTask):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    with pytest.raises(dltrain.ConfigurationError, match="automatic_optimization = False"):
        quiet_trainer(tmp_path, max_epochs=1).fit(TwoOpts(), loader(n=16))


def test_optimizer_step_override_and_training_step_without_batch_idx(tmp_path):
    class WarmUp(TinyTask):
        def training_step(self, batch):  # Lightning allows leaving out batch_idx
            return super().training_step(batch, 0)

        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            for group in optimizer.param_groups:
                group["lr"] = 0.05 * min(1.0, (self.trainer.global_step + 1) / 4)
            optimizer.step(closure=optimizer_closure)

    task = WarmUp()
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, loader(n=64))
    assert trainer.global_step == 8
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.05


# ---------------------------------------------------------------------------------------------------- Trainer arguments
def test_unknown_trainer_argument_suggests_the_right_name():
    with pytest.raises(TypeError, match="'max_epoch' \\(did you mean 'max_epochs'\\?\\)"):
        dltrain.Trainer(max_epoch=3)


def test_fast_dev_run_runs_one_batch_of_each_and_writes_nothing(tmp_path):
    calls = []

    class Count(TinyTask):
        def validation_step(self, batch, batch_idx):
            calls.append("val")
            return super().validation_step(batch, batch_idx)

    trainer = dltrain.Trainer(accelerator="cpu", fast_dev_run=True, default_root_dir=str(tmp_path),
                              enable_progress_bar=False)
    trainer.fit(Count(), loader(n=64), loader(n=64))
    assert trainer.global_step == 1 and calls == ["val"]
    assert not any(tmp_path.iterdir()), "fast_dev_run must not write logs or checkpoints"


def test_min_epochs_overrides_an_early_stop_and_max_time_stops(tmp_path):
    class StopAtOnce(dltrain.Callback):
        def on_train_epoch_end(self, trainer, task):
            trainer.should_stop = True

    trainer = quiet_trainer(tmp_path, max_epochs=5, min_epochs=3, callbacks=[StopAtOnce()])
    trainer.fit(TinyTask(), loader(n=16))
    assert trainer.global_step == 6  # 3 epochs of 2 batches: should_stop is ignored before min_epochs

    trainer = quiet_trainer(tmp_path, max_epochs=1000, max_time={"seconds": 0})
    trainer.fit(TinyTask(), loader(n=16))
    assert trainer.global_step == 1  # the budget is spent after the first batch


def test_limits_profiler_summary_and_reload(tmp_path, capsys):
    class Reloading(TinyTask):
        def train_dataloader(self):
            self.loads = getattr(self, "loads", 0) + 1
            return loader(n=32)

    task = Reloading()
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, profiler="simple", reload_dataloaders_every_n_epochs=2,
                              limit_train_batches=3, default_root_dir=str(tmp_path))
    trainer.fit(task)
    assert task.loads == 2 and trainer.global_step == 12
    out = capsys.readouterr().out
    assert "Profiler report" in out and "run_training_batch" in out  # the simple profiler's table
    assert "trainable params" in out  # the model summary (enable_model_summary defaults to True)
    metrics = quiet_trainer(tmp_path, limit_test_batches=2).test(task, loader(n=64, batch_size=8), verbose=False)
    assert trainer.num_training_batches == 3 and metrics[0]["test/loss"] > 0


def test_callback_metrics_hold_the_newest_step_value_between_logging_intervals(tmp_path):
    seen = []

    class Peek(dltrain.Callback):
        def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
            seen.append(float(trainer.callback_metrics["train/loss"]))

    logger = RecordingLogger()
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=50, callbacks=[Peek()], logger=logger)
    trainer.fit(TinyTask(), loader(n=32))
    assert len(seen) == 4 and len(set(seen)) == 4  # a new value every step
    assert logger.values("train/loss") == []  # the loggers still get values only at logging steps


# ---------------------------------------------------------------------------------------------------- errors that teach
def test_lightning_objects_and_datasets_say_how_to_port(tmp_path):
    import lightning.pytorch as L

    class PortMe(L.LightningModule):
        pass

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    with pytest.raises(dltrain.ConfigurationError, match=r"is a LightningModule: subclass dltrain\.Task"):
        trainer.fit(PortMe(), loader())
    with pytest.raises(dltrain.ConfigurationError, match="is a Lightning callback"):
        quiet_trainer(tmp_path, callbacks=[L.callbacks.EarlyStopping(monitor="x")])
    with pytest.raises(dltrain.ConfigurationError, match=r"a Dataset\), not a loader.*DataLoader\(dataset"):
        trainer.fit(TinyTask(), make_data(16))


def test_every_logger_has_an_experiment(tmp_path):
    from dltrain.loggers import CSVLogger, TensorBoardLogger

    csv = CSVLogger(str(tmp_path))
    assert csv.experiment is csv  # nothing behind it: the logger itself
    tb = TensorBoardLogger(str(tmp_path))
    assert type(tb.experiment).__name__ == "SummaryWriter"
    tb.finalize("success")


def test_is_last_batch_is_the_fit_loops_and_other_stages_leave_it():
    """As in Lightning: ``trainer.is_last_batch`` belongs to the fit loop; validate, test and predict leave it as the
    fit left it (it was reset to False by validate/test, which Lightning does not do)."""

    class Task(TinyTask):
        def predict_step(self, batch, batch_idx):
            return self(batch[0])

    def trainer():
        return dltrain.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                               enable_checkpointing=False, enable_model_summary=False)

    fresh = trainer()
    fresh.predict(Task(), loader(n=16))
    fresh.validate(Task(), loader(n=16))
    assert fresh.is_last_batch is False  # no fit ran
    fitted, task = trainer(), Task()
    fitted.fit(task, loader(n=16))
    assert fitted.is_last_batch is True
    for stage in (fitted.validate, fitted.test, fitted.predict):
        stage(task, loader(n=16))
        assert fitted.is_last_batch is True, stage.__name__
