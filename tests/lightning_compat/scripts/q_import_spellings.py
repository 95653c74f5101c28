"""The other ways Lightning code imports it: `import lightning.pytorch as pl` and the modules where LightningModule
and Trainer are defined (Lightning's own templates use them)."""
import json

import lightning.pytorch as pl
import torch
from lightning.pytorch.core import LightningDataModule
from lightning.pytorch.trainer.trainer import Trainer
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Data(LightningDataModule):
    def train_dataloader(self):
        x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


pl.seed_everything(0)
trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False)
trainer.fit(Model(), datamodule=Data())
print(json.dumps({"train_loss": float(trainer.callback_metrics["train_loss_epoch"]), "step": trainer.global_step}))
