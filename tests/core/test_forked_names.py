"""A value logged with ``on_step=True, on_epoch=True`` is in ``callback_metrics`` under its own name too, as in
Lightning (the epoch value after an epoch; in training, the newest step value between epochs), so that callbacks
can monitor it by that name; the loggers get ``name_step`` and ``name_epoch`` only."""

from __future__ import annotations

import csv

import torch
from torch.nn import functional as F

import dltrain
from dltrain.callbacks import ModelCheckpoint
from tests.helpers.tasks import loader


class Task(dltrain.Task):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_on_step_and_on_epoch_values_are_monitored_by_their_own_name(tmp_path):
    best = ModelCheckpoint(monitor="train_loss", mode="min", save_top_k=1, filename="{epoch}-{train_loss:.4f}")
    trainer = dltrain.Trainer(accelerator="cpu", max_epochs=3, default_root_dir=tmp_path, callbacks=[best],
                              log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Task(), loader(n=32))
    metrics = trainer.callback_metrics
    assert {"train_loss", "train_loss_step", "train_loss_epoch"} <= set(metrics)
    assert torch.equal(metrics["train_loss"], metrics["train_loss_epoch"])
    assert best.best_model_score is not None and "train_loss=" in best.best_model_path
    assert "train_loss" not in trainer.logged_metrics
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert {"train_loss_step", "train_loss_epoch"} <= columns and "train_loss" not in columns
