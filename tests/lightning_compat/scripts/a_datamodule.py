"""A DataModule and a LightningModule: fit, validate, test."""
import json

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Blobs(LightningDataModule):
    def __init__(self, batch_size: int = 16):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 6, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long()
        self.train, self.val, self.test = TensorDataset(x[:160], y[:160]), TensorDataset(x[160:208], y[160:208]), TensorDataset(x[208:], y[208:])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=32)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=32)


class Classifier(LightningModule):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def _eval(self, batch, stage):
        x, y = batch
        logits = self.net(x)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y))
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean())

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


seed_everything(1)
dm, model = Blobs(), Classifier()
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False)
trainer.fit(model, datamodule=dm)
train_loss = float(trainer.callback_metrics["train_loss"])
val = trainer.validate(model, datamodule=dm)
test = trainer.test(model, datamodule=dm)
print(json.dumps({"train_loss": train_loss, **val[0], **test[0]}))
