"""Optimizer steps, learning rates and epochs over a grid of accumulate_grad_batches, epoch lengths, scheduler
intervals and frequencies, max_steps/max_epochs/min_epochs and a should_stop request (144 cells; issue 22: the
step-interval frequency counted global steps, not batch indices as Lightning). The rates are read at each batch's
start and at the end: an epoch scheduler steps after the epoch-end hooks in dltrain, right after the last batch in
Lightning (docs/guides/from-lightning.md), so the last batch's own hooks would see different rates."""
# ruff: noqa: B023  (each grid cell's task class reads that cell's loop variables, and is used in that cell only)
import itertools
import json

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset


class Record(Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        self.steps.append([trainer.current_epoch, batch_idx, trainer.global_step,
                           round(trainer.optimizers[0].param_groups[0]["lr"], 8)])

    def on_train_end(self, trainer, task):
        self.steps.append(["end", round(trainer.optimizers[0].param_groups[0]["lr"], 8)])


out = {}
grid = itertools.product([1, 2, 3], [5, 6], ["step", "epoch"], [1, 2], [(3, -1, 0), (-1, 7, 0), (-1, 4, 3)], [None, 3])
for accumulate, n, interval, frequency, (max_epochs, max_steps, min_epochs), stop_at in grid:

    class M(LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            if stop_at is not None and self.global_step >= stop_at:
                self.trainer.should_stop = True
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return [opt], [{"scheduler": sched, "interval": interval, "frequency": frequency}]

    key = f"acc={accumulate} n={n} {interval}/{frequency} max_epochs={max_epochs} max_steps={max_steps} min_epochs={min_epochs} stop={stop_at}"
    rec = Record()
    x = torch.randn(8 * n, 4, generator=torch.Generator().manual_seed(0))
    tr = Trainer(accelerator="cpu", max_epochs=max_epochs, max_steps=max_steps, min_epochs=min_epochs,
                 accumulate_grad_batches=accumulate, callbacks=[rec], enable_progress_bar=False, logger=False,
                 enable_checkpointing=False, enable_model_summary=False)
    tr.fit(M(), DataLoader(TensorDataset(x), batch_size=8))
    out[key] = [rec.steps, tr.global_step, tr.current_epoch]
print(json.dumps(out))
