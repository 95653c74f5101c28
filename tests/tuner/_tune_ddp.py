"""Tuner under torchrun: lr_find and scale_batch_size (an out-of-memory error injected above a batch size);
each rank writes what it found to ``<out>/rank<r>.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import dltrain
from dltrain.tuner import Tuner


class Task(dltrain.Task):
    def __init__(self, lr: float = 0.01, batch_size: int = 4, oom_above: int = 1 << 30) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.batch_size = batch_size
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, 8, generator=g)
        self.data = TensorDataset(x, x[:, :3].sum(1, keepdim=True) + 0.1 * torch.randn(512, 1, generator=g))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)

    def training_step(self, batch, batch_idx):
        if len(batch[0]) > self.hparams.oom_above:
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate ...")
        return F.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--strategy", default="ddp")
    args = p.parse_args()
    torch.set_num_threads(1)
    trainer = dltrain.Trainer(accelerator="cpu", strategy=args.strategy, max_epochs=1, logger=False,
                              enable_checkpointing=False, enable_progress_bar=False, seed=7)
    task = Task(oom_above=24)
    tuner = Tuner(trainer)
    finder = tuner.lr_find(task, min_lr=1e-4, max_lr=1.0, num_training=30)
    size = tuner.scale_batch_size(task, mode="binsearch", init_val=2, max_trials=10, margin=0.0)
    trainer.fit(task)
    found = {"rank": trainer.global_rank, "lr": task.lr, "suggestion": finder.suggestion(),
             "losses": finder.results["loss"], "batch_size": size, "task_batch_size": task.batch_size,
             "steps": trainer.global_step}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(found))


if __name__ == "__main__":
    main()
