"""BasePredictionWriter: per batch and per run, with the dataset indices of each batch."""
import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, TensorDataset


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 2)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0]).argmax(1)


class Writer(BasePredictionWriter):
    def __init__(self, folder):
        super().__init__(write_interval="batch_and_epoch")
        self.folder = folder
        self.batches = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.batches.append([batch_idx, list(batch_indices), prediction.tolist()])

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        os.makedirs(self.folder, exist_ok=True)
        torch.save(torch.cat(predictions), os.path.join(self.folder, f"predictions_{trainer.global_rank}.pt"))
        self.epoch_indices = [list(b) for b in batch_indices]


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(22, 4, generator=g)
writer = Writer("preds")
trainer = Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], default_root_dir="out")
returned = trainer.predict(Model(), DataLoader(TensorDataset(x), batch_size=8), return_predictions=False)
saved = torch.load("preds/predictions_0.pt")
print(json.dumps({"returned": returned, "batches": writer.batches, "epoch_indices": writer.epoch_indices,
                  "saved": saved.tolist()}))
