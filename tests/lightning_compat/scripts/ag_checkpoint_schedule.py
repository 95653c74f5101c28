"""Which checkpoints ModelCheckpoint writes and keeps, over a grid of its options and the validation schedule (108
cells). Left out, each a documented difference (docs/guides/from-lightning.md): save_top_k > 1 or -1 without a
monitor (Lightning refuses it; dltrain keeps the newest k), and two kinds of cells where Lightning drops a save it deferred
for the monitored metric (a step save at an epoch's last batch waiting for a validation that the schedule does not
run, and a save waiting for a validation while checkpoints are taken at training epoch ends): dltrain saves them
after the next validation."""
import itertools
import json
import os
import shutil

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset


class M(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.net(batch[0]).pow(2).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        # a value that falls, then rises: the kept top-k depend on it
        self.log("val_metric", float((self.global_step - 7) ** 2))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
out = {}
grid = itertools.product([None, 3], [None, 2], [None, "val_metric", "train_loss"], [1, 2, -1], [None, True, False],
                         [None, 0.5])
for every_steps, every_epochs, monitor, top_k, on_train_end, interval in grid:
    if every_steps and every_epochs:
        continue
    if monitor is None and top_k != 1:
        continue  # Lightning: MisconfigurationException
    if every_steps and monitor and interval == 0.5 and on_train_end is not True:
        continue  # Lightning defers the save at the last batch (step 15) to a validation that does not come
    if every_steps and monitor == "val_metric" and interval is None and on_train_end is not False:
        continue  # Lightning defers the step-3 save (no val_metric yet) and then drops it
    key = f"steps={every_steps} epochs={every_epochs} monitor={monitor} k={top_k} train_end={on_train_end} val={interval}"
    folder = f"ck/{len(out)}"
    try:
        ck = ModelCheckpoint(dirpath=folder, every_n_train_steps=every_steps, every_n_epochs=every_epochs,
                             monitor=monitor, save_top_k=top_k, save_on_train_epoch_end=on_train_end, save_last=True)
        tr = Trainer(accelerator="cpu", max_epochs=3, callbacks=[ck], enable_progress_bar=False, logger=False,
                     enable_model_summary=False, num_sanity_val_steps=0, val_check_interval=interval)
        torch.manual_seed(0)
        tr.fit(M(), DataLoader(TensorDataset(x), batch_size=8), DataLoader(TensorDataset(x[:8]), batch_size=8))
        out[key] = [sorted(os.listdir(folder)) if os.path.isdir(folder) else [], os.path.basename(ck.best_model_path)]
    except Exception as e:
        out[key] = f"error {type(e).__name__}"
    shutil.rmtree(folder, ignore_errors=True)
print(json.dumps(out))
