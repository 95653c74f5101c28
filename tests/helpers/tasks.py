"""A tiny task and data shared by the core tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import dltrain
from dltrain.loggers import Logger


def make_model(dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 1))


def make_data(n: int = 96, seed: int = 1234) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :4].sum(1, keepdim=True) - x[:, 4:].prod(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loader(n: int = 96, batch_size: int = 8, shuffle: bool = False, **kwargs) -> DataLoader:
    return DataLoader(make_data(n), batch_size=batch_size, shuffle=shuffle, **kwargs)


class TinyTask(dltrain.Task):
    """Regression with an MLP; optional dropout, schedulers and validation."""

    def __init__(self, dropout: float = 0.0, lr: float = 0.05, scheduler: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = make_model(dropout)
        self.lr = lr
        self.scheduler = scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", F.mse_loss(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return make_scheduler(opt, self.scheduler)


def make_scheduler(opt, kind):
    if kind is None:
        return opt
    if kind == "step":
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 3, 0.5),
                                                     "interval": "step"}}
    if kind == "epoch":
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}
    raise ValueError(kind)


def quiet_trainer(tmp_path, **kwargs) -> dltrain.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("accelerator", "cpu")
    return dltrain.Trainer(default_root_dir=str(tmp_path), **kwargs)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)``."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics, step):
        self.records.append((step, dict(metrics)))

    def values(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for step, m in self.records if key in m]


class CountEpochs(dltrain.Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, task):
        self.epochs.append(trainer.current_epoch)
