"""Checkpoint names and folders as Lightning writes them, with the defaults (progress bar, logger, checkpointing):
a filename template with format specs, and a checkpoint loaded by Lightning's default path."""
import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Digits(LightningModule):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(8, 3)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        acc = (self.net(batch[0]).argmax(1) == batch[1]).float().mean()
        self.log("val_acc", acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


seed_everything(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(96, 8, generator=g)
y = (x[:, :3].argmax(1)).long()
train = DataLoader(TensorDataset(x[:72], y[:72]), batch_size=12)
val = DataLoader(TensorDataset(x[72:], y[72:]), batch_size=12)

ckpt = ModelCheckpoint(filename="digits-{epoch:02d}-{val_acc:.3f}", monitor="val_acc", mode="max", save_top_k=2)
trainer = Trainer(accelerator="cpu", devices=1, max_epochs=3, callbacks=[ckpt], log_every_n_steps=2)
trainer.fit(Digits(), train, val)
folder = os.path.join("lightning_logs", "version_0", "checkpoints")
# dltrain also keeps last.ckpt by default (README "What differs"): the names compared are the template's.
names = sorted(n for n in os.listdir(folder) if not n.startswith("last"))

# A second run with the defaults only; its checkpoint loaded by Lightning's default path.
seed_everything(0)
Trainer(accelerator="cpu", devices=1, max_epochs=1).fit(Digits(lr=0.05), train, val)
loaded = Digits.load_from_checkpoint("lightning_logs/version_1/checkpoints/epoch=0-step=6.ckpt")
print(json.dumps({"names": names, "best": os.path.relpath(ckpt.best_model_path),
                  "best_score": round(float(ckpt.best_model_score), 6), "loaded_lr": loaded.hparams.lr,
                  "val_acc": float(trainer.callback_metrics["val_acc"])}))
