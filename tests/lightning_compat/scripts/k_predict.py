"""trainer.predict with a DataModule's predict_dataloader."""
import json

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset


class Data(LightningDataModule):
    def setup(self, stage):
        self.x = torch.arange(12.0).reshape(6, 2)

    def predict_dataloader(self):
        return DataLoader(TensorDataset(self.x), batch_size=4)


class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self.net(batch[0]).squeeze(1)


seed_everything(0)
preds = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False).predict(Model(), datamodule=Data())
print(json.dumps({"batches": len(preds), "preds": [round(float(v), 5) for p in preds for v in p]}))
