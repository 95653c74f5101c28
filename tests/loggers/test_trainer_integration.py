"""The loggers and the monitoring callbacks under the real Trainer (CPU, one process)."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import dltrain
from dltrain.callbacks.early_stopping import EarlyStopping
from dltrain.callbacks.lr_monitor import LearningRateMonitor
from dltrain.callbacks.progress import ProgressBar
from dltrain.callbacks.throughput import ThroughputMonitor
from dltrain.loggers import CSVLogger
from dltrain.trainer import Trainer


class Regression(dltrain.Task):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05)
        return {
            "optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        }


def _loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x.sum(dim=1, keepdim=True)
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=8), DataLoader(data, batch_size=16)


def test_fit_with_monitoring_callbacks_and_csv(tmp_path):
    out = io.StringIO()
    stop = EarlyStopping("val/loss", patience=1, mode="max")  # the loss falls: "no improvement" after epoch 0
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=6,
        log_every_n_steps=2,
        default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        callbacks=[stop, LearningRateMonitor(), ThroughputMonitor(window=4), ProgressBar(file=out)],
    )
    train, val = _loaders()
    trainer.fit(Regression(), train, val)

    assert trainer.current_epoch == 2 and trainer.global_step == 16  # stopped after 2 epochs of 8 steps
    assert stop.stopped_epoch == 1
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    for name in (
        "lr-SGD",
        "throughput/samples_per_sec",
        "throughput/data_wait_fraction",
        "throughput/epoch_samples_per_sec",
        "val/loss",
    ):
        assert name in columns, sorted(columns)
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)
    lrs = {int(r["step"]): float(r["lr-SGD"]) for r in rows if r["lr-SGD"]}
    assert lrs[2] == pytest.approx(0.05) and lrs[16] == pytest.approx(
        0.025
    )  # the epoch scheduler halves it after epoch 0
    epoch_rows = [r for r in rows if r["throughput/epoch_samples_per_sec"]]
    assert len(epoch_rows) == 2
    assert all(0.0 <= float(r["throughput/epoch_data_wait_fraction"]) <= 1.0 for r in epoch_rows)
    text = out.getvalue()  # not a TTY: plain lines at epoch ends
    assert "Epoch 1/6" in text and "Epoch 2/6" in text and "8/8" in text and "\r" not in text


def test_csv_resume_continues_same_version(tmp_path):
    train, val = _loaders()

    def trainer(max_epochs):
        return Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=max_epochs,
            log_every_n_steps=2,
            default_root_dir=tmp_path,
            logger=CSVLogger(tmp_path),
            enable_progress_bar=False,
        )

    trainer(2).fit(Regression(), train, val)
    resumed = trainer(3)
    resumed.fit(Regression(), train, val, ckpt_path="last")
    assert resumed.logger.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    assert not (tmp_path / "lightning_logs" / "version_1").exists()
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    step_rows = [int(r["step"]) for r in rows if r["train/loss"]]
    assert step_rows == list(range(2, 25, 2))  # epochs 0-2, every second step, each once


def test_loggers_get_the_hparams_lightning_sends_and_the_yaml_reloads_the_task(tmp_path):
    """The loggers get the task's saved hyperparameters merged with the datamodule's, as Lightning's (dltrain added
    'trainer/...' keys, so that ``load_from_checkpoint(hparams_file=<the CSV logger's hparams.yaml>)`` failed on them;
    found by a probe under both libraries, issue 22); ``save_hyperparameters(logger=False)`` keeps them out; a key
    in both with different values is an error, as in Lightning."""
    import yaml

    class Net(dltrain.Task):
        def __init__(self, backbone: torch.nn.Module, lr: float = 0.05, shared: int = 1, to_loggers: bool = True):
            super().__init__()
            self.save_hyperparameters(ignore=["backbone"], logger=to_loggers)
            self.backbone = backbone
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(self.backbone(x)), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    class Data(dltrain.DataModule):
        def __init__(self, batch_size: int = 8, shared: int = 1):
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return _loaders()[0]

    def fit(folder, task, data):
        logger = CSVLogger(tmp_path / folder)
        Trainer(accelerator="cpu", max_epochs=1, logger=logger, default_root_dir=tmp_path / folder,
                enable_progress_bar=False, enable_model_summary=False).fit(task, datamodule=data)
        return logger, yaml.safe_load((tmp_path / folder / "lightning_logs" / "version_0" / "hparams.yaml").read_text())

    logger, hparams = fit("a", Net(torch.nn.Identity(), lr=0.1), Data())
    assert hparams == {"lr": 0.1, "shared": 1, "to_loggers": True, "batch_size": 8}
    ckpt = next((tmp_path / "a").rglob("*.ckpt"))
    task = Net.load_from_checkpoint(ckpt, backbone=torch.nn.Identity(),
                                    hparams_file=tmp_path / "a" / "lightning_logs" / "version_0" / "hparams.yaml")
    assert task.hparams.lr == 0.1
    _, hparams = fit("b", Net(torch.nn.Identity(), to_loggers=False), Data(batch_size=4))
    assert hparams == {"batch_size": 4, "shared": 1}  # the datamodule's only
    with pytest.raises(dltrain.ConfigurationError, match=r"'shared'.*task.*datamodule.*different values"):
        fit("c", Net(torch.nn.Identity(), shared=2), Data())
