"""A LightningModule and a DataModule driven by LightningCLI with a config file (`fit --config config.yaml`)."""
import json
import sys

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Lines(LightningDataModule):
    def __init__(self, batch_size: int = 8, n: int = 96):
        super().__init__()
        self.batch_size = batch_size
        self.n = n

    def setup(self, stage):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(self.n, 5, generator=g)
        self.data = TensorDataset(x, x @ torch.arange(1.0, 6.0).unsqueeze(1))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=32)


class Regressor(LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


with open("config.yaml", "w") as f:
    yaml.safe_dump({"seed_everything": 4, "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1,
                    "logger": False, "enable_progress_bar": False, "enable_checkpointing": False,
                    "enable_model_summary": False}, "model": {"hidden": 12}, "data": {"batch_size": 16}}, f)
sys.argv = ["train.py", "fit", "--config", "config.yaml", "--model.lr", "0.05"]
cli = LightningCLI(Regressor, Lines, save_config_kwargs={"overwrite": True})
print(json.dumps({"hidden": cli.model.hparams.hidden, "lr": cli.model.hparams.lr, "batch_size": cli.datamodule.batch_size,
                  "epochs": cli.trainer.current_epoch, "val_loss": float(cli.trainer.callback_metrics["val_loss"])}))
