"""LightningCLI with add_arguments_to_parser (add_lightning_class_args, link_arguments, set_defaults) and a YAML
config that names lightning.pytorch classes by class path (a config file is not renamed: it keeps them)."""
import json

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningCLI
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

LIGHTNING = "lightning" + ".pytorch"  # spelled so: the rename of the script must not touch the config below


class Model(LightningModule):
    def __init__(self, hidden: int = 4, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Data(LightningDataModule):
    def __init__(self, batch_size: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(48, 4, generator=g)
        self.data = TensorDataset(x, x.sum(1, keepdim=True))
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=16)


class MyCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val_loss", "early_stopping.patience": 1})
        parser.link_arguments("data.batch_size", "model.hidden")


with open("config.yaml", "w") as f:
    yaml.safe_dump({"seed_everything": 0, "trainer": {
        "accelerator": "cpu", "devices": 1, "max_epochs": 3, "enable_progress_bar": False, "log_every_n_steps": 2,
        "logger": {"class_path": f"{LIGHTNING}.loggers.CSVLogger", "init_args": {"save_dir": "logs"}},
        "callbacks": [{"class_path": f"{LIGHTNING}.callbacks.LearningRateMonitor"}]}}, f)
cli = MyCLI(Model, Data, args=["fit", "--config", "config.yaml", "--data.batch_size", "6",
                               f"--trainer.callbacks+={LIGHTNING}.callbacks.ModelSummary"])
kinds = sorted({type(c).__name__ for c in cli.trainer.callbacks} & {
    "EarlyStopping", "LearningRateMonitor", "ModelSummary"})
print(json.dumps({"callbacks": kinds, "hidden": cli.model.hparams.hidden, "logger": type(cli.trainer.logger).__name__,
                  "val_loss": float(cli.trainer.callback_metrics["val_loss"]),
                  "epochs": cli.trainer.current_epoch}))
