"""Warnings where Lightning warns, errors where it errors (item 8 of issue 22): its configuration validator and
data connector, case by case. Each case runs with the defaults users get (progress bar, logger, checkpointing)."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from torch.nn import functional as F

import dltrain
from dltrain.callbacks import ModelCheckpoint
from dltrain.errors import ConfigurationError
from tests.helpers.tasks import TinyTask, loader


def _trainer(tmp_path, **kwargs):
    kwargs.setdefault("max_epochs", 1)
    return dltrain.Trainer(accelerator="cpu", default_root_dir=tmp_path, log_every_n_steps=1, **kwargs)


class NoValidationStep(dltrain.Task):
    """A GAN template's shape: a val loader is passed, there is no validation_step."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 1)
        self.hooks: list[str] = []

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.net(batch[0]), batch[1])

    def on_validation_start(self):
        self.hooks.append("on_validation_start")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_val_data_without_validation_step_warns_and_skips_validation(tmp_path):
    task = NoValidationStep()
    trainer = _trainer(tmp_path, max_epochs=2)
    with pytest.warns(UserWarning, match="no validation_step. Skipping val loop"):
        trainer.fit(task, loader(n=32), loader(n=16))
    assert trainer.global_step == 8 and task.hooks == [] and trainer.val_dataloaders is None
    # A datamodule that has a val_dataloader: the same.
    class Data(dltrain.DataModule):
        def train_dataloader(self):
            return loader(n=32)

        def val_dataloader(self):
            return loader(n=16)

    dm = Data()
    with pytest.warns(UserWarning, match="Skipping val loop"):
        _trainer(tmp_path).fit(NoValidationStep(), datamodule=dm)
    # validate() itself needs the step: an error, as in Lightning.
    with pytest.raises(ConfigurationError, match="validation_step"):
        trainer.validate(task, loader(n=16))


def test_validation_step_without_val_data_is_a_possible_user_warning(tmp_path):
    with pytest.warns(PossibleUserWarning, match="no val_dataloader. Skipping val loop"):
        _trainer(tmp_path).fit(TinyTask(), loader(n=32))
    # Validation switched off by limit_val_batches=0 (what the Tuner's lr_find runs with): nothing is missing,
    # so nothing to warn about (it said "no val_dataloader", wrongly).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _trainer(tmp_path, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False).fit(TinyTask(), loader(n=32), loader(n=16))


class StopAfterOneEpoch(dltrain.Callback):
    def on_train_epoch_end(self, trainer, task):
        trainer.should_stop = True


class Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        data = loader(n=16).dataset
        yield from (data[i] for i in range(len(data)))


def test_no_max_epochs_warns_and_sets_1000(tmp_path):
    trainer = _trainer(tmp_path, max_epochs=None, callbacks=[StopAfterOneEpoch()])
    with pytest.warns(UserWarning, match="max_epochs was not set. Setting it to 1000 epochs"):
        trainer.fit(TinyTask(), loader(n=32))
    assert trainer.max_epochs == 1000 and trainer.global_step == 4
    # A loader without a length: Lightning warns the same way (it used to be an error here).
    trainer = _trainer(tmp_path, max_epochs=None, callbacks=[StopAfterOneEpoch()])
    with pytest.warns(UserWarning, match="max_epochs was not set"):
        trainer.fit(TinyTask(), torch.utils.data.DataLoader(Endless(), batch_size=8))
    assert trainer.global_step == 2
    # max_time alone bounds the run: no warning about epochs.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        _trainer(tmp_path, max_epochs=None, max_time={"seconds": 1}, callbacks=[StopAfterOneEpoch()],
                 logger=False).fit(TinyTask(), loader(n=32))


def test_max_epochs_minus_one_is_no_limit_and_is_what_an_unset_limit_becomes(tmp_path):
    """Lightning: max_epochs=-1 trains without an epoch limit; unset, it becomes -1 when max_steps or max_time
    bound the fit (1000 otherwise); below -1 is an error. Here -1 trained nothing, silently."""
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = _trainer(tmp_path, max_epochs=-1, max_steps=10, **quiet)
    assert trainer.estimated_stepping_batches == 10
    trainer.fit(TinyTask(), loader(n=32))  # 4 batches per epoch
    assert (trainer.global_step, trainer.current_epoch, trainer.max_epochs) == (10, 3, -1)  # stopped in epoch 2
    trainer = _trainer(tmp_path, max_epochs=None, max_steps=6, **quiet)
    assert trainer.max_epochs is None  # as in Lightning: resolved when the fit starts
    trainer.fit(TinyTask(), loader(n=32))
    assert (trainer.global_step, trainer.max_epochs) == (6, -1)
    assert _trainer(tmp_path, max_epochs=-1).estimated_stepping_batches == float("inf")
    for name in ("max_epochs", "max_steps"):
        with pytest.raises(ConfigurationError, match=f"{name}=-2: use a number of .* or -1 for no limit"):
            _trainer(tmp_path, **{name: -2})


def test_shuffled_val_loader_and_spawned_workers_warn(tmp_path, monkeypatch):
    with pytest.warns(PossibleUserWarning, match="val_dataloader's sampler has shuffling enabled"):
        _trainer(tmp_path).fit(TinyTask(), loader(n=32), loader(n=16, shuffle=True))
    with pytest.warns(PossibleUserWarning, match="test_dataloader's sampler has shuffling enabled"):
        _trainer(tmp_path).test(TinyTask(), loader(n=16, shuffle=True))
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_start_method", lambda *a, **k: "spawn")  # macOS, Windows
    with pytest.warns(UserWarning, match="Consider setting persistent_workers=True in 'train_dataloader'"):
        _trainer(tmp_path).fit(TinyTask(), loader(n=32, num_workers=1))


def test_resuming_without_a_callback_of_the_checkpoint_warns(tmp_path):
    from dltrain.callbacks import EarlyStopping

    first = _trainer(tmp_path, callbacks=[EarlyStopping("val/loss"), ModelCheckpoint(dirpath=tmp_path / "c")])
    first.fit(TinyTask(), loader(n=32), loader(n=16))
    second = _trainer(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "c")])
    with pytest.warns(UserWarning, match="Please add the following callbacks: .*EarlyStopping"):
        second.fit(TinyTask(), loader(n=32), loader(n=16), ckpt_path="last")
    assert second.global_step == 8


class Manual(TinyTask):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = F.mse_loss(self(batch[0]), batch[1])
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


class OldHooks(TinyTask):
    def validation_epoch_end(self, outputs):
        pass


def test_errors_stay_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="gradient clipping is not supported for manual optimization"):
        _trainer(tmp_path, gradient_clip_val=1.0).fit(Manual(), loader(n=32))
    with pytest.raises(ConfigurationError, match="accumulation is not supported for manual optimization"):
        _trainer(tmp_path, accumulate_grad_batches=2).fit(Manual(), loader(n=32))
    with pytest.raises(NotImplementedError, match="validation_epoch_end"):
        _trainer(tmp_path).fit(OldHooks(), loader(n=32), loader(n=16))
    with pytest.raises(NotImplementedError, match="validation_epoch_end"):
        _trainer(tmp_path).validate(OldHooks(), loader(n=16))
    # The manual task itself trains with neither setting.
    trainer = _trainer(tmp_path)
    trainer.fit(Manual(), loader(n=32))
    assert trainer.global_step == 4


def _worker_warnings(check, loader_, trainer) -> list[tuple[type[Warning], str]]:
    """What a workers check warns for one loader: (category, which warning), by the phrase each one has."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check(trainer, loader_)
    kinds = {"does not have many workers": "few", "pin_memory": "pin", "persistent_workers=True": "spawn"}
    return [(w.category, next(v for k, v in kinds.items() if k in str(w.message))) for w in caught]


def test_loader_worker_warnings_are_lightnings_on_the_same_inputs(monkeypatch):
    """The workers warnings (few workers, spawn without persistent workers, pinned persistent workers with reloads)
    fire exactly where Lightning's data connector fires them: every combination of worker count, start method,
    persistence, pinning, reloads, cores and devices per machine, both checks run on the same loader."""
    import itertools
    from types import SimpleNamespace

    import lightning.fabric.utilities.data as fabric_data
    from lightning.pytorch.trainer.connectors.data_connector import _worker_check

    from dltrain._config_checks import check_loader

    data = loader(n=16).dataset
    fired = set()
    for workers, start, persistent, pin, reload, cpus, devices in itertools.product(
            (0, 1, 2, 3), ("fork", "spawn"), (False, True), (False, True), (0, 1), (1, 2, 3, 8, 64), (1, 2, 4)):
        if workers == 0 and (persistent or start == "spawn"):
            continue  # DataLoader refuses a start method or persistent workers without workers
        with warnings.catch_warnings():  # torch's own warning about more workers than this machine's cores
            warnings.simplefilter("ignore")
            one = torch.utils.data.DataLoader(data, num_workers=workers, persistent_workers=persistent,
                                              pin_memory=pin, multiprocessing_context=start if workers else None)
        monkeypatch.setattr(fabric_data, "_num_cpus_available", lambda cpus=cpus: cpus)
        trainer = SimpleNamespace(num_devices=devices, reload_dataloaders_every_n_epochs=reload, is_global_zero=True)
        theirs = _worker_warnings(lambda t, dl: _worker_check(t, dl, "train_dataloader"), one, trainer)
        ours = _worker_warnings(lambda t, dl: check_loader(t, dl, "train"), one, trainer)
        assert ours == theirs, (workers, start, persistent, pin, reload, cpus, devices)
        fired.update(kind for _, kind in ours)
    assert fired == {"few", "spawn", "pin"}  # every branch was reached


def test_few_loader_workers_is_a_possible_user_warning_in_a_fit(tmp_path, monkeypatch):
    import lightning.fabric.utilities.data as fabric_data

    monkeypatch.setattr(fabric_data, "_num_cpus_available", lambda: 8)  # a machine with more cores than this one
    with pytest.warns(PossibleUserWarning, match="'val_dataloader' does not have many workers.*num_workers=7"):
        _trainer(tmp_path).fit(TinyTask(), loader(n=32, num_workers=2), loader(n=16))
